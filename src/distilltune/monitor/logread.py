"""Read the server's request log (``serve/requestlog.py``) for monitoring, read-only, and cut it into windows.

The log is opened with SQLite's read-only URI mode, so ``monitor`` can run from cron while the server
writes (WAL). Only the columns monitoring needs are read, and the check for them names what is
missing, so a file that is not a request log (or an older schema) fails with a clear message instead
of a traceback. The text read back is what the server stored: already redacted by its guard.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from distilltune.errors import UserError
from distilltune.serve.requestlog import live_rows_clause

NEEDED = (
    "id", "ts", "status", "route", "prompt", "answer", "confidence", "retrieval_score",
    "input_action", "input_reasons", "output_reasons", "completion_tokens", "latency_ms",
)  # fmt: skip
REFUSED_ROUTES = ("refused_input", "refused_output")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass
class Request:
    """One logged request, as monitoring sees it."""

    id: str
    ts: float
    status: int | None
    route: str
    question: str | None  # last user turn (redacted); None when refused at input or absent
    answer: str | None
    confidence: float | None
    retrieval_score: float | None
    input_reasons: list[str] = field(default_factory=list)
    output_reasons: list[str] = field(default_factory=list)
    completion_tokens: int | None = None
    latency_ms: float | None = None


@dataclass
class Window:
    start: float
    end: float
    requests: list[Request]


def parse_duration(text: str, what: str = "--window") -> float:
    """``90s``, ``15m``, ``1h``, ``1.5d``, ``1w`` → seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text or "")
    if not m or float(m.group(1)) <= 0:
        raise UserError(
            f"{what} {text!r}: expected a positive duration like 30m, 1h, 1d or 1w (units s, m, h, d, w)"
        )
    return float(m.group(1)) * UNITS[m.group(2)]


def _labels(raw: str | None) -> list[str]:
    try:
        v = json.loads(raw or "[]")
    except json.JSONDecodeError:
        return []
    return [str(x) for x in v] if isinstance(v, list) else []


def last_user_turn(prompt: str | None) -> str | None:
    """The last user message of a logged prompt (JSON list of {role, content}), or None."""
    try:
        msgs = json.loads(prompt or "[]")
    except json.JSONDecodeError:
        return None
    if not isinstance(msgs, list):
        return None
    for m in reversed(msgs):
        if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str):
            text = m["content"].strip()
            return text or None
    return None


def open_log(path: Path, needed: tuple[str, ...] = NEEDED) -> sqlite3.Connection:
    """The request log, read-only, with every column in ``needed``; anything else is a clear UserError.

    Shared by every reader of the log (monitor, flywheel harvest)."""
    if not path.exists():
        raise UserError(f"{path}: request log not found")
    if not path.is_file():
        raise UserError(f"{path}: not a file (expected the server's SQLite request log)")
    try:
        con = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True, timeout=30)
        cols = {r[1] for r in con.execute("PRAGMA table_info(requests)").fetchall()}
    except sqlite3.DatabaseError as e:
        raise UserError(f"{path}: not a distilltune request log (SQLite says: {e})") from None
    if not cols:
        con.close()
        raise UserError(f"{path}: not a distilltune request log (it has no 'requests' table)")
    missing = [c for c in needed if c not in cols]
    if missing:
        con.close()
        raise UserError(
            f"{path}: not a distilltune request log (table 'requests' lacks: {', '.join(missing)})"
        )
    return con


def read_log(path: str | Path, since_s: float | None = None) -> list[Request]:
    """Every request in the log (only the last ``since_s`` seconds before the newest one), oldest first."""
    p = Path(path)
    con = open_log(p)
    try:
        live = live_rows_clause(con)  # shadow copies (serve --shadow) answered nobody
        (newest,) = con.execute(f"SELECT MAX(ts) FROM requests WHERE {live}").fetchone()
        if newest is None:
            raise UserError(f"{p}: the request log holds no requests yet")
        lo = newest - since_s if since_s else -math.inf
        rows = con.execute(
            f"SELECT {', '.join(NEEDED)} FROM requests WHERE ts >= ? AND {live} ORDER BY ts, id", (lo,)
        ).fetchall()
    except sqlite3.DatabaseError as e:
        raise UserError(f"{p}: cannot read the request log ({e})") from None
    finally:
        con.close()
    out = []
    for rid, ts, status, route, prompt, answer, conf, rscore, ia, ir, orr, ctoks, lat in rows:
        if ts is None:
            continue
        refused_in = route == "refused_input" or ia == "refuse"
        out.append(
            Request(
                id=str(rid),
                ts=float(ts),
                status=status,
                route=str(route or "error"),
                question=None if refused_in else last_user_turn(prompt),
                answer=answer,
                confidence=conf,
                retrieval_score=rscore,
                input_reasons=_labels(ir),
                output_reasons=_labels(orr),
                completion_tokens=ctoks,
                latency_ms=lat,
            )
        )
    return out


def windows(requests: list[Request], window_s: float) -> list[Window]:
    """Non-empty windows of ``window_s`` seconds, aligned so the newest ends at the newest request.

    Aligning on the newest request (not the clock) makes the latest window always a full window of
    the most recent traffic, which is the one a cron job pages on.
    """
    if not requests:
        return []
    newest = max(r.ts for r in requests)
    buckets: dict[int, list[Request]] = {}
    for r in requests:
        buckets.setdefault(int((newest - r.ts) // window_s), []).append(r)
    out = []
    for k in sorted(buckets, reverse=True):
        end = newest - k * window_s
        out.append(Window(start=end - window_s, end=end, requests=buckets[k]))
    return out
