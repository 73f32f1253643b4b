"""The review file of sequence-level distillation and the patches a reviewer writes for it.

The teacher's answers are written as JSONL with their provenance (``write_records``), read back
(``read_records``), and corrected or dropped by a patch file of ``{"id", "answer" | "drop": true}``
lines (``load_patch`` reports every bad line at once; ``apply_patch`` edits the records in place).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from distilltune.distill.sequence import SeqRecord
from distilltune.errors import ProblemList, UserError
from distilltune.io import atomic_write_text, read_jsonl_objects


def write_records(records: Sequence[SeqRecord], path: str | Path) -> None:
    atomic_write_text(path, "".join(json.dumps(asdict(r), ensure_ascii=False) + "\n" for r in records))


def read_records(path: str | Path) -> list[SeqRecord]:
    problems = ProblemList()
    out = []
    for lineno, obj in read_jsonl_objects(path, problems):
        try:
            out.append(SeqRecord(**obj))
        except TypeError as e:
            problems.add(str(path), f"not a sequence-data record ({e})", lineno)
    problems.raise_if_errors(f"{path}: invalid sequence data")
    return out


def load_patch(path: str | Path, known_ids: set[str]) -> dict[str, str | None]:
    """id → corrected answer, or None to drop. Every problem (file:line) is reported at once."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: patch file not found")
    problems = ProblemList()
    patch: dict[str, str | None] = {}
    for lineno, obj in read_jsonl_objects(p, problems):
        if not isinstance(obj.get("id"), str):
            problems.add(str(p), 'expected an object with a string "id"', lineno)
            continue
        pid = obj["id"]
        unknown = set(obj) - {"id", "answer", "drop", "note"}
        if unknown:
            problems.add(
                str(p), f"unknown keys {sorted(unknown)} (expected id, answer or drop, note)", lineno
            )
        has_answer = isinstance(obj.get("answer"), str) and obj["answer"].strip() != ""
        drop = obj.get("drop") is True
        if has_answer == drop:
            problems.add(str(p), 'give exactly one of "answer" (non-empty text) or "drop": true', lineno)
            continue
        if pid not in known_ids:
            problems.add(str(p), f"id {pid!r} is not in the generated data", lineno, "id")
            continue
        if pid in patch:
            problems.add(str(p), f"id {pid!r} is patched twice", lineno, "id")
            continue
        patch[pid] = obj["answer"].strip() if has_answer else None
    problems.raise_if_errors(f"{p}: invalid patch file")
    return patch


def apply_patch(records: list[SeqRecord], patch: dict[str, str | None]) -> int:
    """Apply corrections in place (a correction also revives a dropped item). Returns items changed."""
    n = 0
    for r in records:
        if r.id not in patch:
            continue
        fix = patch[r.id]
        if fix is None:
            r.status, r.reason = "dropped", "patch_drop"
        else:
            r.messages = [*r.messages[:-1], {"role": "assistant", "content": fix}]
            r.status, r.reason, r.origin = "kept", None, "patch"
        n += 1
    return n
