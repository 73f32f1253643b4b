"""Label: the teacher answers each harvested question through the one request path.

``evaluation.answer.answer_requests`` drives ``inference.RequestPath`` — input guard, retrieval and
prompt assembly, output guard — with HF batch decoding, exactly as evaluation does, so the teacher
sees the prompt the served student saw. Its answers then pass the degenerate-output filters of
sequence-level distillation (empty, repeated n-grams, truncated): an answer that fails one keeps
its text for the reviewer but carries a ``problem`` and is not proposed as the answer to merge.

Resumable: each batch's labels are appended to ``labels.jsonl`` as soon as they exist; a re-run
answers only the items no line holds for this teacher (an interrupted run loses at most one batch).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from distilltune.flywheel.config import FlywheelSettings
from distilltune.io import append_jsonl, read_jsonl


def read_labels(path: str | Path, teacher: str | None = None) -> dict[str, dict]:
    """item id → its latest label (only ``teacher``'s when given)."""
    out = {}
    for r in read_jsonl(path):
        if isinstance(r, dict) and "id" in r and (teacher is None or r.get("teacher") == teacher):
            out[r["id"]] = r
    return out


def label_record(item: dict, res, teacher: str, refusal_message: str, settings: FlywheelSettings) -> dict:
    """One teacher answer, with its filter verdict (``problem``: None when usable)."""
    from distilltune.distill.sequence import SequenceSettings, degenerate_reason
    from distilltune.inference import ROUTE_REFUSED_INPUT, ROUTE_REFUSED_OUTPUT
    from distilltune.text import is_refusal

    text = res.text.strip()
    problem = None
    if res.route == ROUTE_REFUSED_INPUT:
        text = refusal_message  # the policy's answer: the request should be refused
    elif res.route == ROUTE_REFUSED_OUTPUT:
        problem = "output_guard"
    elif is_refusal(text, refusal_message):
        problem = "teacher_refused"
    else:
        problem = degenerate_reason(
            text, bool(res.finished), SequenceSettings(max_new_tokens=settings.max_new_tokens)
        )
    files = [h.get("file") for h in res.citations if h.get("file")]
    return {
        "id": item["id"],
        "teacher": teacher,
        "answer": text,
        "problem": problem,
        "route": res.route,
        "citations": list(dict.fromkeys(files)),
        "finished": res.finished,
        "new_tokens": res.new_tokens,
        "mean_logprob": res.mean_logprob,
    }


def label_items(
    items: list[dict],
    teacher: str,
    task,
    out_path: str | Path,
    settings: FlywheelSettings,
    retrieval=None,
    log: Callable[[str], None] = lambda m: None,
) -> dict[str, dict]:
    """Teacher labels for ``items`` (existing ones reused); returns id → label for every item."""
    done = read_labels(out_path, teacher)
    todo = [it for it in items if it["id"] not in done]
    if not todo:
        log(f"label: all {len(items)} items already labelled by {teacher}")
        return {it["id"]: done[it["id"]] for it in items}
    import gc

    from distilltune.evaluation.answer import answer_requests
    from distilltune.inference import build_path
    from distilltune.models import load_model

    loaded = load_model(teacher)
    path = build_path(task, loaded.tokenizer, retrieval)
    refusal = task.policy.refusal_message
    log(f"label: {len(todo)} items to answer with {teacher} ({len(items) - len(todo)} already labelled)")
    for start in range(0, len(todo), settings.batch_size):
        batch = todo[start : start + settings.batch_size]
        results = answer_requests(
            loaded.model, loaded.tokenizer, path.guard, path.prompter, [it["messages"] for it in batch],
            max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size, seed=settings.seed,
        )  # fmt: skip
        for it, res in zip(batch, results, strict=True):
            rec = label_record(it, res, teacher, refusal, settings)
            append_jsonl(out_path, rec)
            done[it["id"]] = rec
        log(f"label: {min(start + settings.batch_size, len(todo))}/{len(todo)}")
    del loaded
    gc.collect()
    return {it["id"]: done[it["id"]] for it in items}
