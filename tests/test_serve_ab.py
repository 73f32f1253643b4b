"""A/B and shadow serving (serve/ab.py): the hashed split, the log's arm columns, live servers on loopback.

The split is checked as a pure function against the binomial distribution (scipy); the servers run two
tiny random Llamas (different seeds, so their greedy answers differ) and are driven over HTTP.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from types import SimpleNamespace

import httpx
import pytest
from scipy.stats import binomtest

from conftest import TINY_TASK, build_tiny_llama
from serve_helpers import running_server

QUESTION = "How much does an e-bike cost per day?"


# ---- assignment: a pure function of the user ---------------------------------------------------


def test_split_is_deterministic_and_its_share_matches_the_binomial():
    from distilltune.serve.ab import bucket, in_share

    users = [f"user-{i}@example.org" for i in range(20_000)]
    first = [in_share(u, 0.1, "s") for u in users]
    assert first == [in_share(u, 0.1, "s") for u in users]  # same user, same arm, every time
    k = sum(first)
    ci = binomtest(k, len(users), 0.1).proportion_ci(confidence_level=0.999)
    assert ci.low <= 0.1 <= ci.high, (k, ci)
    # Another salt re-draws the arms (about 10 % of users again, nearly independent of the first draw).
    other = [in_share(u, 0.1, "t") for u in users]
    both = sum(a and b for a, b in zip(first, other, strict=True))
    assert binomtest(both, k, 0.1).pvalue > 0.001
    # Nested shares: a user in the 5 % share is in the 10 % share (growing a rollout keeps its users).
    assert all(in_share(u, 0.1, "s") for u in users if in_share(u, 0.05, "s"))
    assert all(0 <= bucket(u, "s") < 1 for u in users[:100])


def test_user_key_prefers_the_user_field_then_the_header_then_the_address():
    from distilltune.serve.ab import user_key
    from distilltune.serve.openai_types import ChatRequest

    msgs = [{"role": "user", "content": "hi"}]
    h = httpx.Headers({"X-Distilltune-User": "bob"})
    assert user_key(
        ChatRequest(model="m", messages=msgs, user="ann"), h, "10.0.0.1", "X-Distilltune-User"
    ) == (
        "ann",
        "user",
    )
    assert user_key(ChatRequest(model="m", messages=msgs), h, "10.0.0.1", "X-Distilltune-User") == (
        "bob",
        "header",
    )
    assert user_key(
        ChatRequest(model="m", messages=msgs, user="  "), httpx.Headers({}), "10.0.0.1", "X-Distilltune-User"
    ) == (
        "10.0.0.1",
        "address",
    )


def test_config_needs_a_candidate_and_a_split_below_one():
    from distilltune.serve.config import ServeConfig

    base = {"model": "m", "task": "t"}
    with pytest.raises(ValueError, match="need a candidate"):
        ServeConfig(**base, ab={"shadow": True})
    with pytest.raises(ValueError, match="below 1"):
        ServeConfig(**base, candidate="c", ab={"split": 1.0})
    assert ServeConfig(**base, candidate="c").ab.share == 0.1
    assert ServeConfig(**base, candidate="c", ab={"shadow": True}).ab.share == 1.0


def test_serve_cli_fills_the_ab_config(tmp_path, capsys):
    from cli_run import run_cli

    code, out, err = run_cli(
        capsys, "serve", "m", "--task", str(TINY_TASK), "--candidate", "c", "--shadow", "--split", "0.25",
        "--print-config",
    )  # fmt: skip
    assert code == 0, err
    assert "candidate: c" in out and "shadow: true" in out and "split: 0.25" in out
    code, _, err = run_cli(capsys, "serve", "m", "--task", str(TINY_TASK), "--shadow", "--print-config")
    assert code == 2 and "need a candidate" in " ".join(err.split())


# ---- the log ----------------------------------------------------------------------------------


def test_an_older_log_gains_the_arm_columns_and_keeps_its_rows(tmp_path):
    from distilltune.monitor.logread import read_log
    from distilltune.serve.requestlog import COLUMNS, LogRecord, RequestLog, summarize

    db = tmp_path / "old.db"
    old_cols = [c for c in COLUMNS if c[0] not in ("arm", "shadow_of")]
    con = sqlite3.connect(db)
    con.execute(f"CREATE TABLE requests ({', '.join(f'{n} {t}' for n, t in old_cols)})")
    con.execute(
        "INSERT INTO requests (id, ts, model, status, route) VALUES ('old', 1.0, 'm', 200, 'student')"
    )
    con.commit()
    con.close()
    log = RequestLog(db)
    log.write(LogRecord(id="new", ts=2.0, model="m", route="student", arm="live"))
    log.write(LogRecord(id="sh", ts=3.0, model="m", route="student", arm="shadow", shadow_of="new"))
    log.flush()
    log.close()
    con = sqlite3.connect(db)
    rows = {r[0]: r[1:] for r in con.execute("SELECT id, arm, shadow_of, route FROM requests")}
    version = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
    con.close()
    assert rows == {
        "old": (None, None, "student"),
        "new": ("live", None, "student"),
        "sh": ("shadow", "new", "student"),
    }
    assert version == "2"
    # Shadow copies answered nobody: logs and monitor count only the live rows.
    assert summarize(db)["requests"] == 2
    assert [r.id for r in read_log(db)] == ["old", "new"]


def test_a_full_shadow_queue_drops_and_counts_copies():
    """The queue is bounded: copies beyond it are dropped at once, counted, and never block the caller."""
    from distilltune.serve.ab import ABRouter
    from distilltune.serve.config import ServeConfig
    from distilltune.serve.metrics import ServerMetrics
    from distilltune.serve.openai_types import ChatRequest
    from distilltune.serve.requestlog import LogRecord

    written: list[LogRecord] = []
    cand = SimpleNamespace(id="student", adapter=None)
    live = SimpleNamespace(id="student")

    class Pipeline:
        def check(self, req):
            return 4

        async def run(self, req, served, max_tokens, rec, stream):
            assert served is cand and not stream
            rec.route, rec.answer = "student", "shadow answer"
            yield "end"

    cfg = ServeConfig(model="m", task="t", candidate="c", ab={"shadow": True, "shadow_queue": 2})
    state = SimpleNamespace(config=cfg, candidate=cand, models={"student": live}, metrics=ServerMetrics(),
                            log=SimpleNamespace(write=written.append))  # fmt: skip
    router = ABRouter(state, Pipeline())
    req = ChatRequest(model="student", messages=[{"role": "user", "content": "hi"}], user="u")

    async def go():
        for i in range(5):
            rec = LogRecord(id=f"live-{i}", ts=0.0, model="student")
            assert router.assign(req, None, live, rec) is live and rec.arm == "live"
            rec.status = 200
            router.finished(rec)  # no await in between: the worker has not run yet
        await router.drain(10)
        await router.close()

    asyncio.run(go())
    assert router.dropped == 3
    assert [(r.arm, r.shadow_of, r.status, r.answer) for r in written] == [
        ("shadow", "live-0", 200, "shadow answer"),
        ("shadow", "live-1", 200, "shadow answer"),
    ]
    text = state.metrics.render().decode()
    assert 'distilltune_shadow_total{outcome="dropped"} 3.0' in text
    assert 'distilltune_shadow_total{outcome="done"} 2.0' in text


# ---- live servers -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tokenizer_dir, tmp_path_factory):
    def build(name, seed):
        return build_tiny_llama(tokenizer_dir, tmp_path_factory.mktemp(name), layers=2, hidden=32, seed=seed,
                                initializer_range=0.5)  # fmt: skip

    return build("live", 0), build("candidate", 7)


def _config(models, db, **ab):
    from distilltune.serve.config import ServeConfig

    live, cand = models
    return ServeConfig(
        model=str(live), task=str(TINY_TASK), served_name="student", candidate=str(cand), ab=ab,
        log_db=str(db), limits={"max_tokens": 16}, generation={"default_max_tokens": 6},
    )  # fmt: skip


def _ask(url: str, headers: dict | None = None, **body) -> httpx.Response:
    payload = {"model": "student", "messages": [{"role": "user", "content": QUESTION}], **body}
    r = httpx.post(f"{url}/v1/chat/completions", json=payload, headers=headers or {}, timeout=60)
    assert r.status_code == 200, r.text
    return r


def _rows(state) -> list[dict]:
    state.log.flush()
    con = sqlite3.connect(state.config.log_db)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT * FROM requests ORDER BY ts")]
    finally:
        con.close()


def test_ab_server_routes_each_user_to_one_arm_and_logs_it(models, tmp_path):
    pool = [f"user-{i}" for i in range(100)]
    users = [u for u in pool if _cand(u)][:3] + [u for u in pool if not _cand(u)][:3]
    expected = {u: "candidate" if _cand(u) else "live" for u in users}
    with running_server(_config(models, tmp_path / "ab.db", split=0.5)) as (url, state):
        seen: dict[str, set[str]] = {}
        answers: dict[str, set[str]] = {"live": set(), "candidate": set()}
        for u in users + users:  # every user twice
            r = _ask(url, user=u)
            seen.setdefault(u, set()).add(r.headers["x-distilltune-arm"])
            answers[r.headers["x-distilltune-arm"]].add(r.json()["choices"][0]["message"]["content"])
        by_header = _ask(url, headers={"X-Distilltune-User": users[0]})
        by_address = _ask(url)  # no user, no header: the client's address decides
        rows = _rows(state)
    assert seen == {u: {expected[u]} for u in users}
    assert by_header.headers["x-distilltune-arm"] == expected[users[0]]
    assert by_address.headers["x-distilltune-arm"] == ("candidate" if _cand("127.0.0.1") else "live")
    # Greedy answers: one text per arm, and the two models' texts differ, so the candidate really answered.
    assert len(answers["live"]) == 1 and len(answers["candidate"]) == 1
    assert answers["live"] != answers["candidate"]
    assert [r["arm"] for r in rows[: 2 * len(users)]] == [expected[u] for u in users + users]
    assert all(r["shadow_of"] is None and r["route"] == "student" for r in rows)
    assert all("user-" not in str(r) for r in rows)  # the user key is never logged
    # ... and ab reads both arms back from the server's own log.
    from distilltune.monitor.ab import run_ab

    rep = run_ab(tmp_path / "ab.db")
    assert rep["shadow"] is None
    for arm in ("live", "candidate"):
        assert rep["ab"]["arms"][arm]["requests"] == sum(r["arm"] == arm for r in rows)


def test_shadow_server_answers_with_live_and_logs_the_candidates_copies(models, tmp_path):
    users = [f"u{i}" for i in range(100)]
    with running_server(_config(models, tmp_path / "ab.db", split=0.5)) as (url, state):
        ab_live = _ask(url, user=next(u for u in users if not _cand(u))).json()
        ab_cand = _ask(url, user=next(u for u in users if _cand(u))).json()
    with running_server(_config(models, tmp_path / "shadow.db", shadow=True)) as (url, state):
        responses = [_ask(url, user=f"user-{i}", stream=i % 2 == 1) for i in range(4)]
        deadline = time.time() + 60
        while time.time() < deadline and sum(r["arm"] == "shadow" for r in _rows(state)) < 4:
            time.sleep(0.1)
        rows = _rows(state)
    assert all(r.headers["x-distilltune-arm"] == "live" for r in responses)
    live_text = ab_live["choices"][0]["message"]["content"]
    for r in responses[::2]:
        assert r.json()["choices"][0]["message"]["content"] == live_text
    live_rows = {r["id"]: r for r in rows if r["arm"] == "live"}
    shadow_rows = [r for r in rows if r["arm"] == "shadow"]
    assert len(live_rows) == 4 and len(shadow_rows) == 4
    assert {r["shadow_of"] for r in shadow_rows} == set(live_rows)
    for r in shadow_rows:
        assert r["status"] == 200 and r["route"] == "student"
        assert r["answer"] == ab_cand["choices"][0]["message"]["content"]  # the candidate's greedy answer
        assert r["ts"] >= live_rows[r["shadow_of"]]["ts"]
    assert all(r["answer"] == live_text for r in live_rows.values())
    from distilltune.monitor.ab import run_ab

    sh = run_ab(tmp_path / "shadow.db")["shadow"]
    assert (sh["copies"], sh["pairs"]) == (4, 4)
    same = ab_cand["choices"][0]["message"]["content"].strip().lower() == live_text.strip().lower()
    assert sh["agreement"]["exact_match"]["mean"] == float(same)


def _cand(user: str) -> bool:
    from distilltune.serve.ab import in_share

    return in_share(user, 0.5, "distilltune-ab")
