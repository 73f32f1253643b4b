"""Harvest: the logged requests worth learning from, one item per distinct question.

A request is harvested when the cascade escalated it, the student was unsure (mean log-probability
below ``min_confidence``), a user rated it down or sent a correction, the output guard intervened, the
answer said "I don't know", or (with an embedder) its question lies outside the training set's
neighbourhood. Requests refused at input are never harvested: the log keeps no text for them, and
refusing was the right answer. Questions already in the task's training set are skipped.

Every text taken from the log passes today's PII redaction again (the server redacted it when it
logged it, but a log written before the policy gained a detector was not redacted by it), so
nothing downstream — labels, review file, review page, new task version — sees more than the
redacted text. Items are keyed by a hash of the normalised question: requests asking the same thing
merge into one item that lists every request id; re-running harvest on the same log gives the same
items in the same order.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from distilltune.flywheel.config import FlywheelSettings
from distilltune.monitor.logread import open_log
from distilltune.text import normalize

COLUMNS = (
    "id", "ts", "status", "route", "prompt", "answer", "student_answer", "citations", "confidence",
    "retrieval_score", "input_action", "output_action", "output_reasons",
)  # fmt: skip


def item_id(question: str) -> str:
    return "fw-" + hashlib.sha256(normalize(question).encode("utf-8")).hexdigest()[:12]


def split_of(iid: str, heldout_share: float, seed: int) -> str:
    """``heldout`` for a stable ``heldout_share`` of ids (by hash: independent of the other items)."""
    h = int(hashlib.sha256(f"{seed}:{iid}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "heldout" if h < heldout_share else "train"


def read_rows(path: str | Path) -> list[dict]:
    """Every logged request, oldest first, as dicts of the columns harvest needs."""
    con = open_log(Path(path), COLUMNS)
    try:
        rows = con.execute(f"SELECT {', '.join(COLUMNS)} FROM requests ORDER BY ts, id").fetchall()
    finally:
        con.close()
    return [dict(zip(COLUMNS, r, strict=True)) for r in rows]


def _json_list(raw) -> list:
    try:
        v = json.loads(raw or "[]")
    except (json.JSONDecodeError, TypeError):
        return []
    return v if isinstance(v, list) else []


def conversation(prompt_json) -> list[dict]:
    """The logged user/assistant turns, ending with the last user turn ([] when there is none)."""
    turns = [
        {"role": m["role"], "content": m["content"]}
        for m in _json_list(prompt_json)
        if isinstance(m, dict)
        and m.get("role") in ("user", "assistant")
        and isinstance(m.get("content"), str)
    ]
    while turns and turns[-1]["role"] != "user":
        turns.pop()
    return turns


def reasons_for(row: dict, fb: dict | None, settings: FlywheelSettings, unanswered) -> list[str]:
    """Why this request is worth learning from (empty: it is not)."""
    out = []
    if row["route"] == "fallback":
        out.append("escalated")
    if row["confidence"] is not None and row["confidence"] < settings.min_confidence:
        out.append("low_confidence")
    if fb and fb.get("rating") == "down":
        out.append("thumbs_down")
    if fb and fb.get("correction"):
        out.append("correction")
    if row["route"] == "refused_output" or row["output_action"] in ("refuse", "redact"):
        out.append("output_guard")
    answer = row["answer"] or ""
    if row["route"] in ("student", "fallback") and unanswered is not None and unanswered.search(answer):
        out.append("unanswered")
    return [r for r in out if r in settings.reasons]


def harvest(
    rows: list[dict],
    feedback: dict[str, dict],
    task,
    redact,
    settings: FlywheelSettings,
    embedder=None,
) -> list[dict]:
    """The harvested items (see the module docstring); ``redact``: text → text with PII replaced."""
    import re

    pats = task.spec.monitoring.unanswered_patterns
    unanswered = re.compile("|".join(f"(?:{p})" for p in pats), re.IGNORECASE) if pats else None
    known = {normalize(c.question) for c in task.train}
    items: dict[str, dict] = {}
    for row in rows:
        if row["route"] == "refused_input" or row["input_action"] == "refuse" or row["status"] != 200:
            continue
        conv = [{"role": m["role"], "content": redact(m["content"])} for m in conversation(row["prompt"])]
        if not conv or not conv[-1]["content"].strip() or normalize(conv[-1]["content"]) in known:
            continue
        fb = feedback.get(row["id"])
        why = reasons_for(row, fb, settings, unanswered)
        iid = item_id(conv[-1]["content"])
        item = items.get(iid) or {"id": iid, "request_ids": [], "reasons": [], "feedback": []}
        item["request_ids"].append(row["id"])
        if fb:
            item["feedback"].append({"rating": fb["rating"], "correction": redact(fb["correction"])
                                     if fb.get("correction") else None})  # fmt: skip
        item.update(_latest(row, conv, redact))
        item["reasons"] = sorted(set(item["reasons"]) | set(why), key=_reason_order)
        items[iid] = item
    out = list(items.values())
    if embedder is not None and "out_of_distribution" in settings.reasons:
        _mark_ood(out, task, embedder, settings)
    out = [it for it in out if it["reasons"]]
    for it in out:
        it["split"] = split_of(it["id"], settings.heldout_share, settings.seed)
        corrections = [f["correction"] for f in it["feedback"] if f["correction"]]
        it["correction"] = corrections[-1] if corrections else None
    # Over max_items, what people said about comes first (corrections, thumbs-down), then frequency.
    out.sort(key=lambda it: (it["correction"] is None, "thumbs_down" not in it["reasons"],
                             -len(it["request_ids"]), it["id"]))  # fmt: skip
    return out[: settings.max_items]


def _reason_order(r: str) -> int:
    from distilltune.flywheel.config import REASONS

    return REASONS.index(r) if r in REASONS else len(REASONS)


def _latest(row: dict, conv: list[dict], redact) -> dict:
    """The fields an item takes from its newest request."""
    files = [c.get("file") for c in _json_list(row["citations"]) if isinstance(c, dict) and c.get("file")]
    student = row["student_answer"] if row["route"] == "fallback" else row["answer"]
    return {
        "messages": conv,
        "question": conv[-1]["content"],
        "route": row["route"],
        "served_answer": redact(row["answer"] or ""),
        "student_answer": redact(student or ""),
        "confidence": row["confidence"],
        "retrieval_score": row["retrieval_score"],
        "citations": list(dict.fromkeys(files)),
        "last_ts": row["ts"],
    }


def _mark_ood(items: list[dict], task, embedder, settings: FlywheelSettings) -> None:
    """Add ``out_of_distribution`` to items whose question is farther than training's own threshold."""
    from distilltune.monitor import drift
    from distilltune.monitor.run import embed_cached

    train = [c.question for c in task.train if c.question]
    if len(train) < 2 or not items:
        return
    ref = embed_cached(embedder, train)  # the same cache monitor uses: every flywheel call re-harvests
    threshold = drift.ood_threshold(ref, task.spec.monitoring.ood_quantile)
    vecs = np.asarray(embedder.encode([it["question"] for it in items]), dtype=np.float32)
    for it, d in zip(items, drift.nearest_distances(vecs, ref), strict=True):
        if d > threshold and "out_of_distribution" not in it["reasons"]:
            it["reasons"] = [*it["reasons"], "out_of_distribution"]
