"""Request-log retention: rows older than ``log_retention_days`` go at start-up and periodically,
and their text is gone from the files (``.db`` and ``-wal``), not only from query results."""

from __future__ import annotations

import time

import pytest

from fault_drivers import integrity, log_rows


def _files_blob(db) -> bytes:
    return b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))


def test_old_rows_are_deleted_at_start_up_and_periodically(tmp_path):
    from distilltune.serve.requestlog import LogRecord, RequestLog

    db = tmp_path / "requests.db"
    now = time.time()
    log = RequestLog(db)  # no retention: everything is kept
    log.write(LogRecord(id="old", ts=now - 3 * 86400, model="m", answer="ANSWER-FROM-THREE-DAYS-AGO"))
    log.write(LogRecord(id="new", ts=now - 3600, model="m", answer="answer from an hour ago"))
    log.close()
    assert [r["id"] for r in log_rows(db)] == ["old", "new"]

    log = RequestLog(db, retention_days=1, purge_every_s=0.2)
    try:
        assert [r["id"] for r in log_rows(db)] == ["new"] and log.purged == 1
        assert b"ANSWER-FROM-THREE-DAYS-AGO" not in _files_blob(db)
        # A row that falls out of the window while the server runs goes at the next purge.
        log.write(LogRecord(id="stale", ts=now - 2 * 86400, model="m", answer="STALE-ROW-TEXT"))
        log.flush()
        deadline = time.monotonic() + 20
        while log.purged < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [r["id"] for r in log_rows(db)] == ["new"] and log.purged == 2
        log.write(LogRecord(id="now", ts=time.time(), model="m", answer="fresh"))
        log.flush()
        assert log.healthy and {r["id"] for r in log_rows(db)} == {"new", "now"}
    finally:
        log.close()
    assert b"STALE-ROW-TEXT" not in _files_blob(db) and integrity(db) == "ok"


def test_retention_is_a_serve_option(tmp_path):
    from pydantic import ValidationError

    from distilltune.serve.config import ServeConfig

    assert ServeConfig(model="m", task="t", log_retention_days=30).log_retention_days == 30
    assert ServeConfig(model="m", task="t").log_retention_days is None
    with pytest.raises(ValidationError):
        ServeConfig(model="m", task="t", log_retention_days=0)
