"""``distilltune export``: GGUF files that transformers' GGUF loader (the project's own loading path)
reads back to the same model, the tokenizer metadata llama.cpp needs, k-quant encoders, the CLI.

References are independent of the writer: the bundled SmolLM2 GGUF (written by llama.cpp's converter)
for the tokenizer keys, transformers' GGUF loader for tensor layout, gguf's decoders for k-quants.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_run import run_cli
from distilltune.errors import UserError
from tiny_models import build_tiny_llama


def _bundled_reader():
    import gguf

    from distilltune.models.bundled import gguf_path

    return gguf.GGUFReader(gguf_path("smollm2-135m-instruct"))


def _main(capsys, *args: str) -> tuple[int, str, str]:
    return run_cli(capsys, *args)


def _eval_sequences(task_dir: Path, tokenizer) -> list[list[int]]:
    """Whole eval conversations (prompt and reference answer) as token ids: natural text to score."""
    rows = [json.loads(line) for line in (task_dir / "eval.jsonl").read_text().splitlines() if line.strip()]
    return [list(tokenizer.apply_chat_template(r["messages"], return_dict=True)["input_ids"]) for r in rows]


def _top1(model, seqs: list[list[int]]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(input_ids=torch.tensor([s])).logits[0].argmax(-1) for s in seqs])


def test_tokenizer_metadata_matches_llama_cpp_converter(tokenizer):
    """The keys we write for the project's tokenizer equal those llama.cpp's converter wrote for SmolLM2."""
    from distilltune.export.gguf_vocab import build_vocab

    ref = _bundled_reader().fields
    v = build_vocab(tokenizer, len(tokenizer))
    assert v.tokens == ref["tokenizer.ggml.tokens"].contents()
    assert v.types == ref["tokenizer.ggml.token_type"].contents()
    assert v.merges == ref["tokenizer.ggml.merges"].contents()
    assert v.pre == ref["tokenizer.ggml.pre"].contents() == "smollm"
    for ours, key in ((v.bos_id, "bos"), (v.eos_id, "eos"), (v.unk_id, "unknown"), (v.pad_id, "padding")):
        assert ours == ref[f"tokenizer.ggml.{key}_token_id"].contents(), key
    assert v.add_bos == ref["tokenizer.ggml.add_bos_token"].contents()
    assert v.chat_template == ref["tokenizer.chat_template"].contents()
    assert not v.warnings


def test_rotary_row_order_is_what_transformers_gguf_loader_undoes():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    from distilltune.export.gguf_export import to_pair_rotary_order

    proc = LlamaTensorProcessor(config={"num_attention_heads": 4, "num_key_value_heads": 2})
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal((32, 24)), rng.standard_normal((16, 24))
    assert not np.array_equal(to_pair_rotary_order(q, 4), q)
    back_q = proc.process(to_pair_rotary_order(q, 4), "blk.0.attn_q.weight").weights
    back_k = proc.process(to_pair_rotary_order(k, 2), "blk.0.attn_k.weight").weights
    np.testing.assert_array_equal(back_q, q)
    np.testing.assert_array_equal(back_k, k)


def test_gguf_f32_export_reloads_to_the_same_model_and_greedy_tokens(tokenizer_dir, tiny_task, tmp_path):
    """Unquantized: weights bit-identical after the round trip, same prompt tokens, same greedy answers."""
    from distilltune.data.chat import with_system
    from distilltune.export import ExportConfig, export_model
    from distilltune.models import load_model
    from distilltune.models.generate import generate_chat
    from distilltune.task import load_task

    src_dir = build_tiny_llama(tokenizer_dir, tmp_path / "src", initializer_range=0.5)
    out = tmp_path / "gguf"
    report = export_model(
        ExportConfig(
            model=str(src_dir),
            output=str(out),
            format="gguf",
            task=str(tiny_task),
            check=4,
            max_new_tokens=16,
        )
    )
    gg = out / "model-f32.gguf"
    assert report["model_file"] == gg.name and gg.is_file()
    assert json.loads((out / "export.json").read_text()) == json.loads(json.dumps(report))
    assert report["tensor_types"] == {"F32": 2 * 9 + 2}
    assert report["size_bytes"] == gg.stat().st_size and report["size_ratio"] > 1.0  # f32 + vocabulary
    rt = report["roundtrip"]
    assert rt["prompts"] == 4 and rt["prompt_tokens_identical"] == 1.0
    assert rt["exact_match"] == 1.0 and rt["token_agreement"] == 1.0 and rt["fact_recall_diff"] == 0.0

    src = load_model(str(src_dir))
    back = load_model(str(gg))  # the project's GGUF loading path (transformers' GGUF loader)
    for name, t in src.model.state_dict().items():
        torch.testing.assert_close(back.model.state_dict()[name], t, rtol=0, atol=0, msg=name)
    task = load_task(tiny_task)
    convs = [with_system(task.system_prompt, [m.model_dump() for m in c.prompt_messages]) for c in task.eval]
    a = generate_chat(src.model, src.tokenizer, convs, max_new_tokens=16, batch_size=1)
    b = generate_chat(back.model, back.tokenizer, convs, max_new_tokens=16, batch_size=1)
    assert [g.text for g in a] == [g.text for g in b]
    assert len({g.text for g in a}) > 1 and all(g.new_tokens > 0 for g in a)

    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith(f"FROM ./{gg.name}\n")
    assert f'SYSTEM """{task.system_prompt.strip()}"""' in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and "<|im_start|>{{ .Role }}" in modelfile


def test_gguf_q8_0_keeps_top1_on_95_percent_of_positions(tiny_model_dir, tiny_task, tmp_path, capsys):
    import gguf

    from distilltune.models import load_model

    out = tmp_path / "q8"
    code, stdout, stderr = _main(
        capsys, "export", str(tiny_model_dir), "--quant", "q8_0", "--output", str(out)
    )
    assert code == 0, stderr
    assert stdout.strip() == str(out / "export.json")
    report = json.loads((out / "export.json").read_text())
    assert report["quant"] == "q8_0" and report["roundtrip"] is None
    tensors = gguf.GGUFReader(out / report["model_file"]).tensors
    types = {t.name: t.tensor_type.name for t in tensors}
    assert {v for k, v in types.items() if "norm" not in k} == {"Q8_0"}
    assert {v for k, v in types.items() if "norm" in k} == {"F32"}
    # 8.5 bits per weight: the tensors take <= 0.3x float32; the file also carries the vocabulary (~1.7 MB)
    assert sum(int(t.n_bytes) for t in tensors) <= 0.3 * report["fp32_safetensors_bytes"]
    assert report["size_ratio"] < 0.6

    src = load_model(str(tiny_model_dir))
    back = load_model(str(out / report["model_file"]))
    seqs = _eval_sequences(tiny_task, src.tokenizer)
    a, b = _top1(src.model, seqs), _top1(back.model, seqs)
    assert len(set(a.tolist())) >= 20  # a model that says one thing everywhere would agree trivially
    assert (a == b).float().mean().item() >= 0.95


@pytest.mark.parametrize("qtype,max_rel_rmse", [("Q4_K", 0.09), ("Q6_K", 0.025)])
def test_kquant_encoders_decode_with_gguf(qtype, max_rel_rmse):
    """Our Q4_K / Q6_K blocks, decoded by gguf's reference decoder, give the data back within the step."""
    import gguf

    from distilltune.export.kquants import _encode_k

    qt = getattr(gguf.GGMLQuantizationType, qtype)
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((6, 768)) * rng.uniform(0.01, 2.0, (6, 1))).astype(np.float32)
    x[1, :50] += 4.0  # an outlier block
    x[2] = 0.0  # an all-zero row must not produce NaNs
    data = _encode_k(x, qt)
    assert data.dtype == np.uint8 and data.shape == (6, 3 * gguf.GGML_QUANT_SIZES[qt][1])
    y = gguf.quants.dequantize(data, qt)
    assert np.isfinite(y).all() and np.array_equal(y[2], x[2])
    rel = np.sqrt(((y - x) ** 2).mean() / (x**2).mean())
    assert rel < max_rel_rmse
    levels = 15 if qtype == "Q4_K" else 62
    span = x.max(1) - x.min(1)
    assert (np.abs(y - x).max(1) <= span / levels + 1e-6).all()


def _q4_0_reference(model):
    """``model`` with every matrix passed through gguf's own Q4_0 encoder and decoder (4.5 bits a weight)."""
    import copy

    import gguf

    ref = copy.deepcopy(model)
    with torch.no_grad():
        for p in ref.parameters():
            if p.ndim == 2:
                q = gguf.quants.quantize(p.numpy(), gguf.GGMLQuantizationType.Q4_0)
                p.copy_(torch.from_numpy(gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q4_0)))
    return ref


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).pow(2).mean() / b.pow(2).mean()).sqrt().item()


def test_gguf_q4_k_m_uses_k_quants_and_beats_gguf_q4_0(tokenizer_dir, tiny_task, tmp_path):
    """Width 256 so rows fill k-quant blocks. A random tiny model flips many near-tied argmaxes under any
    4-bit quantization, so the reference is gguf's own Q4_0 at the same size: every matrix must come back
    at least as close, and the model must keep at least as many top-1 choices."""
    import gguf

    from distilltune.export import ExportConfig, export_model
    from distilltune.models import load_model

    src_dir = build_tiny_llama(tokenizer_dir, tmp_path / "src", layers=2, hidden=256)
    out = tmp_path / "q4"
    report = export_model(ExportConfig(model=str(src_dir), output=str(out), quant="q4_k_m"))
    assert {"Q4_K", "Q6_K"} <= set(report["tensor_types"])
    # Q4_K is 4.5 bits a weight, Q6_K 6.56; the tied embedding (Q6_K, as the output head) dominates here
    tensors = gguf.GGUFReader(out / report["model_file"]).tensors
    assert sum(int(t.n_bytes) for t in tensors) <= 0.21 * report["fp32_safetensors_bytes"]

    src, back = load_model(str(src_dir)), load_model(str(out / report["model_file"]))
    ref = _q4_0_reference(src.model)
    ours_sd, ref_sd = back.model.state_dict(), ref.state_dict()
    for name, w in src.model.state_dict().items():
        if w.ndim == 2:
            assert _rel_err(ours_sd[name], w) <= _rel_err(ref_sd[name], w), name
    seqs = _eval_sequences(tiny_task, src.tokenizer)
    want = _top1(src.model, seqs)
    ours = (_top1(back.model, seqs) == want).float().mean().item()
    assert ours >= (_top1(ref, seqs) == want).float().mean().item()
    assert ours >= 0.6


def test_lora_run_is_merged_before_export(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from distilltune.export import ExportConfig, export_model
    from distilltune.models import load_model

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    torch.manual_seed(0)
    peft = get_peft_model(
        base, LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj"], init_lora_weights=False)
    )
    run = tmp_path / "run"
    peft.save_pretrained(run / "adapter")
    cfg = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(tiny_model_dir)
    report = export_model(ExportConfig(model=str(run), output=str(tmp_path / "out")))
    assert report["merged_adapter"] == "LORA" and report["source_kind"] == "adapter"
    ids = torch.tensor([[1, 520, 33, 4578, 2]])
    back = load_model(str(tmp_path / "out" / report["model_file"]))
    with torch.no_grad():
        want = peft.eval()(input_ids=ids).logits
        plain = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))(input_ids=ids).logits
        got = back.model(input_ids=ids).logits
    assert not torch.allclose(want, plain, atol=1e-3)  # the adapter changes the model
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_bad_requests_are_clear_errors_and_write_nothing(tiny_model_dir, tmp_path, capsys):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from distilltune.export import ExportConfig, export_model

    code, _, err = _main(
        capsys, "export", str(tiny_model_dir), "-f", "onnx", "-q", "q8_0", "-o", str(tmp_path / "x")
    )
    assert code == 2 and "does not apply to --format onnx" in err and "Traceback" not in err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="not an empty directory"):
        export_model(ExportConfig(model=str(tiny_model_dir), output=str(busy)))
    qwen = tmp_path / "qwen"
    Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4
        )
    ).save_pretrained(qwen)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(tiny_model_dir)).save_pretrained(qwen)
    out = tmp_path / "never"
    with pytest.raises(UserError, match="writes Llama-family models"):
        export_model(ExportConfig(model=str(qwen), output=str(out)))
    assert not out.exists() and not list(tmp_path.glob(".never.*"))
