"""Review: the file a human edits (``review.jsonl``) and decisions exported by the review page.

One JSON line per harvested item: the redacted question (and earlier turns), the student's and the
teacher's answers, the user's correction, the citations, why it was harvested, which split it goes
to, and the two fields a reviewer sets — ``decision`` (``accept`` | ``edit`` | ``reject``, null while
undecided) and ``answer`` (prefilled with the correction, else the teacher's usable answer; what
merge writes for an accepted or edited item).

Re-running the review stage never loses a reviewer's work: for an item already in the file its
``decision``, ``answer`` and ``note`` are kept, the rest is refreshed; new items are appended. The
review page (``page.py``) exports ``{"decisions": [{id, decision, answer, note}]}``;
``apply_decisions`` writes such a file into ``review.jsonl`` after checking every entry.
"""

from __future__ import annotations

import json
from pathlib import Path

from distilltune.errors import ProblemList, UserError
from distilltune.io import atomic_write_text, read_jsonl_objects, write_if_changed

DECISIONS = ("accept", "edit", "reject")
EDITABLE = ("decision", "answer", "note")


def review_item(item: dict, label: dict | None) -> dict:
    """The review line for a harvested item and its teacher label (``label`` may be None)."""
    teacher = label["answer"] if label else None
    usable = teacher if label and not label.get("problem") else None
    return {
        "id": item["id"],
        "decision": None,
        "answer": item.get("correction") or usable or "",
        "note": "",
        "split": item["split"],
        "reasons": item["reasons"],
        "question": item["question"],
        "messages": item["messages"],
        "student_answer": item["student_answer"],
        "served_answer": item["served_answer"],
        "route": item["route"],
        "teacher_answer": teacher,
        "teacher_problem": label.get("problem") if label else "not labelled",
        "correction": item.get("correction"),
        "citations": sorted(set(item["citations"]) | set(label.get("citations", []) if label else [])),
        "confidence": item["confidence"],
        "retrieval_score": item["retrieval_score"],
        "request_ids": item["request_ids"],
    }


def read_review(path: str | Path) -> list[dict]:
    """``review.jsonl``, checked: every problem (file:line: field: message) reported at once."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: review file not found (run the review stage first)")
    problems = ProblemList()
    out, seen = [], set()
    for lineno, obj in read_jsonl_objects(p, problems):
        if not isinstance(obj.get("id"), str):
            problems.add(str(p), "expected an id (a string)", lineno, "id")
            continue
        _check_editable(obj, str(p), lineno, problems)
        if obj["id"] in seen:
            problems.add(str(p), f"item {obj['id']!r} appears twice", lineno, "id")
        seen.add(obj["id"])
        out.append(obj)
    problems.raise_if_errors(f"{p}: invalid review file")
    return out


def _check_editable(obj: dict, file: str, line: int | None, problems: ProblemList) -> None:
    d = obj.get("decision")
    if d is not None and d not in DECISIONS:
        problems.add(
            file, f"decision must be one of {', '.join(DECISIONS)} or null, found {d!r}", line, "decision"
        )
    if not isinstance(obj.get("answer", ""), str):
        problems.add(file, "answer must be a string", line, "answer")
    if not isinstance(obj.get("note", ""), str):
        problems.add(file, "note must be a string", line, "note")
    if d in ("accept", "edit") and not str(obj.get("answer") or "").strip():
        problems.add(file, f"decision {d!r} needs a non-empty answer", line, "answer")


def write_review(path: str | Path, fresh: list[dict]) -> list[dict]:
    """Write ``fresh`` review lines, keeping the reviewer's fields of items already in the file."""
    p = Path(path)
    old = {r["id"]: r for r in read_review(p)} if p.is_file() else {}
    merged = []
    for item in fresh:
        prev = old.pop(item["id"], None)
        merged.append(item | {k: prev[k] for k in EDITABLE if prev and k in prev})
    merged.extend(old.values())  # items no longer harvested keep their decisions
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in merged)
    write_if_changed(p, text)
    return merged


def apply_decisions(review_path: str | Path, decisions_path: str | Path) -> int:
    """Copy the decisions a review page exported into ``review.jsonl``; returns how many changed."""
    dp = Path(decisions_path)
    try:
        data = json.loads(dp.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{dp}: decisions file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{dp}: not a JSON file ({e})") from None
    entries = data.get("decisions") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise UserError(f'{dp}: expected {{"decisions": [...]}} as the review page exports it')
    items = read_review(review_path)
    by_id = {r["id"]: r for r in items}
    problems = ProblemList()
    changed = 0
    for i, e in enumerate(entries):
        where = f"decisions.{i}"
        if not isinstance(e, dict) or e.get("id") not in by_id:
            problems.add(str(dp), "not an entry for an item of the review file", None, where)
            continue
        _check_editable(e, str(dp), None, problems)
        upd = {k: e[k] for k in EDITABLE if k in e}
        if any(by_id[e["id"]].get(k) != v for k, v in upd.items()):
            by_id[e["id"]].update(upd)
            changed += 1
    problems.raise_if_errors(f"{dp}: invalid decisions")
    if changed:
        atomic_write_text(review_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items))
    return changed
