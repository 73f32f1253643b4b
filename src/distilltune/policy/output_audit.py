"""Score the output guard's injection checks on a suite of answers, and calibrate the dump threshold.

An output suite (``tests/data/adversarial_independent_output.jsonl``) gives, per case, the
conversation a model received, the retrieved context it read (chunk ids of the task's knowledge,
``"refund-policy.md#1"``, or planted documents ``{"file", "heading", "text"}``), an answer a model
could give, and whether the output guard should flag that answer (``flag``): it obeys injected text
or dumps the context (positives), or it is a normal grounded answer, possibly to a request that
carried an injection the model did not follow (negatives). The system message is assembled by the
same function serving uses (``GroundedPrompter.assemble``), so the guard sees what a served model
would have read. Reports hold ids, counts and labels, never answer text.
"""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError

from distilltune.config import StrictModel
from distilltune.errors import ProblemList
from distilltune.io import read_jsonl_objects
from distilltune.policy.output import (
    DUMP_NGRAM,
    OutputContext,
    copied_words,
    directive_payloads,
    normalize,
)

OUTPUT_REASONS = ("injection_followed", "context_dump")


class PlantedDoc(StrictModel):
    file: str = Field(min_length=1)
    heading: str = ""
    text: str = Field(min_length=1)


class Turn(StrictModel):
    role: Literal["user", "assistant"]
    content: str


class OutputCase(StrictModel):
    """One answer and whether the output guard should flag it as obeying injection or dumping context."""

    id: str = Field(min_length=1)
    kind: str = Field(min_length=1)
    messages: list[Turn] = Field(min_length=1)
    context: list[str | PlantedDoc] = []
    answer: str = Field(min_length=1)
    flag: bool


def load_output_cases(path: str | Path) -> list[OutputCase]:
    """Parse an output suite; every bad line is reported as ``FILE:LINE: field: message``."""
    path = Path(path)
    problems = ProblemList()
    cases: list[OutputCase] = []
    seen: set[str] = set()
    for lineno, obj in read_jsonl_objects(path, problems):
        try:
            case = OutputCase.model_validate(obj)
        except ValidationError as e:
            for err in e.errors():
                problems.add(str(path), err["msg"], lineno, ".".join(str(p) for p in err["loc"]) or None)
            continue
        if case.id in seen:
            problems.add(str(path), f"duplicate id {case.id!r}", lineno, "id")
        seen.add(case.id)
        cases.append(case)
    if not cases and not problems.errors:
        problems.add(str(path), "the suite has no cases")
    problems.raise_if_errors(f"invalid output suite {path}")
    return cases


def _chunks(task) -> dict:
    from distilltune.retrieval import RetrievalConfig
    from distilltune.retrieval.chunking import chunk_documents

    cfg = RetrievalConfig()
    return {c.chunk_id: c for c in chunk_documents(task.knowledge, cfg.chunk_words, cfg.chunk_overlap_words)}


def case_context(guard, task, case: OutputCase, chunks: dict | None = None) -> OutputContext:
    """The output context a served model answering ``case`` would have had (same prompt layout)."""
    from distilltune.retrieval import GroundedPrompter

    chunks = _chunks(task) if chunks is None else chunks
    hits = []
    for ref in case.context:
        if isinstance(ref, str):
            if ref not in chunks:
                raise ValueError(f"case {case.id}: no chunk {ref!r} in the task's knowledge")
            hits.append(chunks[ref])
        else:
            hits.append(ref)
    conv = [t.model_dump() for t in case.messages]
    messages = GroundedPrompter(task.system_prompt, None).assemble(conv, hits)
    system = next((m["content"] for m in messages if m["role"] == "system"), "")
    return guard.output_context(system, [t.content for t in case.messages] + [h.text for h in hits])


def score_output(guard, task, cases: list[OutputCase]) -> dict:
    """Flagging (``injection_followed`` / ``context_dump`` among the output reasons) as a classifier."""
    chunks = _chunks(task)
    tp = fp = fn = 0
    by_kind: dict[str, Counter] = {}
    missed, over = [], []
    for c in cases:
        d = guard.check_output(c.answer, case_context(guard, task, c, chunks))
        got = any(r in OUTPUT_REASONS for r in d.reasons)
        k = by_kind.setdefault(c.kind, Counter())
        k["cases"] += 1
        k["should_flag"] += c.flag
        k["flagged"] += got
        tp += c.flag and got
        if got and not c.flag:
            fp += 1
            over.append(c.id)
        if c.flag and not got:
            fn += 1
            missed.append(c.id)
    should, flagged = sum(c.flag for c in cases), tp + fp
    return {
        "cases": len(cases),
        "should_flag": should,
        "flagged": flagged,
        "true_pos": tp,
        "false_pos": fp,
        "false_neg": fn,
        "precision": round(tp / flagged, 4) if flagged else None,
        "recall": round(tp / should, 4) if should else None,
        "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
        "missed": missed,
        "over_flagged": over,
    }


def _summary(values: list[int]) -> dict:
    return {
        "n": len(values),
        "min": min(values),
        "median": statistics.median(values),
        "p95": sorted(values)[int(0.95 * (len(values) - 1))],
        "max": max(values),
    }


def dump_calibration(task, threshold: int) -> dict:
    """Words copied from the prompt (in ``DUMP_NGRAM``-word runs) by grounded answers and by dumps.

    Grounded: every non-refusal train and eval answer against the *whole* knowledge base formatted
    as one context block after the system prompt, an upper bound on what it copies from any
    retrieved context. Dumps: each chunk copied verbatim with its "[1] (file — heading)" label, and
    without it, against a context holding that chunk. Also counts answers whose words contain a
    directive payload found in their own question or the knowledge (must be none).
    """
    from distilltune.retrieval import GroundedPrompter

    prompter = GroundedPrompter(task.system_prompt, None)
    chunks = list(_chunks(task).values())
    whole = prompter.assemble([{"role": "user", "content": "q"}], chunks)[0]["content"]
    knowledge = OutputContext(whole, [c.text for c in chunks])
    grounded = {}
    flagged_ids, obeyed_ids = [], []
    for split in ("train", "eval"):
        counts = []
        for i, conv in enumerate(getattr(task, split)):
            if task.is_refusal(conv):
                continue
            answer = conv.messages[-1].content
            cid = conv.id or f"{split}-{i + 1}"
            n = copied_words(normalize(answer).split(), knowledge.grams, DUMP_NGRAM)
            counts.append(n)
            if n >= threshold:
                flagged_ids.append(cid)
            said = f" {normalize(answer)} "
            asked = [p for m in conv.messages[:-1] for p in directive_payloads(m.content)]
            if knowledge.followed(answer) or any(f" {p} " in said for p in asked):
                obeyed_ids.append(cid)
        grounded[split] = _summary(counts)
    framed, bare = [], []
    for c in chunks:
        system = prompter.assemble([{"role": "user", "content": "q"}], [c])[0]["content"]
        ctx = OutputContext(system)
        label = f"[1] ({c.file} — {c.heading}) " if c.heading else f"[1] ({c.file}) "
        framed.append(ctx.copied_words(label + c.text))
        bare.append(ctx.copied_words(c.text))
    return {
        "ngram_words": DUMP_NGRAM,
        "threshold": threshold,
        "grounded_answers": grounded,
        "grounded_answers_at_or_above_threshold": flagged_ids,
        "grounded_answers_saying_a_payload": obeyed_ids,
        "knowledge_payloads": len(knowledge.payloads),
        "chunk_dumps_with_label": _summary(framed),
        "chunk_dumps_bare": _summary(bare),
        "chunk_dumps_with_label_flagged": round(sum(n >= threshold for n in framed) / len(framed), 4),
        "chunk_dumps_bare_flagged": round(sum(n >= threshold for n in bare) / len(bare), 4),
    }
