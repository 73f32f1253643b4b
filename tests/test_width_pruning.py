"""Width pruning (mlp=, heads=): units that contribute nothing by construction are ranked last, and
removing them leaves the logits unchanged; the result is a normal model that saves, loads and trains."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from distilltune.errors import UserError
from distilltune.models import load_model, load_tokenizer
from distilltune.models.importance import task_width_importance
from distilltune.models.spec import parse_student_spec
from distilltune.models.width import save_scores, top_units, weight_importance
from distilltune.train.methods import meta_model
from tiny_models import build_tiny_llama

TEXTS = [
    "How much is a domestic wire transfer?",
    "Refunds take 21 days after the request is filed, and the Pro plan costs $49 a month.",
]
# Two rows of different length, so padding (and the mask that excludes it) is exercised.
IDS = torch.tensor([[5, 17, 300, 42, 9, 77, 1200, 8], [8, 1000, 3, 4, 64, 2, 0, 0]])
MASK = torch.tensor([[1] * 8, [1] * 6 + [0, 0]])


def _build(tokenizer_dir, path, **kw):
    # initializer_range 0.2: logits that move visibly when a unit that matters is removed
    return build_tiny_llama(tokenizer_dir, path, layers=3, hidden=64, seed=3, initializer_range=0.2, **kw)


def _save(model, tok, path):
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def _logits(model):
    with torch.no_grad():
        out = model(input_ids=IDS, attention_mask=MASK).logits
    return out[MASK.bool()]


def _dead_channels(n_layers: int, intermediate: int, n_dead: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(7)
    return [sorted(torch.randperm(intermediate, generator=gen)[:n_dead].tolist()) for _ in range(n_layers)]


@pytest.fixture(scope="module")
def dead_mlp(tmp_path_factory, tokenizer_dir):
    """A model in which 32 of the 128 MLP channels of every layer (different ones per layer) output
    exactly zero: half have a zero up_proj row, half a zero gate_proj row (silu(0) = 0)."""
    d = _build(tokenizer_dir, tmp_path_factory.mktemp("dense"))
    model = AutoModelForCausalLM.from_pretrained(str(d)).eval()
    dead = _dead_channels(3, 128, 32)
    with torch.no_grad():
        for layer, chans in zip(model.model.layers, dead, strict=True):
            layer.mlp.up_proj.weight[chans[:16]] = 0
            layer.mlp.gate_proj.weight[chans[16:]] = 0
    tok = AutoTokenizer.from_pretrained(str(d))
    return _save(model, tok, tmp_path_factory.mktemp("dead-mlp")), dead


def test_dead_mlp_channels_rank_last_and_pruning_them_keeps_the_logits(dead_mlp, tmp_path):
    path, dead = dead_mlp
    full = load_model(str(path))
    mlp_s, head_s = task_width_importance(full.model, full.tokenizer, TEXTS)
    w_mlp, _ = weight_importance(full.model)
    for i, chans in enumerate(dead):
        alive = sorted(set(range(128)) - set(chans))
        assert torch.all(mlp_s[i, chans] == 0) and torch.all(mlp_s[i, alive] > 0)
        assert top_units(mlp_s[i], 96) == alive  # the 32 dead channels are the ones dropped
        assert top_units(w_mlp[i], 96) == alive  # the data-free fallback agrees
    scores = tmp_path / "scores.safetensors"
    save_scores(scores, mlp_s, head_s, {})
    reference = _logits(full.model)
    for spec in (f"{path}:mlp=0.75,importance={scores}", f"{path}:mlp=0.75"):
        student = load_model(spec).model
        assert student.config.intermediate_size == 96
        assert student.model.layers[1].mlp.down_proj.weight.shape == (64, 96)
        torch.testing.assert_close(_logits(student), reference, rtol=1e-5, atol=1e-5)
    # the check can fail: keeping dead channels in place of live ones changes the logits
    save_scores(scores, -mlp_s, head_s, {})
    wrong = load_model(f"{path}:mlp=0.75,importance={scores}").model
    assert not torch.allclose(_logits(wrong), reference, rtol=1e-3, atol=1e-3)


def _zero_heads(tokenizer_dir, tmp_path, heads: int, kv_heads: int, dead: list[list[int]]):
    d = _build(tokenizer_dir, tmp_path / "dense", heads=heads, kv_heads=kv_heads)
    model = AutoModelForCausalLM.from_pretrained(str(d)).eval()
    hd = 64 // heads
    with torch.no_grad():
        for layer, hs in zip(model.model.layers, dead, strict=True):
            for h in hs:
                layer.self_attn.o_proj.weight[:, h * hd : (h + 1) * hd] = 0
    return _save(model, AutoTokenizer.from_pretrained(str(d)), tmp_path / "dead-heads")


@pytest.mark.parametrize(
    ("heads", "kv_heads", "dead", "kept_kv"),
    [
        # GQA, 2 query heads per KV head: one dead head in each group, heads=0.5 keeps one per group
        (4, 2, [[0, 3], [1, 2], [1, 3]], 2),
        # no GQA (every head its own KV head): heads=0.5 drops two heads with their keys and values
        (4, 4, [[1, 2], [0, 3], [2, 3]], 2),
    ],
)
def test_dead_heads_rank_last_and_pruning_them_keeps_the_logits(
    tokenizer_dir, tmp_path, heads, kv_heads, dead, kept_kv
):
    path = _zero_heads(tokenizer_dir, tmp_path, heads, kv_heads, dead)
    full = load_model(str(path))
    mlp_s, head_s = task_width_importance(full.model, full.tokenizer, TEXTS)
    _, w_heads = weight_importance(full.model)
    for i, hs in enumerate(dead):
        assert torch.all(head_s[i, hs] == 0) and torch.all(head_s[i, sorted(set(range(heads)) - set(hs))] > 0)
        assert torch.all(w_heads[i, hs] == 0)
    scores = tmp_path / "scores.safetensors"
    save_scores(scores, mlp_s, head_s, {})
    student = load_model(f"{path}:heads=0.5,importance={scores}").model
    cfg = student.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (2, kept_kv, 64 // heads)
    assert cfg.distilltune_student_width["heads_kept"] == [sorted(set(range(heads)) - set(hs)) for hs in dead]
    torch.testing.assert_close(_logits(student), _logits(full.model), rtol=1e-5, atol=1e-5)


def test_depth_and_width_together_save_and_load_as_a_normal_model(dead_mlp, tmp_path, tokenizer):
    from distilltune.models.generate import generate_chat
    from distilltune.train.methods import meta_model

    path, _ = dead_mlp
    spec = "teacher:layers=0,2,mlp=0.5,heads=0.5"
    student = load_model(spec, teacher=str(path))
    cfg = student.model.config
    assert (cfg.num_hidden_layers, cfg.intermediate_size, cfg.num_attention_heads) == (2, 64, 2)
    assert (
        cfg.distilltune_student_layers == [0, 2] and cfg.distilltune_student_width["importance"] == "weights"
    )
    attn = student.model.model.layers[0].self_attn
    assert attn.q_proj.weight.shape == (2 * 16, 64) and attn.k_proj.weight.shape == (2 * 16, 64)
    assert attn.o_proj.weight.shape == (64, 2 * 16)
    # the weight-free config used by training checks agrees with the real model, tensor by tensor
    meta, _ = meta_model(spec, teacher=str(path))
    assert {k: v.shape for k, v in meta.state_dict().items()} == {
        k: v.shape for k, v in student.model.state_dict().items()
    }
    out = _save(student.model, student.tokenizer, tmp_path / "student")
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    saved = json.loads((out / "config.json").read_text())
    assert (saved["intermediate_size"], saved["num_attention_heads"], saved["num_key_value_heads"]) == (
        64,
        2,
        2,
    )
    again = load_model(str(out)).model
    assert torch.equal(_logits(again), _logits(student.model))
    gens = generate_chat(again, tokenizer, [[{"role": "user", "content": "hi"}]] * 2, max_new_tokens=4)
    assert gens[0].text == gens[1].text  # cached decoding works with the new head counts


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("teacher:mlp=0", "mlp=0: expected the fraction of each layer's MLP channels to keep, above 0"),
        ("teacher:mlp=1.5", "mlp=1.5: expected the fraction"),
        ("teacher:n_layers=2,mlp=half", "mlp=half: expected the fraction"),
        ("teacher:heads=0", "heads=0: expected the fraction of attention heads"),
        ("teacher:heads=0.75", r"heads=0.75 keeps 3 of 4 attention heads.*multiple of 2.*heads=0.5 \(2\)"),
        ("teacher:mlp=0.001", "mlp=0.001 keeps no channel"),
        ("teacher:n_layers=2,widht=0.5", "unknown key 'widht'"),
        ("teacher:n_layers=2,layers=0,1", "n_layers= or layers=, not both"),
        ("teacher:importance=x.safetensors", "add mlp= or heads="),
        ("teacher:mlp=0.5,importance=/nonexistent/s.safetensors", "importance=/nonexistent/s.safetensors"),
    ],
)
def test_bad_width_specs_are_clear_errors(dead_mlp, spec, message):
    path, _ = dead_mlp
    with pytest.raises(UserError, match=message):
        load_model(spec, teacher=str(path))


def test_spec_parse_keeps_layers_commas_and_prints_canonically():
    spec = parse_student_spec("teacher:layers=0, 1,5,mlp=0.50,heads=1")
    assert (spec.layers, spec.mlp, spec.heads) == ("0,1,5", 0.5, 1.0)
    assert spec.text() == "teacher:layers=0,1,5,mlp=0.5,heads=1"
    assert parse_student_spec("runs/a/model") is None
    assert parse_student_spec("teacher:mlp=0.5").layer_choice(4) == [0, 1, 2, 3]
    # 'teacher' is bound to the command's teacher only where a model is read, and must then be given
    assert spec.bound("runs/t").text() == "runs/t:layers=0,1,5,mlp=0.5,heads=1"
    assert parse_student_spec("base:n_layers=2").bound(None).base == "base"
    with pytest.raises(UserError, match="names 'teacher' but no teacher model was given"):
        spec.bound(None)
    for read in (load_model, load_tokenizer, lambda ref: meta_model(ref)):
        with pytest.raises(UserError, match="no teacher model was given"):
            read("teacher:n_layers=2")


def test_scores_measured_on_another_depth_are_refused(dead_mlp, tmp_path):
    path, _ = dead_mlp
    scores = tmp_path / "s.safetensors"
    save_scores(scores, torch.ones(5, 128), torch.ones(5, 4), {})
    with pytest.raises(UserError, match="scores for 5 layers, but the base model has 3"):
        load_model(f"{path}:mlp=0.5,importance={scores}")
