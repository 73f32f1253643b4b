"""Blocked-topic detection: the task's regular expressions, and optionally semantic similarity.

Regexes are exact and cheap, so they always run. The semantic matcher embeds each topic's
``examples`` and flags a text whose cosine similarity to any example reaches a threshold. A fixed
threshold is a guess; ``calibrate_threshold`` picks it from data instead: just above the highest
similarity any in-scope question reaches (zero false positives on that set), and reports how many
known blocked prompts it still catches, so the trade-off is visible rather than assumed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from distilltune.policy.pii import Span
from distilltune.task.schema import BlockedTopic

Embed = Callable[[list[str]], np.ndarray]  # texts → (n, d) L2-normalised rows


class RegexTopics:
    def __init__(self, topics: Sequence[BlockedTopic]):
        self.rules = [(t.name, [re.compile(p) for p in t.patterns]) for t in topics]

    def find(self, text: str) -> list[Span]:
        return [
            Span(m.start(), m.end(), "blocked_topic", name)
            for name, pats in self.rules
            for p in pats
            for m in p.finditer(text)
        ]


@dataclass(frozen=True)
class TopicScore:
    topic: str
    similarity: float  # best cosine similarity to one of the topic's examples


class SemanticTopics:
    """Cosine similarity of a text to each blocked topic's examples."""

    def __init__(self, topics: Sequence[BlockedTopic], embed: Embed, threshold: float):
        self.embed = embed
        self.threshold = threshold
        self.names: list[str] = []
        examples: list[str] = []
        for t in topics:
            for ex in t.examples:
                self.names.append(t.name)
                examples.append(ex)
        self.matrix = embed(examples) if examples else np.zeros((0, 1), dtype=np.float32)

    def scores(self, texts: list[str]) -> list[list[TopicScore]]:
        """Per text, the best similarity for each topic, highest first."""
        if not len(self.names) or not texts:
            return [[] for _ in texts]
        sims = embed_sims(self.embed(texts), self.matrix)
        out = []
        for row in sims:
            best: dict[str, float] = {}
            for name, s in zip(self.names, row, strict=True):
                best[name] = max(best.get(name, -1.0), float(s))
            out.append(
                sorted((TopicScore(n, round(s, 4)) for n, s in best.items()), key=lambda x: -x.similarity)
            )
        return out

    def find(self, text: str) -> list[TopicScore]:
        return [s for s in self.scores([text])[0] if s.similarity >= self.threshold]


def embed_sims(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32) @ np.asarray(b, dtype=np.float32).T


@dataclass(frozen=True)
class Calibration:
    threshold: float
    in_scope_max: float  # highest similarity reached by an in-scope text
    blocked_caught: int  # blocked texts at or above the threshold
    blocked_total: int

    def line(self) -> str:
        return (
            f"semantic topic threshold {self.threshold:.3f} (in-scope max {self.in_scope_max:.3f}); "
            f"catches {self.blocked_caught}/{self.blocked_total} known blocked prompts"
        )


def calibrate_threshold(
    matcher: SemanticTopics, in_scope: list[str], blocked: list[str], margin: float = 0.02
) -> Calibration:
    """Smallest threshold with no in-scope false positive (plus ``margin``), and its catch rate."""
    top = [s[0].similarity if s else 0.0 for s in matcher.scores(in_scope)] if in_scope else [0.0]
    threshold = round(min(1.0, max(top) + margin), 4)
    caught = sum(bool(s) and s[0].similarity >= threshold for s in matcher.scores(blocked)) if blocked else 0
    return Calibration(threshold, round(max(top), 4), caught, len(blocked))


class NeighbourTopics:
    """Blocked or in scope, by the nearest labelled neighbours rather than by the topics' examples alone.

    A handful of examples per topic cannot cover the ways a blocked request is phrased, and one
    in-scope question that happens to resemble an example ("Which plan is cheaper?" vs "Which
    competitor is cheaper?") forces an example-only threshold so high that it catches almost
    nothing. This matcher uses every labelled question the task has: the topics' examples and the
    train split's refusal items as *blocked* references, the train split's answered questions as
    *in-scope* references. A text is flagged when it is closer to a blocked reference than to any
    in-scope one by at least ``threshold`` (the margin), so a question near both is left alone.
    The topic reported is that of the nearest topic example.
    """

    def __init__(
        self,
        topics: Sequence[BlockedTopic],
        embed: Embed,
        blocked: Sequence[str],
        in_scope: Sequence[str],
        threshold: float = 1.0,
    ):
        self.embed = embed
        self.threshold = threshold
        self.names = [t.name for t in topics for _ in t.examples]
        examples = [ex for t in topics for ex in t.examples]
        self.examples = embed(examples) if examples else np.zeros((0, 1), dtype=np.float32)
        self.blocked = embed([*examples, *blocked])
        self.in_scope = (
            embed(list(in_scope)) if in_scope else np.zeros((0, self.blocked.shape[1]), np.float32)
        )

    def margins(self, vecs: np.ndarray) -> np.ndarray:
        """Per row: best similarity to a blocked reference minus best similarity to an in-scope one."""
        return _best(embed_sims(vecs, self.blocked)) - _best(embed_sims(vecs, self.in_scope))

    def find(self, text: str) -> list[TopicScore]:
        vec = self.embed([text])
        margin = self.margins(vec)
        if float(margin[0]) < self.threshold or not self.names:
            return []
        topic = self.names[int(embed_sims(vec, self.examples)[0].argmax())]
        return [TopicScore(topic, round(float(margin[0]), 4))]


def _best(sims: np.ndarray) -> np.ndarray:
    return sims.max(axis=1) if sims.shape[1] else np.full(len(sims), -1.0, dtype=np.float32)


def calibrate_margin(matcher: NeighbourTopics, n_examples: int, margin: float = 0.01) -> Calibration:
    """Leave-one-out on the references: the smallest margin no in-scope question reaches.

    Each in-scope reference is scored against all the others (itself left out), so the threshold
    is what a *new* in-scope question would face, not a question that trivially matches itself.
    ``blocked_caught`` counts the train refusal items (not the topic examples) that a leave-one-out
    reading still flags: the recall to expect on unseen blocked requests, roughly.
    """
    ins, blk = matcher.in_scope, matcher.blocked
    if len(ins):
        self_sims = embed_sims(ins, ins)
        np.fill_diagonal(self_sims, -1.0)
        top = float((_best(embed_sims(ins, blk)) - _best(self_sims)).max())
    else:
        top = -1.0
    threshold = round(min(1.0, top + margin), 4)
    refs = blk[n_examples:]
    caught = 0
    if len(refs):
        to_blocked = embed_sims(refs, blk)
        to_blocked[np.arange(len(refs)), n_examples + np.arange(len(refs))] = -1.0
        caught = int(((_best(to_blocked) - _best(embed_sims(refs, ins))) >= threshold).sum())
    return Calibration(threshold, round(top, 4), caught, len(refs))
