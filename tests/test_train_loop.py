"""The shared training loop: schedule, data order, loss-position logits, accumulation, NaN stop,
early stopping with best-checkpoint selection, checkpoint pruning."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from conftest import TINY_TASK
from distilltune.train.checkpoint import list_checkpoints, load_trainable_weights, prune_checkpoints
from distilltune.train.config import TrainSettings
from distilltune.train.data import build_examples
from distilltune.train.loop import (
    TrainingDiverged,
    micro_batch_indices,
    score,
    total_updates,
    train_loop,
    warmup_cosine,
)
from distilltune.train.objectives import answer_logits, causal_lm_objective, loss_positions


@pytest.fixture(scope="module")
def task():
    from distilltune.task import load_task

    return load_task(TINY_TASK)


@pytest.fixture(scope="module")
def examples(task, tokenizer):
    ex, stats = build_examples(task.train, tokenizer, task.system_prompt, max_length=256)
    assert stats.loss_tokens > 0
    return ex


def _model(path, seed=0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    m = AutoModelForCausalLM.from_pretrained(str(path))
    m.train()
    return m


def _settings(**kw) -> TrainSettings:
    base = {"batch_size": 4, "warmup_steps": 1, "eval_every": 0, "save_every": 0, "max_grad_norm": 1.0}
    return TrainSettings(**{**base, **kw})


def test_warmup_cosine_schedule():
    f = [warmup_cosine(s, warmup=4, total=20, min_ratio=0.1) for s in range(21)]
    assert f[0] < f[1] < f[2] < f[3] < f[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(f[4:]))
    assert f[20] == pytest.approx(0.1)


def test_micro_batches_cover_each_epoch_once():
    n, bs = 10, 4
    epoch0 = [i for m in range(3) for i in micro_batch_indices(n, bs, seed=3, micro_step=m, rank=0, world=1)]
    assert sorted(epoch0) == list(range(n))
    epoch1 = [
        i for m in range(3, 6) for i in micro_batch_indices(n, bs, seed=3, micro_step=m, rank=0, world=1)
    ]
    assert sorted(epoch1) == list(range(n)) and epoch1 != epoch0
    # two processes split each global batch; every rank gets a full micro-batch
    r0 = micro_batch_indices(n, 2, seed=3, micro_step=0, rank=0, world=2)
    r1 = micro_batch_indices(n, 2, seed=3, micro_step=0, rank=1, world=2)
    assert len(r0) == len(r1) == 2 and not set(r0) & set(r1)
    assert total_updates(TrainSettings(epochs=2, batch_size=4, grad_accum=2), n) == 3
    assert total_updates(TrainSettings(max_steps=7, epochs=100), n) == 7


def test_answer_logits_match_full_logits(tiny_model_dir, examples):
    from distilltune.data.chat import collate

    model = _model(tiny_model_dir).eval()
    b = collate(examples[:3], pad_id=0)
    logits, targets = answer_logits(model, b["input_ids"], b["attention_mask"], b["labels"])
    full = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    rows, cols = loss_positions(b["labels"])
    assert logits.shape == (rows.numel(), full.shape[-1])
    torch.testing.assert_close(logits, full[rows, cols], rtol=1e-4, atol=1e-5)
    assert torch.equal(targets, b["labels"][rows, cols + 1])


def test_grad_accum_equals_bigger_batch(tiny_model_dir, examples, tmp_path):
    ex = examples[:8]
    results = []
    for bs, accum in ((8, 1), (4, 2)):
        m = _model(tiny_model_dir)
        s = _settings(max_steps=1, batch_size=bs, grad_accum=accum, warmup_steps=0)
        train_loop(
            model=m,
            examples=ex,
            objective=causal_lm_objective,
            settings=s,
            lr=1e-3,
            run_dir=tmp_path / f"r{bs}",
            pad_id=0,
        )
        results.append({k: v.detach().clone() for k, v in m.state_dict().items()})
    changed = [
        k for k in results[0] if not torch.equal(results[0][k], _model(tiny_model_dir).state_dict()[k])
    ]
    assert changed, "one update must change the weights"
    for k in results[0]:
        torch.testing.assert_close(results[0][k], results[1][k], rtol=1e-4, atol=1e-6)


def test_nan_loss_stops_with_clear_message_and_keeps_checkpoint(tiny_model_dir, examples, tmp_path):
    def objective(model, batch, step):
        loss, metrics = causal_lm_objective(model, batch, step)
        return (loss * float("nan") if step == 3 else loss), metrics

    m = _model(tiny_model_dir)
    with pytest.raises(TrainingDiverged) as err:
        train_loop(
            model=m,
            examples=examples,
            objective=objective,
            settings=_settings(max_steps=6, save_every=2),
            lr=1e-3,
            run_dir=tmp_path,
            pad_id=0,
        )
    assert "NaN/inf at update 4" in err.value.message and "step-2" in err.value.message
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2]
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["type"] == "error"


def test_early_stopping_and_best_weights(tiny_model_dir, examples, tmp_path):
    recalls = iter([0.2, 0.6, 0.4, 0.5, 0.3, 0.9])

    def evaluator(model):
        return {"fact_recall": next(recalls), "eval_loss": 1.0}

    m = _model(tiny_model_dir)
    s = _settings(max_steps=12, eval_every=1, early_stopping_patience=3, keep_last=1, save_every=0)
    r = train_loop(
        model=m,
        examples=examples,
        objective=causal_lm_objective,
        settings=s,
        lr=1e-3,
        run_dir=tmp_path,
        pad_id=0,
        evaluator=evaluator,
    )
    assert r.stopped == "early_stopping" and r.final_step == 5 and r.best_step == 2
    assert r.best_eval["fact_recall"] == 0.6
    steps = [s for s, _ in list_checkpoints(tmp_path)]
    assert steps == [2]  # saved on improvement (steps 1, 2), pruned to keep_last=1 + best
    ref = _model(tiny_model_dir)
    load_trainable_weights(ref, list_checkpoints(tmp_path)[0][1])
    for (k, v), (_, w) in zip(r.model.state_dict().items(), ref.state_dict().items(), strict=True):
        assert torch.equal(v, w), k


def test_prune_keeps_last_and_best(tmp_path):
    for s in (2, 4, 6, 8):
        d = tmp_path / "checkpoints" / f"step-{s}"
        d.mkdir(parents=True)
        (d / "state.json").write_text("{}")
        (d / "trainable.safetensors").write_text("")
    (tmp_path / "checkpoints" / ".step-10.staging").mkdir()  # incomplete: never listed
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 4, 6, 8]
    prune_checkpoints(tmp_path, keep_last=2, best_step=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 6, 8]


def test_score_prefers_recall_then_loss():
    assert score({"fact_recall": 0.5, "eval_loss": 2.0}, "fact_recall") > score(
        {"fact_recall": 0.5, "eval_loss": 2.5}, "fact_recall"
    )
    assert score({"fact_recall": 0.6, "eval_loss": 9.0}, "fact_recall") > score(
        {"fact_recall": 0.5, "eval_loss": 1.0}, "fact_recall"
    )
    assert score({"fact_recall": 0.9, "eval_loss": 3.0}, "eval_loss") < score(
        {"fact_recall": 0.1, "eval_loss": 2.0}, "eval_loss"
    )


def test_tensorboard_is_optional(tmp_path):
    from distilltune.train.progress import LineReporter, TensorBoardLogger

    messages = []

    class Capture(LineReporter):
        def message(self, text: str) -> None:
            messages.append(text)

    tb = TensorBoardLogger(tmp_path / "tb", Capture())
    tb.log({"type": "train", "step": 1, "loss": 1.0})
    tb.close()
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        assert tb.writer is None and "not installed" in messages[0]
    else:
        assert tb.writer is not None and any((tmp_path / "tb").iterdir())


def test_method_checks_on_meta_model(tiny_model_dir):
    from distilltune.train.config import FinetuneConfig
    from distilltune.train.methods import check_method, meta_model

    skeleton, peft_type = meta_model(str(tiny_model_dir))
    assert peft_type is None and next(skeleton.parameters()).is_meta

    def problems(**kw):
        cfg = FinetuneConfig(task="t", model=str(tiny_model_dir), output="o", **kw)
        return [f"{p.field}: {p.message}" for p in check_method(cfg, skeleton, None)]

    assert problems(method="lora") == []
    assert problems(method="lora", lora={"target_modules": ["all-linear"]}) == []
    assert any(
        "'self_attn' matches LlamaAttention" in p
        for p in problems(method="lora", lora={"target_modules": ["self_attn"]})
    )
    assert any(
        "matches no module" in p for p in problems(method="adapter", adapter={"target_modules": ["mlp.fc"]})
    )
    assert any(
        "gradient checkpointing" in p
        for p in problems(method="prefix", train={"gradient_checkpointing": True})
    )
    assert any(
        "must also be in" in p
        for p in problems(
            method="ia3", ia3={"target_modules": ["q_proj"], "feedforward_modules": ["down_proj"]}
        )
    )
    cfg = FinetuneConfig(task="t", model=str(tiny_model_dir), output="o", method="lora")
    assert "cannot be merged" in check_method(cfg, skeleton, "PREFIX_TUNING")[0].message


def test_runs_with_different_precisions_in_one_process():
    """Accelerate's process-wide state must not pin the first run's precision (compare, notebooks)."""
    from distilltune.train.loop import make_accelerator

    assert make_accelerator("fp32").mixed_precision == "no"
    assert make_accelerator("bf16").mixed_precision == "bf16"
    assert make_accelerator("fp32").mixed_precision == "no"
