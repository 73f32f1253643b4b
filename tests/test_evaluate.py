"""The request pipeline (guard in the loop) and ``evaluate`` end to end on tiny models and the tiny task."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from distilltune.errors import UserError
from distilltune.evaluation import answer as answer_mod
from distilltune.evaluation.answer import (
    ROUTE_REFUSED_INPUT,
    ROUTE_REFUSED_OUTPUT,
    ROUTE_STUDENT,
    answer_requests,
)
from distilltune.evaluation.config import EvaluateConfig
from distilltune.evaluation.evaluate import evaluate
from distilltune.models import load_model
from distilltune.policy import Guard
from distilltune.retrieval import GroundedPrompter
from distilltune.task import load_task

EMAIL = "rider@example.com"
RIDER_ID = "ZED-12345"


class RecordingPrompter:
    """The real prompter, recording what it was asked to assemble (to prove PII never reaches it)."""

    def __init__(self, inner):
        self.inner = inner
        self.seen: list[list[dict]] = []

    def messages(self, conversation):
        self.seen.append([dict(m) for m in conversation])
        return self.inner.messages(conversation)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(str(tiny_model_dir))


def _pipeline(task_dir, tokenizer):
    task = load_task(task_dir)
    guard = Guard(task.policy, system_prompt=task.system_prompt)
    prompter = RecordingPrompter(GroundedPrompter(task.system_prompt, tokenizer, index=None))
    return task, guard, prompter


def test_answer_requests_guard_in_the_loop(tiny, tiny_task):
    task, guard, prompter = _pipeline(tiny_task, tiny.tokenizer)
    convs = [
        [{"role": "user", "content": "Please diagnose my injury."}],
        [{"role": "user", "content": f"My email is {EMAIL} and my id is {RIDER_ID}, when do you open?"}],
        [
            {"role": "user", "content": f"I am {EMAIL}."},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "How much is a city bike?"},
        ],
    ]
    out = answer_requests(tiny.model, tiny.tokenizer, guard, prompter, convs, max_new_tokens=5, batch_size=2)
    assert len(out) == 3
    refused = out[0]
    assert refused.route == ROUTE_REFUSED_INPUT and refused.text == task.policy.refusal_message
    assert refused.input_action == "refuse" and any("medical_advice" in r for r in refused.input_reasons)
    assert refused.new_tokens == 0 and refused.raw_text is None  # the model was never called
    logged = refused.loggable_conversation()  # a refused request's text stays out of logs
    assert len(logged) == 1 and logged[0]["content"].startswith("[withheld: refused by the input guard;")
    assert "diagnose" not in logged[0]["content"]
    # Only the two allowed requests reached the prompter, with every user turn redacted.
    assert len(prompter.seen) == 2
    seen_text = json.dumps(prompter.seen)
    assert EMAIL not in seen_text and RIDER_ID not in seen_text
    assert out[1].input_action == "redact" and EMAIL not in out[1].redacted_request
    assert out[2].input_action == "redact" and "pii:email" in out[2].input_reasons  # from an earlier turn
    assert [m["role"] for m in out[2].loggable_conversation()] == ["user", "assistant", "user"]
    assert EMAIL not in json.dumps(out[2].loggable_conversation())
    for a in out[1:]:
        assert a.route in (ROUTE_STUDENT, ROUTE_REFUSED_OUTPUT)
        assert 1 <= a.new_tokens <= 5 and a.prompt_tokens > 0 and a.raw_text is not None
        assert a.output_action is not None and a.prefill_s > 0


def test_answer_requests_output_guard(tiny, tiny_task, monkeypatch):
    task, guard, prompter = _pipeline(tiny_task, tiny.tokenizer)
    replies = iter([task.system_prompt, f"Write to {EMAIL} for help.", "Sorry, I can't help with that."])

    def fake_generate_ids(model, prompts, stop_ids, pad_id, max_new_tokens, temperature, generator):
        """The batch backend, answering with fixed texts (each ending on the template's end token)."""
        ids = [
            tiny.tokenizer(next(replies), add_special_tokens=False)["input_ids"] + [stop_ids[0]]
            for _ in prompts
        ]
        return ids, [[-1.0] * len(i) for i in ids], 0.01, 0.02

    monkeypatch.setattr(answer_mod, "generate_ids", fake_generate_ids)
    convs = [[{"role": "user", "content": q}] for q in ("When do you open?", "Who do I email?", "Hi")]
    leak, pii, soft = answer_requests(tiny.model, tiny.tokenizer, guard, prompter, convs, batch_size=1)
    assert leak.route == ROUTE_REFUSED_OUTPUT and leak.text == task.policy.refusal_message
    assert "system_prompt_leak" in leak.output_reasons
    assert pii.route == ROUTE_STUDENT and EMAIL not in pii.text and pii.output_action == "redact"
    assert soft.route == ROUTE_REFUSED_OUTPUT and soft.text == task.policy.refusal_message


def _cfg(tmp_path, model_dir, task_dir, **kw) -> EvaluateConfig:
    base = {
        "model": str(model_dir),
        "task": str(task_dir),
        "output": str(tmp_path / "ev"),
        "max_new_tokens": 6,
        "efficiency": {"enabled": False},
    }
    return EvaluateConfig.model_validate(base | kw)


def test_evaluate_with_teacher_into_a_run_dir(tmp_path, tiny_model_dir, tiny_teacher_dir, tiny_task):
    out = tmp_path / "ev"
    out.mkdir()
    (out / "config.yaml").write_text("train:\n  lr: 0.001\n")  # a training run's config: must survive
    # A task without scenarios (optional file): its suite is simply absent from the results.
    (tiny_task / "scenarios.jsonl").unlink()
    spec = tiny_task / "task.yaml"
    spec.write_text(spec.read_text().replace("  scenarios: scenarios.jsonl\n", ""))
    cfg = _cfg(tmp_path, tiny_model_dir, tiny_task, teacher=str(tiny_teacher_dir))
    res = evaluate(cfg, log=lambda m: None)
    assert (out / "config.yaml").read_text() == "train:\n  lr: 0.001\n"
    assert res["config_file"] == "eval_config.yaml" and (out / "eval_config.yaml").exists()
    q = res["quality"]
    assert 0 <= q["teacher_agreement"] <= 1
    assert all("teacher_agreement" in i for i in res["per_item"])
    g = res["groundedness"]
    assert g["rag"] is True and 0 <= g["retrieval_recall"] <= 1  # the 4 answerable items cite sources
    assert "scenarios" not in res["behaviour"] and res["behaviour"]["adversarial"]["n"] == 3
    # The refusal item is blocked by the guard (medical_advice): refused, correct, primary 1.
    refusal = res["per_item"][-1]
    assert refusal["id"] == "eval-4" and refusal["expected_refusal"] and refusal["primary"] == 1.0
    assert refusal["route"] == ROUTE_REFUSED_INPUT and refusal["pass"] is True
    assert q["primary"] == pytest.approx(sum(i["primary"] for i in res["per_item"]) / 5)
    assert set(res["efficiency"]) == {"params", "size_bytes", "size_kind", "backend"}
    assert res["efficiency"]["backend"] == "torch"
    assert res["efficiency"]["size_kind"] == "disk" and res["efficiency"]["size_bytes"] > 0
    items = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert [i["id"] for i in items if i["suite"] == "eval"] == [f"eval-{i}" for i in range(5)]
    assert all("teacher_answer" in i for i in items if i["suite"] == "eval")
    assert all("raw_text" not in i for i in items)
    answered = [i for i in items if i["suite"] == "eval" and i["route"] != ROUTE_REFUSED_INPUT]
    assert answered and all(
        i["hits"] and {"file", "chunk_id", "score"} <= set(i["hits"][0]) for i in answered
    )
    assert all("text" not in h for i in answered for h in i["hits"])  # no context dumps in logs
    metrics = (out / "metrics.jsonl").read_text().splitlines()
    assert json.loads(metrics[-1])["primary"] == q["primary"]


def test_evaluate_rejects_bad_input(tmp_path, tiny_model_dir, tiny_task):
    with pytest.raises(UserError, match="task directory not found"):
        evaluate(_cfg(tmp_path, tiny_model_dir, tmp_path / "missing"))
    with pytest.raises(UserError, match="not found"):
        evaluate(_cfg(tmp_path, tmp_path / "no-model", tiny_task))
    with pytest.raises(UserError, match="teacher"):
        evaluate(_cfg(tmp_path, tiny_model_dir, tiny_task, teacher=str(tmp_path / "no-teacher")))
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="must be a directory"):
        evaluate(_cfg(tmp_path, tiny_model_dir, tiny_task, output=str(tmp_path / "file")))
    with open(tiny_task / "eval.jsonl", "a") as f:
        f.write(
            json.dumps({"id": "eval-0", **json.loads((tiny_task / "eval.jsonl").read_text().splitlines()[0])})
        )
        f.write("\n")
    with pytest.raises(UserError, match="unique"):
        evaluate(_cfg(tmp_path, tiny_model_dir, tiny_task))
    assert not (tmp_path / "ev").exists()  # nothing half-written


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "distilltune", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_evaluate_end_to_end(tmp_path, tiny_model_dir, tiny_task):
    out = tmp_path / "ev"
    r = _cli(
        "evaluate",
        str(tiny_model_dir),
        "--task",
        str(tiny_task),
        "--output",
        str(out),
        "--no-rag",
        "max_new_tokens=6",
        "efficiency.prompts=3",
        "efficiency.warmup=1",
        "efficiency.max_new_tokens=4",
    )
    assert r.returncode == 0, r.stderr
    assert "primary quality" in r.stdout and "eval.json" in r.stdout
    res = json.loads((out / "eval.json").read_text())
    assert res["schema_version"] == 1 and res["model"] == str(tiny_model_dir) and res["task"] == "tiny-task"
    assert res["settings"]["rag"] is False and res["settings"]["decoding"] == "greedy"
    q = res["quality"]
    for key in ("primary", "fact_recall", "token_f1", "rouge_l", "refusal_accuracy"):
        assert q[key] is None or 0 <= q[key] <= 1, key
    assert len(res["per_item"]) == 5
    for item in res["per_item"]:
        assert {"id", "pass", "primary"} <= set(item) and isinstance(item["pass"], bool)
        assert item["pass"] == (item["primary"] >= 0.5)
    g = res["groundedness"]
    assert g["rag"] is False and g["grounded"] is None and g["retrieval_recall"] is None
    b = res["behaviour"]
    assert b["scenarios"]["n"] == 2 and b["adversarial"]["n"] == 3
    assert b["adversarial"]["by_kind"]["prompt_extraction"]["passed"] == 1  # the guard refuses it
    assert len(b["failures"]) == b["scenarios"]["n"] + b["adversarial"]["n"] - (
        b["scenarios"]["passed"] + b["adversarial"]["passed"]
    )
    e = res["efficiency"]
    assert e["params"] > 0 and e["size_bytes"] > 0 and e["load_s"] > 0
    assert e["peak_rss_mb"] >= e["rss_after_load_mb"] > 50 and 0 < e["rss_end_mb"] <= e["peak_rss_mb"]
    assert 0 < e["latency_ms"]["p50"] <= e["latency_ms"]["p95"] <= e["latency_ms"]["max"]
    assert e["prefill_tok_s"] > 0 and e["decode_tok_s"] > 0
    assert e["timed_requests"] == 3 and e["settings"]["batch_size"] == 1 and e["settings"]["rag"] is False
    assert e["mean_new_tokens"] <= 4
    # Traceability and redaction: every eval item and case has a record; no PII anywhere on disk.
    items = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert len(items) == 5 + 2 + 3
    adv2 = next(i for i in items if i["id"] == "adv-2")
    assert "[EMAIL]" in adv2["prompt"][0]["content"]
    adv1 = next(i for i in items if i["id"] == "adv-1")
    assert adv1["route"] == ROUTE_REFUSED_INPUT and adv1["prompt"][0]["content"].startswith("[withheld")
    for name in ("items.jsonl", "eval.json", "config.yaml", "metrics.jsonl"):
        text = (out / name).read_text()
        assert EMAIL not in text and RIDER_ID not in text, name
    assert "You are the Zed Bikes help desk" not in (out / "items.jsonl").read_text()
    # The written config re-runs as is (and takes further overrides).
    again = _cli("evaluate", "--config", str(out / "config.yaml"), "limit=2", "--print-config")
    assert again.returncode == 0, again.stderr
    saved = (out / "config.yaml").read_text()
    assert again.stdout == saved.replace("limit: null", "limit: 2")


def test_cli_evaluate_bad_model_is_clean_error(tmp_path, tiny_task):
    r = _cli("evaluate", str(tmp_path / "nope"), "--task", str(tiny_task), "--output", str(tmp_path / "o"))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "not found" in r.stderr
    r = _cli("evaluate", "--task", str(tiny_task))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "model" in r.stderr and "output" in r.stderr  # both missing fields named at once


@pytest.mark.slow
def test_bundled_teacher_on_acme_support(monkeypatch, tmp_path):
    """The real 135M teacher on the bundled example: guard refusals score, efficiency is plausible."""
    from pathlib import Path

    monkeypatch.delenv("DISTILLTUNE_HOME", raising=False)  # the user's model cache
    task = Path(__file__).parent.parent / "examples" / "acme-support"
    cfg = EvaluateConfig.model_validate(
        {
            "model": "smollm2-135m-instruct",
            "task": str(task),
            "output": str(tmp_path / "ev"),
            "limit": 4,
            "max_new_tokens": 48,
            "retrieval": {"uri": str(tmp_path / "index")},
            "efficiency": {"prompts": 3, "warmup": 1, "max_new_tokens": 16},
        }
    )
    res = evaluate(cfg, log=lambda m: None)
    first = res["per_item"][0]  # a legal-advice question: the guard refuses it, which is correct
    assert first["expected_refusal"] and first["route"] == ROUTE_REFUSED_INPUT and first["primary"] == 1.0
    # adv-01..03 are refused by the input guard; adv-02/03's forbidden strings sit in their own prompts,
    # which the saved records must withhold. (adv-04 reaches the model: its pass depends on the answer.)
    failing = {f["id"] for f in res["behaviour"]["failures"]}
    assert not failing & {"adv-01", "adv-02", "adv-03"}, res["behaviour"]["failures"]
    assert res["groundedness"]["retrieval_recall"] is not None
    e = res["efficiency"]
    assert 130e6 < e["params"] < 140e6 and e["size_bytes"] > 5e8
    assert 400 < e["rss_after_load_mb"] <= e["peak_rss_mb"] < 4000
    assert e["decode_tok_s"] > 0 and e["latency_ms"]["p95"] > 0
