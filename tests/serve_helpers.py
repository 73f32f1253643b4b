"""A live ``distilltune serve`` on 127.0.0.1 for tests: uvicorn in a thread, bounded start-up."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(cfg):
    """Build the state for ``cfg`` (a ``ServeConfig``), serve it on a free loopback port, yield
    ``(url, state)``, then stop the server (engines and log stop with the app)."""
    import uvicorn

    from distilltune.serve.app import create_app
    from distilltune.serve.loading import build_state

    state = build_state(cfg)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(state), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}", state
    finally:
        srv.should_exit = True
        thread.join(30)
