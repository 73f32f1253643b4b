"""``POST /v1/feedback``: a user's thumbs up/down, and optionally a corrected answer, for a logged request.

Every chat completion answers with its id in ``X-Request-Id`` (and the body's ``id``); a client sends
it back with ``{"id": ..., "rating": "up" | "down", "correction": "..."}``. The feedback is stored
in the request log's SQLite file, in a ``feedback`` table next to ``requests`` (created when first
needed, so logs written before this table existed keep working), one row per request id: a second
rating for the same request replaces the first (a user who changes their mind, a client that
retries). The data flywheel (``distilltune flywheel``) harvests thumbs-down requests and corrections.

A correction is user text like any request: it passes the task's input guard before it is stored,
so PII is redacted (``[EMAIL]``); a correction the guard refuses outright (an injection, a blocked
topic) is not stored at all, only its verdict. Errors: 404 for an id the log does not hold, 400 for
a body that is not a JSON object, 422 for one that does not fit the schema (named fields, never the
values), 401/403/415 as for chat completions; never a 5xx for bad input. Database work runs off the
event loop.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from distilltune.serve.intake import allowed_hosts, check_access, parse_json_body, read_body
from distilltune.serve.openai_types import APIError

TABLE = "feedback"
MAX_CORRECTION_CHARS = 8000
SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} ("
    "request_id TEXT PRIMARY KEY, ts REAL, rating TEXT, correction TEXT, "
    "correction_action TEXT, correction_reasons TEXT)"
)


class Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=128, description="the request id (X-Request-Id)")
    rating: Literal["up", "down"]
    correction: str | None = Field(default=None, min_length=1, max_length=MAX_CORRECTION_CHARS)


def _connect(path: str | Path) -> sqlite3.Connection:
    con = sqlite3.connect(str(path), timeout=30)
    con.execute(SCHEMA)
    return con


def _request_exists(path: str | Path, request_id: str) -> bool:
    con = _connect(path)
    try:
        return con.execute("SELECT 1 FROM requests WHERE id = ?", (request_id,)).fetchone() is not None
    finally:
        con.close()


def store(path: str | Path, fb: Feedback, guard, ts: float | None = None) -> dict:
    """Guard the correction and upsert the feedback row; returns what the client is told."""
    action, reasons, text = None, [], None
    if fb.correction is not None:
        d = guard.check_input(fb.correction)
        action, reasons = d.action, list(d.reasons)
        text = None if d.action == "refuse" else d.redacted_text
    con = _connect(path)
    try:
        con.execute(
            f"INSERT OR REPLACE INTO {TABLE} VALUES (?, ?, ?, ?, ?, ?)",
            (fb.id, ts or time.time(), fb.rating, text, action, json.dumps(reasons)),
        )
        con.commit()
    finally:
        con.close()
    correction = None
    if fb.correction is not None:
        correction = {"stored": text is not None, "action": action, "reasons": reasons}
    return {"object": "feedback", "id": fb.id, "rating": fb.rating, "correction": correction}


def read_feedback(path: str | Path) -> dict[str, dict]:
    """request id → {rating, correction, ts, ...}, read-only; empty for a log without the table."""
    con = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True, timeout=30)
    try:
        has = con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (TABLE,)).fetchone()
        if not has:
            return {}
        rows = con.execute(
            f"SELECT request_id, ts, rating, correction, correction_action, correction_reasons FROM {TABLE}"
        ).fetchall()
    finally:
        con.close()
    return {
        rid: {"ts": ts, "rating": rating, "correction": corr, "correction_action": act,
              "correction_reasons": json.loads(reasons or "[]")}
        for rid, ts, rating, corr, act, reasons in rows
    }  # fmt: skip


def parse_feedback(body: bytes) -> Feedback:
    return parse_json_body(body, Feedback)


def register(app: FastAPI, state) -> None:
    """Add ``POST /v1/feedback`` to the server's app (``state``: the ``ServerState``)."""
    cfg = state.config
    hosts = allowed_hosts(cfg)

    @app.post("/v1/feedback")
    async def feedback(request: Request):
        check_access(request, state.api_key, hosts)  # the same rules as chat completions
        fb = parse_feedback(await read_body(request, cfg.limits.max_body_bytes, cfg.limits.body_timeout_s))
        db = state.log.path
        if not await asyncio.to_thread(_request_exists, db, fb.id):
            # The request's row may still sit in the log writer's queue: flush it, then look again.
            await asyncio.to_thread(state.log.flush, 5.0)
            if not await asyncio.to_thread(_request_exists, db, fb.id):
                raise APIError(404, "no logged request has this id", code="request_not_found", param="id")
        out = await asyncio.to_thread(store, db, fb, state.guard)
        state.metrics.feedback.labels(fb.rating).inc()
        return out
