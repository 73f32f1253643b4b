"""A server that survives its clients: one request can fail only itself, never the engine or the log.

Regression tests for single requests that used to stop the server for good or leak through errors:
an out-of-range seed or a vanishing temperature (killed the engine's worker), a lone surrogate (killed
the log writer while ``/health`` said OK), JSON nested 5,000 deep or a 5,000-digit number (500), a
body that never finishes (held a connection forever), the unknown-model 404 echoing the model field,
exception text in ``/health`` and 503 bodies, cross-origin and non-JSON POSTs without an API key, a
429 counted twice. Everything runs against 127.0.0.1 with bounded waits.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import threading
import time

import httpx
import pytest

from conftest import TINY_TASK
from serve_helpers import running_server

KEY_ENV = "DISTILLTUNE_TEST_HARDENING_KEY"
KEY = "sk-test-hardening-3c1d"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def live(tiny_model_dir, tmp_path_factory):
    from distilltune.serve.config import ServeConfig

    os.environ[KEY_ENV] = KEY
    cfg = ServeConfig(
        model=str(tiny_model_dir),
        task=str(TINY_TASK),
        served_name="student",
        api_key_env=KEY_ENV,
        log_db=str(tmp_path_factory.mktemp("hardening-log") / "requests.db"),
        # timeout_s bounds a request the old code would have left hanging on a dead engine.
        limits={"max_tokens": 64, "timeout_s": 20, "body_timeout_s": 1.0},
        generation={"default_max_tokens": 4},
    )
    with running_server(cfg) as srv:
        yield srv


def _post(url: str, body, headers: dict | None = None, **kw) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions", json=body, headers={**AUTH, **(headers or {})}, timeout=60, **kw
    )


def _chat(text: str, **kw) -> dict:
    return {"model": "student", "messages": [{"role": "user", "content": text}], "max_tokens": 4, **kw}


def _rows(state) -> list[dict]:
    state.log.flush()
    con = sqlite3.connect(state.config.log_db)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT * FROM requests ORDER BY ts")]
    finally:
        con.close()


def _healthy(url: str) -> bool:
    r = httpx.get(f"{url}/health", timeout=10)
    return r.status_code == 200 and r.json()["status"] == "ok"


# ---- the engine -------------------------------------------------------------------------------


def _run(engine, prompt, timeout: float = 60, **kw):
    """Submit and wait, bounded (a request the old engine dropped would otherwise hang the test)."""
    from distilltune.inference.engine import GenRequest

    done, box = threading.Event(), []

    def on_done(res):
        box.append(res)
        done.set()

    engine.submit_request(GenRequest(list(prompt), 6, on_done=on_done, **kw))
    assert done.wait(timeout), "the request never finished"
    return box[0]


def test_a_failing_request_fails_alone_and_the_engine_goes_on(tiny_model_dir, tokenizer):
    from distilltune.inference.engine import Engine
    from distilltune.models import load_model
    from distilltune.models.generate import stop_token_ids

    loaded = load_model(str(tiny_model_dir))
    stops = stop_token_ids(loaded.tokenizer)
    engine = Engine(loaded.model, stops, stops[0], max_batch=4).start()
    prompt = tokenizer("How much is a city bike?")["input_ids"]
    try:
        reference = _run(engine, prompt)
        assert reference.finish_reason in ("stop", "length") and reference.token_ids
        with pytest.raises(ValueError):  # outside torch's seed range: refused at the door
            _run(engine, prompt, temperature=1.0, seed=2**64)
        # Infinite logits/temperature → NaN probabilities inside the worker: only this request fails.
        bad = _run(engine, prompt, temperature=1e-40)
        assert bad.finish_reason == "error" and bad.error == "sampling failed"

        def broken_callback(tok, lp):
            raise RuntimeError("a caller's bug")

        assert _run(engine, prompt, on_token=broken_callback).finish_reason == "error"
        assert engine.healthy and engine.fatal is None
        again = _run(engine, prompt)
        assert again.token_ids == reference.token_ids and again.finish_reason == reference.finish_reason
    finally:
        engine.stop()


def test_sampling_parameters_are_validated_up_front(live):
    url, _state = live
    cases = [
        (_chat("hi", seed=18446744073709551616), 400, "seed"),
        (_chat("hi", seed=-(2**63) - 1), 400, "seed"),
        (_chat("hi", temperature=1e-40), 400, "temperature"),
        (_chat("hi", max_tokens=True), 422, "max_tokens"),
        (_chat("hi", max_tokens=100_000, max_completion_tokens=5), 400, "max_tokens"),
        (_chat("hi", max_tokens=5, max_completion_tokens=100_000), 400, "max_completion_tokens"),
    ]
    for body, status, param in cases:
        r = _post(url, body)
        assert r.status_code == status, (body, r.text)
        assert r.json()["error"]["param"] == param
    assert _post(url, _chat("hi", seed=2**63 - 1, temperature=0.7)).status_code == 200
    assert _post(url, _chat("What time does the shop close?")).status_code == 200
    assert _healthy(url)


# ---- the request log ----------------------------------------------------------------------------


def test_a_lone_surrogate_neither_fails_the_request_nor_the_log(live):
    url, state = live
    before = len(_rows(state))
    body = json.dumps(_chat("hello \ud800 when do you open?"))  # the JSON escape "\\ud800"
    assert "\\ud800" in body
    r = httpx.post(
        f"{url}/v1/chat/completions",
        content=body,
        headers={**AUTH, "Content-Type": "application/json"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert _post(url, _chat("And on Sundays?")).status_code == 200
    rows = _rows(state)[before:]
    assert len(rows) == 2 and all(row["status"] == 200 for row in rows)
    assert "\ufffd" in rows[0]["prompt"]
    assert state.log.healthy and _healthy(url)


def test_the_log_writer_survives_unencodable_rows(tmp_path):
    from distilltune.serve.requestlog import LogRecord, RequestLog

    log = RequestLog(tmp_path / "r.db")
    try:
        bad = LogRecord(
            id="a", ts=1.0, model="m\udc80", answer="x\ud800y", prompt=[{"role": "user", "content": "\udfff"}]
        )
        log.write(bad)
        log.write(LogRecord(id="b", ts=2.0, model="m", answer="fine"))
        log.flush()
        assert log.healthy and log.written == 2
    finally:
        log.close()
    con = sqlite3.connect(tmp_path / "r.db")
    rows = con.execute("SELECT id, answer FROM requests ORDER BY ts").fetchall()
    con.close()
    assert rows == [("a", "x?y"), ("b", "fine")]


@contextlib.contextmanager
def _swapped(obj, name: str, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def test_health_reports_a_dead_log_writer_or_engine_without_internals(live, tmp_path):
    from distilltune.serve.requestlog import RequestLog

    url, state = live
    dead = RequestLog(tmp_path / "dead.db")
    dead.close()  # its writer thread has ended: nothing would be recorded any more
    with _swapped(state, "log", dead):
        r = httpx.get(f"{url}/health", timeout=10)
    assert r.status_code == 503 and r.json()["status"] == "error" and r.json()["log"]["healthy"] is False
    secret = "CUDA error: device-side assert at /internal/path.cu:42"
    with _swapped(state.student.engine, "fatal", f"RuntimeError: {secret}"):
        h = httpx.get(f"{url}/health", timeout=10)
        p = _post(url, _chat("hi"))
    assert h.status_code == 503 and h.json()["engines"]["student"]["healthy"] is False
    assert p.status_code == 503
    for body in (h.text, p.text):
        assert "device-side" not in body and "internal/path" not in body and "RuntimeError" not in body
    assert _healthy(url)


# ---- what arrives over HTTP ---------------------------------------------------------------------


def test_malformed_json_of_any_depth_or_size_is_a_400(live):
    url, _state = live
    headers = {**AUTH, "Content-Type": "application/json"}
    bodies = [
        "[" * 5000 + "]" * 5000,
        '{"a": ' * 5000 + "1" + "}" * 5000,
        json.dumps(_chat("hi"))[:-1] + ', "extra": ' + "[" * 5000 + "]" * 5000 + "}",
        json.dumps(_chat("hi")).replace('"max_tokens": 4', '"max_tokens": 1' + "0" * 5000),
    ]
    for body in bodies:
        r = httpx.post(f"{url}/v1/chat/completions", content=body, headers=headers, timeout=60)
        assert r.status_code == 400, r.text[:200]
        assert r.json()["error"]["code"] == "invalid_json"


def test_a_slow_body_times_out(live):
    url, state = live
    port = int(url.rsplit(":", 1)[1])
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n"
        '{"model": "student", '
    )
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head.encode())  # ...and never the rest
        reply = s.recv(4096).decode(errors="replace")
    assert reply.startswith("HTTP/1.1 408"), reply[:100]
    assert time.monotonic() - t0 < 8
    assert _rows(state)[-1]["status"] == 408


def test_the_total_characters_of_a_request_are_capped_without_echo(live):
    """Each message under max_message_chars, together over max_request_chars: a 400 before the guard
    reads them (the guard's CPU grows with the total; a 256 KB body of digit runs cost ~7 s)."""
    url, state = live
    cap = state.config.limits.max_request_chars
    assert cap < state.config.limits.max_message_chars * 3  # three messages can pass it
    part = ("555 867 5309 " * (cap // 13 + 1))[: cap // 3 + 10]  # digit runs: the guard's worst case
    convo = [
        {"role": "user", "content": part},
        {"role": "assistant", "content": part},
        {"role": "user", "content": part},
    ]
    r = _post(url, {"model": "student", "messages": convo, "max_tokens": 4})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "request_too_long" and err["param"] == "messages"
    assert "555" not in r.text and str(cap) in err["message"]
    convo[-1]["content"] = part[: cap - 2 * len(part)]  # exactly at the cap: accepted
    assert sum(len(m["content"]) for m in convo) == cap
    assert _post(url, {"model": "student", "messages": convo, "max_tokens": 4}).status_code == 200
    assert _healthy(url)


def test_unknown_model_404_does_not_echo_the_model_field(live):
    url, _state = live
    r = _post(url, {**_chat("hi"), "model": "jane.roe@example.com"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert "jane.roe" not in r.text


def test_without_a_key_browser_requests_are_refused(live):
    url, state = live
    body = json.dumps(_chat("When do you open?"))
    with _swapped(state, "api_key", None):
        plain = httpx.post(f"{url}/v1/chat/completions", content=body, headers={"Content-Type": "text/plain"})
        form = httpx.post(f"{url}/v1/chat/completions", data={"model": "student"})
        foreign = httpx.post(
            f"{url}/v1/chat/completions",
            content=body,
            headers={"Content-Type": "application/json", "Origin": "https://evil.example"},
        )
        null_origin = httpx.post(
            f"{url}/v1/chat/completions",
            content=body,
            headers={"Content-Type": "application/json", "Origin": "null"},
        )
        rebound = httpx.post(
            f"{url}/v1/chat/completions",
            content=body,
            headers={"Content-Type": "application/json", "Host": "evil.example"},
        )
        same = httpx.post(
            f"{url}/v1/chat/completions",
            content=body,
            headers={"Content-Type": "application/json", "Origin": url},
            timeout=60,
        )
        tool = httpx.post(
            f"{url}/v1/chat/completions",
            content=body,
            headers={"Content-Type": "application/json; charset=utf-8"},
            timeout=60,
        )
    assert plain.status_code == 415 and form.status_code == 415
    assert foreign.status_code == 403 and null_origin.status_code == 403 and rebound.status_code == 403
    assert foreign.json()["error"]["code"] == "cross_origin"
    assert rebound.json()["error"]["code"] == "forbidden_host"
    assert same.status_code == 200 and tool.status_code == 200


def _metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def test_a_429_is_counted_once(live):
    url, state = live
    name = 'distilltune_errors_total{status="429"}'
    before = _metric(url, name)
    with _swapped(state.student.engine, "max_queue", 0):  # every submission finds the queue full
        r = _post(url, _chat("hi"))
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert _metric(url, name) == before + 1
