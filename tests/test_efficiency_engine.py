"""Compare's efficiency measurement generates through the serving engine and the server's request path.

The reference for what the engine path answers is evaluation's batch driver (``answer_requests``, HF
decoding): a second implementation of generation behind the same request path, so greedy text must
agree. Timings must be the engine's own (``GenResult``), and a declared concurrency must really put
several requests in flight.
"""

from __future__ import annotations

import threading
import time

import pytest
import yaml

from distilltune.evaluation import efficiency
from distilltune.evaluation.answer import answer_requests
from distilltune.evaluation.config import EvaluateConfig
from distilltune.evaluation.evaluate import efficiency_spec
from distilltune.evaluation.served import ServedAnswerer, time_concurrent, time_sequential
from distilltune.inference import build_path
from distilltune.inference.engine import Engine, open_engine
from distilltune.models import load_model
from distilltune.retrieval import RetrievalConfig
from distilltune.task import load_task


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(str(tiny_model_dir))


def _prompts(task, path, n):
    return efficiency.serving_prompts(task, path.guard, n)


def test_sequential_timing_goes_through_the_engine(tiny, tiny_task, monkeypatch):
    task = load_task(tiny_task)
    path = build_path(task, tiny.tokenizer, RetrievalConfig(enabled=False))
    results = []
    real_generate = Engine.generate

    def recording(self, *a, **kw):
        r = real_generate(self, *a, **kw)
        results.append(r)
        return r

    monkeypatch.setattr(Engine, "generate", recording)
    engine = open_engine(tiny.model, tiny.tokenizer).start()
    try:
        answer = ServedAnswerer(path, engine, tiny.tokenizer, max_new_tokens=6)
        prompts = _prompts(task, path, 4)
        answers, latencies = time_sequential(answer, prompts, warmup=1)
    finally:
        engine.stop()
    assert len(results) == 4 and len(answers) == len(latencies) == 3
    for a, g, lat in zip(answers, results[1:], latencies, strict=True):
        # the answer's timings and counts are the engine's GenResult, and one request ran at a time
        assert (a.prefill_s, a.decode_s, a.queue_s) == (g.prefill_s, g.decode_s, g.queue_s)
        assert a.new_tokens == len(g.token_ids) and g.max_batch_seen == 1
        assert lat >= g.prefill_s + g.decode_s
    assert answer.batches == [1, 1, 1, 1]
    # Same request path, another backend (HF batch decoding): identical greedy answers and routes.
    ref = answer_requests(
        tiny.model, tiny.tokenizer, path.guard, path.prompter, prompts[1:], max_new_tokens=6, batch_size=1
    )
    assert [a.text for a in answers] == [r.text for r in ref]
    assert [a.route for a in answers] == [r.route for r in ref]
    assert [a.prompt_tokens for a in answers] == [r.prompt_tokens for r in ref]


def test_concurrent_clients_share_the_engine_batch(tiny, tiny_task):
    """Three clients in flight at once are decoded in one batch (the worker starts only once all
    three are queued, so the admission is deterministic)."""
    task = load_task(tiny_task)
    path = build_path(task, tiny.tokenizer, RetrievalConfig(enabled=False))
    engine = open_engine(tiny.model, tiny.tokenizer)
    answer = ServedAnswerer(path, engine, tiny.tokenizer, max_new_tokens=5)

    def start_when_queued():
        deadline = time.monotonic() + 60
        while engine.queue_depth < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        engine.start()

    starter = threading.Thread(target=start_when_queued)
    starter.start()
    try:
        answers, latencies, wall = time_concurrent(answer, _prompts(task, path, 3), concurrency=3)
    finally:
        starter.join()
        engine.stop()
    assert len(answers) == len(latencies) == 3 and wall >= max(latencies)
    assert answer.batches == [3, 3, 3]


@pytest.fixture
def keep_threads(monkeypatch):
    """The probe sets torch's thread count for its process; keep this test process's as it was."""
    import torch

    n = torch.get_num_threads()
    monkeypatch.setenv("DISTILLTUNE_THREADS", "1")
    yield
    torch.set_num_threads(n)


def test_probe_measures_batch_one_and_the_declared_concurrency(
    tiny_model_dir, tiny_task, monkeypatch, keep_threads
):
    import distilltune.evaluation.answer as answer_mod
    import distilltune.models.generate as gen_mod

    def no_hf_loop(*a, **kw):
        raise AssertionError("the efficiency probe must generate through the engine")

    monkeypatch.setattr(gen_mod, "generate_ids", no_hf_loop)
    monkeypatch.setattr(answer_mod, "generate_ids", no_hf_loop)
    built = []
    import distilltune.inference.engine as engine_mod

    real_open = engine_mod.open_engine
    monkeypatch.setattr(engine_mod, "open_engine", lambda *a, **kw: built.append(kw) or real_open(*a, **kw))
    spec = {
        "model": str(tiny_model_dir),
        "task": str(tiny_task),
        "retrieval": {"enabled": False},
        "prompts": 3,
        "warmup": 1,
        "max_new_tokens": 4,
    }
    plain = efficiency.probe(spec)
    assert plain["concurrent"] is None and plain["settings"]["concurrency"] is None
    assert plain["timed_requests"] == 3 and len(plain["latency_ms"]["samples"]) == 3
    assert plain["settings"]["backend"] == "engine" and plain["settings"]["batch_size"] == 1
    conc = efficiency.probe({**spec, "concurrency": 3})
    c = conc["concurrent"]
    assert c["concurrency"] == 3 and conc["settings"]["concurrency"] == 3
    assert c["timed_requests"] == 6 == len(c["latency_ms"]["samples"])  # max(prompts, 2 × concurrency)
    assert 1 <= c["mean_batch"] <= c["max_batch"] <= 3
    assert c["requests_per_s"] > 0 and c["tokens_per_s"] > 0
    assert conc["peak_rss_mb"] >= conc["peak_rss_batch1_mb"] > 0
    assert len(built) == 2 and built[1]["max_batch"] == 8


def test_concurrency_comes_from_the_task_card_unless_overridden(tmp_path, tiny_task):
    card = tiny_task / "task.yaml"
    spec = yaml.safe_load(card.read_text())
    spec.setdefault("budgets", {})["concurrency"] = 4
    card.write_text(yaml.safe_dump(spec))
    task = load_task(tiny_task)
    cfg = EvaluateConfig(model="m", task=str(tiny_task), output=str(tmp_path / "o"))
    assert efficiency_spec(cfg, task)["concurrency"] == 4
    cfg = cfg.model_copy(update={"efficiency": cfg.efficiency.model_copy(update={"concurrency": 2})})
    assert efficiency_spec(cfg, task)["concurrency"] == 2
    spec["budgets"]["concurrency"] = 0
    card.write_text(yaml.safe_dump(spec))
    from distilltune.errors import UserError

    with pytest.raises(UserError, match="concurrency"):
        load_task(tiny_task)


def test_compare_passes_its_concurrency_override_to_every_evaluation(tmp_path, tiny_task):
    from distilltune.compare.config import CompareConfig
    from distilltune.compare.recipes import evaluate_config

    cfg = CompareConfig(task=str(tiny_task), output=str(tmp_path / "c"), budgets={"concurrency": 3})
    ev = evaluate_config(cfg, tiny_task, tmp_path / "c", "teacher", refs=lambda name: "m")
    assert ev.efficiency.concurrency == 3
    plain = evaluate_config(
        CompareConfig(task=str(tiny_task), output=str(tmp_path / "c")),
        tiny_task,
        tmp_path,
        "teacher",
        refs=str,
    )
    assert plain.efficiency.concurrency is None  # the task card's budgets.concurrency then applies


def test_compare_cli_budget_concurrency_reaches_the_config(capsys, tiny_task, tmp_path):
    from cli_run import run_cli

    code, out, err = run_cli(
        capsys, "compare", "--task", str(tiny_task), "--output", str(tmp_path / "c"),
        "--budget.concurrency", "4", "--print-config",
    )  # fmt: skip
    assert code == 0, err
    assert yaml.safe_load(out)["budgets"]["concurrency"] == 4
