"""The knowledge index: chunks of the task's documents in LanceDB, searched dense, lexical or hybrid.

One LanceDB table holds every chunk with its file, heading, text and embedding; LanceDB's native
full-text index (BM25, English stemming and stop words) provides the lexical ranking, the cosine
distance over embeddings the dense one, and reciprocal rank fusion combines them. LanceDB is
embedded (a directory on disk) and takes object-store URIs (``s3://…``) unchanged.

Freshness: the table's schema metadata records a content hash of the documents, the chunking
settings, the embedding model's fingerprint and the index format version. ``open`` rebuilds when the
hash differs (documents changed) and when the stored index fails its checks (missing full-text
index, wrong row count or vector size, unreadable data files): a stale or corrupt index is reported
in ``status`` and rebuilt, never used. Local builds happen in a temporary directory that replaces
the old index only when complete, under a file lock, so concurrent processes never see half an index.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from distilltune.errors import UserError
from distilltune.io import atomic_dir, file_lock
from distilltune.retrieval.chunking import Chunk, chunk_documents, content_hash
from distilltune.retrieval.config import RetrievalConfig, SearchMode
from distilltune.retrieval.embed import Embedder, load_embedder
from distilltune.retrieval.fusion import rrf

os.environ.setdefault("LANCEDB_LOG", "error")  # lance's Rust logger prints WARN lines on normal writes

log = logging.getLogger("distilltune.retrieval")
INDEX_FORMAT = 1
TABLE = "chunks"
_META = "distilltune.index"
MODES: tuple[SearchMode, ...] = ("dense", "lexical", "hybrid")


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk. ``score``: cosine similarity (dense), BM25 (lexical) or RRF (hybrid)."""

    file: str
    heading: str
    text: str
    score: float
    chunk_id: str

    def to_dict(self) -> dict:
        return asdict(self)


def _task_parts(task) -> tuple[str, dict[str, str], Path | None]:
    """(name, documents, knowledge dir) from a loaded Task or a task directory path."""
    if isinstance(task, str | os.PathLike):
        from distilltune.task import load_task

        task = load_task(task)
    if not task.knowledge:
        raise UserError(
            f"{task.root}: task {task.name!r} has no knowledge documents to index "
            "(add .md or .txt files to its knowledge directory, or disable retrieval)"
        )
    return task.name, task.knowledge, task.knowledge_dir


def default_uri(name: str, knowledge_dir: Path | None, content: str = "") -> str:
    """``$DISTILLTUNE_HOME/indexes/<task>-<hash of the knowledge dir path>[-<content hash>]``.

    Outside the user's task dir. The content hash (documents, chunking, embedding model) is part of
    the name, so processes using different documents or settings never rebuild one directory under
    each other's open readers (a LanceDB table replaced while open fails on its next read).
    """
    from distilltune.models.bundled import distilltune_home

    where = str(knowledge_dir.resolve()) if knowledge_dir else name
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "task"
    suffix = f"-{content[:10]}" if content else ""
    return str(
        distilltune_home() / "indexes" / f"{slug}-{hashlib.sha256(where.encode()).hexdigest()[:10]}{suffix}"
    )


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _local_path(uri: str) -> Path:
    return Path(uri.removeprefix("file://")).expanduser()


@contextlib.contextmanager
def _locked(uri: str) -> Iterator[None]:
    """Serialise builds of one local index across processes (object stores: no lock)."""
    if not _is_local(uri):
        yield
        return
    with file_lock(_local_path(uri).with_name(_local_path(uri).name + ".lock")):
        yield


def _connect(uri: str):
    import lancedb

    return lancedb.connect(str(_local_path(uri)) if _is_local(uri) else uri)


def _fts_query(query: str) -> str:
    """Words only: the full-text parser must never see user syntax (quotes, colons, AND/OR)."""
    return " ".join(re.findall(r"\w+", query))


class KnowledgeIndex:
    """Search a task's knowledge. Build or reuse with ``KnowledgeIndex.open(task, cfg)``."""

    def __init__(self, table, uri: str, cfg: RetrievalConfig, embedder: Embedder, n_chunks: int, status: str):
        self.table = table
        self.uri = uri
        self.cfg = cfg
        self.embedder = embedder
        self.n_chunks = n_chunks
        self.status = status  # "reused" | "built" | "rebuilt: <reason>"

    # -- opening and building -------------------------------------------------------------------

    @classmethod
    def open(cls, task, cfg: RetrievalConfig | None = None, rebuild: bool = False) -> KnowledgeIndex:
        """Reuse the index if it matches the documents and passes its checks, otherwise (re)build it."""
        cfg = cfg or RetrievalConfig()
        name, docs, kdir = _task_parts(task)
        embedder = load_embedder(cfg.embedding_model)
        want = content_hash(docs, INDEX_FORMAT, cfg.chunk_words, cfg.chunk_overlap_words, embedder.identity)
        uri = cfg.uri or default_uri(name, kdir, want)
        with _locked(uri):
            reason = "forced" if rebuild else None
            if reason is None:
                table, n, reason = cls._check(uri, want)
                if reason is None:
                    return cls(table, uri, cfg, embedder, n, "reused")
            if reason != "no index yet":
                log.warning("knowledge index %s: %s; rebuilding", uri, reason)
            chunks = chunk_documents(docs, cfg.chunk_words, cfg.chunk_overlap_words)
            table = cls._build(uri, chunks, embedder, want)
            status = "built" if reason == "no index yet" else f"rebuilt: {reason}"
            return cls(table, uri, cfg, embedder, len(chunks), status)

    @staticmethod
    def _check(uri: str, want: str):
        """(table, n_chunks, None) when the stored index is current and readable, else (None, 0, why)."""
        if _is_local(uri) and not (_local_path(uri) / f"{TABLE}.lance").exists():
            return None, 0, "no index yet"
        try:
            table = _connect(uri).open_table(TABLE)
            meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        except Exception as e:  # lance raises ValueError/OSError/RuntimeError for missing or broken tables
            if not _is_local(uri) and "not found" in str(e).lower():
                return None, 0, "no index yet"
            return None, 0, f"unreadable ({type(e).__name__})"
        if meta.get(f"{_META}.hash") != want:
            return None, 0, "documents or settings changed"
        try:
            n = int(meta[f"{_META}.n_chunks"])
            if table.count_rows() != n:
                return None, 0, "row count does not match its manifest"
            dim = table.schema.field("vector").type.list_size
            if dim != int(meta[f"{_META}.dim"]):
                return None, 0, "vector size does not match its manifest"
            if not any(ix.index_type == "FTS" for ix in table.list_indices()):
                return None, 0, "full-text index missing (interrupted build?)"
            ids = table.search().select(["chunk_id"]).limit(n + 1).to_arrow().column("chunk_id")
            if len(ids) != n:
                return None, 0, "chunks are unreadable"
            table.search(np.ones(dim, dtype=np.float32)).distance_type("cosine").limit(1).to_list()
            table.search("probe", query_type="fts").limit(1).to_list()
        except Exception as e:
            return None, 0, f"corrupt ({type(e).__name__})"
        return table, n, None

    @staticmethod
    def _build(uri: str, chunks: list[Chunk], embedder: Embedder, content: str):
        import pyarrow as pa
        from lancedb.index import FTS

        vectors = embedder.encode([c.search_text for c in chunks])
        data = pa.table(
            {
                "chunk_id": [c.chunk_id for c in chunks],
                "file": [c.file for c in chunks],
                "heading": [c.heading for c in chunks],
                "text": [c.text for c in chunks],
                "search_text": [c.search_text for c in chunks],
                "vector": pa.FixedSizeListArray.from_arrays(
                    pa.array(vectors.reshape(-1), type=pa.float32()), vectors.shape[1]
                ),
            }
        ).replace_schema_metadata(
            {
                f"{_META}.hash": content,
                f"{_META}.n_chunks": str(len(chunks)),
                f"{_META}.format": str(INDEX_FORMAT),
                f"{_META}.embedding_model": embedder.identity,
                f"{_META}.dim": str(vectors.shape[1]),
            }
        )

        def write(db_uri: str):
            db = _connect(db_uri)
            with contextlib.suppress(Exception):
                db.drop_table(TABLE)
            table = db.create_table(TABLE, data, mode="overwrite")
            table.create_index("search_text", config=FTS(stem=True, remove_stop_words=True), replace=True)
            return table

        if not _is_local(uri):
            return write(uri)
        path = _local_path(uri)
        with atomic_dir(path) as tmp:
            write(str(tmp))
        if (path.with_name(f".{path.name}.old")).exists():
            shutil.rmtree(path.with_name(f".{path.name}.old"), ignore_errors=True)
        return _connect(uri).open_table(TABLE)

    # -- searching ------------------------------------------------------------------------------

    def check_query(self, query: str) -> str | None:
        """A note when the embedding model will only read the start of ``query`` (lexical reads it all)."""
        n = self.embedder.count_tokens(query)
        if n > self.embedder.max_tokens:
            return (
                f"query is {n} tokens; the embedding model reads only the first {self.embedder.max_tokens} "
                "for dense search (lexical search uses all of it)"
            )
        return None

    def _rows(self, query, qtype: str, n: int) -> list[dict]:
        cols = ["chunk_id", "file", "heading", "text"]
        q = self.table.search(query, query_type=qtype)
        if qtype == "vector":
            q = q.distance_type("cosine")
        return q.limit(n).select(cols).to_list()

    def dense(self, query: str, n: int, vector: np.ndarray | None = None) -> list[Hit]:
        if not query.strip():
            return []
        vec = self.embedder.encode([query])[0] if vector is None else vector
        rows = self._rows(vec, "vector", n)
        return [_hit(r, 1.0 - float(r["_distance"])) for r in rows]

    def lexical(self, query: str, n: int) -> list[Hit]:
        words = _fts_query(query)
        if not words:
            return []
        rows = self._rows(words, "fts", n)
        return [_hit(r, float(r["_score"])) for r in rows]

    def search(
        self, query: str, k: int = 5, mode: SearchMode = "hybrid", vector: np.ndarray | None = None
    ) -> list[Hit]:
        """The ``k`` best chunks for ``query``, best first (``vector``: its embedding, if already known)."""
        if mode not in MODES:
            raise UserError(f"search mode {mode!r}: expected one of {', '.join(MODES)}")
        if k < 1 or not re.search(r"\w", query):
            return []
        if mode == "lexical":
            return self.lexical(query, k)
        if vector is None and (msg := self.check_query(query)) is not None:
            log.info(msg)
        if mode == "dense":
            return self.dense(query, k, vector)
        depth = max(k, self.cfg.candidates)
        d, lx = self.dense(query, depth, vector), self.lexical(query, depth)
        by_id = {h.chunk_id: h for h in d + lx}
        fused = rrf([[h.chunk_id for h in d], [h.chunk_id for h in lx]], self.cfg.rrf_k)
        return [_replace_score(by_id[cid], score) for cid, score in fused[:k]]

    def search_many(self, queries: list[str], k: int = 5, mode: SearchMode = "hybrid") -> list[list[Hit]]:
        """``search`` for many queries, embedding them in one batch (training and evaluation use this)."""
        vectors = self.embedder.encode(queries) if mode != "lexical" and queries else [None] * len(queries)
        return [self.search(q, k, mode, vector=v) for q, v in zip(queries, vectors, strict=True)]


def _hit(row: dict, score: float) -> Hit:
    return Hit(row["file"], row["heading"], row["text"], round(score, 6), row["chunk_id"])


def _replace_score(h: Hit, score: float) -> Hit:
    return Hit(h.file, h.heading, h.text, round(score, 6), h.chunk_id)
