"""Exports loaded by the runtimes people deploy with: ONNX Runtime (extra ``onnx``) and llama.cpp
(``llama-cpp-python``, built from source). Each test is skipped with the reason when its runtime is missing.

The reference is the source torch model: unquantized exports must give 100 % the same greedy tokens.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from tiny_models import build_tiny_llama

HAVE_ORT = all(importlib.util.find_spec(m) for m in ("onnxruntime", "onnx", "onnxscript"))
HAVE_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
needs_ort = pytest.mark.skipif(
    not HAVE_ORT, reason="ONNX export needs the onnx extra: pip install 'distilltune[onnx]'"
)
needs_llama_cpp = pytest.mark.skipif(
    not HAVE_LLAMA_CPP,
    reason="llama-cpp-python is not installed (no wheel on this package index; `pip install llama-cpp-python` "
    "builds llama.cpp from source with cmake, minutes on 2 cores)",
)


def _prompts(task_dir, tokenizer, n: int = 4) -> list[list[int]]:
    from distilltune.data.chat import with_system
    from distilltune.models.generate import render_prompt
    from distilltune.task import load_task

    task = load_task(task_dir)
    convs = [with_system(task.system_prompt, [m.model_dump() for m in c.prompt_messages]) for c in task.eval]
    return [render_prompt(tokenizer, c) for c in convs[:n]]


def _torch_greedy(model, tokenizer, prompt: list[int], n: int) -> list[int]:
    from distilltune.models.generate import generate_ids, stop_token_ids

    stops = stop_token_ids(tokenizer)
    return generate_ids(model, [prompt], stops, tokenizer.pad_token_id or stops[0], n, 0.0)[0][0]


@pytest.fixture(scope="module")
def varied_model(tmp_path_factory, tokenizer_dir):
    """A tiny model whose greedy answers vary (large init), so agreement is not trivially 100 %."""
    return build_tiny_llama(tokenizer_dir, tmp_path_factory.mktemp("varied"), initializer_range=0.5)


@needs_ort
def test_onnx_export_greedy_matches_torch_with_kv_cache(varied_model, tiny_task, tmp_path):
    from distilltune.export import ExportConfig, export_model
    from distilltune.export.lm import OnnxLM
    from distilltune.models import load_model
    from distilltune.models.generate import stop_token_ids

    out = tmp_path / "onnx"
    report = export_model(
        ExportConfig(
            model=str(varied_model),
            output=str(out),
            format="onnx",
            task=str(tiny_task),
            check=4,
            max_new_tokens=16,
        )
    )
    rt = report["roundtrip"]
    assert rt["exact_match"] == 1.0 and rt["token_agreement"] == 1.0 and rt["prompt_tokens_identical"] == 1.0
    assert json.loads((out / "export.json").read_text())["format"] == "onnx"

    src = load_model(str(varied_model))
    lm = OnnxLM(out)
    stops = stop_token_ids(src.tokenizer)
    answers = []
    for p in _prompts(tiny_task, src.tokenizer):
        want = _torch_greedy(src.model, src.tokenizer, p, 16)
        got = lm.greedy(p, stops, 16)  # decodes step by step through the exported KV cache
        assert got == want
        answers.append(tuple(want))
        with torch.no_grad():
            ref = src.model(input_ids=torch.tensor([p])).logits[0].numpy()
        np.testing.assert_allclose(lm.logits(p), ref, rtol=1e-3, atol=1e-3)
    assert len(set(answers)) > 1


@needs_ort
def test_onnx_int8_is_smaller_and_still_runs(varied_model, tiny_task, tmp_path):
    from distilltune.export import ExportConfig, export_model

    fp32 = export_model(ExportConfig(model=str(varied_model), output=str(tmp_path / "f"), format="onnx"))
    int8 = export_model(
        ExportConfig(
            model=str(varied_model),
            output=str(tmp_path / "i"),
            format="onnx",
            quant="int8",
            task=str(tiny_task),
            check=4,
            max_new_tokens=16,
        )
    )
    assert int8["size_bytes"] < 0.4 * fp32["size_bytes"]
    rt = int8["roundtrip"]
    assert rt["positions"] > 0 and rt["token_agreement"] is not None
    assert not (tmp_path / "i" / ".fp32").exists()


@needs_llama_cpp
@pytest.mark.parametrize("quant", ["none", "q8_0"])
def test_llama_cpp_loads_the_gguf_and_answers(varied_model, tiny_model_dir, tiny_task, tmp_path, quant):
    """llama.cpp tokenizes like the source and, unquantized, decodes the same greedy tokens as torch."""
    import llama_cpp

    from distilltune.export import ExportConfig, export_model
    from distilltune.models import load_model

    src_dir = varied_model if quant == "none" else tiny_model_dir
    report = export_model(ExportConfig(model=str(src_dir), output=str(tmp_path / "g"), quant=quant))
    # An f32 KV cache for the f32 file: llama.cpp's default f16 cache moves logits by ~1e-3, enough to
    # flip a near-tied greedy choice of this random model (measured: a 0.002 top-2 margin flipped).
    kv = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32} if quant == "none" else {}
    llm = llama_cpp.Llama(
        model_path=str(tmp_path / "g" / report["model_file"]), n_ctx=512, verbose=False, **kv
    )
    src = load_model(str(src_dir))
    prompts = _prompts(tiny_task, src.tokenizer)
    for p in prompts:
        text = src.tokenizer.decode(p)
        assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) == p
    if quant != "none":
        out = llm.create_completion(src.tokenizer.decode(prompts[0]), max_tokens=8, temperature=0.0)
        assert out["choices"][0]["finish_reason"] in ("stop", "length")
        return
    for p in prompts:
        want = _torch_greedy(src.model, src.tokenizer, p, 12)
        llm.reset()
        got = []
        for tok in llm.generate(p, top_k=1, temp=0.0, repeat_penalty=1.0):
            got.append(tok)
            if len(got) == len(want) or llm.token_eos() == tok:
                break
        assert got == want[: len(got)] and len(got) == len(want)
