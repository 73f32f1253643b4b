"""Turning generated tokens into text a client may see: detokenize, stop sequences, output guard.

Streaming must not bypass the output guard. Text is therefore released in whole sentences: tokens
accumulate, and when a sentence ends (``.!?`` or a newline followed by more text) the guard checks
*everything so far*; only its redacted version is released, and only the part not yet sent. PII
(an email, a card number) and a system-prompt leak (a long shared word run) sit inside a sentence,
so they are caught before any of their characters leave. If the guard refuses before anything was
sent, the client gets the refusal message; after, the stream ends with ``content_filter``.

Non-streaming answers run through the same object (``incremental=False``: one guard check at
``finish()``); both modes return the same text unless the guard acts in the middle of a stream.
Batch evaluation feeds its generated ids through it too, so an answer's text is decoded, cut and
guarded by exactly one piece of code whichever backend generated it. ``guard=None`` releases the
text unchecked (evaluation without a guard).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field

# A sentence end: terminal punctuation (optionally closing quotes/brackets) followed by whitespace,
# or a newline. "jane.doe@example.com" or "3.5" has no whitespace after the dot, so never splits.
_BOUNDARY = re.compile(r"[.!?…][\"')\]]*(?=\s)|\n")


@dataclass
class Released:
    delta: str = ""
    stop: bool = False  # a stop sequence ended the answer: cancel generation
    refused: bool = False  # the output guard refused (delta holds the refusal message, or nothing)
    finish_reason: str | None = None  # set when this release ends the answer


@dataclass
class TextReleaser:
    tokenizer: object
    tok_lock: threading.Lock
    guard: object  # distilltune.policy.Guard (check_output, refusal_message), or None
    stop: list[str] = field(default_factory=list)
    incremental: bool = True  # release sentence by sentence (streaming) or only at finish()
    ids: list[int] = field(default_factory=list)
    sent: str = ""  # text already released
    done: bool = False
    output_decision: object = None  # the last GuardDecision
    refused: bool = False
    stopped_by_sequence: bool = False
    given: str | None = None  # a whole answer handed over as text (``release_text``)
    context: object = None  # what the model read (policy.OutputContext), for the injection checks

    def _text(self) -> str:
        if self.given is not None:
            text = self.given
        else:
            with self.tok_lock:
                text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        text = text.lstrip()
        if self.stop:
            cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
            if cut >= 0:
                self.stopped_by_sequence = True
                text = text[:cut]
        return text

    @property
    def raw_text(self) -> str:
        """The model's own text so far (stop sequences applied, before the output guard; never log it)."""
        return self._text().rstrip()

    def add(self, token_id: int, stop_ids: list[int] | tuple[int, ...] = ()) -> Released:
        """Feed one generated token; release any newly completed, guard-checked sentences."""
        if self.done:
            return Released()
        if token_id in stop_ids:
            return Released()
        self.ids.append(token_id)
        if not self.incremental and not self.stop:
            return Released()
        text = self._text()
        if self.stopped_by_sequence:
            return self._finish(text, "stop")
        if not self.incremental or text.endswith("\ufffd"):  # "\ufffd": a character is incomplete
            return Released()
        holdback = max((len(s) for s in self.stop), default=1) - 1
        limit = len(text) - holdback
        cut = 0
        for m in _BOUNDARY.finditer(text):
            if m.end() <= limit:
                cut = m.end()
        if cut <= len(self.sent):
            return Released()
        return self._check(text[:cut].rstrip(), final=False)

    def release_text(self, text: str, finish_reason: str = "stop") -> Released:
        """Release a whole answer a backend returned as text (a remote server): stop sequences, guard."""
        self.given = text
        return self.finish(finish_reason)

    def finish(self, finish_reason: str) -> Released:
        """The model is done (``stop``/``length``): guard and release the rest."""
        if self.done:
            return Released()
        return self._finish(self._text(), finish_reason)

    def _finish(self, text: str, finish_reason: str) -> Released:
        r = self._check(text.rstrip(), final=True)
        self.done = True
        if r.finish_reason is None:
            r.finish_reason = "stop" if self.stopped_by_sequence else finish_reason
        r.stop = self.stopped_by_sequence
        return r

    def _check(self, text: str, final: bool) -> Released:
        if self.guard is None:
            delta, self.sent = text[len(self.sent) :], text
            return Released(delta)
        d = self.guard.check_output(text, self.context) if text or final else None
        if d is None:
            return Released()
        self.output_decision = d
        if d.action == "refuse":
            self.refused = True
            self.done = True
            if not self.sent:
                self.sent = self.guard.refusal_message
                return Released(self.guard.refusal_message, refused=True, finish_reason="stop")
            return Released("", refused=True, finish_reason="content_filter")
        safe = d.redacted_text
        if not safe.startswith(self.sent):
            # A redaction reached back into text already sent (PII straddling a sentence end):
            # stop rather than send a second, inconsistent version.
            self.done = True
            return Released("", finish_reason="content_filter")
        delta = safe[len(self.sent) :]
        self.sent = safe
        return Released(delta)
