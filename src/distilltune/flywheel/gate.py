"""Gate: promote the retrained candidate only if it is not worse on eval and better on the failures.

Both models are evaluated (``evaluation.evaluate``, greedy, no behaviour suites or timing) on two
sets: the task's untouched eval set and the harvested failures' held-out part (``failures/``, whose
references are the reviewed answers). The comparisons are the compare stage's paired statistics
(``compare.stats.compare_items``): a paired bootstrap interval of the per-item difference, plus
McNemar's test where items carry pass bits.

- eval, on the primary score: the candidate must not be *worse* — a difference counts as worse only
  when the paired interval lies below 0 and McNemar agrees, as in the compare report;
- failures, on token F1 against the reviewed answer (these items have no fact list, so the primary
  score would only check refusals): the candidate must be *better* — the interval above 0.

Anything else keeps the current model. Evaluations are cached under ``gate/<model>-<set>/`` with a
key of the model reference, its files' sizes and times, and the set's files, so a re-run with the
same models re-uses them and a retrained candidate at the same path is evaluated afresh.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from distilltune.compare.stats import compare_items
from distilltune.errors import UserError
from distilltune.io import write_if_changed

FAILURE_SCORE = "token_f1"


def _files_key(path: Path, depth: int = 2) -> list:
    if path.is_file():
        st = path.stat()
        return [[path.name, st.st_size, st.st_mtime_ns]]
    if not path.is_dir() or depth < 0:
        return []
    out = []
    for p in sorted(path.iterdir()):
        if not p.name.startswith(".") and p.name not in ("gate", "checkpoints"):
            out += (
                [[f"{p.name}/{k[0]}", *k[1:]] for k in _files_key(p, depth - 1)]
                if p.is_dir()
                else _files_key(p)
            )
    return out


def eval_key(ref: str, task_dir: Path, settings) -> str:
    blob = json.dumps([ref, _files_key(Path(ref)), _files_key(task_dir), settings.max_new_tokens])
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def evaluated(ref: str, task_dir: Path, out: Path, settings, log: Callable[[str], None]) -> list[dict]:
    """The per-item results of ``ref`` on ``task_dir`` (cached in ``out``)."""
    from distilltune.evaluation.config import EfficiencySettings, EvaluateConfig
    from distilltune.evaluation.evaluate import evaluate

    key = eval_key(ref, task_dir, settings)
    stamp = out / "gate_key.txt"
    if stamp.is_file() and stamp.read_text().strip() == key and (out / "eval.json").is_file():
        log(f"gate: {out.name}: cached")
        return json.loads((out / "eval.json").read_text(encoding="utf-8"))["per_item"]
    cfg = EvaluateConfig(
        model=ref, task=str(task_dir), output=str(out), behaviour=False, teacher_agreement=False,
        efficiency=EfficiencySettings(enabled=False), max_new_tokens=settings.max_new_tokens,
        batch_size=settings.batch_size,
    )  # fmt: skip
    result = evaluate(cfg, log=lambda m: log(f"gate: {out.name}: {m}"))
    stamp.write_text(key + "\n")
    return result["per_item"]


def decide(eval_cmp, failures_cmp) -> tuple[bool, list[str]]:
    """Promote or not, and why (one line per condition)."""
    why = []
    eval_ok = eval_cmp.verdict in ("tie", "better")
    why.append(
        f"eval: {eval_cmp.verdict} on the primary score"
        + (" (not worse: ok)" if eval_ok else " (must not be worse)")
    )
    fail_ok = failures_cmp.verdict == "better"
    why.append(
        f"failures: {failures_cmp.verdict} on {FAILURE_SCORE}"
        + (" (better: ok)" if fail_ok else " (must be better)")
    )
    return eval_ok and fail_ok, why


def run_gate(
    candidate: str,
    current: str,
    task_dir: Path,
    failures_dir: Path,
    out: Path,
    settings,
    log: Callable[[str], None] = lambda m: None,
) -> dict:
    """Evaluate both models on eval and on the failures, compare, decide; writes ``gate.json``."""
    if not (failures_dir / "task.yaml").is_file():
        raise UserError(
            f"{failures_dir}: no held-out failures to gate on (accept some held-out items in the review, "
            "then merge again)"
        )
    if candidate == current:
        raise UserError("--candidate and --current are the same model")
    items = {}
    for name, ref in (("current", current), ("candidate", candidate)):
        for suite, tdir in (("eval", task_dir), ("failures", failures_dir)):
            items[name, suite] = evaluated(ref, tdir, out / "gate" / f"{name}-{suite}", settings, log)
    eval_cmp = compare_items(items["candidate", "eval"], items["current", "eval"], seed=settings.seed)
    fail_cmp = compare_items(
        items["candidate", "failures"], items["current", "failures"], key=FAILURE_SCORE,
        pass_key=None, seed=settings.seed,
    )  # fmt: skip
    promote, why = decide(eval_cmp, fail_cmp)
    result = {
        "candidate": candidate,
        "current": current,
        "eval_task": str(task_dir),
        "failures_task": str(failures_dir),
        "eval": eval_cmp.to_dict() | {"score": "primary"},
        "failures": fail_cmp.to_dict() | {"score": FAILURE_SCORE},
        "promote": promote,
        "why": why,
    }
    # a re-run rewrites nothing
    write_if_changed(out / "gate.json", json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return result
