"""Prompt assembly: system prompt + numbered retrieved context + conversation, within a token budget.

This is the one function training (retrieval-augmented fine-tuning and distillation), evaluation
and serving all call, so a model sees the same prompt layout everywhere. The system turn reads::

    <system prompt>

    Context:
    [1] (refund-policy.md — Refund Policy > Monthly plans) If you pay monthly, ...
    [2] (invoices.md — Invoices > Payment methods) ...

so an answer can cite ``[1]``. The retrieval query is the last user turn, plus the previous user
turn when ``previous_turn`` says so ("short": only when the last turn is a short follow-up such as
"And the daily price?").

Budget: the context block may use at most ``max_context_tokens`` tokens (counted with the model's
tokenizer, header and numbering included). Chunks enter in rank order and whole: the first chunk
that does not fit and every lower-ranked one are dropped, never cut mid-chunk. With
``max_prompt_tokens`` set, the whole rendered prompt must fit too, and context is dropped (lowest
rank first) before any conversation turn is touched; cutting the conversation itself is left to
``distilltune.data.chat.encode_chat``. No hits, or none that fit → no context block at all.

Training conversations: ``messages`` accepts a conversation ending with an assistant turn as well;
it retrieves on the last user turn before that answer and keeps every turn, assistant turns
included, so the result feeds ``encode_chat`` directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from distilltune.data.chat import with_system
from distilltune.retrieval.config import RetrievalConfig, SearchMode

SHORT_TURN_WORDS = 8
CONTEXT_HEADER = "Context:"


def _as_dicts(conversation: Sequence[Any]) -> list[dict]:
    out = []
    for m in conversation:
        d = m if isinstance(m, dict) else m.model_dump()
        out.append({"role": d["role"], "content": d["content"]})
    return out


def retrieval_query(conversation: Sequence[Any], previous_turn: str = "short") -> str:
    """The last user turn, plus the previous user turn when ``previous_turn`` asks for it."""
    users = [m["content"] for m in _as_dicts(conversation) if m["role"] == "user"]
    if not users:
        return ""
    last = users[-1]
    if len(users) > 1 and (
        previous_turn == "always" or (previous_turn == "short" and len(last.split()) < SHORT_TURN_WORDS)
    ):
        return f"{users[-2]}\n{last}"
    return last


def format_context(hits: Sequence[Any]) -> str:
    """The numbered context block for ``hits`` (empty string for no hits)."""
    if not hits:
        return ""
    lines = [CONTEXT_HEADER]
    for i, h in enumerate(hits, start=1):
        where = f"{h.file} — {h.heading}" if h.heading else h.file
        lines.append(f"[{i}] ({where}) {h.text}")
    return "\n".join(lines)


class GroundedPrompter:
    """Build model input messages grounded in retrieved knowledge (see the module docstring)."""

    def __init__(
        self,
        system_prompt: str | None,
        tokenizer,
        index=None,
        k: int = 3,
        max_context_tokens: int = 384,
        mode: SearchMode = "hybrid",
        previous_turn: str = "short",
        max_prompt_tokens: int | None = None,
    ):
        if previous_turn not in ("never", "short", "always"):
            raise ValueError("previous_turn must be 'never', 'short' or 'always'")
        self.system_prompt = system_prompt
        self.tokenizer = tokenizer
        self.index = index
        self.k = k
        self.max_context_tokens = max_context_tokens
        self.mode = mode
        self.previous_turn = previous_turn
        self.max_prompt_tokens = max_prompt_tokens

    @classmethod
    def from_config(
        cls, system_prompt: str | None, tokenizer, index, cfg: RetrievalConfig, **kw
    ) -> GroundedPrompter:
        return cls(
            system_prompt,
            tokenizer,
            index=index if cfg.enabled else None,
            k=cfg.k,
            max_context_tokens=cfg.max_context_tokens,
            mode=cfg.mode,
            previous_turn=cfg.previous_turn,
            **kw,
        )

    # -- pieces ---------------------------------------------------------------------------------

    def query(self, conversation: Sequence[Any]) -> str:
        """The retrieval query: the last user turn (plus the previous one, per ``previous_turn``)."""
        return retrieval_query(conversation, self.previous_turn)

    def count_tokens(self, text: str) -> int:
        if self.tokenizer is None:  # no tokenizer: whitespace words stand in for tokens
            return len(text.split())
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def fit_context(self, hits: Sequence[Any]) -> list[Any]:
        """The longest rank-order prefix of ``hits`` whose context block fits ``max_context_tokens``."""
        kept: list[Any] = []
        for h in hits:
            if self.count_tokens(format_context([*kept, h])) > self.max_context_tokens:
                break
            kept.append(h)
        return kept

    def assemble(self, conversation: Sequence[Any], hits: Sequence[Any]) -> list[dict]:
        """Messages for ``conversation`` with ``hits`` as context (no retrieval, no budget)."""
        msgs = with_system(self.system_prompt, _as_dicts(conversation))
        block = format_context(hits)
        if not block:
            return msgs
        if msgs and msgs[0]["role"] == "system":
            base = msgs[0]["content"].rstrip()
            msgs[0] = {"role": "system", "content": f"{base}\n\n{block}" if base else block}
        else:
            msgs.insert(0, {"role": "system", "content": block})
        return msgs

    def _prompt_tokens(self, msgs: list[dict]) -> int:
        tok = self.tokenizer
        if tok is not None and getattr(tok, "chat_template", None):
            gen = msgs[-1]["role"] != "assistant"
            out = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen, return_dict=True)
            return len(out["input_ids"])
        return sum(self.count_tokens(m["content"]) for m in msgs)

    # -- the entry point ------------------------------------------------------------------------

    def messages(
        self, conversation: Sequence[Any], hits: Sequence[Any] | None = None
    ) -> tuple[list[dict], list]:
        """(messages, hits used). ``conversation`` ends with a user turn (inference) or an assistant
        turn (training). Pass ``hits`` to reuse an earlier retrieval instead of searching again."""
        if hits is None:
            hits = self.retrieve(conversation)
        kept = self.fit_context(hits)
        msgs = self.assemble(conversation, kept)
        if self.max_prompt_tokens is not None:
            while kept and self._prompt_tokens(msgs) > self.max_prompt_tokens:
                kept = kept[:-1]
                msgs = self.assemble(conversation, kept)
        return msgs, list(kept)

    def messages_many(self, conversations: Sequence[Sequence[Any]]) -> list[tuple[list[dict], list]]:
        """``messages`` for many conversations, embedding all retrieval queries in one batch
        (preparing a training set this way is several times faster than one call per conversation)."""
        if self.index is None or self.k < 1 or self.max_context_tokens <= 0:
            return [self.messages(c, hits=[]) for c in conversations]
        queries = [self.query(c) for c in conversations]
        search_many = getattr(self.index, "search_many", None)
        if search_many is not None:
            found = search_many(queries, k=self.k, mode=self.mode)
        else:
            found = [self.index.search(q, k=self.k, mode=self.mode) for q in queries]
        return [self.messages(c, hits=h) for c, h in zip(conversations, found, strict=True)]

    def retrieve(self, conversation: Sequence[Any]) -> list:
        if self.index is None or self.k < 1 or self.max_context_tokens <= 0:
            return []
        q = self.query(conversation)
        return self.index.search(q, k=self.k, mode=self.mode) if q.strip() else []
