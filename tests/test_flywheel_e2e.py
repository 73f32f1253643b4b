"""The flywheel on a live server (127.0.0.1, tiny models): traffic and feedback with planted PII →
harvest → label with a tiny teacher through the request path → scripted review → merge → gate.

PII planted in the requests and in the feedback corrections must appear nowhere: not in the request
log, the review file, the review page, the new task version or any other file the flywheel writes.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import httpx
import pytest

from cli_run import run_cli
from conftest import TINY_TASK
from serve_helpers import running_server

KEY_ENV = "DISTILLTUNE_TEST_FLYWHEEL_KEY"
KEY = "sk-test-flywheel-41aa"
AUTH = {"Authorization": f"Bearer {KEY}"}
EMAIL, RIDER, CARD = "sam.tester@example.org", "ZED-13579", "4111 1111 1111 1111"
PLANTED = (EMAIL, RIDER, CARD, "sam.tester")
QUESTIONS = [
    f"My email is {EMAIL}. Can I rent a tandem bike?",
    f"Rider {RIDER} here: do you have child seats?",
    "Can I pay with cash?",
    "Do you rent cargo bikes?",
    f"Charge {CARD} for a helmet, do you sell helmets?",
    "Is there parking near the shop?",
]


def _files(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def _no_pii(paths) -> None:
    for p in paths:
        raw = p.read_bytes()
        for s in PLANTED:
            assert s.encode() not in raw, f"{s!r} found in {p}"


@pytest.fixture(scope="module")
def traffic(tiny_model_dir, tmp_path_factory):
    """Serve, send the questions, rate every answer down, correct two of them (with PII); stop the server."""
    from distilltune.serve.config import ServeConfig

    os.environ[KEY_ENV] = KEY
    db = tmp_path_factory.mktemp("flywheel-log") / "requests.db"
    cfg = ServeConfig(
        model=str(tiny_model_dir), task=str(TINY_TASK), served_name="student", api_key_env=KEY_ENV,
        log_db=str(db), limits={"max_tokens": 8, "timeout_s": 120}, generation={"default_max_tokens": 4},
    )  # fmt: skip
    with running_server(cfg) as (url, _state):
        for i, q in enumerate(QUESTIONS):
            body = {"model": "student", "messages": [{"role": "user", "content": q}], "max_tokens": 4}
            r = httpx.post(f"{url}/v1/chat/completions", json=body, headers=AUTH, timeout=120)
            assert r.status_code == 200, r.text
            fb = {"id": r.headers["X-Request-Id"], "rating": "down"}
            if i < 2:
                fb["correction"] = f"Yes. We will confirm by mail to {EMAIL} for rider {RIDER}."
            assert httpx.post(f"{url}/v1/feedback", json=fb, headers=AUTH, timeout=60).status_code == 200
    return db


def test_the_flywheel_turns_without_leaking_pii(traffic, tiny_model_dir, tmp_path, capsys):
    from distilltune.flywheel import FlywheelSettings, run_flywheel
    from distilltune.task import load_task

    out = tmp_path / "review"
    settings = FlywheelSettings(heldout_share=0.5, max_new_tokens=8, batch_size=4)
    teacher = str(tiny_model_dir)
    s = run_flywheel(traffic, TINY_TASK, out, teacher=teacher, settings=settings)
    assert s["status"] == "waiting for review"
    assert s["harvest"]["items"] == len(QUESTIONS) and s["label"]["missing"] == 0
    review = [json.loads(x) for x in (out / "review.jsonl").read_text().splitlines()]
    assert all("thumbs_down" in r["reasons"] for r in review)
    assert sum(r["correction"] is not None for r in review) == 2
    assert {r["split"] for r in review} == {"train", "heldout"}
    assert all(r["teacher_answer"] is not None for r in review)
    html = (out / "review.html").read_text()
    assert all(r["id"] in html for r in review) and "Export decisions" in html

    # Re-running without new traffic or decisions changes no file (labels are not recomputed).
    before = _files(out)
    assert run_flywheel(traffic, TINY_TASK, out, teacher=teacher, settings=settings)["status"] == s["status"]
    assert _files(out) == before

    # A scripted reviewer: reject the first item, accept the corrected ones, edit the rest.
    decisions = []
    for i, r in enumerate(review):
        if i == 0:
            decisions.append({"id": r["id"], "decision": "reject"})
        elif r["correction"]:
            decisions.append({"id": r["id"], "decision": "accept", "answer": r["answer"]})
        else:
            decisions.append(
                {"id": r["id"], "decision": "edit", "answer": f"Reviewed answer {i}: see the shop."}
            )
    dfile = tmp_path / "decisions.json"
    dfile.write_text(json.dumps({"decisions": decisions}))
    s = run_flywheel(traffic, TINY_TASK, out, decisions=dfile, settings=settings)
    assert s["status"].startswith("merged"), s
    m = s["merge"]
    assert m["accepted"] == len(QUESTIONS) - 1 and not m["refused"]
    new = load_task(m["task_dir"])
    base = load_task(TINY_TASK)
    assert len(new.train) == len(base.train) + m["merged_train"] and m["merged_train"] >= 1
    assert [c.question for c in new.eval] == [c.question for c in base.eval]
    assert len(load_task(m["failures_dir"]).eval) == m["heldout"] >= 1

    before = _files(out)
    again = run_flywheel(traffic, TINY_TASK, out, decisions=dfile, settings=settings)
    assert again["merge"]["task_dir"] == m["task_dir"] and _files(out) == before  # nothing rewritten

    # Gate: a "retrained" candidate with the current model's weights is not better on the failures.
    candidate = tmp_path / "candidate"
    shutil.copytree(tiny_model_dir, candidate)
    args = [str(traffic), "--task", str(TINY_TASK), "--output", str(out), "--no-ood",
            "--candidate", str(candidate), "--current", str(tiny_model_dir), "--heldout", "0.5",
            "--max-new-tokens", "8"]  # fmt: skip
    code, stdout, stderr = run_cli(capsys, "flywheel", *args)
    assert code == 1, stderr
    gate = json.loads((out / "gate.json").read_text())
    assert not gate["promote"] and gate["eval"]["verdict"] == "tie" and gate["failures"]["verdict"] == "tie"
    assert "status: keep current" in stdout and "failures: tie" in stdout

    _no_pii([*(p for p in out.rglob("*") if p.is_file()), *traffic.parent.glob(traffic.name + "*")])


def test_cli_reports_bad_input_cleanly(tmp_path, capsys):
    code, _out, err = run_cli(capsys, "flywheel", str(tmp_path / "missing.db"), "--task", str(TINY_TASK),
                              "--output", str(tmp_path / "o"), "--no-ood")  # fmt: skip
    assert code == 2 and "request log not found" in err and "Traceback" not in err
    code, _out, err = run_cli(capsys, "flywheel", str(tmp_path / "missing.db"), "--task", str(TINY_TASK),
                              "--output", str(tmp_path / "o"), "--no-ood", "--heldout", "1.5")  # fmt: skip
    assert code == 2 and "heldout" in err
