"""Teacher top-k cache: exact contents, memory-mapped reads, keys, reuse without the teacher, resume."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from distilltune.data.chat import collate, encode_many, with_system
from distilltune.distill.teacher_cache import (
    MANIFEST,
    TeacherCache,
    build_teacher_cache,
    cache_key,
    ensure_teacher_cache,
    examples_fingerprint,
    n_targets,
    plan_shards,
    teacher_fingerprint,
    teacher_topk,
    tokenizer_fingerprint,
)
from distilltune.errors import UserError
from distilltune.train.forward import answer_states


@pytest.fixture(scope="module")
def teacher(tiny_teacher_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_teacher_dir)).eval()


@pytest.fixture(scope="module")
def examples(tokenizer):
    from pathlib import Path

    from distilltune.task import load_task

    task = load_task(Path(__file__).parent / "data" / "tiny-task")
    convs = [with_system(task.system_prompt, [m.model_dump() for m in c.messages]) for c in task.train]
    exs, _ = encode_many(tokenizer, convs, max_length=128)
    return exs


def _pad(tok):
    return tok.pad_token_id


def test_plan_shards_keeps_examples_whole():
    assert plan_shards([3, 3, 3, 3], 6) == [(0, 2), (2, 4)]
    assert plan_shards([10, 1], 4) == [(0, 1), (1, 2)]  # an oversized example gets its own shard
    assert plan_shards([], 4) == [(0, 0)]


def test_cache_stores_exact_topk_and_reads_back_by_index(teacher, examples, tokenizer, tmp_path):
    k = 8
    cache = build_teacher_cache(
        teacher,
        examples,
        tmp_path / "c",
        key="abc",
        k=k,
        pad_id=_pad(tokenizer),
        batch_size=5,
        max_shard_positions=40,
    )
    assert len(cache.manifest["shards"]) > 1  # the test exercises several shards
    assert cache.manifest["n_positions"] == sum(n_targets(e) for e in examples)
    assert cache.manifest["ids_dtype"] == "uint16"
    assert cache.manifest["payload_bytes_per_token"] == k * 4
    # the file payload is what the manifest says (plus small safetensors headers)
    assert cache.manifest["file_bytes"] >= cache.manifest["n_positions"] * k * 4

    indices = [7, 0, 11, 3]
    batch = collate([examples[i] for i in indices], _pad(tokenizer))
    got = cache.get(indices)
    vals, ids, tail, _ = teacher_topk(teacher, batch, k)
    assert got.counts == [n_targets(examples[i]) for i in indices]
    assert got.logp.shape == (sum(got.counts), k)
    torch.testing.assert_close(got.logp[:, 1:], vals[:, 1:], atol=2e-3, rtol=1e-3)  # fp16 storage
    # the top-1 is recovered from the rest: exact to a few 1e-5 of probability mass (this tiny random
    # teacher is nearly flat, the hardest case: a real LM's top-1 holds far more of the mass)
    torch.testing.assert_close(got.logp[:, 0].exp(), vals[:, 0].exp(), atol=5e-5, rtol=0)
    assert torch.equal(got.ids, ids)
    torch.testing.assert_close(got.tail, tail, atol=2e-2, rtol=2e-3)
    # top-k + tail is a full distribution
    total = got.logp.exp().sum(-1) + got.tail.exp()
    torch.testing.assert_close(total, torch.ones_like(total), atol=1e-4, rtol=0)
    # the rows line up with the positions the student's loss uses
    st = answer_states(teacher, batch["input_ids"], batch["attention_mask"], batch["labels"])
    assert st.n == got.logp.shape[0]


def test_reader_memory_maps_the_shards(teacher, examples, tokenizer, tmp_path):
    cache = build_teacher_cache(teacher, examples[:4], tmp_path / "c", key="m", k=4, pad_id=_pad(tokenizer))
    arr = cache._shards[0]["logp"]
    assert isinstance(arr, np.memmap) and not arr.flags.writeable


def test_manifest_statistics_are_real(teacher, examples, tokenizer, tmp_path):
    cache = build_teacher_cache(teacher, examples, tmp_path / "c", key="s", k=16, pad_id=_pad(tokenizer))
    m = cache.manifest
    batch = collate(examples, _pad(tokenizer))
    with torch.no_grad():
        logits = teacher(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits[:, :-1]
    mask = batch["labels"][:, 1:] != -100
    logp = torch.log_softmax(logits[mask].float(), -1)
    ce = float(-logp.gather(-1, batch["labels"][:, 1:][mask][:, None]).mean())
    mass = logp.topk(16, -1).values.exp().sum(-1)
    assert m["teacher_answer_ce"] == pytest.approx(ce, rel=1e-3)
    assert m["topk_mass"]["median"] == pytest.approx(float(mass.median()), abs=2e-3)
    assert 0 < m["topk_mass"]["p10"] <= m["topk_mass"]["median"] <= 1


def test_check_matches_rejects_other_data(teacher, examples, tokenizer, tmp_path):
    cache = build_teacher_cache(teacher, examples, tmp_path / "c", key="x", k=4, pad_id=_pad(tokenizer))
    cache.check_matches(examples)
    with pytest.raises(UserError, match="examples"):
        cache.check_matches(examples[:-1])
    swapped = [examples[1], examples[0], *examples[2:]]
    if n_targets(examples[0]) != n_targets(examples[1]):
        with pytest.raises(UserError, match="lengths differ"):
            cache.check_matches(swapped)


def test_incomplete_cache_is_never_read(tmp_path):
    (tmp_path / "c").mkdir()
    with pytest.raises(UserError, match="not a complete teacher cache"):
        TeacherCache(tmp_path / "c")


def test_key_depends_on_every_input(examples, tokenizer):
    base = cache_key("t", "tok", examples_fingerprint(examples), 32)
    assert base == cache_key("t", "tok", examples_fingerprint(list(examples)), 32)
    assert base != cache_key("t2", "tok", examples_fingerprint(examples), 32)
    assert base != cache_key("t", "tok2", examples_fingerprint(examples), 32)
    assert base != cache_key("t", "tok", examples_fingerprint(examples[:-1]), 32)
    assert base != cache_key("t", "tok", examples_fingerprint(examples), 16)
    assert base != cache_key("t", "tok", examples_fingerprint(examples), 32, "bfloat16")
    # one changed token id changes the data fingerprint (prompt assembly is in the ids)
    ex0 = examples[0]
    changed = type(ex0)([*ex0.input_ids[:-1], ex0.input_ids[-1] + 1], list(ex0.labels))
    assert examples_fingerprint([changed, *examples[1:]]) != examples_fingerprint(examples)


def test_tokenizer_fingerprint_sees_the_chat_template(tokenizer):
    import copy

    other = copy.deepcopy(tokenizer)
    other.chat_template = (other.chat_template or "") + "{# changed #}"
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tokenizer)
    assert tokenizer_fingerprint(copy.deepcopy(tokenizer)) == tokenizer_fingerprint(tokenizer)


def test_teacher_fingerprint_follows_weight_content(tiny_teacher_dir, tmp_path):
    import shutil

    copy_dir = tmp_path / "teacher"
    shutil.copytree(tiny_teacher_dir, copy_dir)
    memo = tmp_path / "memo.json"
    a = teacher_fingerprint(str(tiny_teacher_dir), memo)
    assert teacher_fingerprint(str(copy_dir), memo) == a  # same bytes, other path
    assert json.loads(memo.read_text())  # file hashes are memoised
    from safetensors.torch import load_file, save_file

    w = load_file(copy_dir / "model.safetensors")
    name = next(iter(w))
    w[name] = w[name] + 1e-3
    save_file(w, copy_dir / "model.safetensors", metadata={"format": "pt"})
    assert teacher_fingerprint(str(copy_dir), memo) != a
    spec = teacher_fingerprint(f"{tiny_teacher_dir}:n_layers=2", memo)
    assert spec not in (a,)


def test_teacher_fingerprint_ignores_the_order_peft_writes_target_modules_in(tiny_teacher_dir, tmp_path):
    """Identical LoRA adapters must share a cache: PEFT writes target_modules in set order."""
    import shutil

    dirs = []
    for i, modules in enumerate((["q_proj", "v_proj"], ["v_proj", "q_proj"])):
        d = tmp_path / f"adapter-{i}"
        d.mkdir()
        shutil.copy(tiny_teacher_dir / "model.safetensors", d / "adapter_model.safetensors")
        cfg = {"peft_type": "LORA", "r": 8, "target_modules": modules}
        cfg["base_model_name_or_path"] = str(tiny_teacher_dir)
        (d / "adapter_config.json").write_text(json.dumps(cfg, indent=1 + i))
        dirs.append(d)
    a, b = (teacher_fingerprint(str(d)) for d in dirs)
    assert a == b
    cfg["r"] = 16  # a real change still changes the key
    (dirs[1] / "adapter_config.json").write_text(json.dumps(cfg))
    assert teacher_fingerprint(str(dirs[1])) != a


def test_ensure_builds_once_then_reuses_without_loading_the_teacher(
    teacher, examples, tokenizer, tiny_teacher_dir, tmp_path
):
    calls = []

    def load():
        calls.append(1)
        return teacher

    kw = {
        "teacher_ref": str(tiny_teacher_dir),
        "tokenizer": tokenizer,
        "examples": examples,
        "root": tmp_path,
    }
    c1 = ensure_teacher_cache(k=8, load_teacher=load, **kw)
    assert calls == [1]

    def refuse():
        raise AssertionError("the teacher must not be loaded when the cache exists")

    c2 = ensure_teacher_cache(k=8, load_teacher=refuse, **kw)
    assert c2.path == c1.path
    # a different k is a different key: a new cache, never the old one
    c3 = ensure_teacher_cache(k=4, load_teacher=load, **kw)
    assert c3.path != c1.path and c3.k == 4 and calls == [1, 1]
    # different data: a different cache too
    c4 = ensure_teacher_cache(k=8, load_teacher=load, **{**kw, "examples": examples[:5]})
    assert c4.path != c1.path and len(c4) == 5


def test_interrupted_build_resumes_complete_shards(teacher, examples, tokenizer, tmp_path):
    out = tmp_path / "c"
    kw = {"key": "r", "k": 8, "pad_id": _pad(tokenizer), "max_shard_positions": 30}
    full = build_teacher_cache(teacher, examples, out, **kw)
    names = full.manifest["shards"]
    assert len(names) >= 3
    ref = full.get(range(len(examples)))
    # simulate a kill after the first shard: no manifest, no later shards
    (out / MANIFEST).unlink()
    for n in names[1:]:
        (out / n).unlink()
    first_mtime = (out / names[0]).stat().st_mtime_ns
    with pytest.raises(UserError):
        TeacherCache(out)
    again = build_teacher_cache(teacher, examples, out, **kw)
    assert (out / names[0]).stat().st_mtime_ns == first_mtime  # reused, not recomputed
    got = again.get(range(len(examples)))
    assert torch.equal(got.logp, ref.logp) and torch.equal(got.ids, ref.ids)
    assert again.manifest["teacher_answer_ce"] == pytest.approx(full.manifest["teacher_answer_ce"], rel=1e-6)


def test_all_positions_cache_holds_every_real_token(teacher, examples, tokenizer, tmp_path):
    k = 6
    cache = build_teacher_cache(
        teacher, examples, tmp_path / "c", key="all", k=k, pad_id=_pad(tokenizer), positions="all"
    )
    assert cache.positions == "all" and cache.manifest["positions"] == "all"
    assert cache.manifest["n_positions"] == sum(len(e.input_ids) - 1 for e in examples)
    assert cache.manifest["n_positions"] > 2 * sum(n_targets(e) for e in examples)
    cache.check_matches(examples)
    indices = [4, 1]
    batch = collate([examples[i] for i in indices], _pad(tokenizer))
    got = cache.get(indices)
    assert got.counts == [len(examples[i].input_ids) - 1 for i in indices]
    with torch.no_grad():  # the reference: a plain full forward, padding dropped
        logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    real = batch["attention_mask"][:, 1:].bool() & batch["attention_mask"][:, :-1].bool()
    top = torch.log_softmax(logits[:, :-1][real].float(), -1).topk(k, -1)
    torch.testing.assert_close(got.logp[:, 1:], top.values[:, 1:], atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(got.logp[:, 0].exp(), top.values[:, 0].exp(), atol=5e-5, rtol=0)
    assert torch.equal(got.ids, top.indices)
    # the teacher's answer CE is still over the answer tokens only
    m = build_teacher_cache(
        teacher, examples, tmp_path / "a", key="ans", k=k, pad_id=_pad(tokenizer)
    ).manifest
    assert cache.manifest["teacher_answer_ce"] == pytest.approx(m["teacher_answer_ce"], rel=1e-4)
    assert m["positions"] == "answer"


def test_positions_are_part_of_the_key():
    base = cache_key("t", "tok", "d", 32)
    assert cache_key("t", "tok", "d", 32, positions="answer") == base
    assert cache_key("t", "tok", "d", 32, positions="all") != base


def test_top1_is_recovered_from_the_rest_and_the_tail():
    from distilltune.distill.teacher_cache import full_topk_logp

    g = torch.Generator().manual_seed(3)
    logp = torch.log_softmax(torch.randn(50, 300, generator=g) * 4, -1)
    top, _ = logp.topk(16, -1)
    tail = logp.topk(300, -1).values[:, 16:].logsumexp(-1)
    got = full_topk_logp(top[:, 1:].half().float(), tail.half().float())
    assert got.shape == top.shape
    torch.testing.assert_close(got[:, 1:], top[:, 1:].half().float())
    # the recovered top-1 is about as exact as storing it in fp16 would have been
    err = (got[:, 0] - top[:, 0]).abs()
    fp16_err = (top[:, 0].half().float() - top[:, 0]).abs()
    assert float(err.max()) < 2e-3 and float(err.mean()) < 4 * float(fp16_err.mean()) + 1e-4
    # a flat row whose rounding leaves nothing for the top-1 still gets the largest value
    flat = torch.full((1, 3), math.log(0.25))
    assert float(full_topk_logp(flat, torch.tensor([math.log(0.26)]))[0, 0]) == pytest.approx(math.log(0.25))
    # k = 1: the top-1 is everything but the tail
    one = full_topk_logp(torch.zeros(2, 0), torch.log(torch.tensor([0.1, 0.5])))
    torch.testing.assert_close(one[:, 0], torch.log(torch.tensor([0.9, 0.5])))


def test_format_1_caches_are_still_read(teacher, examples, tokenizer, tmp_path):
    """A cache written before the top-1 was dropped (all k log-probs stored) reads the same."""
    from safetensors.torch import load_file, save_file

    k = 6
    cache = build_teacher_cache(teacher, examples[:5], tmp_path / "c", key="f1", k=k, pad_id=_pad(tokenizer))
    new = cache.get([0, 3])
    # rewrite it the way format 1 stored it
    for name in cache.manifest["shards"]:
        t = load_file(str(tmp_path / "c" / name))
        t["logp"] = full_topk_logp_np(t["logp"], t["tail"])
        save_file(t, str(tmp_path / "c" / name))
    mf = json.loads((tmp_path / "c" / MANIFEST).read_text()) | {"format": 1}
    (tmp_path / "c" / MANIFEST).write_text(json.dumps(mf))
    old = TeacherCache(tmp_path / "c").get([0, 3])
    torch.testing.assert_close(old.logp, new.logp, atol=2e-3, rtol=1e-3)
    assert torch.equal(old.ids, new.ids)


def full_topk_logp_np(rest, tail):
    from distilltune.distill.teacher_cache import full_topk_logp

    return full_topk_logp(rest.float(), tail.float()).half()
