"""Groundedness and citation validity: does an answer stay inside the context it was shown?

A grounded answer's checkable claims come from the retrieved context. Claims here are concrete and
cheap to check: the item's facts that the answer states, plus every number-like token in the answer
(``$25``, ``35``, ``99.9%``, ``ACME-E1042``). A claim is grounded when it appears in the context as a
whole token (``25`` matches neither ``250`` nor ``2.25``), case-insensitively.

- ``grounded``: share of the answer's claims found in the retrieved context (None without retrieval
  or when the answer makes no claims, e.g. a refusal);
- ``supported``: share found anywhere in the knowledge base — meaningful without retrieval too, and
  the gap between the two shows claims recalled from training rather than read from the context;
- citations are ``[n]`` markers (numbered context blocks, as the grounded prompt numbers them) and
  knowledge file names (``billing-plans.md``); a citation is valid when it refers to a block the
  model was shown (``1 ≤ n ≤`` number of hits, or a retrieved file). Without retrieval a file-name
  citation is valid when the file exists in the knowledge base and ``[n]`` markers are invalid;
- ``retrieval_recall``: share of the item's ``sources`` among the retrieved files.
"""

from __future__ import annotations

import re
from statistics import fmean

from distilltune.evaluation.metrics import fact_hits, normalize

_CITE_NUM = re.compile(r"\[(\d+(?:\s*[,;]\s*\d+)*)\]")
_CITE_FILE = re.compile(r"[\w][\w./-]*\.(?:md|txt)\b", re.IGNORECASE)
_NUMBERISH = re.compile(r"[$€£]?\w*\d[\w.,:/%-]*")


def citations(answer: str) -> tuple[list[int], list[str]]:
    """(``[n]`` numbers, cited file names) in order of appearance."""
    nums = [int(n) for m in _CITE_NUM.finditer(answer) for n in re.split(r"\s*[,;]\s*", m.group(1))]
    files = [m.group(0) for m in _CITE_FILE.finditer(answer)]
    return nums, files


def claims(answer: str, facts: list[str]) -> list[str]:
    """The answer's checkable claims: stated facts and number-like tokens (citations excluded)."""
    text = _CITE_FILE.sub(" ", _CITE_NUM.sub(" ", answer))
    found = [f for f, hit in zip(facts, fact_hits(text, facts), strict=True) if hit]
    for m in _NUMBERISH.finditer(text):
        tok = m.group(0).rstrip(".,:/-")
        if tok and not any(appears(tok, c) for c in found):
            found.append(tok)
    return found


def appears(claim: str, text: str) -> bool:
    """Whole-token, case-insensitive, whitespace-normalised containment."""
    c = normalize(claim)
    if not c:
        return False
    # Not inside a longer word or number: "12" matches neither "120" nor "1.12" nor "12.5".
    pattern = rf"(?<!\w)(?<!\d[.,]){re.escape(c)}(?!\w)(?![.,]\d)"
    return re.search(pattern, normalize(text)) is not None


def ground_item(
    answer: str,
    facts: list[str],
    sources: list[str],
    hits: list,
    knowledge: dict[str, str],
    refused: bool,
    rag: bool,
) -> dict:
    """Groundedness, citation and retrieval numbers for one answer (``hits``: objects with file, text)."""
    hit_files = [h.file for h in hits]
    context = "\n".join(h.text for h in hits)
    kb = "\n".join(knowledge.values())
    out: dict = {
        "claims": 0,
        "grounded": None,
        "supported": None,
        "citations": 0,
        "valid_citations": 0,
        "retrieval_recall": None,
    }
    if rag and sources:
        out["retrieval_recall"] = sum(s in hit_files for s in sources) / len(sources)
    if refused:
        return out
    cl = claims(answer, facts)
    out["claims"] = len(cl)
    if cl:
        if rag:
            out["grounded"] = sum(appears(c, context) for c in cl) / len(cl)
        out["supported"] = sum(appears(c, kb) for c in cl) / len(cl)
    nums, files = citations(answer)
    valid = sum(1 <= n <= len(hits) for n in nums) if rag else 0
    valid += sum(f in hit_files if rag else f in knowledge for f in files)
    out["citations"] = len(nums) + len(files)
    out["valid_citations"] = valid
    return out


def aggregate(items: list[dict]) -> dict:
    """Means over items that have each number; citation validity pools all citations."""

    def mean_of(key: str) -> float | None:
        vals = [i[key] for i in items if i[key] is not None]
        return fmean(vals) if vals else None

    n_cites = sum(i["citations"] for i in items)
    with_claims = [i for i in items if i["claims"]]
    return {
        "grounded": mean_of("grounded"),
        "supported": mean_of("supported"),
        "citation_validity": (sum(i["valid_citations"] for i in items) / n_cites) if n_cites else None,
        "citations": n_cites,
        "answers_with_citations": sum(1 for i in items if i["citations"]),
        "answers_with_claims": len(with_claims),
        "retrieval_recall": mean_of("retrieval_recall"),
    }
