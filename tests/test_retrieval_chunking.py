"""Chunking (headings, overlap, huge files), content hashing and reciprocal rank fusion."""

from __future__ import annotations

import pytest

from distilltune.retrieval.chunking import MAX_WORD_CHARS, chunk_document, chunk_documents, content_hash
from distilltune.retrieval.fusion import rrf

DOC = """# Rentals

Intro line.

## Prices
A city bike costs $12 per day.
An e-bike costs $30 per day.

## Deposit
Every rental needs a deposit of $50.

### Refunds
Refunded within 3 days.
"""


def test_chunks_follow_headings_and_keep_file_and_heading_path():
    chunks = chunk_document("rentals.md", DOC)
    assert [(c.heading, c.text) for c in chunks] == [
        ("Rentals", "Intro line."),
        ("Rentals > Prices", "A city bike costs $12 per day. An e-bike costs $30 per day."),
        ("Rentals > Deposit", "Every rental needs a deposit of $50."),
        ("Rentals > Deposit > Refunds", "Refunded within 3 days."),
    ]
    assert all(c.file == "rentals.md" for c in chunks)
    assert [c.chunk_id for c in chunks] == [f"rentals.md#{i}" for i in range(4)]
    assert chunks[1].search_text == "rentals — Rentals > Prices\n" + chunks[1].text


def test_txt_files_have_no_headings():
    chunks = chunk_document("notes.txt", "# not a heading\n\nplain text")
    assert [(c.heading, c.text) for c in chunks] == [("", "# not a heading plain text")]
    assert chunks[0].search_text.startswith("notes\n")


def test_long_sections_are_windowed_with_overlap():
    words = [f"w{i}" for i in range(250)]
    chunks = chunk_document("big.md", "# Big\n\n" + " ".join(words), chunk_words=100, overlap_words=20)
    bodies = [c.text.split() for c in chunks]
    assert all(len(b) <= 100 for b in bodies)
    assert bodies[0][-20:] == bodies[1][:20]  # neighbours share the overlap
    covered = {w for b in bodies for w in b}
    assert covered == set(words)


def test_paragraphs_pack_into_chunks_and_carry_overlap():
    paras = "\n\n".join(" ".join(f"p{p}w{i}" for i in range(40)) for p in range(5))
    chunks = chunk_document("doc.md", paras, chunk_words=100, overlap_words=10)
    assert all(len(c.text.split()) <= 100 for c in chunks)
    assert len(chunks) >= 2
    assert chunks[0].text.split()[-10:] == chunks[1].text.split()[:10]


def test_huge_file_with_one_endless_line_becomes_bounded_chunks():
    blob = "x" * 200_000 + " " + "word " * 30_000
    chunks = chunk_document("dump.txt", blob, chunk_words=120, overlap_words=30)
    assert len(chunks) > 300
    assert max(len(c.text.split()) for c in chunks) <= 120
    assert max(len(c.text) for c in chunks) <= 120 * (MAX_WORD_CHARS + 1)


def test_bad_chunk_settings_are_rejected():
    with pytest.raises(ValueError):
        chunk_document("a.md", "text", chunk_words=10, overlap_words=10)


def test_content_hash_changes_with_documents_and_settings():
    docs = {"a.md": "alpha", "b.md": "beta"}
    h = content_hash(docs, 1, 120)
    assert h == content_hash(dict(reversed(list(docs.items()))), 1, 120)
    assert h != content_hash({"a.md": "alpha!", "b.md": "beta"}, 1, 120)
    assert h != content_hash({"a.md": "alpha", "c.md": "beta"}, 1, 120)
    assert h != content_hash(docs, 1, 100)
    assert len(chunk_documents(docs)) == 2


def test_rrf_sums_reciprocal_ranks():
    fused = dict(rrf([["a", "b", "c"], ["c", "a"]], k=60))
    assert fused["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert fused["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert fused["b"] == pytest.approx(1 / 62)
    assert [d for d, _ in rrf([["a", "b", "c"], ["c", "a"]], k=60)] == ["a", "c", "b"]


def test_rrf_ties_keep_first_appearance():
    assert [d for d, _ in rrf([["x"], ["y"]], k=60)] == ["x", "y"]
    assert rrf([[], []]) == []
