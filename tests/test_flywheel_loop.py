"""After the launch, end to end on tiny models: the whole loop the issue asks for, in one chain.

serve (127.0.0.1, a tiny student cascading to a tiny teacher) → replay an in-distribution traffic
file (``monitor`` stays quiet) and a drifted one (a product area the knowledge base does not cover,
with typos and planted PII; ``monitor`` fires ``input_drift``) → thumbs-down feedback with corrections
that carry PII → ``flywheel`` harvest/label → a scripted reviewer → merge → retrain with the current
model's own recipe (``--pipeline RUN_DIR``) → gate → serve the candidate under ``--split`` → ``ab``
reports both arms. Every file the server, the monitor and the flywheel wrote (request logs, review
file and page, new task version, run dirs, caches) and everything the commands printed is searched
for the planted PII.

The questions come from the bundled acme example (the monitor needs realistic text for the bundled
MiniLM), the models are random tiny Llamas, so the gate's verdict itself means nothing here: the test
checks that it compares the retrained model with the current one on the right sets.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import httpx
import pytest
import yaml

from acme_views import acme_conversations, write_acme_view
from cli_run import run_cli
from serve_helpers import running_server

EMAIL, ACCOUNT, CARD, PHONE = "lena.voss@example.net", "ACME-482913", "4111 1111 1111 1111", "415-555-0199"
PLANTED = (EMAIL, "lena.voss", ACCOUNT, CARD, CARD.replace(" ", ""), PHONE, "4155550199")
AREA = ["the Acme mobile app", "offline mode in the mobile app", "push notifications on the phone app",
        "the iPad version of the app", "Face ID login in the app", "the Android home-screen widget"]  # fmt: skip
ASKS = ["How do I install {}?", "Why does {} keep crashing?", "Is {} included in the free plan?",
        "how do i turn off {} ?", "Can I use {} without internet?"]  # fmt: skip
PII_WRAPS = [f"My email is {EMAIL}. {{}}", f"Account {ACCOUNT} here: {{}}",
             f"Card {CARD} was charged twice. {{}}", f"Call me on {PHONE}. {{}}"]  # fmt: skip
EDIT = "The mobile app is not in the documentation yet; please contact support for help with it."


def _typo(text: str, rng: random.Random) -> str:
    """Swap two neighbouring letters of one word: the kind of typo users make."""
    words = text.split()
    i = rng.randrange(len(words))
    w = words[i]
    if len(w) > 3:
        j = rng.randrange(len(w) - 1)
        words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    return " ".join(words)


def _traffic(pool: list[dict]) -> tuple[list[dict], list[dict]]:
    """The two traffic files: in-distribution (held-out acme questions) and drifted."""
    calm = [
        {"user": f"calm-{i}", "question": c["messages"][0]["content"]} for i, c in enumerate(pool[190:224])
    ]
    rng = random.Random(7)
    new = [a.format(t) for t in AREA for a in ASKS]
    rng.shuffle(new)
    new = [_typo(q, rng) if i % 4 == 3 else q for i, q in enumerate(new)]
    new = [PII_WRAPS[i].format(q) if i < len(PII_WRAPS) else q for i, q in enumerate(new)]
    old = [c["messages"][0]["content"] for c in pool[224:230]]
    drifted = [{"user": f"user-{i}", "question": q, "new": i < len(new)} for i, q in enumerate(new + old)]
    rng.shuffle(drifted)
    return calm, drifted


def _replay(url: str, traffic_file: Path, limit: int | None = None) -> list[str]:
    """One request per line of the traffic file (bounded: its length), sequentially; the request ids."""
    ids = []
    with httpx.Client(timeout=120) as client:
        for line in traffic_file.read_text().splitlines()[:limit]:
            t = json.loads(line)
            body = {"model": "student", "messages": [{"role": "user", "content": t["question"]}],
                    "max_tokens": 6, "user": t["user"]}  # fmt: skip
            r = client.post(f"{url}/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            ids.append(r.headers["X-Request-Id"])
    return ids


def _serve_cfg(model, task, db, fallback=None, **kw):
    from distilltune.serve.config import ServeConfig

    return ServeConfig(
        model=str(model), task=str(task), served_name="student", fallback=fallback and str(fallback),
        log_db=str(db), limits={"max_tokens": 8, "timeout_s": 120}, generation={"default_max_tokens": 6}, **kw,
    )  # fmt: skip


def _snapshot(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    pool = acme_conversations()
    random.Random(0).shuffle(pool)
    root = tmp_path_factory.mktemp("after-launch")
    files = tmp_path_factory.mktemp("traffic")  # the input, PII included: outside the scanned tree
    for name, rows in zip(("calm", "drifted"), _traffic(pool), strict=True):
        (files / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = write_acme_view(root / "task", pool[:160], pool[160:190])
    return root, task, files / "calm.jsonl", files / "drifted.jsonl"


def _current_model(root: Path, task: Path, base_model: Path) -> Path:
    """The model serving now: a short fine-tune of the tiny base on the task (its run dir holds the recipe)."""
    from distilltune.train.config import FinetuneConfig
    from distilltune.train.finetune import run_finetune
    from distilltune.train.progress import SilentReporter

    fast = {"max_steps": 2, "batch_size": 4, "max_length": 128, "warmup_steps": 0, "eval_every": 0,
            "save_every": 0, "eval_samples": 0, "eval_loss_items": 0}  # fmt: skip
    cfg = FinetuneConfig(
        task=str(task), model=str(base_model), output=str(root / "runs" / "current"), rag=False, train=fast
    )
    return run_finetune(cfg, reporter=SilentReporter())


def _serve_replay_feedback(root, task, current, teacher, calm: Path, drifted: Path) -> set[str]:
    """Step 1: serve and replay both traffic files; feedback on the drifted one. The new questions' ids."""
    with running_server(_serve_cfg(current, task, root / "calm.db", teacher)) as (url, _):
        _replay(url, calm)
    with running_server(_serve_cfg(current, task, root / "requests.db", teacher)) as (url, _):
        ids = _replay(url, drifted)
        lines = [json.loads(x) for x in drifted.read_text().splitlines()]
        new_ids = {rid for rid, t in zip(ids, lines, strict=True) if t["new"]}  # never training questions
        rated = [rid for rid in ids if rid in new_ids][:12]
        for i, rid in enumerate(rated):
            fb = {"id": rid, "rating": "down"}
            if i < 3:
                fb["correction"] = f"Write to {EMAIL} with account {ACCOUNT}; we call back on {PHONE}."
            r = httpx.post(f"{url}/v1/feedback", json=fb, timeout=60)
            assert r.status_code == 200 and (r.json()["correction"] or {}).get("stored", False) is (i < 3)
    return new_ids


def _monitor(capsys, root: Path, task: Path, printed: list[str]) -> Path:
    """Step 2: monitor is quiet on the in-distribution replay and flags input drift on the drifted one."""
    code, out, err = run_cli(capsys, "monitor", str(root / "calm.db"), "--task", str(task), "--json")
    printed += [out, err]
    assert code == 0, out + err
    assert json.loads(out)["alerts"] == []
    html = root / "monitor.html"
    code, out, err = run_cli(capsys, "monitor", str(root / "requests.db"), "--task", str(task), "--json",
                             "--html", str(html))  # fmt: skip
    printed += [out, err]
    assert code == 1, out + err
    assert "input_drift" in {a["signal"] for a in json.loads(out)["alerts"]}
    return html


def _label_and_review(capsys, root, base: list[str], teacher, new_ids: set[str], printed) -> Path:
    """Steps 3-4: harvest + label with the teacher, stop for the review; a scripted reviewer accepts the
    corrections, edits the mobile-app questions and rejects the rest. The decisions file."""
    review = root / "review"
    code, out, err = run_cli(capsys, "flywheel", *base, "--teacher", str(teacher))
    printed += [out, err]
    assert code == 0 and "status: waiting for review" in out, out + err
    items = [json.loads(x) for x in (review / "review.jsonl").read_text().splitlines()]
    assert len(items) >= 30 and sum(r["correction"] is not None for r in items) == 3
    assert sum("thumbs_down" in r["reasons"] for r in items) == 12
    assert all(r["teacher_answer"] is not None for r in items)
    decisions = []
    for r in items:
        if r["correction"]:
            decisions.append({"id": r["id"], "decision": "accept", "answer": r["answer"]})
        elif new_ids & set(r["request_ids"]):
            decisions.append({"id": r["id"], "decision": "edit", "answer": EDIT})
        else:
            decisions.append({"id": r["id"], "decision": "reject"})
    dfile = root / "decisions.json"
    dfile.write_text(json.dumps({"decisions": decisions}))
    return dfile


def _merge_retrain_gate(capsys, review: Path, gate_args: list[str], current: Path, printed) -> dict:
    """Step 5: merge → retrain with the current model's own recipe → gate; a re-run changes nothing."""
    code, out, err = run_cli(capsys, "flywheel", *gate_args)
    printed += [out, err]
    assert code in (0, 1) and "status: " in out, out + err
    state = json.loads((review / "state.json").read_text())
    m, rt, gate = state["merge"], state["retrain"], json.loads((review / "gate.json").read_text())
    assert m["merged_train"] >= 1 and m["heldout"] >= 1
    new_train = [json.loads(x) for x in (Path(m["task_dir"]) / "train.jsonl").read_text().splitlines()]
    assert len(new_train) == 160 + m["merged_train"]
    assert rt["task_dir"] == m["task_dir"] and gate["candidate"] == rt["candidate"] != str(current)
    cfg = yaml.safe_load((Path(rt["candidate"]) / "config.yaml").read_text())
    assert Path(cfg["task"]) == Path(m["task_dir"]).resolve() and cfg["train"]["max_steps"] == 2
    summary = json.loads((Path(rt["candidate"]) / "train_summary.json").read_text())
    assert summary["train_examples"] == len(new_train)
    assert gate["failures"]["n_items"] == m["heldout"] and gate["eval"]["n_items"] == 30
    assert (code == 0) == gate["promote"]

    before = _snapshot(review)
    code2, out, err = run_cli(capsys, "flywheel", *gate_args)
    printed += [out, err]
    assert code2 == code and _snapshot(review) == before
    return rt


def _split_and_ab(capsys, root, task, current, teacher, candidate: str, calm: Path, printed) -> None:
    """Step 6: serve the candidate to half the users; ab reports both arms."""
    cfg = _serve_cfg(current, task, root / "ab.db", teacher, candidate=candidate, ab={"split": 0.5})
    with running_server(cfg) as (url, _):
        _replay(url, calm, limit=24)
    code, out, err = run_cli(capsys, "ab", str(root / "ab.db"), "--json")
    printed += [out, err]
    assert code in (0, 1), out + err
    arms = json.loads(out)["ab"]["arms"]
    assert arms["live"]["requests"] > 5 and arms["candidate"]["requests"] > 5
    assert arms["live"]["requests"] + arms["candidate"]["requests"] == 24


def test_monitor_feedback_flywheel_retrain_gate_split_ab(world, tiny_model_dir, tiny_teacher_dir, capsys):
    root, task, calm, drifted = world
    printed: list[str] = []
    current = _current_model(root, task, tiny_model_dir)
    new_ids = _serve_replay_feedback(root, task, current, tiny_teacher_dir, calm, drifted)
    html = _monitor(capsys, root, task, printed)
    review = root / "review"
    base = [str(root / "requests.db"), "--task", str(task), "--output", str(review), "--heldout", "0.5",
            "--max-new-tokens", "6"]  # fmt: skip
    dfile = _label_and_review(capsys, root, base, tiny_teacher_dir, new_ids, printed)
    gate_args = [*base, "--decisions", str(dfile), "--pipeline", str(current), "--current", str(current)]
    rt = _merge_retrain_gate(capsys, review, gate_args, current, printed)
    _split_and_ab(capsys, root, task, current, tiny_teacher_dir, rt["candidate"], calm, printed)

    # No planted PII anywhere: files written by the server, monitor, flywheel, training, caches; output.
    from distilltune.models.bundled import distilltune_home

    written = [p for d in (root, distilltune_home()) for p in d.rglob("*") if p.is_file()]
    assert html in written and (review / "review.html") in written
    for p in written:
        raw = p.read_bytes()
        for s in PLANTED:
            assert s.encode() not in raw, f"{s!r} found in {p}"
    for text in printed:
        assert not any(s in text for s in PLANTED)
