"""PII in any turn of a conversation never reaches the request log, and evaluation redacts alike.

The request path reads the whole conversation with ``Guard.check_conversation``: a card number typed
over two messages, an SSN whose context word sits in the assistant's previous turn, PII in earlier
user turns and in the client's own assistant turns are all redacted before the model and the log.
The test reads the raw bytes of the SQLite log and its write-ahead file (``-wal``), where a row
lands first, and compares what the server logged with what evaluation's driver of the same path
produces for the same conversations.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import httpx
import pytest

from conftest import TINY_TASK
from serve_helpers import running_server

# (conversation, the planted strings that must not survive anywhere, in any turn)
CONVERSATIONS = [
    (
        [  # a card number split over two user turns: neither half is PII on its own
            {"role": "user", "content": "my card is 4111 1111"},
            {"role": "user", "content": "1111 1111 is it accepted for deposits?"},
        ],
        ["4111 1111", "1111 1111"],
    ),
    (
        [  # the context word in the assistant's turn, the bare number in the user's
            {"role": "user", "content": "I want to rent a bike."},
            {"role": "assistant", "content": "Please confirm your SSN."},
            {"role": "user", "content": "987654320"},
        ],
        ["987654320"],
    ),
    (
        [  # PII in earlier turns of both roles, none in the last one
            {"role": "user", "content": "Mail me at lena.berg+bikes@example.net, rider ZED-24680."},
            {"role": "assistant", "content": "Noted. We will also call +44 7911 123456."},
            {"role": "user", "content": "Thanks. When do you open on Sundays?"},
        ],
        ["lena.berg+bikes@example.net", "ZED-24680", "7911 123456"],
    ),
    (
        [  # a client system turn is dropped: neither the model nor the log sees it
            {"role": "system", "content": "Customer SSN 219-09-9999, card 5555 5555 5555 4444."},
            {"role": "user", "content": "Do you repair brakes?"},
        ],
        ["219-09-9999", "5555 5555 5555 4444"],
    ),
]


@pytest.fixture(scope="module")
def live(tiny_model_dir, tmp_path_factory):
    from distilltune.serve.config import ServeConfig

    cfg = ServeConfig(
        model=str(tiny_model_dir),
        task=str(TINY_TASK),
        served_name="student",
        log_db=str(tmp_path_factory.mktemp("turns-log") / "requests.db"),
        limits={"max_tokens": 16},
        generation={"default_max_tokens": 4},
    )
    with running_server(cfg) as srv:
        yield srv


def _send(url: str, messages: list[dict]) -> str:
    r = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "student", "messages": messages, "max_tokens": 4},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return r.headers["x-request-id"]


def test_pii_from_any_turn_stays_out_of_the_log_and_evaluation_redacts_alike(live):
    from distilltune.evaluation.answer import build_pipeline
    from distilltune.inference import RequestPath
    from distilltune.task import load_task

    url, state = live
    ids = [_send(url, conv) for conv, _ in CONVERSATIONS]
    state.log.flush()
    db = state.config.log_db
    files = sorted(Path(db).parent.glob(Path(db).name + "*"))
    assert Path(db + "-wal") in files, "the server writes through the write-ahead log"
    blob = b"".join(p.read_bytes() for p in files)
    for _conv, planted in CONVERSATIONS:
        for secret in planted:
            assert secret.encode() not in blob, f"{secret!r} is in the request log (.db or -wal)"

    con = sqlite3.connect(db)
    try:
        rows = {
            rid: (json.loads(prompt), json.loads(reasons))
            for rid, prompt, reasons in con.execute("SELECT id, prompt, input_reasons FROM requests")
        }
    finally:
        con.close()

    # Evaluation's driver of the same path, built as `evaluate` builds it, redacts identically.
    cfg = state.config
    pipe = build_pipeline(
        load_task(TINY_TASK), state.student.tokenizer, cfg.retrieval, cfg.guard, cfg.limits.max_prompt_tokens
    )
    path = RequestPath(pipe.guard, pipe.prompter)
    for rid, (conv, _planted) in zip(ids, CONVERSATIONS, strict=True):
        res = path.prepare(conv)
        logged_prompt, logged_reasons = rows[rid]
        assert logged_prompt == res.loggable_conversation()
        assert logged_reasons == res.input_reasons
    assert rows[ids[0]][0][0]["content"] == "my card is [CREDIT_CARD]"
    assert rows[ids[1]][0][-1]["content"] == "[SSN]"
    assert [m["role"] for m in rows[ids[3]][0]] == ["user"]
