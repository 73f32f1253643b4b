"""Heading-aware chunking of knowledge documents.

A Markdown document is split at its headings into sections; each section's paragraphs are packed
into chunks of at most ``chunk_words`` words, and a paragraph longer than that is cut into word
windows that overlap by ``overlap_words`` so a fact on a boundary survives whole in one chunk.
Every chunk keeps its file name and heading path ("Refund Policy > Annual plans") because the
prompt cites them and because the heading words help both lexical and dense search.

A huge or oddly formatted file (one endless line, a base64 blob) still ends up as many bounded
chunks: over-long "words" are cut to ``MAX_WORD_CHARS`` characters, so no chunk can blow up a prompt.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
MAX_WORD_CHARS = 64


@dataclass(frozen=True)
class Chunk:
    chunk_id: str  # "<file>#<n>": stable while the document is unchanged
    file: str  # path relative to the knowledge directory
    heading: str  # heading path inside the file ("" before the first heading / plain text)
    text: str  # the chunk body as shown in prompts

    @property
    def search_text(self) -> str:
        """What is embedded and lexically indexed: file title and heading give the body its topic."""
        title = re.sub(r"[-_]+", " ", self.file.rsplit("/", 1)[-1].rsplit(".", 1)[0])
        head = f"{title} — {self.heading}" if self.heading else title
        return f"{head}\n{self.text}"


def _words(text: str) -> list[str]:
    out = []
    for w in text.split():
        if len(w) <= MAX_WORD_CHARS:
            out.append(w)
        else:
            out.extend(w[i : i + MAX_WORD_CHARS] for i in range(0, len(w), MAX_WORD_CHARS))
    return out


def _sections(text: str, markdown: bool) -> Iterator[tuple[str, list[str]]]:
    """(heading path, paragraphs) per section, in document order."""
    path: list[tuple[int, str]] = []
    paragraphs: list[str] = []
    current: list[str] = []

    def flush_paragraph() -> None:
        if current:
            paragraphs.append(" ".join(current))
            current.clear()

    for line in text.splitlines():
        m = _HEADING.match(line) if markdown else None
        if m:
            flush_paragraph()
            if paragraphs:
                yield " > ".join(h for _, h in path), paragraphs
                paragraphs = []
            level = len(m.group(1))
            path = [(lvl, h) for lvl, h in path if lvl < level] + [(level, m.group(2).strip())]
        elif line.strip():
            current.append(line.strip())
        else:
            flush_paragraph()
    flush_paragraph()
    if paragraphs:
        yield " > ".join(h for _, h in path), paragraphs


def _windows(words: list[str], size: int, overlap: int) -> Iterator[list[str]]:
    step = max(1, size - overlap)
    for start in range(0, len(words), step):
        yield words[start : start + size]
        if start + size >= len(words):
            break


def chunk_document(file: str, text: str, chunk_words: int = 120, overlap_words: int = 30) -> list[Chunk]:
    """Split one document into chunks (see the module docstring)."""
    if chunk_words < 1 or not 0 <= overlap_words < chunk_words:
        raise ValueError("need chunk_words >= 1 and 0 <= overlap_words < chunk_words")
    markdown = not file.lower().endswith(".txt")
    bodies: list[tuple[str, str]] = []
    for heading, paragraphs in _sections(text, markdown):
        pending: list[str] = []
        for para in paragraphs:
            words = _words(para)
            if len(pending) + len(words) <= chunk_words:
                pending += words
                continue
            if pending:
                bodies.append((heading, " ".join(pending)))
                # Carry the tail of the previous chunk so boundary facts keep their context.
                pending = pending[-overlap_words:] if overlap_words else []
            if len(pending) + len(words) <= chunk_words:
                pending += words
                continue
            windows = list(_windows(pending + words, chunk_words, overlap_words))
            bodies += [(heading, " ".join(w)) for w in windows[:-1]]
            pending = windows[-1]
        if pending:
            bodies.append((heading, " ".join(pending)))
    return [Chunk(f"{file}#{i}", file, heading, body) for i, (heading, body) in enumerate(bodies)]


def chunk_documents(docs: dict[str, str], chunk_words: int = 120, overlap_words: int = 30) -> list[Chunk]:
    chunks: list[Chunk] = []
    for name in sorted(docs):
        chunks += chunk_document(name, docs[name], chunk_words, overlap_words)
    return chunks


def content_hash(docs: dict[str, str], *parts: object) -> str:
    """Hash of the documents plus every setting that changes the index (chunking, model, version)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode("utf-8") + b"\0")
    for name in sorted(docs):
        h.update(name.encode("utf-8") + b"\0")
        h.update(hashlib.sha256(docs[name].encode("utf-8")).digest())
    return h.hexdigest()
