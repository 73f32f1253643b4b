"""``evaluate(cfg) -> dict``: one model on one task — quality, groundedness, behaviour, efficiency.

Everything the model answers goes through ``answer_requests`` (guard → retrieval → model → guard), so
the numbers describe the system a user would talk to. Outputs, all written atomically into
``cfg.output`` (which may be a training run directory):

- ``eval.json``: the results (shape documented in docs/evaluation.md; ``compare`` reads it);
- ``items.jsonl``: one record per eval item and behaviour case — the redacted request, the answer,
  guard decisions, retrieved files and every per-item score — so any number traces back to answers;
- ``config.yaml``: the resolved ``EvaluateConfig`` (``eval_config.yaml`` when the directory already
  holds another command's config.yaml, e.g. a training run's);
- one summary line appended to ``metrics.jsonl``.

Efficiency is measured last, in a fresh subprocess (see ``efficiency``), after this process has
released its models, so the two never compete for the CPU.
"""

from __future__ import annotations

import gc
import json
import platform
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from distilltune.errors import UserError
from distilltune.evaluation import behaviour, efficiency, grounding, quality
from distilltune.evaluation.answer import (
    ROUTE_REFUSED_INPUT,
    ROUTE_STUDENT,
    build_pipeline,
    hit_record,
)
from distilltune.evaluation.config import EvaluateConfig
from distilltune.io import append_jsonl, atomic_write_json, atomic_write_text

SCHEMA_VERSION = 1


def _stderr(msg: str) -> None:
    print(f"[evaluate] {msg}", file=sys.stderr, flush=True)


def item_id(conv, index: int) -> str:
    """An eval item's id: its own ``id``, else ``eval-<0-based position in eval.jsonl>``."""
    return conv.id or f"eval-{index}"


def _versions() -> dict:
    import torch
    import transformers

    from distilltune import __version__

    return {
        "distilltune": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def _check_output_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: --output must be a directory (it is a file)")


def _check_ref(ref: str, what: str) -> None:
    """Fail fast on a mistyped model reference, before minutes of generation."""
    from distilltune.models.resolve import is_student_spec, resolve_path

    if not is_student_spec(ref):
        try:
            resolve_path(ref)
        except UserError as e:
            raise UserError(f"{what}: {e.message}") from None


def _write_config(out: Path, cfg: EvaluateConfig) -> str:
    from distilltune.config import read_yaml, to_yaml

    name = "config.yaml"
    existing = out / name
    if existing.exists():
        try:
            EvaluateConfig.model_validate(read_yaml(existing))
        except Exception:
            name = "eval_config.yaml"  # a training run's config.yaml: keep it
    atomic_write_text(out / name, to_yaml(cfg))
    return name


def _answer_all(subject, pipe, convs: list[list[dict]], cfg: EvaluateConfig, log, what: str):
    t0 = time.perf_counter()
    answers = subject.answer(pipe, convs, cfg)
    n_model = sum(a.route == ROUTE_STUDENT for a in answers)
    log(f"{what}: {len(answers)} answers in {time.perf_counter() - t0:.1f} s ({n_model} from the model)")
    return answers


def _guard_fields(a) -> dict:
    return {
        "route": a.route,
        "input_action": a.input_action,
        "input_reasons": a.input_reasons,
        "output_action": a.output_action,
        "output_reasons": a.output_reasons,
        "hits": [hit_record(h) for h in a.hits],
        "prompt_tokens": a.prompt_tokens,
        "new_tokens": a.new_tokens,
        "finished": a.finished,
    }


def efficiency_spec(cfg: EvaluateConfig, task) -> dict:
    """What the efficiency subprocess measures for ``cfg`` (``efficiency.measure``'s argument)."""
    return {
        "model": cfg.model,
        "teacher": cfg.teacher,
        "task": str(task.root),
        "retrieval": cfg.retrieval.model_dump(mode="json"),
        "max_prompt_tokens": cfg.max_prompt_tokens,
        "prompts": cfg.efficiency.prompts,
        "warmup": cfg.efficiency.warmup,
        "time_budget_s": cfg.efficiency.time_budget_s,
        "max_new_tokens": cfg.efficiency.max_new_tokens,
        "concurrency": cfg.efficiency.concurrency or task.spec.budgets.concurrency,
        "dtype": cfg.dtype,
        "guard": cfg.guard.model_dump(mode="json"),
        "backend": cfg.backend,
        "artifact": cfg.artifact or (cfg.model if cfg.backend != "torch" else None),
    }


def _measure_efficiency(cfg: EvaluateConfig, task, log: Callable[[str], None]) -> dict:
    spec = efficiency_spec(cfg, task)
    k = spec["concurrency"]
    concurrent = f" and {k} concurrent" if k and k > 1 else ""
    log(
        f"measuring efficiency in a fresh process ({spec['warmup']} warm-up + {spec['prompts']} timed "
        f"requests through the serving engine, batch 1{concurrent}, max_new_tokens {spec['max_new_tokens']})"
    )
    t0 = time.perf_counter()
    probe = efficiency.measure(spec, timeout_s=cfg.efficiency.timeout_s)
    log(f"efficiency measured in {time.perf_counter() - t0:.1f} s")
    return probe


def _inputs(cfg: EvaluateConfig, task) -> tuple[list, list[str], dict]:
    """The eval items (first ``limit``), their ids (unique, else an error) and the behaviour suites."""
    items = task.eval[: cfg.limit] if cfg.limit else list(task.eval)
    ids = [item_id(c, i) for i, c in enumerate(items)]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise UserError(f"{task.root}: eval item ids must be unique; repeated: {', '.join(dup)}")
    suites = {"scenarios": task.scenarios, "adversarial": task.adversarial} if cfg.behaviour else {}
    suites = {k: (v[: cfg.limit] if cfg.limit else list(v)) for k, v in suites.items() if v}
    return items, ids, suites


def _answer_with_model(cfg: EvaluateConfig, task, items, suites, log) -> dict:
    """Load the model in its backend, answer every item and case, score the reference answers' NLL,
    then let it go (``evaluation.subject``: torch, or a deployed file in its runtime)."""
    from distilltune.evaluation.subject import open_subject

    subject = open_subject(cfg)
    log(f"loaded {cfg.model} ({subject.line})")
    pipe = build_pipeline(task, subject.tokenizer, cfg.retrieval, cfg.guard, cfg.max_prompt_tokens)
    convs = [[m.model_dump() for m in c.prompt_messages] for c in items]
    answers = _answer_all(subject, pipe, convs, cfg, log, "eval items")
    case_answers = {
        name: _answer_all(
            subject, pipe, [[{"role": "user", "content": c.prompt}] for c in cases], cfg, log, name
        )
        for name, cases in suites.items()
    }
    t0 = time.perf_counter()
    nll_prompts = [
        a.messages if a.route != ROUTE_REFUSED_INPUT and not task.is_refusal(c) else None
        for c, a in zip(items, answers, strict=True)
    ]
    nll = subject.nll(nll_prompts, [c.answer for c in items])
    log(
        f"reference-answer NLL of {sum(x is not None for x in nll)} items in {time.perf_counter() - t0:.1f} s"
    )
    size_bytes, size_kind = subject.size(cfg)
    eff = {"params": subject.params, "size_bytes": size_bytes, "size_kind": size_kind, "backend": cfg.backend}
    if getattr(subject, "artifact", None) is not None:
        eff["artifact"] = str(subject.artifact)
    subject.close()
    del subject
    gc.collect()
    return {
        "guard": pipe.guard,
        "convs": convs,
        "answers": answers,
        "cases": case_answers,
        "nll": nll,
        "eff": eff,
    }


def _teacher_answers(cfg: EvaluateConfig, task, convs, log) -> list | None:
    """The teacher's answers to the eval items (for teacher agreement), or None without one. The
    teacher is the reference as trained: it answers with torch whatever the evaluated backend."""
    from distilltune.evaluation.subject import TorchSubject

    if not (cfg.teacher and cfg.teacher_agreement):
        return None
    t0 = time.perf_counter()
    tcfg = cfg.model_copy(update={"model": cfg.teacher, "teacher": None})
    teacher = TorchSubject(tcfg)
    log(f"loaded teacher {cfg.teacher} in {time.perf_counter() - t0:.1f} s")
    tpipe = build_pipeline(task, teacher.tokenizer, cfg.retrieval, cfg.guard, cfg.max_prompt_tokens)
    answers = _answer_all(teacher, tpipe, convs, tcfg, log, "teacher answers")
    del teacher, tpipe
    gc.collect()
    return answers


def _score_items(task, items, ids, run: dict, teacher_answers, rag: bool, redact) -> tuple:
    """Per-item quality and groundedness, and the items' redacted records."""
    refusal = task.policy.refusal_message
    per_item, records, ground = [], [], []
    for i, (conv, a) in enumerate(zip(items, run["answers"], strict=True)):
        t_text = teacher_answers[i].text if teacher_answers else None
        q = quality.score_item(a.text, conv.answer, conv.facts, refusal, t_text)
        # Facts come from the user's data: saved files get them redacted like every other text.
        q["facts_found"] = [redact(f) for f in q["facts_found"]]
        q["facts_missing"] = [redact(f) for f in q["facts_missing"]]
        retrieved = rag and a.route != ROUTE_REFUSED_INPUT  # a refused request never reaches retrieval
        g = grounding.ground_item(
            a.text, conv.facts, conv.sources, a.hits, task.knowledge, q["refused"], retrieved
        )
        ground.append(g)
        q["answer_nll"] = run["nll"][i]
        per_item.append({"id": ids[i], **q, "route": a.route, "groundedness": g["grounded"]})
        records.append(
            {
                "suite": "eval",
                "id": ids[i],
                "prompt": a.loggable_conversation(),
                "reference": redact(conv.answer),
                "answer": a.text,
                **({"teacher_answer": t_text} if t_text is not None else {}),
                "facts": [redact(f) for f in conv.facts],
                "sources": conv.sources,
                **q,
                "grounding": g,
                **_guard_fields(a),
            }
        )
    return per_item, records, ground


def _check_behaviour(suites: dict, case_answers: dict, refusal: str) -> tuple[dict, list[dict]]:
    """Pass/fail of every behaviour case, summarised per suite, and the cases' records."""
    out: dict = {"failures": []}
    records = []
    for name, cases in suites.items():
        results = []
        for case, a in zip(cases, case_answers[name], strict=True):
            rec = {
                "suite": name,
                "id": case.id,
                "kind": case.kind,
                "prompt": a.loggable_conversation(),
                "answer": a.text,
                "expect_refuse": case.expect.refuse,
                **_guard_fields(a),
            }
            reasons = behaviour.check_case(case.expect, a.text, rec, refusal)
            rec["pass"], rec["failures"] = not reasons, reasons
            records.append(rec)
            results.append({"id": case.id, "kind": case.kind, "pass": not reasons})
            if reasons:
                out["failures"].append(
                    {"suite": name, "id": case.id, "kind": case.kind, "route": a.route, "reasons": reasons}
                )
        out[name] = behaviour.summarize(results)
    return out, records


def _write(out: Path, cfg: EvaluateConfig, result: dict, records: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out / "items.jsonl", "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records)
    )
    result["config_file"] = _write_config(out, cfg)
    atomic_write_json(out / "eval.json", result)
    append_jsonl(
        out / "metrics.jsonl",
        {
            "event": "eval",
            "model": cfg.model,
            "primary": result["quality"]["primary"],
            "n_items": len(result["per_item"]),
            "time": result["created_at"],
        },
    )


def evaluate(cfg: EvaluateConfig, log: Callable[[str], None] = _stderr) -> dict:
    """Evaluate ``cfg.model`` on ``cfg.task``; write eval.json, items.jsonl, config; return the results."""
    from distilltune.runtime import set_threads
    from distilltune.task import load_task

    started = time.perf_counter()
    out = Path(cfg.output)
    _check_output_dir(out)
    task = load_task(cfg.task)
    rag = cfg.retrieval.enabled and bool(task.knowledge)
    if cfg.backend == "torch":  # another backend's file is checked when its engine opens it
        _check_ref(cfg.model, "model")
    if cfg.teacher:
        _check_ref(cfg.teacher, "teacher")
    set_threads()
    items, ids, suites = _inputs(cfg, task)
    run = _answer_with_model(cfg, task, items, suites, log)
    guard = run["guard"]

    def redact(text: str) -> str:
        return guard.check_input(text).redacted_text if guard is not None else text

    teacher_answers = _teacher_answers(cfg, task, run["convs"], log)
    per_item, records, ground = _score_items(task, items, ids, run, teacher_answers, rag, redact)
    behaviour_out, case_records = _check_behaviour(suites, run["cases"], task.policy.refusal_message)
    eff = run["eff"]
    if cfg.efficiency.enabled:
        eff.update(_measure_efficiency(cfg, task, log))
    result = {
        "schema_version": SCHEMA_VERSION,
        "model": cfg.model,
        "task": task.name,
        "task_dir": str(task.root),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": cfg.model_dump(mode="json") | {"decoding": "greedy", "rag": rag},
        "versions": _versions(),
        "quality": quality.aggregate(per_item),
        "per_item": per_item,
        "groundedness": grounding.aggregate(ground) | {"rag": rag},
        "behaviour": behaviour_out,
        "efficiency": eff,
        "wall_s": time.perf_counter() - started,
    }
    _write(out, cfg, result, records + case_records)
    return result
