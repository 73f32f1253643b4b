"""``run_flywheel``: harvest → label → review → (human) → merge → (retrain) → gate, each step resumable.

Every call advances as far as it can and stops where a person or a model is needed:

1. harvest from the request log and its feedback table → ``harvest.jsonl``;
2. label with the teacher (``--teacher``) → ``labels.jsonl`` (appended batch by batch);
3. review → ``review.jsonl`` and ``review.html`` (decisions already made are kept; ``decisions``
   imports what the page exported);
4. merge, once every item is decided (or when asked explicitly) → ``task-v<N>/`` and ``failures/``;
5. retrain (``pipeline``: a pipeline file, or the current model's run directory) → the recipe that
   made the current model, trained on the new version under ``retrain/`` (``flywheel/retrain.py``);
6. gate (``current`` and the retrained model, or an explicit ``candidate``) → ``gate.json``.

Re-running a finished step changes nothing on disk: outputs are rewritten only when their content
changes, labels are computed only for unlabelled items, merge compares a digest of its inputs, a
finished retrain is skipped (the orchestrator of ``distilltune run``), the gate re-uses cached
evaluations. ``state.json`` records what the last call did.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from distilltune.errors import UserError
from distilltune.flywheel.config import FlywheelSettings
from distilltune.flywheel.gate import run_gate
from distilltune.flywheel.harvest import harvest, read_rows
from distilltune.flywheel.label import label_items, read_labels
from distilltune.flywheel.merge import check_out_dir, load_merged, merge
from distilltune.flywheel.page import render_page
from distilltune.flywheel.retrain import retrain
from distilltune.flywheel.review import apply_decisions, read_review, review_item, write_review
from distilltune.io import write_if_changed

STAGES = ("harvest", "label", "review", "merge", "retrain", "gate")


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)


def run_flywheel(
    db: str | Path,
    task_dir: str | Path,
    output: str | Path,
    teacher: str | None = None,
    decisions: str | Path | None = None,
    merge_now: bool = False,
    candidate: str | None = None,
    current: str | None = None,
    settings: FlywheelSettings | None = None,
    embedder=None,
    retrieval=None,
    log: Callable[[str], None] = lambda m: None,
    pipeline: str | Path | None = None,
    pipeline_overrides: list[str] | None = None,
    reporter=None,
) -> dict:
    """Advance the flywheel in ``output`` as far as the inputs allow; returns the state (also ``state.json``)."""
    from distilltune.policy import Guard
    from distilltune.serve.feedback import read_feedback
    from distilltune.task import load_task

    settings = settings or FlywheelSettings()
    out = Path(output)
    check_out_dir(out)
    if candidate is not None and current is None:
        raise UserError("the gate needs --current (the model serving now) next to --candidate")
    if candidate is not None and pipeline is not None:
        raise UserError("give --candidate (a model already retrained) or --pipeline (retrain now), not both")
    if current is not None and candidate is None and pipeline is None:
        raise UserError("--current needs a model to gate: --candidate MODEL or --pipeline to retrain one")
    task = load_task(task_dir)
    guard = Guard.for_task(task)

    def redact(text: str) -> str:
        return guard.pii.redact(text)[0]

    state: dict = {"db": str(db), "task": str(task.root), "output": str(out)}
    items = harvest(read_rows(db), read_feedback(db), task, redact, settings, embedder)
    out.mkdir(parents=True, exist_ok=True)
    write_if_changed(out / "harvest.jsonl", _jsonl(items))
    state["harvest"] = {"items": len(items), "heldout": sum(it["split"] == "heldout" for it in items)}
    log(f"harvest: {len(items)} items ({state['harvest']['heldout']} held out for the gate)")

    if teacher:
        labels = label_items(items, teacher, task, out / "labels.jsonl", settings, retrieval, log)
    else:
        labels = read_labels(out / "labels.jsonl")
    missing = [it["id"] for it in items if it["id"] not in labels]
    state["label"] = {"labelled": len(items) - len(missing), "missing": len(missing), "teacher": teacher}
    if missing:
        state["status"] = "needs --teacher to label"
        log(f"label: {len(missing)} items have no teacher answer: pass --teacher MODEL")
        return _save(out, state)

    review_path = out / "review.jsonl"
    reviewed = write_review(review_path, [review_item(it, labels[it["id"]]) for it in items])
    if decisions is not None:
        n = apply_decisions(review_path, decisions)
        log(f"review: {n} decisions applied from {decisions}")
        reviewed = read_review(review_path)
    write_if_changed(out / "review.html", render_page(reviewed, f"{task.name} ({len(reviewed)} items)"))
    undecided = sum(r.get("decision") is None for r in reviewed)
    state["review"] = {"items": len(reviewed), "undecided": undecided,
                       **{d: sum(r.get("decision") == d for r in reviewed) for d in ("accept", "edit", "reject")}}  # fmt: skip
    log(f"review: {len(reviewed)} items, {undecided} undecided ({review_path}, {out / 'review.html'})")
    if undecided and not merge_now:
        state["status"] = "waiting for review"
        return _save(out, state)

    m = merge(reviewed, task, guard, out, settings.eval_overlap)
    state["merge"] = {k: v for k, v in m.items() if k != "unchanged"}  # state.json: same on a re-run
    log(f"merge: v{m['version']}: {m['merged_train']} train + {m['heldout']} held-out items, "
        f"{len(m['refused'])} refused{' (unchanged)' if m['unchanged'] else ''} -> {m['task_dir']}")  # fmt: skip
    state["status"] = _retrain_and_gate(state, m, task.root, out, settings, candidate, current,
                                        pipeline, pipeline_overrides or [], reporter, log)  # fmt: skip
    return _save(out, state)


def _retrain_and_gate(
    state: dict, m: dict, task_root: Path, out: Path, settings: FlywheelSettings, candidate: str | None,
    current: str | None, pipeline: str | Path | None, overrides: list[str], reporter,
    log: Callable[[str], None],
) -> str:  # fmt: skip
    """After the merge: retrain (``pipeline``), then gate ``candidate`` against ``current``; the status."""
    if pipeline is not None:
        if not m["merged_train"]:  # the same training data again cannot do better on the failures
            return "merged: no new training conversations (every accepted item is held out or refused)"
        state["retrain"] = retrain(pipeline, overrides, m, out, reporter, log)
        candidate = state["retrain"]["candidate"]
    if candidate is None:
        return "merged: retrain on the new version (--pipeline), then gate with --current"
    if current is None:
        return "retrained: gate the candidate with --current"
    state["gate"] = run_gate(candidate, current, task_root, Path(m["failures_dir"]), out, settings, log)
    return "promote" if state["gate"]["promote"] else "keep current"


def _save(out: Path, state: dict) -> dict:
    merged = load_merged(out)
    if merged and "merge" not in state:
        state["merged"] = merged
    write_if_changed(out / "state.json", json.dumps(state, indent=2, ensure_ascii=False) + "\n")
    return state
