"""Model resolution, the depth-pruning student builder, and the model cache."""

from __future__ import annotations

import time

import pytest
import torch

from distilltune.errors import UserError
from distilltune.models import load_model, model_info
from distilltune.models.bundled import COMPLETE_MARKER, cached_dir
from distilltune.models.student import default_layers, parse_layers


def test_default_layers_keep_first_and_last():
    assert default_layers(30, 6) == [0, 1, 2, 27, 28, 29]
    assert default_layers(4, 3) == [0, 1, 3]
    with pytest.raises(UserError):
        default_layers(4, 5)


def test_parse_layers_errors():
    assert parse_layers("0,1,3", 4) == [0, 1, 3]
    for bad in ("0,9", "2,1", "a,b", ""):
        with pytest.raises(UserError):
            parse_layers(bad, 4)


def test_student_copies_chosen_layers(tiny_teacher_dir):
    teacher = load_model(str(tiny_teacher_dir)).model
    student = load_model("teacher:layers=0,3", teacher=str(tiny_teacher_dir)).model
    assert student.config.num_hidden_layers == 2
    tl, sl = teacher.model.layers, student.model.layers
    torch.testing.assert_close(sl[0].mlp.up_proj.weight, tl[0].mlp.up_proj.weight)
    torch.testing.assert_close(sl[1].self_attn.q_proj.weight, tl[3].self_attn.q_proj.weight)
    torch.testing.assert_close(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
    # tied embeddings stay tied, and the student owns its tensors (no aliasing with the teacher)
    assert student.lm_head.weight.data_ptr() == student.model.embed_tokens.weight.data_ptr()
    assert student.model.embed_tokens.weight.data_ptr() != teacher.model.embed_tokens.weight.data_ptr()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert student(ids).logits.shape == (1, 4, teacher.config.vocab_size)
    ti, si = model_info(teacher), model_info(student)
    assert si.params < ti.params and si.embedding_share > ti.embedding_share


def test_n_layers_spec_and_kv_cache_generation(tiny_teacher_dir, tokenizer):
    from distilltune.models.generate import generate_chat

    loaded = load_model(f"{tiny_teacher_dir}:n_layers=2")
    assert loaded.model.config.distilltune_student_layers == [0, 3]
    gens = generate_chat(
        loaded.model, loaded.tokenizer, [[{"role": "user", "content": "hi"}]] * 2, max_new_tokens=5
    )
    assert all(g.new_tokens <= 5 for g in gens)
    assert gens[0].text == gens[1].text  # batched greedy decoding is deterministic across rows


def test_cached_generation_matches_full_recompute(tiny_model_dir, tokenizer):
    from distilltune.models.generate import generate_ids, stop_token_ids

    model = load_model(str(tiny_model_dir)).model
    prompt = tokenizer("hello there, how are you", add_special_tokens=False)["input_ids"]
    with_cache, _, _, _ = generate_ids(model, [prompt, prompt[:3]], [-1], tokenizer.pad_token_id, 8)
    model.config.use_cache = False
    ref = prompt
    for _ in range(8):
        with torch.no_grad():
            ref = [*ref, int(model(torch.tensor([ref])).logits[0, -1].argmax())]
    assert with_cache[0] == ref[len(prompt) :]
    assert stop_token_ids(tokenizer)


def test_unknown_reference_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a model directory"):
        load_model(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="no teacher"):
        load_model("teacher:n_layers=2")


def test_cached_dir_builds_once_and_is_atomic(tmp_path):
    calls = []

    def build(d):
        calls.append(1)
        (d / "weights.bin").write_bytes(b"x")

    target = tmp_path / "m"
    assert cached_dir(target, build) == target and (target / COMPLETE_MARKER).exists()
    cached_dir(target, build)
    assert len(calls) == 1

    def crash(d):
        (d / "partial").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        cached_dir(tmp_path / "n", crash)
    assert not (tmp_path / "n").exists()


def test_tokenizer_second_load_comes_from_cache(tokenizer_dir, monkeypatch):
    from distilltune.models import bundled

    monkeypatch.setattr(
        bundled, "gguf_path", lambda name: (_ for _ in ()).throw(AssertionError("re-read GGUF"))
    )
    t0 = time.perf_counter()
    assert bundled.bundled_tokenizer_dir() == tokenizer_dir
    assert time.perf_counter() - t0 < 5


@pytest.mark.slow
def test_bundled_teacher_answers_paris_and_loads_fast_from_cache(monkeypatch):
    monkeypatch.delenv("DISTILLTUNE_HOME", raising=False)
    from distilltune.data.chat import with_system
    from distilltune.models.bundled import bundled_model_dir
    from distilltune.models.generate import generate_chat

    bundled_model_dir("smollm2-135m-instruct")
    t0 = time.perf_counter()
    loaded = load_model("smollm2-135m-instruct")
    assert time.perf_counter() - t0 < 5
    info = model_info(loaded.model)
    assert 130e6 < info.params < 140e6 and info.layers == 30
    g = generate_chat(
        loaded.model,
        loaded.tokenizer,
        [with_system(None, [{"role": "user", "content": "What is the capital of France?"}])],
        32,
    )[0]
    assert "Paris" in g.text
