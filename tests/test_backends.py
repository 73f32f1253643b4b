"""Generation backends (``inference.backends``): ONNX Runtime and llama.cpp behind the engine interface.

The reference is the torch engine on the same tiny model: unquantized exports must give the same
greedy answers through ``RequestPath`` (guard, retrieval, prompt, output guard), the same token
log-probabilities (the cascade's confidence) and the same reference-answer NLL. llama.cpp tests are
skipped with the install line when the ``gguf`` extra is missing.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json

import numpy as np
import pytest

from tiny_models import build_tiny_llama

HAVE_ORT = all(importlib.util.find_spec(m) for m in ("onnxruntime", "onnx", "onnxscript"))
pytestmark = pytest.mark.skipif(
    not HAVE_ORT, reason="the onnx backend needs the onnx extra: pip install 'distilltune[onnx]'"
)


@pytest.fixture(scope="module")
def varied_model(tmp_path_factory, tokenizer_dir):
    """A tiny model whose greedy answers vary (large init), so agreement is not trivially 100 %."""
    return build_tiny_llama(tokenizer_dir, tmp_path_factory.mktemp("varied"), initializer_range=0.5)


@pytest.fixture(scope="module")
def onnx_dir(varied_model, tmp_path_factory):
    from distilltune.export import ExportConfig, export_model

    out = tmp_path_factory.mktemp("onnx") / "export"
    export_model(ExportConfig(model=str(varied_model), output=str(out), format="onnx"))
    return out


@pytest.fixture(scope="module")
def engines(varied_model, onnx_dir):
    from distilltune.inference.backends import open_model

    torch_m = open_model("torch", str(varied_model))
    onnx_m = open_model("onnx", str(onnx_dir))
    torch_m.engine.start()
    onnx_m.engine.start()
    yield torch_m, onnx_m
    torch_m.engine.stop()
    onnx_m.engine.stop()


def _conversations(task_dir, n: int = 5) -> list[list[dict]]:
    from distilltune.task import load_task

    task = load_task(task_dir)
    return [[m.model_dump() for m in c.prompt_messages] for c in task.eval[:n]]


def test_onnx_backend_answers_like_the_torch_engine_through_the_request_path(engines, tiny_task):
    from distilltune.evaluation.answer import answer_with_engine
    from distilltune.inference import build_path
    from distilltune.task import load_task

    torch_m, onnx_m = engines
    task = load_task(tiny_task)
    convs = _conversations(tiny_task)
    answers = {}
    for m in (torch_m, onnx_m):
        path = build_path(task, m.tokenizer)
        answers[m.backend.name] = answer_with_engine(
            m.engine, m.tokenizer, path.guard, path.prompter, convs, max_new_tokens=24
        )
    generated = 0
    for a, b in zip(answers["torch"], answers["onnx"], strict=True):
        assert (a.route, a.text, a.new_tokens, a.finish_reason) == (
            b.route,
            b.text,
            b.new_tokens,
            b.finish_reason,
        )
        if a.mean_logprob is not None:
            generated += 1
            assert b.mean_logprob == pytest.approx(a.mean_logprob, abs=1e-3)
    assert generated >= 3  # the comparison covered real generations, not only guard refusals
    assert onnx_m.backend.continuous_batching is False and torch_m.backend.continuous_batching is True


def test_sampling_is_seeded_and_follows_temperature(engines):
    _, onnx_m = engines
    ids = onnx_m.tokenizer("Where can I park my bike?")["input_ids"]
    a = onnx_m.engine.generate(ids, 12, temperature=1.0, seed=7)
    b = onnx_m.engine.generate(ids, 12, temperature=1.0, seed=7)
    assert a.token_ids == b.token_ids
    greedy = onnx_m.engine.generate(ids, 12)
    draws = {tuple(onnx_m.engine.generate(ids, 12, temperature=1.5, seed=s).token_ids) for s in range(4)}
    assert len(draws | {tuple(greedy.token_ids)}) > 1  # hot sampling leaves the greedy path


def test_pick_matches_a_closed_form_top_p_distribution():
    from distilltune.inference.backends.sequential import pick
    from distilltune.inference.generation import GenRequest

    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    req = GenRequest([1], 1, temperature=1.0, top_p=0.7)  # keeps 0.5 and 0.3 (0.5 < 0.7, 0.8 - 0.3 < 0.7)
    rng = np.random.default_rng(0)
    counts = np.bincount([pick(logits, req, rng)[0] for _ in range(4000)], minlength=4)
    assert counts[2] == counts[3] == 0
    assert counts[0] / counts[:2].sum() == pytest.approx(0.5 / 0.8, abs=0.03)
    tok, lp = pick(logits, GenRequest([1], 1), None)
    assert tok == 0 and lp == pytest.approx(np.log(0.5))


def test_queue_is_bounded_and_cancel_ends_a_request(onnx_dir):
    from distilltune.inference.backends import open_model
    from distilltune.inference.generation import QueueFull

    m = open_model("onnx", str(onnx_dir), max_queue=2)
    ids = m.tokenizer("hello")["input_ids"]
    from distilltune.inference.generation import GenRequest

    done = []
    first = m.engine.submit_request(GenRequest(ids, 50, on_done=done.append))
    m.engine.submit_request(GenRequest(ids, 50, on_done=done.append))
    with pytest.raises(QueueFull):
        m.engine.submit_request(GenRequest(ids, 5))
    first.cancel()
    m.engine.start()
    try:

        async def streamed():
            handle = m.engine.submit(ids, 6)
            toks = [t async for t, _ in handle.tokens()]
            return toks, await handle.result()

        toks, res = asyncio.run(streamed())
        assert res.token_ids == toks and len(toks) <= 6 and res.finish_reason in ("stop", "length")
    finally:
        m.engine.stop()
    reasons = sorted(r.finish_reason for r in done)
    assert reasons[0] == "cancelled" and reasons[1] in ("stop", "length")
    with pytest.raises(ValueError, match="empty prompt"):
        m.engine.submit_request(GenRequest([], 5))


def test_reference_nll_through_onnx_equals_torch(engines, tiny_task):
    from distilltune.evaluation.likelihood import reference_nll, reference_nll_engine
    from distilltune.inference import build_path
    from distilltune.task import load_task

    torch_m, onnx_m = engines
    task = load_task(tiny_task)
    path = build_path(task, torch_m.tokenizer)
    items = task.eval[:4]
    prompts = [path.prepare([m.model_dump() for m in c.prompt_messages]).messages for c in items]
    refs = [c.answer for c in items]
    want = reference_nll(torch_m.model, torch_m.tokenizer, prompts, refs)
    got = reference_nll_engine(onnx_m.engine, onnx_m.tokenizer, prompts, refs)
    assert all(w is not None for w in want)
    assert got == pytest.approx(want, abs=1e-3)


def test_non_torch_backend_needs_its_format_with_a_clear_error(varied_model):
    from distilltune.errors import UserError
    from distilltune.inference.backends import open_model

    with pytest.raises(UserError, match="--format onnx"):
        open_model("onnx", str(varied_model))
    with pytest.raises(UserError, match="unknown backend"):
        open_model("tensorrt", str(varied_model))


def test_export_on_the_fly_is_cached_and_keyed_by_the_source(varied_model, tmp_path):
    import shutil

    from distilltune.export.deployed import deployed_artifact

    src = tmp_path / "src"
    shutil.copytree(varied_model, src)
    first = deployed_artifact(str(src), "onnx")
    again = deployed_artifact(str(src), "onnx")
    assert first.exported and first.path == again.path and (first.path / "model.onnx").is_file()
    int8 = deployed_artifact(str(src), "onnx", "int8")
    assert int8.path != first.path and int8.report["quant"] == "int8"
    given = deployed_artifact(str(first.path), "onnx")
    assert not given.exported and given.path == first.path
    (src / "config.json").write_text((src / "config.json").read_text() + "\n")  # the source changed
    assert deployed_artifact(str(src), "onnx").path != first.path


def test_llama_cpp_backend_missing_extra_is_a_clear_error(varied_model, tmp_path, monkeypatch):
    import sys

    from distilltune.errors import UserError
    from distilltune.export import ExportConfig, export_model
    from distilltune.inference.backends import open_model

    report = export_model(ExportConfig(model=str(varied_model), output=str(tmp_path / "g")))
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp now raises ImportError
    with pytest.raises(UserError, match=r"distilltune\[gguf\]"):
        open_model("llama.cpp", str(tmp_path / "g" / report["model_file"]))


def _llama_cpp():
    return pytest.importorskip(
        "llama_cpp",
        reason="llama-cpp-python is not installed: pip install 'distilltune[gguf]' (make install-gguf; "
        "builds llama.cpp from source with cmake, minutes on 2 cores)",
    )


@pytest.mark.parametrize("quant", ["none", "q8_0"])
def test_llama_cpp_backend_answers_like_torch(engines, varied_model, tiny_task, quant):
    _llama_cpp()
    from distilltune.evaluation.answer import answer_with_engine
    from distilltune.evaluation.likelihood import reference_nll, reference_nll_engine
    from distilltune.export.deployed import deployed_artifact
    from distilltune.inference import build_path
    from distilltune.inference.backends import open_model
    from distilltune.task import load_task

    torch_m, _ = engines
    dep = deployed_artifact(str(varied_model), "llama.cpp", quant)
    m = open_model("llama.cpp", str(dep.path))
    assert m.tokenizer.get_vocab() == torch_m.tokenizer.get_vocab()
    task = load_task(tiny_task)
    convs = _conversations(tiny_task)
    m.engine.start()
    try:
        got = {}
        for x in (torch_m, m):
            path = build_path(task, x.tokenizer)
            got[x.backend.name] = answer_with_engine(
                x.engine, x.tokenizer, path.guard, path.prompter, convs, max_new_tokens=16
            )
        prompts = [a.messages for a in got["torch"][:3]]
        refs = [c.answer for c in task.eval[:3]]
        nll = reference_nll_engine(m.engine, m.tokenizer, prompts, refs)  # the worker is idle now
    finally:
        m.engine.stop()
    answered = [b for b in got["llama.cpp"] if b.new_tokens > 0]
    assert len(answered) >= 3 and all(b.mean_logprob is not None for b in answered)
    if quant == "none":  # f32 file, f32 KV cache: torch's numbers
        for a, b in zip(got["torch"], got["llama.cpp"], strict=True):
            assert (a.text, a.new_tokens) == (b.text, b.new_tokens)
            if a.mean_logprob is not None:
                assert b.mean_logprob == pytest.approx(a.mean_logprob, abs=1e-3)
        assert nll == pytest.approx(reference_nll(torch_m.model, torch_m.tokenizer, prompts, refs), abs=1e-3)


def test_evaluate_with_the_onnx_backend_matches_torch(varied_model, tiny_task, tmp_path, capsys):
    from cli_run import run_cli

    def run(backend: str, out):
        args = ["evaluate", str(varied_model), "--task", str(tiny_task), "-o", str(out), "--limit", "4"]
        args += ["--backend", backend, "max_new_tokens=16", "efficiency.prompts=2", "efficiency.warmup=0"]
        code, _, err = run_cli(capsys, *args)
        assert code == 0, err
        return json.loads((out / "eval.json").read_text())

    t = run("torch", tmp_path / "t")
    o = run("onnx", tmp_path / "o")
    assert o["settings"]["backend"] == "onnx" and o["efficiency"]["backend"] == "onnx"
    assert o["efficiency"]["settings"]["runtime"] == "onnx" and o["efficiency"]["timed_requests"] == 2
    assert o["efficiency"]["size_bytes"] > 0 and o["efficiency"]["params"] == t["efficiency"]["params"]
    assert [i["answer_nll"] for i in o["per_item"]] == pytest.approx(
        [i["answer_nll"] for i in t["per_item"]], abs=1e-3
    )
    items = [json.loads(x) for x in (tmp_path / "o" / "items.jsonl").read_text().splitlines()]
    items_t = [json.loads(x) for x in (tmp_path / "t" / "items.jsonl").read_text().splitlines()]
    assert [i["answer"] for i in items] == [i["answer"] for i in items_t]


def test_serve_with_the_onnx_backend_answers_on_loopback(varied_model, tiny_task, tmp_path):
    import httpx

    from distilltune.serve.config import ServeConfig
    from serve_helpers import running_server

    cfg = ServeConfig(
        model=str(varied_model), task=str(tiny_task), backend="onnx", log_db=str(tmp_path / "log.db")
    )
    with running_server(cfg) as (url, state):
        models = httpx.get(f"{url}/v1/models", timeout=30).json()["data"]
        assert models[0]["backend"] == "onnx" and models[0]["continuous_batching"] is False
        r = httpx.post(
            f"{url}/v1/chat/completions",
            json={
                "model": models[0]["id"],
                "messages": [{"role": "user", "content": "What are your opening hours?"}],
                "max_tokens": 12,
            },
            timeout=60,
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["choices"][0]["message"]["content"] and body["usage"]["completion_tokens"] > 0
        assert state.student.backend == "onnx"


def test_serve_with_llama_cpp_missing_stops_with_the_install_line(
    varied_model, tiny_task, tmp_path, monkeypatch, capsys
):
    import shutil
    import sys

    from cli_run import run_cli
    from distilltune.export.deployed import cache_dir

    model = tmp_path / "model"  # a source no other test has exported
    shutil.copytree(varied_model, model)
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if the gguf extra were not installed
    args = ["serve", str(model), "--task", str(tiny_task), "--backend", "llama.cpp", "--quant", "q8_0"]
    code, out, err = run_cli(capsys, *args, "--log-db", str(tmp_path / "log.db"))
    assert code == 2 and "Traceback" not in out + err
    assert "distilltune[gguf]" in out + err and "make install-gguf" in out + err
    assert not cache_dir(str(model), "gguf", "q8_0").exists()  # nothing exported for nothing
