"""The request log: one SQLite row per request, written off the event loop, summarised by ``distilltune logs``.

SQLite in WAL mode lets ``distilltune logs`` (or any SQL tool) read the file while the server writes.
Rows are queued and inserted in batches by one writer thread, so a slow disk never stalls a request.

What a row holds is the contract that keeps PII out: the conversation *after* the input guard's
redaction, the answer *after* the output guard, the route, latencies, the confidence signals and the
guard verdicts as actions and reason labels (``pii:email``), never the matched text. A request the
input guard refused keeps no text at all, only its length and a digest: attack content (which may
carry the very strings a task forbids in any output or log) is not worth storing. The log is
written only from ``LogRecord`` fields the pipeline fills with redacted text.

Retention (``retention_days``): rows older than that are deleted when the log opens and then every
``purge_every_s`` by the writer thread. Deletion overwrites the freed pages (``secure_delete``) and
truncates the write-ahead file, so a purged row's text does not linger in ``.db`` or ``-wal``.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

SCHEMA_VERSION = 2  # 2: arm, shadow_of (added to older logs on open)
log = logging.getLogger("distilltune.serve")

COLUMNS: list[tuple[str, str]] = [
    ("id", "TEXT PRIMARY KEY"),
    ("ts", "REAL"),  # unix time the request arrived
    ("model", "TEXT"),  # the request's model field
    ("adapter", "TEXT"),
    ("stream", "INTEGER"),
    ("status", "INTEGER"),  # HTTP status answered
    ("route", "TEXT"),  # refused | student | fallback | error
    ("finish_reason", "TEXT"),
    ("prompt", "TEXT"),  # JSON list of {role, content}, redacted by the input guard
    ("answer", "TEXT"),  # what the client got, after the output guard
    ("student_answer", "TEXT"),  # the student's answer when the fallback replaced it (output-guarded)
    ("citations", "TEXT"),  # JSON list of {file, heading, score}
    ("confidence", "REAL"),  # the student's mean token log-probability
    ("retrieval_score", "REAL"),  # best retrieval score
    ("input_action", "TEXT"),
    ("input_reasons", "TEXT"),  # JSON list of labels, e.g. ["pii:email", "blocked_topic:legal_advice"]
    ("output_action", "TEXT"),
    ("output_reasons", "TEXT"),
    ("prompt_tokens", "INTEGER"),
    ("completion_tokens", "INTEGER"),
    ("queue_ms", "REAL"),
    ("ttft_ms", "REAL"),  # request arrival → first content byte released
    ("latency_ms", "REAL"),  # request arrival → last byte
    ("error", "TEXT"),  # error type/message (never request content)
    ("arm", "TEXT"),  # A/B: live | candidate | shadow; NULL when no candidate is served (serve/ab.py)
    ("shadow_of", "TEXT"),  # shadow rows: the id of the live request they copy
]


@dataclass
class LogRecord:
    id: str
    ts: float
    model: str
    adapter: str | None = None
    stream: bool = False
    status: int = 200
    route: str = "error"
    finish_reason: str | None = None
    prompt: list[dict] = field(default_factory=list)
    answer: str | None = None
    student_answer: str | None = None
    citations: list[dict] = field(default_factory=list)
    confidence: float | None = None
    retrieval_score: float | None = None
    input_action: str | None = None
    input_reasons: list[str] = field(default_factory=list)
    output_action: str | None = None
    output_reasons: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    queue_ms: float | None = None
    ttft_ms: float | None = None
    latency_ms: float | None = None
    error: str | None = None
    arm: str | None = None
    shadow_of: str | None = None

    def row(self) -> tuple:
        """The SQLite row. Text that UTF-8 cannot encode (lone surrogates) is replaced, never raised:
        one odd request must not cost the log its writer."""
        d = asdict(self)
        for k in ("prompt", "citations", "input_reasons", "output_reasons"):
            d[k] = json.dumps(d[k], ensure_ascii=False)
        d["stream"] = int(d["stream"])
        return tuple(_encodable(d[name]) for name, _ in COLUMNS)


def _encodable(value):
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    return value


def connect(path: str | Path, create: bool = True) -> sqlite3.Connection:
    con = sqlite3.connect(str(path), timeout=30, check_same_thread=False)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    if create:
        cols = ", ".join(f"{n} {t}" for n, t in COLUMNS)
        con.execute(f"CREATE TABLE IF NOT EXISTS requests ({cols})")
        _add_missing_columns(con)
        con.execute("CREATE INDEX IF NOT EXISTS requests_ts ON requests(ts)")
        con.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        con.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
        )
        con.commit()
    return con


def _add_missing_columns(con: sqlite3.Connection) -> None:
    """Migrate a log written by an older server: add the columns it lacks (NULL in its old rows).

    Additive only, so an older reader still finds every column it knows; rows are inserted by
    column name, so the columns' order in an upgraded file does not matter.
    """
    have = {r[1] for r in con.execute("PRAGMA table_info(requests)").fetchall()}
    for name, kind in COLUMNS:
        if name not in have:
            con.execute(f"ALTER TABLE requests ADD COLUMN {name} {kind}")


def live_rows_clause(con: sqlite3.Connection) -> str:
    """SQL condition selecting the requests clients were answered with (not shadow copies); true for
    logs from before A/B serving, which have no ``arm`` column."""
    have = {r[1] for r in con.execute("PRAGMA table_info(requests)").fetchall()}
    return "(arm IS NULL OR arm != 'shadow')" if "arm" in have else "1"


def purge(con: sqlite3.Connection, older_than_ts: float) -> int:
    """Delete rows logged before ``older_than_ts``; their bytes are overwritten, the WAL truncated."""
    con.execute("PRAGMA secure_delete=ON")
    n = con.execute("DELETE FROM requests WHERE ts < ?", (older_than_ts,)).rowcount
    con.commit()
    if n:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return n


class RequestLog:
    """Append-only request log with a background writer thread.

    ``retention_days``: rows older than this are deleted at start-up and every ``purge_every_s``
    (None keeps everything).
    """

    def __init__(self, path: str | Path, retention_days: float | None = None, purge_every_s: float = 3600.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.retention_s = None if retention_days is None else retention_days * 86400.0
        self.purge_every_s = purge_every_s
        self.purged = 0  # rows deleted by the retention policy since start
        con = connect(self.path)  # create the schema now: a bad path fails at start-up, not later
        try:
            self._purge(con)
        finally:
            con.close()
        self._q: queue.Queue[LogRecord | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._thread.start()
        self.written = 0
        self.dropped = 0  # rows SQLite refused even one by one (counted, never fatal)

    def _purge(self, con: sqlite3.Connection) -> None:
        self._last_purge = time.monotonic()
        if self.retention_s is not None:
            self.purged += purge(con, time.time() - self.retention_s)

    @property
    def healthy(self) -> bool:
        """The writer thread runs (``/health`` reports a log that no longer records requests)."""
        return self._thread.is_alive()

    def write(self, rec: LogRecord) -> None:
        self._q.put(rec)

    def flush(self, timeout: float = 10.0) -> None:
        """Block until everything queued so far is committed (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._q.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        con = connect(self.path)
        names = ", ".join(n for n, _ in COLUMNS)
        sql = f"INSERT OR REPLACE INTO requests ({names}) VALUES ({', '.join('?' for _ in COLUMNS)})"
        try:
            while True:
                try:
                    first = self._q.get(timeout=self._until_purge())
                except queue.Empty:
                    self._purge_safely(con)
                    continue
                batch = [first]
                while not self._q.empty() and len(batch) < 256:
                    batch.append(self._q.get_nowait())
                recs = [r for r in batch if r is not None]
                if recs:
                    self._insert(con, sql, recs)
                for _ in batch:
                    self._q.task_done()
                if any(r is None for r in batch):
                    return
                if self._until_purge() == 0:
                    self._purge_safely(con)
        finally:
            con.close()

    def _until_purge(self) -> float | None:
        """Seconds until the next retention purge is due (None: no retention, wait for rows only)."""
        if self.retention_s is None:
            return None
        return max(0.0, self._last_purge + self.purge_every_s - time.monotonic())

    def _purge_safely(self, con: sqlite3.Connection) -> None:
        try:
            self._purge(con)
        except sqlite3.Error as e:  # a busy or full disk: try again next period, keep logging
            con.rollback()
            log.error("request log: retention purge failed (%s)", type(e).__name__)

    def _insert(self, con: sqlite3.Connection, sql: str, recs: list[LogRecord]) -> None:
        """Insert a batch; if that fails, row by row, so one bad row loses only itself."""
        try:
            con.executemany(sql, [r.row() for r in recs])
            con.commit()
            self.written += len(recs)
            return
        except Exception as e:
            con.rollback()
            log.error("request log: a batch insert failed (%s); retrying row by row", type(e).__name__)
        for r in recs:
            try:
                con.execute(sql, r.row())
                con.commit()
                self.written += 1
            except Exception as e:
                con.rollback()
                self.dropped += 1
                log.error("request log: dropped one row (%s)", type(e).__name__)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    i = min(len(s) - 1, max(0, round(q * (len(s) - 1))))
    return s[i]


def summarize(path: str | Path, since: float | None = None) -> dict:
    """Counts, rates and latency percentiles over the log (optionally only rows with ts >= since)."""
    p = Path(path)
    if not p.is_file():
        from distilltune.errors import UserError

        raise UserError(f"{p}: request log not found")
    con = sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=30)
    try:
        try:
            rows = con.execute(
                "SELECT ts, status, route, input_action, input_reasons, output_action, output_reasons, "
                "confidence, prompt_tokens, completion_tokens, latency_ms, ttft_ms, model, stream "
                f"FROM requests WHERE ts >= ? AND {live_rows_clause(con)} ORDER BY ts",
                (since or 0.0,),
            ).fetchall()
        except sqlite3.DatabaseError as e:
            from distilltune.errors import UserError

            raise UserError(f"{p}: not a distilltune request log ({e})") from None
    finally:
        con.close()
    n = len(rows)
    by_route: dict[str, int] = {}
    by_status: dict[str, int] = {}
    by_model: dict[str, int] = {}
    reasons: dict[str, int] = {}
    lat: dict[str, list[float]] = {}
    ttft: list[float] = []
    conf: list[float] = []
    redacted_in = redacted_out = refused_in = refused_out = prompt_toks = completion_toks = streams = 0
    for _ts, status, route, ia, ir, oa, orr, c, pt, ct, lms, tms, model, stream in rows:
        by_route[route] = by_route.get(route, 0) + 1
        by_status[str(status)] = by_status.get(str(status), 0) + 1
        by_model[model] = by_model.get(model, 0) + 1
        for r in json.loads(ir or "[]") + json.loads(orr or "[]"):
            reasons[r] = reasons.get(r, 0) + 1
        in_r = json.loads(ir or "[]")
        out_r = json.loads(orr or "[]")
        redacted_in += any(r.startswith("pii:") for r in in_r)
        redacted_out += any(r.startswith("pii:") for r in out_r)
        refused_in += ia == "refuse"
        refused_out += oa == "refuse"
        streams += bool(stream)
        prompt_toks += pt or 0
        completion_toks += ct or 0
        if c is not None:
            conf.append(c)
        if lms is not None and status == 200:
            lat.setdefault(route, []).append(lms)
            lat.setdefault("all", []).append(lms)
        if tms is not None and status == 200:
            ttft.append(tms)
    answered = by_route.get("student", 0) + by_route.get("fallback", 0)
    return {
        "db": str(p),
        "requests": n,
        "first_ts": rows[0][0] if rows else None,
        "last_ts": rows[-1][0] if rows else None,
        "by_status": by_status,
        "by_route": by_route,
        "by_model": by_model,
        "streamed": streams,
        "refused_input": refused_in,
        "refused_output": refused_out,
        "redacted_input": redacted_in,
        "redacted_output": redacted_out,
        "escalation_rate": (by_route.get("fallback", 0) / answered) if answered else None,
        "guard_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        "latency_ms": {
            route: {"n": len(v), "p50": _pct(v, 0.5), "p95": _pct(v, 0.95), "max": max(v)}
            for route, v in sorted(lat.items())
        },
        "ttft_ms": {"p50": _pct(ttft, 0.5), "p95": _pct(ttft, 0.95)} if ttft else None,
        "confidence": {"mean": sum(conf) / len(conf), "p10": _pct(conf, 0.1), "p50": _pct(conf, 0.5)}
        if conf
        else None,
        "tokens": {"prompt": prompt_toks, "completion": completion_toks},
    }


def tail(path: str | Path, n: int = 10) -> list[dict]:
    """The last ``n`` rows as dicts (already redacted at write time)."""
    con = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True, timeout=30)
    con.row_factory = sqlite3.Row
    try:
        rows = con.execute("SELECT * FROM requests ORDER BY ts DESC LIMIT ?", (n,)).fetchall()
    finally:
        con.close()
    return [dict(r) for r in reversed(rows)]
