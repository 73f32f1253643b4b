"""Client-side drivers for the server's fault tests and ``benchmarks/serve_faults.py``.

Fuzzed request bodies (hypothesis strategies), concurrent load in which some clients go away
mid-request, a served process killed with SIGKILL during load, and an audit of the SQLite request
log. Every loop is bounded and every request goes to the loopback address the caller passes. The
tests run these at a small size, the benchmark at a larger one, so both measure the same thing.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx

FINISH_REASONS = ("stop", "length", "content_filter")
REQUIRED_COLUMNS = ("id", "ts", "model", "status", "route", "prompt", "input_reasons", "latency_ms")
QUESTIONS = (
    "When do you open on Sundays?",
    "How much is a city bike for a day?",
    "Do you repair brakes?",
    "Is a deposit needed for rentals?",
)


@dataclass
class Outcome:
    """One request as its client saw it."""

    kind: str  # "complete" | "stream" | "disconnect" | "timeout" | "fuzz" | "cut" (server killed)
    status: int | None  # None: no status line arrived (the client gave up, or the server died)
    request_id: str | None
    latency_s: float
    valid: bool  # the answer (or error) had the shape its status promises
    completed: bool  # the client read the whole response


# ---- what a valid answer looks like ----------------------------------------------------------


def error_shaped(body: bytes) -> bool:
    """OpenAI's error shape: ``{"error": {"message": str, "type": str, ...}}``."""
    try:
        err = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(err, dict) and isinstance(err.get("message"), str) and isinstance(err.get("type"), str)


def completion_shaped(body: bytes) -> bool:
    try:
        d = json.loads(body)
        choice = d["choices"][0]
        return (
            d["object"] == "chat.completion"
            and isinstance(choice["message"]["content"], str)
            and choice["finish_reason"] in FINISH_REASONS
        )
    except (ValueError, KeyError, TypeError, IndexError):
        return False


def stream_shaped(body: bytes) -> bool:
    """SSE chunks that parse, no in-band error event, a finish reason, and ``[DONE]`` last."""
    events = [ln[6:] for ln in body.decode("utf-8", "replace").splitlines() if ln.startswith("data: ")]
    if not events or events[-1] != "[DONE]":
        return False
    finishes = []
    for ev in events[:-1]:
        try:
            d = json.loads(ev)
        except ValueError:
            return False
        if "error" in d:
            return False
        finishes += [c.get("finish_reason") for c in d.get("choices", []) if c.get("finish_reason")]
    return len(finishes) == 1 and finishes[0] in FINISH_REASONS


def valid_response(status: int, headers: httpx.Headers, body: bytes, stream: bool) -> bool:
    """Whether a response is what its status promises (a 5xx never is: clients retry those)."""
    if status >= 500:
        return False
    if status == 200:
        return stream_shaped(body) if stream else completion_shaped(body)
    if status == 429 and not headers.get("retry-after", "").isdigit():
        return False
    return error_shaped(body)


def chat(text: str, max_tokens: int, stream: bool = False, model: str = "student") -> dict:
    return {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "stream": stream,
    }


# ---- fuzzed bodies (hypothesis) -----------------------------------------------------------------


def request_bodies():
    """A hypothesis strategy of request bodies as bytes, shaped by the OpenAI request schema.

    Schema-shaped bodies whose fields take wrong types, huge or negative numbers, lone surrogates and
    nested junk; any JSON value at all; JSON nested thousands deep; and bytes that are not JSON.
    """
    from hypothesis import strategies as st

    surrogate = st.sampled_from(["\ud800", "\udfff", "\ud83d", "\udc00x"])
    text = st.text(max_size=40) | st.builds(
        lambda a, s, b: a + s + b, st.text(max_size=12), surrogate, st.text(max_size=12)
    )
    number = (
        st.integers(-(2**70), 2**70)
        | st.integers(-(10**400), 10**400)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.sampled_from([0, -1, 1, 2**63, 2**64, -(2**63) - 1, 1e-40, 1e308, 4.9e-324, 0.5, 2.0000001])
    )
    leaf = st.none() | st.booleans() | number | text
    anything = st.recursive(
        leaf,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
        max_leaves=12,
    )
    role = st.sampled_from(["user", "assistant", "system", "developer", "tool", "function"]) | anything
    part = st.fixed_dictionaries({"type": st.just("text") | anything, "text": text | anything})
    content = text | st.lists(part, max_size=3) | anything
    message = st.fixed_dictionaries({"role": role, "content": content}, optional={"name": anything})
    user_last = st.lists(message, max_size=3).map(lambda ms: [*ms, {"role": "user", "content": "hi there"}])
    field = number | anything
    valid = st.fixed_dictionaries(
        {
            "model": st.just("student"),
            "messages": st.lists(
                st.fixed_dictionaries({"role": st.just("user"), "content": text.filter(str.strip)}),
                min_size=1,
                max_size=2,
            ),
        },
        optional={
            "max_tokens": st.integers(1, 12),
            "temperature": st.floats(0, 2),
            "top_p": st.floats(0.05, 1),
            "seed": st.integers(0, 2**31),
            "stream": st.booleans(),
            "stop": st.lists(text.filter(bool), max_size=4),
            "user": text,
        },
    )
    schema = st.fixed_dictionaries(
        {
            "model": st.just("student") | anything,
            "messages": user_last | st.lists(message, max_size=4) | anything,
        },
        optional={
            "max_tokens": st.integers(-3, 12) | field,
            "max_completion_tokens": st.integers(-3, 12) | field,
            "temperature": st.floats(0, 2) | field,
            "top_p": field,
            "seed": field,
            "n": field,
            "stream": st.booleans() | anything,
            "stream_options": st.fixed_dictionaries({"include_usage": anything}) | anything,
            "stop": text | st.lists(text, max_size=6) | anything,
            "user": anything,
            "logprobs": anything,
            "tools": anything,
            "response_format": anything,
        },
    )
    as_json = (valid | schema | anything).map(lambda v: json.dumps(v, ensure_ascii=True).encode())
    deep = st.builds(
        lambda n, o, c: (o * n + c * n).encode(),
        st.integers(100, 20_000),
        st.sampled_from(["[", '{"a":']),
        st.sampled_from(["]", "}"]),
    )
    literal = st.sampled_from([b"NaN", b'{"model": Infinity}', b'{"max_tokens": -Infinity}', b""])
    return as_json | deep | literal | st.binary(max_size=64)


# ---- one request ----------------------------------------------------------------------------------


def post_raw(client: httpx.Client, url: str, content: bytes, kind: str = "fuzz") -> Outcome:
    """POST a body as given (any bytes) and judge the response."""
    t0 = time.perf_counter()
    r = client.post(
        f"{url}/v1/chat/completions", content=content, headers={"Content-Type": "application/json"}
    )
    stream = r.headers.get("content-type", "").startswith("text/event-stream")
    ok = valid_response(r.status_code, r.headers, r.content, stream)
    return Outcome(kind, r.status_code, r.headers.get("x-request-id"), time.perf_counter() - t0, ok, True)


def send(client: httpx.Client, url: str, kind: str, text: str, max_tokens: int) -> Outcome:
    """One request of ``kind``: a whole answer, a whole stream, a stream dropped after its first
    event (``disconnect``), or an answer the client stops waiting for (``timeout``)."""
    t0 = time.perf_counter()
    body = chat(text, max_tokens, stream=kind in ("stream", "disconnect"))
    if kind == "timeout":
        try:
            r = client.post(f"{url}/v1/chat/completions", json=body, timeout=0.02)
        except httpx.TimeoutException:
            return Outcome(kind, None, None, time.perf_counter() - t0, True, False)
        ok = valid_response(r.status_code, r.headers, r.content, False)
        return Outcome(kind, r.status_code, r.headers.get("x-request-id"), time.perf_counter() - t0, ok, True)
    with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        rid = r.headers.get("x-request-id")
        if kind == "disconnect" and r.status_code == 200:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    break  # one event, then hang up
            return Outcome(kind, r.status_code, rid, time.perf_counter() - t0, True, False)
        content = r.read()
    ok = valid_response(r.status_code, r.headers, content, body["stream"])
    return Outcome(kind, r.status_code, rid, time.perf_counter() - t0, ok, True)


# ---- load ---------------------------------------------------------------------------------------


def kind_of(n: int, disconnect_every: int, timeout_every: int) -> str:
    """The request schedule: every k-th request disconnects or times out, the rest alternate."""
    if disconnect_every and n % disconnect_every == disconnect_every - 1:
        return "disconnect"
    if timeout_every and n % timeout_every == timeout_every - 2:
        return "timeout"
    return "stream" if n % 2 else "complete"


def run_load(
    url: str,
    clients: int = 8,
    per_client: int = 4,
    max_tokens: int = 8,
    disconnect_every: int = 4,
    timeout_every: int = 0,
    stop: threading.Event | None = None,
) -> list[Outcome]:
    """``clients`` threads, each sending up to ``per_client`` requests back to back (bounded).

    With ``stop`` set mid-run (the server is being killed), a request that fails to connect or is cut
    off records status None and its thread ends.
    """
    results: list[Outcome] = []
    lock = threading.Lock()

    def client_loop(i: int) -> None:
        with httpx.Client(timeout=60) as client:
            for k in range(per_client):
                if stop is not None and stop.is_set():
                    return
                kind = kind_of(i * per_client + k, disconnect_every, timeout_every)
                t0 = time.perf_counter()
                try:
                    out = send(client, url, kind, QUESTIONS[(i + k) % len(QUESTIONS)], max_tokens)
                except httpx.TransportError:
                    if stop is None:
                        raise
                    out = Outcome("cut", None, None, time.perf_counter() - t0, False, False)
                with lock:
                    results.append(out)
                if out.status is None and stop is not None:
                    return

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not any(t.is_alive() for t in threads), "a load client never finished"
    return results


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def summary(outcomes: list[Outcome]) -> dict:
    """Requests sent, statuses, completed/valid counts and latency percentiles of completed 200s."""
    ok = [o.latency_s * 1000 for o in outcomes if o.status == 200 and o.completed]
    return {
        "sent": len(outcomes),
        "statuses": dict(Counter(str(o.status) for o in outcomes)),
        "kinds": dict(Counter(o.kind for o in outcomes)),
        "completed": sum(o.completed for o in outcomes),
        "invalid": sum(not o.valid for o in outcomes if o.status is not None),
        "cut": sum(o.kind == "cut" for o in outcomes),
        "p50_ms": percentile(ok, 0.5),
        "p95_ms": percentile(ok, 0.95),
    }


# ---- the request log ----------------------------------------------------------------------------


def log_rows(db: str | Path) -> list[dict]:
    con = sqlite3.connect(str(db), timeout=30)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT * FROM requests ORDER BY ts")]
    finally:
        con.close()


def integrity(db: str | Path) -> str:
    """``PRAGMA integrity_check`` of the log (opening it runs SQLite's WAL recovery)."""
    con = sqlite3.connect(str(db), timeout=30)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


def incomplete_rows(rows: list[dict]) -> list[str]:
    """Ids of rows missing a field every finished request has, or holding unparseable JSON."""
    bad = []
    for r in rows:
        try:
            fine = all(r.get(c) is not None for c in REQUIRED_COLUMNS) and isinstance(
                json.loads(r["prompt"]), list
            )
        except ValueError:
            fine = False
        if not fine:
            bad.append(str(r.get("id")))
    return bad


def wait_for_rows(db: str | Path, n: int, timeout_s: float = 30) -> int:
    """Poll until the log holds ``n`` rows (a dropped client is logged once the server notices)."""
    deadline = time.monotonic() + timeout_s
    count = len(log_rows(db))
    while count < n and time.monotonic() < deadline:
        time.sleep(0.1)
        count = len(log_rows(db))
    return count


# ---- a server process to kill -------------------------------------------------------------------


def start_server(model: str, task: str, db: str | Path, port: int, overrides: list[str]) -> subprocess.Popen:
    """``distilltune serve`` on 127.0.0.1 in a child process (output to a file next to the log)."""
    cmd = [sys.executable, "-m", "distilltune", "serve", model, "--task", task, "--port", str(port)]
    cmd += ["--log-db", str(db), *overrides]
    env = {**os.environ, "DISTILLTUNE_NO_REEXEC": "1"}
    out = open(Path(str(db) + ".server.txt"), "ab")  # noqa: SIM115 - the child owns it
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before it was healthy")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the server was not healthy within {timeout_s:g} s")


def kill_during_load(url: str, proc: subprocess.Popen, db: str | Path, load: dict, kill_after: int) -> dict:
    """Run ``run_load(**load)`` and SIGKILL the server once ``kill_after`` requests were answered.

    Returns the figures: requests sent and their statuses, answers acknowledged before the kill, rows
    in the log, rows incomplete, acknowledged answers missing from the log, the integrity check.
    """
    stop = threading.Event()
    box: list[list[Outcome]] = []
    loader = threading.Thread(target=lambda: box.append(run_load(url, stop=stop, **load)), daemon=True)
    loader.start()
    deadline = time.monotonic() + 300
    while loader.is_alive() and time.monotonic() < deadline:
        if _acked(url) >= kill_after:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    stop.set()
    proc.wait(30)
    loader.join(120)
    outcomes = box[0] if box else []
    acked = {o.request_id for o in outcomes if o.status == 200 and o.completed and o.request_id}
    check = integrity(db)
    rows = log_rows(db)
    logged = {r["id"] for r in rows}
    return {
        **summary(outcomes),
        "acknowledged": len(acked),
        "rows_logged": len(rows),
        "rows_incomplete": len(incomplete_rows(rows)),
        "acknowledged_not_logged": len(acked - logged),
        "integrity_check": check,
    }


def _acked(url: str) -> int:
    """Answers the server has finished, from its own counter (``/metrics``)."""
    try:
        text = httpx.get(f"{url}/metrics", timeout=2).text
    except httpx.TransportError:
        return 0
    total = 0.0
    for line in text.splitlines():
        if line.startswith("distilltune_requests_total{") and 'status="200"' in line:
            total += float(line.split()[-1])
    return int(total)
