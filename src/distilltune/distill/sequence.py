"""Sequence-level KD data: the teacher answers the training prompts, we filter, review and patch.

The seed's recipe is "curate teacher annotations, patch systematic mistakes". So the teacher's
answers are not fed straight into training:

1. prompts are the training conversations without their final answer, plus an optional JSONL of
   extra unlabelled prompts (``{"prompt": "..."}`` or ``{"messages": [...]}`` ending with a user
   turn, optional ``id``);
2. the policy guard checks each prompt: a prompt it refuses gets the policy's refusal message as the
   target (the student must learn to refuse it) instead of a teacher answer; PII is redacted before
   the teacher sees the prompt;
3. the teacher's answers pass the output guard (a system-prompt leak is dropped; PII is redacted;
   a teacher refusal of an in-scope prompt is dropped as a teacher mistake) and the degenerate-output
   filters: empty, repeated n-grams, truncated at ``max_new_tokens``;
4. duplicates (same prompt and answer after normalisation) are dropped;
5. everything, kept and dropped, is written as reviewable JSONL with provenance (prompt source and
   line, teacher, generation stats, filter verdicts, the reference answer where there is one);
6. an optional patch file (``{"id": ..., "answer": "corrected"}`` or ``{"id": ..., "drop": true}``)
   is applied before training; patched items keep the teacher's original answer for the record.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pydantic import Field

from distilltune.config import StrictModel
from distilltune.data.chat import with_system
from distilltune.errors import ProblemList, UserError
from distilltune.io import read_jsonl_objects
from distilltune.text import normalize


class SequenceSettings(StrictModel):
    """``sequence:`` section of the distill config (mode: sequence)."""

    extra_prompts: str | None = Field(default=None, description="JSONL of extra unlabelled prompts")
    max_prompts: int | None = Field(
        default=None, ge=1, description="answer only the first N prompts (train, then extra): quick trials"
    )
    patch: str | None = Field(default=None, description="JSONL of {id, answer} or {id, drop: true} fixes")
    max_new_tokens: int = Field(default=128, ge=1, description="cap on each teacher answer")
    temperature: float = Field(default=0.0, ge=0, description="0 = greedy")
    batch_size: int = Field(default=8, ge=1)
    repeat_ngram: int = Field(default=4, ge=2, description="n of the repeated n-gram filter (words)")
    max_ngram_repeats: int = Field(
        default=3, ge=2, description="drop an answer repeating an n-gram this often"
    )
    drop_truncated: bool = Field(default=True, description="drop answers cut by max_new_tokens")
    keep_teacher_refusals: bool = Field(
        default=False, description="keep a teacher refusal of a prompt the guard allows (usually a mistake)"
    )
    generate_only: bool = Field(
        default=False, description="write the reviewable JSONL and stop before training"
    )
    min_kept_share: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="stop with an error when the filters keep less than this share of the teacher's answers",
    )


@dataclass
class PromptItem:
    id: str
    messages: list[dict]  # the conversation up to and including the last user turn (no system turn)
    source: str  # "train.jsonl:12" or "extra.jsonl:3"
    reference: str | None = None  # the task's own answer, when there is one
    facts: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)


@dataclass
class SeqRecord:
    """One reviewable line: the prompt, the answer to train on, and how it got there."""

    id: str
    messages: list[dict]  # prompt turns + the assistant answer (what training uses)
    status: str  # "kept" | "dropped"
    reason: str | None
    origin: str  # "teacher" | "policy_refusal" | "patch"
    source: str
    teacher: str
    reference: str | None = None
    teacher_answer: str | None = None
    facts: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    generation: dict = field(default_factory=dict)
    guard: list[str] = field(default_factory=list)

    @property
    def answer(self) -> str:
        return (
            self.messages[-1]["content"] if self.messages and self.messages[-1]["role"] == "assistant" else ""
        )


# --- filters (pure functions) -------------------------------------------------------------------------

_WORD = re.compile(r"\w+", re.UNICODE)


def max_ngram_repeats(text: str, n: int) -> int:
    """How often the most frequent word n-gram occurs in ``text`` (0 when it has fewer than n words)."""
    words = _WORD.findall(text.casefold())
    if len(words) < n:
        return 0
    counts: dict[tuple[str, ...], int] = {}
    for i in range(len(words) - n + 1):
        g = tuple(words[i : i + n])
        counts[g] = counts.get(g, 0) + 1
    return max(counts.values())


def degenerate_reason(text: str, finished: bool, settings: SequenceSettings) -> str | None:
    """Why a generated answer is unusable, or None."""
    if not text.strip() or not _WORD.search(text):
        return "empty"
    if max_ngram_repeats(text, settings.repeat_ngram) >= settings.max_ngram_repeats:
        return "repeated_ngram"
    if settings.drop_truncated and not finished:
        return "truncated"
    return None


def dedupe(records: list[SeqRecord]) -> None:
    """Mark later duplicates (same normalised prompt and answer) as dropped, in place."""
    seen: set[str] = set()
    for r in records:
        if r.status != "kept":
            continue
        key = json.dumps([[m["role"], normalize(m["content"])] for m in r.messages])
        if key in seen:
            r.status, r.reason = "dropped", "duplicate"
        seen.add(key)


# --- prompts ------------------------------------------------------------------------------------------


def train_prompts(task) -> list[PromptItem]:
    """The task's training conversations without their final answer."""
    rel = task.spec.data.train
    items = []
    for i, conv in enumerate(task.train):
        msgs = [m.model_dump() for m in conv.prompt_messages]
        items.append(
            PromptItem(
                id=conv.id or f"train-{i + 1}",
                messages=[m for m in msgs if m["role"] != "system"],
                source=f"{rel}:{i + 1}",
                reference=conv.answer,
                facts=list(conv.facts),
                sources=list(conv.sources),
            )
        )
    return items


def load_extra_prompts(path: str | Path) -> list[PromptItem]:
    """Extra unlabelled prompts: ``{"prompt": "..."}`` or ``{"messages": [...]}``, optional ``id``."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: extra prompts file not found")
    problems = ProblemList()
    items = []
    for lineno, obj in read_jsonl_objects(p, problems):
        if isinstance(obj.get("prompt"), str) and obj["prompt"].strip():
            msgs = [{"role": "user", "content": obj["prompt"]}]
        elif isinstance(obj.get("messages"), list) and obj["messages"]:
            msgs = obj["messages"]
            ok = all(
                isinstance(m, dict)
                and m.get("role") in ("system", "user", "assistant")
                and isinstance(m.get("content"), str)
                for m in msgs
            )
            if not ok or msgs[-1].get("role") != "user":
                problems.add(
                    str(p),
                    "messages must be {role, content} turns ending with a user turn",
                    lineno,
                    "messages",
                )
                continue
            msgs = [{"role": m["role"], "content": m["content"]} for m in msgs if m["role"] != "system"]
        else:
            problems.add(str(p), 'expected "prompt" (a non-empty string) or "messages"', lineno)
            continue
        items.append(
            PromptItem(id=str(obj.get("id") or f"extra-{lineno}"), messages=msgs, source=f"{p.name}:{lineno}")
        )
    problems.raise_if_errors(f"{p}: invalid extra prompts")
    return items


def _question(messages: list[dict]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


# --- generation ---------------------------------------------------------------------------------------

Generate = Callable[[list[list[dict]]], list]  # conversations → list[Generation]


def generate_records(
    items: Sequence[PromptItem],
    generate: Generate,
    guard,
    system_prompt: str,
    teacher_ref: str,
    settings: SequenceSettings,
    render: Callable[[list[dict]], list[dict]] | None = None,
) -> list[SeqRecord]:
    """Guard the prompts, let the teacher answer the allowed ones, filter, dedupe (see module doc).

    ``render`` turns prompt turns into the chat the teacher sees (default: the system prompt first;
    with retrieval, the server's prompt assembly).
    """
    render = render or (lambda msgs: with_system(system_prompt, msgs))
    ids = [it.id for it in items]
    dup_ids = {i for i in ids if ids.count(i) > 1}
    if dup_ids:
        raise UserError(f"prompt ids must be unique; repeated: {sorted(dup_ids)[:5]}")
    records: list[SeqRecord] = []
    to_generate: list[tuple[SeqRecord, list[dict]]] = []
    for it in items:
        msgs = [dict(m) for m in it.messages]
        verdict = guard.check_input(_question(msgs))
        base = {
            "id": it.id,
            "source": it.source,
            "teacher": teacher_ref,
            "reference": it.reference,
            "facts": list(it.facts),
            "sources": list(it.sources),
            "guard": list(verdict.reasons),
        }
        if verdict.action == "refuse":
            answer = guard.refusal_message
            records.append(
                SeqRecord(
                    messages=[*msgs, {"role": "assistant", "content": answer}],
                    status="kept",
                    reason=None,
                    origin="policy_refusal",
                    **base,
                )
            )
            continue
        if verdict.action == "redact":  # the teacher (and the student) only ever see the redacted text
            last = max(i for i, m in enumerate(msgs) if m["role"] == "user")
            msgs[last] = {"role": "user", "content": verdict.redacted_text}
        rec = SeqRecord(messages=msgs, status="kept", reason=None, origin="teacher", **base)
        records.append(rec)
        to_generate.append((rec, render(msgs)))
    for s in range(0, len(to_generate), settings.batch_size):
        chunk = to_generate[s : s + settings.batch_size]
        gens = generate([conv for _, conv in chunk])
        for (rec, _), g in zip(chunk, gens, strict=True):
            _accept(rec, g, guard, settings)
    dedupe(records)
    return records


def _accept(rec: SeqRecord, g, guard, settings: SequenceSettings) -> None:
    rec.teacher_answer = g.text
    rec.generation = {
        "new_tokens": g.new_tokens,
        "finished": g.finished,
        "mean_logprob": round(g.mean_logprob, 4),
    }
    out = guard.check_output(g.text)
    rec.guard = [*rec.guard, *(f"output:{r}" for r in out.reasons)]
    answer = g.text.strip()
    reason = None
    if "system_prompt_leak" in out.reasons:
        reason = "system_prompt_leak"
    elif out.action == "refuse":  # a refusal in any wording
        if settings.keep_teacher_refusals or (rec.reference or "").strip() == guard.refusal_message.strip():
            answer = guard.refusal_message
        else:
            reason = "teacher_refused"
    else:
        answer = out.redacted_text.strip()
        reason = degenerate_reason(answer, g.finished, settings)
    rec.messages = [*rec.messages, {"role": "assistant", "content": answer}]
    if reason:
        rec.status, rec.reason = "dropped", reason


def kept_conversations(records: Sequence[SeqRecord]) -> list[list[dict]]:
    return [list(r.messages) for r in records if r.status == "kept"]


def check_kept_share(info: dict, s: SequenceSettings, review_file: str) -> None:
    """Refuse to train on what is left when the filters dropped most of the teacher's answers.

    On an unseen task the first wave's quick preset kept 7 of 32 answers (21 cut by a 48-token cap) and
    then trained 40 updates on those 7: a run that looks complete and learns nothing.
    """
    if not info["prompts"]:
        return
    share = info["kept"] / info["prompts"]
    if share < s.min_kept_share:
        raise UserError(
            f"sequence-level KD kept {info['kept']} of {info['prompts']} teacher answers ({share:.0%}, below "
            f"sequence.min_kept_share={s.min_kept_share:g}); dropped: {info['dropped_by_reason']}. "
            f"{'Raise sequence.max_new_tokens (answers were cut off), ' if info['dropped_by_reason'].get('truncated') else ''}"
            f"review {review_file}, or lower sequence.min_kept_share"
        )


def summary(records: Sequence[SeqRecord]) -> dict:
    reasons: dict[str, int] = {}
    origins: dict[str, int] = {}
    for r in records:
        if r.status == "dropped":
            reasons[r.reason or "?"] = reasons.get(r.reason or "?", 0) + 1
        else:
            origins[r.origin] = origins.get(r.origin, 0) + 1
    return {
        "prompts": len(records),
        "kept": sum(r.status == "kept" for r in records),
        "kept_by_origin": origins,
        "dropped_by_reason": reasons,
    }


def generation_key(
    teacher_fp: str, tokenizer_fp: str, items: Sequence[PromptItem], system_prompt: str, s: SequenceSettings
) -> str:
    """What determines the teacher's raw answers (filters and patches are re-applied on every run)."""
    h = hashlib.sha256()
    h.update(json.dumps([teacher_fp, tokenizer_fp, system_prompt, s.max_new_tokens, s.temperature]).encode())
    for it in items:
        h.update(json.dumps([it.id, it.messages]).encode())
    return h.hexdigest()[:24]


def cached_generate(make_generate: Callable[[], Generate], path: str | Path) -> Generate:
    """Wrap the teacher's generation with an append-only answer cache (one JSON line per prompt).

    Answers already in ``path`` (same rendered conversation) are reused; the teacher is created by
    ``make_generate`` only when something is missing. A torn last line (a kill mid-write) is ignored,
    so an interrupted generation resumes where it stopped.
    """
    from distilltune.io import append_jsonl, read_jsonl
    from distilltune.models.generate import Generation

    path = Path(path)
    known = {row["key"]: row["generation"] for row in read_jsonl(path) if "key" in row}
    if path.is_file() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        with open(path, "a", encoding="utf-8") as f:  # end a torn line so the next append stands alone
            f.write("\n")
    real: list[Generate] = []

    def generate(convs: list[list[dict]]) -> list:
        keys = [hashlib.sha256(json.dumps(c, ensure_ascii=False).encode()).hexdigest() for c in convs]
        missing = [i for i, k in enumerate(keys) if k not in known]
        if missing:
            if not real:
                real.append(make_generate())
            fresh = real[0]([convs[i] for i in missing])
            for i, g in zip(missing, fresh, strict=True):
                known[keys[i]] = asdict(g)
                append_jsonl(path, {"key": keys[i], "generation": asdict(g)})
        return [Generation(**known[k]) for k in keys]

    return generate
