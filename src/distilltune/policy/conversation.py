"""PII across the turns of a conversation: each turn's own spans plus those that cross a turn boundary.

Checking each message on its own misses a card number typed as "4111 1111" in one message and
"1111 1111" in the next, and an SSN whose context word ("my SSN is") is in the previous message.
The turns are therefore also read joined by a space, and every span found there that crosses a
boundary is cut back into the turns it touches: each piece is redacted where it lies. A span
inside one turn that only the joined reading accepts (its context word sits in the previous
turn) is kept as well. The joined
text is never returned or stored; only offsets come back.
"""

from __future__ import annotations

from collections.abc import Sequence

from distilltune.policy.pii import PIIRedactor, Span

JOIN = " "


def merge_spans(spans: Sequence[Span]) -> list[Span]:
    """Overlapping or touching-inside spans merged (first label kept), sorted by position."""
    out: list[Span] = []
    for s in sorted(spans, key=lambda s: (s.start, -s.end)):
        if out and s.start < out[-1].end:
            last = out[-1]
            out[-1] = Span(last.start, max(last.end, s.end), last.kind, last.label)
        else:
            out.append(s)
    return out


def turn_spans(redactor: PIIRedactor, texts: Sequence[str]) -> list[list[Span]]:
    """For each text, its PII spans including the pieces of spans that cross into it."""
    own = [redactor.find(t) for t in texts]
    if len(texts) < 2:
        return own
    offsets, pos = [], 0
    for t in texts:
        offsets.append(pos)
        pos += len(t) + len(JOIN)
    extra: list[list[Span]] = [[] for _ in texts]
    for span in redactor.find(JOIN.join(texts)):
        touched = [
            i
            for i, (off, t) in enumerate(zip(offsets, texts, strict=True))
            if span.start < off + len(t) and span.end > off
        ]
        for i in touched:
            a = max(span.start - offsets[i], 0)
            b = min(span.end - offsets[i], len(texts[i]))
            if b > a:
                extra[i].append(Span(a, b, "pii", span.label))
    return [merge_spans(o + e) if e else o for o, e in zip(own, extra, strict=True)]
