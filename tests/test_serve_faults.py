"""The server under fuzzed bodies, concurrent load with clients that hang up, and SIGKILL.

- Fuzz: hypothesis-generated bodies (schema-shaped with wrong types, huge and negative numbers,
  lone surrogates; any JSON; JSON nested thousands deep; non-JSON bytes) never get a 5xx, every
  answer has the shape its status promises, the server stays healthy, and each request is logged
  exactly once.
- Load: 8 clients at once, some dropping their stream after the first event and some giving up
  waiting: every completed request has a valid answer, nothing stays queued or decoding, and the log
  holds one row per request sent (a dropped client's row says 499, or 200 if it finished first).
- Crash: ``distilltune serve`` in a child process is SIGKILLed during load. The log passes
  ``PRAGMA integrity_check``, holds no more rows than requests sent, every row is complete, and a
  server restarted on the same file logs on.

Bounded loops, 127.0.0.1 only, a 2-layer tiny model. ``benchmarks/serve_faults.py`` runs the same
drivers (``fault_drivers``) at a larger size and records the figures.
"""

from __future__ import annotations

import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from conftest import TINY_TASK
from fault_drivers import (
    chat,
    incomplete_rows,
    integrity,
    kill_during_load,
    log_rows,
    post_raw,
    request_bodies,
    run_load,
    start_server,
    summary,
    wait_for_rows,
    wait_healthy,
)
from serve_helpers import free_port, running_server

LIMITS = {"max_tokens": 16, "timeout_s": 60, "body_timeout_s": 5}


@pytest.fixture(scope="module")
def live(tiny_model_dir, tmp_path_factory):
    from distilltune.serve.config import ServeConfig

    cfg = ServeConfig(
        model=str(tiny_model_dir),
        task=str(TINY_TASK),
        served_name="student",
        log_db=str(tmp_path_factory.mktemp("faults-log") / "requests.db"),
        limits=LIMITS,
        generation={"default_max_tokens": 4},
    )
    with running_server(cfg) as srv:
        yield srv


def _healthy_and_idle(url: str, state) -> None:
    import time

    deadline = time.monotonic() + 30
    eng = state.student.engine
    while (eng.active or eng.queue_depth) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert eng.active == 0 and eng.queue_depth == 0, "a request stayed queued or decoding"
    h = httpx.get(f"{url}/health", timeout=10)
    assert h.status_code == 200 and h.json()["status"] == "ok", h.text
    r = httpx.post(f"{url}/v1/chat/completions", json=chat("When do you open?", 4), timeout=60)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] is not None


def test_fuzzed_bodies_never_get_a_5xx_and_are_each_logged_once(live):
    url, state = live
    db = state.config.log_db
    state.log.flush()
    before = len(log_rows(db))
    outcomes = []

    with httpx.Client(timeout=60) as client:

        @settings(
            max_examples=60,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(body=request_bodies())
        def probe(body: bytes) -> None:
            out = post_raw(client, url, body)
            outcomes.append(out)
            assert out.status is not None and out.status < 500, (out.status, body[:200])
            assert out.valid, (out.status, body[:200])

        probe()

    s = summary(outcomes)
    print(f"\nfuzz: {s}")
    assert s["sent"] >= 60 and s["invalid"] == 0
    assert any(code.startswith("4") for code in s["statuses"]), "the fuzzer should reach the 4xx paths"
    _healthy_and_idle(url, state)
    state.log.flush()
    assert state.log.healthy and state.log.dropped == 0
    # one row per fuzzed request, plus the health probe's request
    assert wait_for_rows(db, before + s["sent"] + 1) == before + s["sent"] + 1


def test_load_with_dropped_clients_answers_and_logs_every_request(live):
    url, state = live
    db = state.config.log_db
    state.log.flush()
    before = {r["id"] for r in log_rows(db)}
    outcomes = run_load(url, clients=8, per_client=4, max_tokens=12, disconnect_every=4, timeout_every=7)
    s = summary(outcomes)
    print(f"\nload: {s}")
    assert s["sent"] == 32 and s["invalid"] == 0
    assert all(o.status is None or o.status < 500 for o in outcomes)
    assert s["kinds"].get("disconnect", 0) >= 6 and s["kinds"].get("timeout", 0) >= 3
    done = [o for o in outcomes if o.completed]
    assert done and all(o.status in (200, 429) for o in done)

    # Every request sent is logged exactly once, dropped ones included, once the server notices.
    count = wait_for_rows(db, len(before) + s["sent"])
    rows = [r for r in log_rows(db) if r["id"] not in before]
    assert count == len(before) + s["sent"] and len(rows) == s["sent"], (count, len(rows))
    by_id = {r["id"]: r for r in rows}
    for o in done:
        assert by_id[o.request_id]["status"] == o.status
    for o in outcomes:
        if o.kind == "disconnect" and o.request_id:
            assert by_id[o.request_id]["status"] in (200, 499)
    assert not incomplete_rows(rows)
    _healthy_and_idle(url, state)


def test_sigkill_during_load_leaves_a_sound_log_that_a_restart_reopens(tiny_model_dir, tmp_path):
    db = tmp_path / "requests.db"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    overrides = [
        "--",
        "served_name=student",
        "limits.max_tokens=16",
        "generation.default_max_tokens=4",
    ]
    proc = start_server(str(tiny_model_dir), str(TINY_TASK), db, port, overrides)
    try:
        wait_healthy(url, proc)
        load = {"clients": 6, "per_client": 20, "max_tokens": 12, "disconnect_every": 5}
        figures = kill_during_load(url, proc, db, load, kill_after=12)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    print(f"\nsigkill: {figures}")
    assert figures["integrity_check"] == "ok"
    assert figures["acknowledged"] >= 12
    assert 0 < figures["rows_logged"] <= figures["sent"]
    assert figures["rows_incomplete"] == 0

    from distilltune.serve.config import ServeConfig

    cfg = ServeConfig(
        model=str(tiny_model_dir),
        task=str(TINY_TASK),
        served_name="student",
        log_db=str(db),
        limits=LIMITS,
        generation={"default_max_tokens": 4},
    )
    with running_server(cfg) as (url2, state):
        r = httpx.post(f"{url2}/v1/chat/completions", json=chat("Do you repair brakes?", 4), timeout=60)
        assert r.status_code == 200
        state.log.flush()
        rows = log_rows(db)
    assert len(rows) == figures["rows_logged"] + 1 and integrity(db) == "ok"
    assert rows[-1]["id"] == r.headers["x-request-id"]
