"""System-prompt leakage: an output that shares a long word n-gram with the system prompt.

Answers paraphrase the knowledge base, not the system prompt, so a run of ``n`` consecutive words
(case- and punctuation-insensitive) copied from the system prompt is strong evidence of a leak —
including partial leaks ("You are the Acme Cloud support …") and leaks wrapped in other text.
"""

from __future__ import annotations

import re

from distilltune.policy.pii import Span

_WORD = re.compile(r"\w+")


def _words(text: str) -> list[re.Match]:
    return list(_WORD.finditer(text))


class LeakDetector:
    def __init__(self, system_prompt: str, n: int = 6):
        words = [m.group(0).casefold() for m in _words(system_prompt)]
        self.n = max(1, min(n, len(words))) if words else n
        self.ngrams = (
            {tuple(words[i : i + self.n]) for i in range(len(words) - self.n + 1)} if words else set()
        )

    def find(self, text: str) -> list[Span]:
        """Merged spans of ``text`` covered by n-grams that also occur in the system prompt."""
        if not self.ngrams:
            return []
        ms = _words(text)
        words = [m.group(0).casefold() for m in ms]
        spans: list[Span] = []
        for i in range(len(words) - self.n + 1):
            if tuple(words[i : i + self.n]) in self.ngrams:
                start, end = ms[i].start(), ms[i + self.n - 1].end()
                if spans and start <= spans[-1].end:
                    spans[-1] = Span(
                        spans[-1].start, max(end, spans[-1].end), "system_prompt_leak", "system_prompt"
                    )
                else:
                    spans.append(Span(start, end, "system_prompt_leak", "system_prompt"))
        return spans
