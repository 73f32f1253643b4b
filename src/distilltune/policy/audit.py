"""Score the input guard on a behaviour suite and on a task's own questions, with no model involved.

A suite (``adversarial.jsonl`` format: ``id``, ``prompt``, ``expect.refuse``, ``kind``) says what a
policy-bound assistant should do with each prompt. The guard alone decides refusals before any
model runs, so its refusals can be scored as a classifier: precision (of the prompts it refused,
how many should have been), recall (of those that should have been, how many it refused), and the
misses by kind. The other half of the trade-off is measured on the task's own in-scope questions:
a guard that refuses one of them, or redacts a price or an order number as PII, breaks the product.

Reports hold ids, counts and labels, never prompt text or matched PII.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pydantic import ValidationError

from distilltune.errors import ProblemList
from distilltune.io import read_jsonl_objects
from distilltune.task.schema import Case


def load_cases(path: str | Path) -> list[Case]:
    """Parse a suite file; every bad line is reported as ``FILE:LINE: field: message``."""
    path = Path(path)
    problems = ProblemList()
    cases: list[Case] = []
    seen: set[str] = set()
    for lineno, obj in read_jsonl_objects(path, problems):
        try:
            case = Case.model_validate(obj)
        except ValidationError as e:
            for err in e.errors():
                where = ".".join(str(p) for p in err["loc"]) or None
                problems.add(str(path), err["msg"], lineno, where)
            continue
        if case.id in seen:
            problems.add(str(path), f"duplicate id {case.id!r}", lineno, "id")
        seen.add(case.id)
        cases.append(case)
    if not cases and not problems.errors:
        problems.add(str(path), "the suite has no cases")
    problems.raise_if_errors(f"invalid suite {path}")
    return cases


@dataclass
class RefusalScore:
    """Refusal as a binary classifier over a suite (positive = should be refused)."""

    cases: int
    should_refuse: int
    refused: int
    true_pos: int
    false_pos: int
    false_neg: int
    precision: float | None
    recall: float | None
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    missed: list[str] = field(default_factory=list)  # ids that should have been refused
    over_refused: list[str] = field(default_factory=list)  # ids refused that should have been answered
    pii_leaks: list[str] = field(default_factory=list)  # pii_echo ids whose planted PII survived

    def to_dict(self) -> dict:
        return asdict(self)


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def score_refusals(guard, cases: Sequence[Case]) -> RefusalScore:
    """Run ``guard.check_input`` on every prompt and compare refusals with ``expect.refuse``."""
    tp = fp = fn = 0
    by_kind: dict[str, Counter] = {}
    missed, over, leaks = [], [], []
    for c in cases:
        d = guard.check_input(c.prompt)
        want, got = c.expect.refuse, d.refused
        k = by_kind.setdefault(c.kind or "unlabelled", Counter())
        k["cases"] += 1
        k["should_refuse"] += want
        k["refused"] += got
        k["correct"] += want == got
        tp += want and got
        if got and not want:
            fp += 1
            over.append(c.id)
        if want and not got:
            fn += 1
            missed.append(c.id)
        if c.kind == "pii_echo" and any(s in d.redacted_text for s in c.expect.not_contains):
            leaks.append(c.id)
    should, refused = sum(c.expect.refuse for c in cases), tp + fp
    return RefusalScore(
        cases=len(cases),
        should_refuse=should,
        refused=refused,
        true_pos=tp,
        false_pos=fp,
        false_neg=fn,
        precision=_ratio(tp, refused),
        recall=_ratio(tp, should),
        by_kind={k: dict(v) for k, v in sorted(by_kind.items())},
        missed=missed,
        over_refused=over,
        pii_leaks=leaks,
    )


def in_scope_questions(task, split: str = "eval") -> list[tuple[str, str]]:
    """``(item id, user turn)`` for every user turn of the split's conversations that are not refusals."""
    out = []
    for i, conv in enumerate(getattr(task, split)):
        if task.is_refusal(conv):
            continue
        for m in conv.messages:
            if m.role == "user":
                out.append((conv.id or f"{split}-{i + 1}", m.content))
    return out


def false_refusals(guard, questions: Sequence[tuple[str, str]]) -> dict:
    """How many in-scope questions the input guard refuses (must be 0), and which."""
    refused = [qid for qid, q in questions if guard.check_input(q).refused]
    return {
        "questions": len(questions),
        "refused": len(refused),
        "rate": _ratio(len(refused), len(questions)),
        "ids": refused,
    }


def pii_in_questions(guard, questions: Sequence[tuple[str, str]]) -> dict:
    """PII spans the guard redacts in a task's own questions, counted by label (no text kept)."""
    labels: Counter = Counter()
    ids: list[str] = []
    for qid, q in questions:
        spans = guard.pii.find(q)
        labels.update(s.label for s in spans)
        if spans:
            ids.append(qid)
    return {"questions": len(questions), "spans": sum(labels.values()), "by_label": dict(labels), "ids": ids}
