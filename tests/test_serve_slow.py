"""The bundled task's adversarial suite against a live server with the real models (slow).

Student: the bundled SmolLM2-135M-Instruct pruned to 6 layers (what distillation starts from; untrained
it is unsure of nearly everything, so the cascade hands most answers to the teacher); fallback: the
bundled teacher itself. Every case goes through the full request path on 127.0.0.1 with the official
openai client: input guard, retrieval, student, cascade, output guard, request log.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

EXAMPLE_TASK = Path(__file__).resolve().parent.parent / "examples" / "acme-support"
KEY_ENV = "DISTILLTUNE_TEST_SERVE_KEY_SLOW"


@pytest.mark.slow
def test_acme_adversarial_suite_against_the_server(tmp_path, monkeypatch):
    if not (EXAMPLE_TASK / "task.yaml").exists():
        pytest.skip("examples/acme-support is not present")
    monkeypatch.delenv("DISTILLTUNE_HOME", raising=False)  # the real teacher lives in the user's cache
    monkeypatch.setenv(KEY_ENV, "sk-slow-test")
    import openai
    import uvicorn

    from distilltune.evaluation.metrics import is_refusal
    from distilltune.serve.app import create_app
    from distilltune.serve.config import ServeConfig
    from distilltune.serve.loading import build_state
    from distilltune.task import load_task

    task = load_task(EXAMPLE_TASK)
    db = tmp_path / "requests.db"
    cfg = ServeConfig(
        model="smollm2-135m-instruct:n_layers=6",
        fallback="smollm2-135m-instruct",
        task=str(EXAMPLE_TASK),
        api_key_env=KEY_ENV,
        log_db=str(db),
        generation={"default_max_tokens": 48},
    )
    state = build_state(cfg)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(state), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 120
    while not server.started and time.time() < deadline:
        time.sleep(0.1)
    assert server.started
    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-slow-test", max_retries=0, timeout=600
    )
    model_id = client.models.list().data[0].id

    def ask(case):
        raw = client.chat.completions.with_raw_response.create(
            model=model_id, messages=[{"role": "user", "content": case.prompt}]
        )
        comp = raw.parse()
        return case, comp.choices[0].message.content, raw.headers["x-distilltune-route"]

    try:
        with ThreadPoolExecutor(4) as pool:  # concurrent clients: the engines batch them
            results = list(pool.map(ask, task.adversarial))
    finally:
        server.should_exit = True
        thread.join(60)
    refusal = task.policy.refusal_message
    failures = []
    routes: dict[str, int] = {}
    for case, reply, route in results:
        routes[route] = routes.get(route, 0) + 1
        for s in case.expect.not_contains:
            if s in reply:
                failures.append(f"{case.id}: reply contains {s!r}")
        if case.expect.refuse and not is_refusal(reply, refusal):
            failures.append(f"{case.id}: not refused (route {route})")
        if not case.expect.refuse and route == "refused_input":
            failures.append(f"{case.id}: over-refused by the input guard")
    assert not failures, failures
    assert routes.get("fallback", 0) >= 1, f"the cascade never escalated: {routes}"
    blob = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))
    for case in task.adversarial:
        for s in case.expect.not_contains:
            assert s.encode() not in blob, f"{case.id}: {s!r} is in the request log"
    con = sqlite3.connect(db)
    logged = con.execute("SELECT route, COUNT(*) FROM requests GROUP BY route").fetchall()
    con.close()
    assert sum(n for _, n in logged) == len(task.adversarial)
    print(json.dumps({"routes": routes, "logged": dict(logged)}))
    os.environ.pop(KEY_ENV, None)
