"""Unit tests of the serving core without HTTP: the batching engine, text release, cascade, request log."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from distilltune.inference.cascade import decide
from distilltune.inference.engine import Engine, GenRequest, QueueFull
from distilltune.inference.release import TextReleaser
from distilltune.models.generate import generate_ids, stop_token_ids
from distilltune.serve.requestlog import LogRecord, RequestLog, summarize, tail


def _peaked_llama(tokenizer, seed: int = 0):
    """A tiny random Llama with large weights: peaked next-token distributions, so greedy choices are
    robust to the last-bit differences between batch shapes (a flat random model would tie)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.5,
        tie_word_embeddings=True,
        use_cache=True,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def peaked(tokenizer):
    return _peaked_llama(tokenizer)


def _prompts(tokenizer, n: int) -> list[list[int]]:
    # Different lengths, so the merge has to left-pad both the running batch and newcomers.
    return [
        tokenizer(f"question {i}: " + "how are the rentals " * (1 + i % 4))["input_ids"] for i in range(n)
    ]


def _reference(model, prompts, stops, pad, n_new) -> list[list[int]]:
    return [generate_ids(model, [p], stops, pad, n_new)[0][0] for p in prompts]


def test_continuous_batching_matches_one_at_a_time(peaked, tokenizer):
    stops = stop_token_ids(tokenizer)
    pad = tokenizer.pad_token_id
    prompts = _prompts(tokenizer, 9)
    lengths = [5 + 3 * (i % 4) for i in range(9)]  # rows finish at different steps and leave the batch
    ref = [generate_ids(peaked, [p], stops, pad, n)[0][0] for p, n in zip(prompts, lengths, strict=True)]
    sizes: list[int] = []
    eng = Engine(peaked, stops, pad, max_batch=4, on_batch=sizes.append).start()
    results = [None] * len(prompts)

    def go(i: int) -> None:
        time.sleep(0.004 * i)  # staggered arrivals join a batch that is already decoding
        results[i] = eng.generate(prompts[i], lengths[i])

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    eng.stop()
    assert [r.token_ids for r in results] == ref
    assert all(r.finish_reason == "length" for r in results)
    assert max(sizes) > 1, "concurrent requests were never decoded together"
    assert max(sizes) <= 4
    for r in results:
        assert len(r.logprobs) == len(r.token_ids) and all(lp <= 0 for lp in r.logprobs)
        assert r.mean_logprob == pytest.approx(sum(r.logprobs) / len(r.logprobs))


def test_stop_token_ends_a_row(peaked, tokenizer):
    prompts = _prompts(tokenizer, 2)
    probe = generate_ids(peaked, [prompts[0]], [], tokenizer.pad_token_id, 6)[0][0]
    stop = probe[2]  # make the third greedy token a stop token
    eng = Engine(peaked, [stop], tokenizer.pad_token_id, max_batch=2).start()
    r = eng.generate(prompts[0], 50)
    eng.stop()
    assert r.finish_reason == "stop"
    assert r.token_ids == probe[: probe.index(stop) + 1]


def test_queue_full_raises_and_cancel_frees_the_slot(peaked, tokenizer):
    stops = stop_token_ids(tokenizer)
    eng = Engine(
        peaked, stops, tokenizer.pad_token_id, max_batch=1, max_queue=2
    )  # not started: nothing drains
    done: list = []
    reqs = []
    for p in _prompts(tokenizer, 2):
        reqs.append(eng.submit_request(GenRequest(p, 400, on_done=done.append)))
    with pytest.raises(QueueFull) as e:
        eng.submit_request(GenRequest(_prompts(tokenizer, 1)[0], 4))
    assert e.value.retry_after_s >= 1
    assert eng.queue_depth == 2
    reqs[0].cancel()  # cancelled while waiting: answered without compute
    eng.start()
    deadline = time.time() + 30
    while len(done) < 1 and time.time() < deadline:
        time.sleep(0.01)
    assert done[0].finish_reason == "cancelled" and done[0].token_ids == []
    # cancel the running one mid-decode: it leaves the batch long before 400 tokens
    while eng.active == 0 and time.time() < deadline:
        time.sleep(0.005)
    reqs[1].cancel()
    while len(done) < 2 and time.time() < deadline:
        time.sleep(0.01)
    eng.stop()
    assert done[1].finish_reason == "cancelled"
    assert 0 < len(done[1].token_ids) < 400


def test_sampling_is_reproducible_with_a_seed(peaked, tokenizer):
    eng = Engine(peaked, stop_token_ids(tokenizer), tokenizer.pad_token_id, max_batch=4).start()
    p = _prompts(tokenizer, 1)[0]
    a = eng.generate(p, 12, temperature=1.5, seed=7)
    b = eng.generate(p, 12, temperature=1.5, seed=7)
    greedy = eng.generate(p, 12)
    others = [eng.generate(p, 12, temperature=1.5, seed=s).token_ids for s in range(8, 12)]
    eng.stop()
    assert a.token_ids == b.token_ids
    assert any(o != a.token_ids for o in [*others, greedy.token_ids])


def _lora_pair(base, tokenizer):
    """Two random (non-identity) LoRA adapters on one base model."""
    import copy

    from peft import LoraConfig, PeftModel, get_peft_model

    adapters = {}
    for i, name in enumerate(("a", "b")):
        torch.manual_seed(10 + i)
        cfg = LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        adapters[name] = get_peft_model(copy.deepcopy(base), cfg).eval()
    return adapters, PeftModel


def test_multi_adapter_batches_match_each_adapter_alone(peaked, tokenizer, tmp_path):
    import copy

    adapters, PeftModel = _lora_pair(peaked, tokenizer)
    for name, m in adapters.items():
        m.save_pretrained(tmp_path / name)
    multi = PeftModel.from_pretrained(copy.deepcopy(peaked), str(tmp_path / "a"), adapter_name="a")
    multi.load_adapter(str(tmp_path / "b"), adapter_name="b")
    multi.eval()
    stops = stop_token_ids(tokenizer)
    pad = tokenizer.pad_token_id
    prompts = _prompts(tokenizer, 4)
    which = ["a", "b", None, "b"]
    refs = {
        w: _reference(m, prompts, stops, pad, 5)
        for w, m in (("a", adapters["a"]), ("b", adapters["b"]), (None, peaked))
    }
    assert refs["a"] != refs["b"] != refs[None], (
        "the adapters must change the output for this test to mean anything"
    )
    eng = Engine(multi, stops, pad, max_batch=4, adapters=("a", "b")).start()
    out = [None] * len(prompts)

    def go(i):
        out[i] = eng.generate(prompts[i], 5, adapter=which[i])

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    eng.stop()
    for i, w in enumerate(which):
        assert out[i].token_ids == refs[w][i], f"request {i} (adapter {w}) differs from that adapter alone"
    with pytest.raises(ValueError, match="unknown adapter"):
        eng.submit_request(GenRequest([1], 2, adapter="zz"))


def test_prefix_tuned_model_decodes_without_cache(peaked, tokenizer):
    from peft import PrefixTuningConfig, get_peft_model

    torch.manual_seed(3)
    model = get_peft_model(
        _peaked_llama(tokenizer, seed=2), PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    ).eval()
    stops = stop_token_ids(tokenizer)
    prompts = _prompts(tokenizer, 2)

    @torch.inference_mode()
    def full_recompute(m, p, n):  # the plain definition of greedy decoding, no cache, no padding
        seq = list(p)
        for _ in range(n):
            seq.append(int(m(input_ids=torch.tensor([seq])).logits[0, -1].argmax()))
        return seq[len(p) :]

    ref = [full_recompute(model, p, 4) for p in prompts]
    base = model.get_base_model()
    assert ref != [full_recompute(base, p, 4) for p in prompts], "the prefix must change the output"
    eng = Engine(model, stops, tokenizer.pad_token_id, max_batch=2).start()
    assert eng.use_cache is False
    got = [None] * len(prompts)

    def go(i):
        got[i] = eng.generate(prompts[i], 4).token_ids

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    eng.stop()
    assert got == ref


# ---- text release: the output guard on streamed text --------------------------------------------


@pytest.fixture(scope="module")
def guard():
    from distilltune.policy import Guard
    from distilltune.task import load_task

    task = load_task(Path(__file__).parent / "data" / "tiny-task")
    return Guard.for_task(task)


def _release(tokenizer, guard, text: str, incremental: bool, stop=()) -> tuple[str, list[str], str]:
    rel = TextReleaser(tokenizer, threading.Lock(), guard, list(stop), incremental=incremental)
    deltas = []
    finish = None
    for tid in tokenizer(text, add_special_tokens=False)["input_ids"]:
        r = rel.add(tid)
        if r.delta:
            deltas.append(r.delta)
        if rel.done:
            finish = r.finish_reason
            break
    if not rel.done:
        r = rel.finish("stop")
        if r.delta:
            deltas.append(r.delta)
        finish = r.finish_reason
    return "".join(deltas), deltas, finish


@pytest.mark.parametrize("incremental", [True, False])
def test_released_text_never_carries_pii(tokenizer, guard, incremental):
    text = (
        "We open at 9. Write to rider@example.com or call 555-867-5309 today. "
        "Your card 4111 1111 1111 1111 and id ZED-12345 are noted. Bye."
    )
    out, deltas, finish = _release(tokenizer, guard, text, incremental)
    for pii in ("rider@example.com", "555-867-5309", "4111 1111 1111 1111", "ZED-12345"):
        assert pii not in out
        assert all(pii not in d for d in deltas)
    assert out.startswith("We open at 9.") and out.endswith("Bye.")
    assert finish == "stop"
    if incremental:
        assert len(deltas) >= 3, "streamed text should be released sentence by sentence"
        assert deltas[0] == "We open at 9."


def test_stream_and_final_release_agree(tokenizer, guard):
    text = "Rentals cost $30 per day. Helmets are free! Ask at the desk.\nThanks"
    a, deltas, _ = _release(tokenizer, guard, text, True)
    b, _, _ = _release(tokenizer, guard, text, False)
    assert a == b == text
    assert len(deltas) > 1


def test_system_prompt_leak_is_refused(tokenizer, guard):
    leak = "Sure. You are the Zed Bikes help desk. Answer briefly using the context."
    out, _deltas, finish = _release(tokenizer, guard, leak, incremental=False)
    assert out == guard.refusal_message and finish == "stop"
    out, _deltas, finish = _release(tokenizer, guard, leak, incremental=True)
    assert "Zed Bikes help desk" not in out
    # the first sentence was harmless and already sent; the stream then ends as filtered
    assert out == "Sure." and finish == "content_filter"


def test_stop_sequences_cut_the_answer(tokenizer, guard):
    out, _, finish = _release(tokenizer, guard, "Rentals cost $30. END and more text", True, stop=["END"])
    assert out == "Rentals cost $30." and finish == "stop"


# ---- cascade and log -----------------------------------------------------------------------------


def test_cascade_decision():
    assert not decide(-0.4, 0.03, -1.5).escalate
    d = decide(-2.0, 0.03, -1.5)
    assert d.escalate and d.reasons == ("low_logprob",)
    assert decide(None, None, -1.5).reasons == ("empty_answer",)
    d = decide(-0.4, 0.01, -1.5, min_retrieval_score=0.02)
    assert d.escalate and d.reasons == ("low_retrieval",)
    assert decide(-0.4, None, -1.5, min_retrieval_score=0.02).escalate
    assert not decide(-0.4, 0.05, -1.5, min_retrieval_score=0.02).escalate


def test_request_log_roundtrip_and_summary(tmp_path):
    db = tmp_path / "log.db"
    log = RequestLog(db)
    now = time.time()
    rows = [
        LogRecord(
            "r1",
            now,
            "m",
            route="student",
            prompt=[{"role": "user", "content": "hi [EMAIL]"}],
            answer="hello",
            confidence=-0.5,
            input_action="redact",
            input_reasons=["pii:email"],
            output_action="allow",
            latency_ms=100,
            ttft_ms=20,
            prompt_tokens=10,
            completion_tokens=5,
        ),
        LogRecord(
            "r2",
            now + 1,
            "m",
            route="fallback",
            confidence=-3.0,
            output_action="allow",
            latency_ms=300,
            ttft_ms=250,
        ),
        LogRecord(
            "r3",
            now + 2,
            "m",
            route="refused_input",
            input_action="refuse",
            input_reasons=["blocked_topic:x"],
            latency_ms=1,
        ),
        LogRecord("r4", now + 3, "", status=401, route="error", error="401 invalid_api_key"),
    ]
    for r in rows:
        log.write(r)
    log.close()
    s = summarize(db)
    assert s["requests"] == 4
    assert s["by_route"] == {"student": 1, "fallback": 1, "refused_input": 1, "error": 1}
    assert s["by_status"] == {"200": 3, "401": 1}
    assert s["refused_input"] == 1 and s["redacted_input"] == 1
    assert s["escalation_rate"] == pytest.approx(0.5)
    assert s["latency_ms"]["all"]["n"] == 3 and s["latency_ms"]["all"]["max"] == 300
    assert s["tokens"] == {"prompt": 10, "completion": 5}
    assert s["guard_reasons"]["pii:email"] == 1
    last = tail(db, 2)
    assert [r["id"] for r in last] == ["r3", "r4"]
    import sqlite3

    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
