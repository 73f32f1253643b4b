"""KD objectives: the fast path (body + chunked head) equals the wrapped path used under DDP/FSDP,
and the cached objective equals the full-vocabulary one when the cache holds the whole vocabulary."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distilltune.data.chat import collate, encode_many, with_system
from distilltune.distill.config import KDSettings
from distilltune.distill.objectives import CachedKD, OnlineKD
from distilltune.distill.teacher_cache import build_teacher_cache
from distilltune.errors import UserError
from distilltune.train.objectives import AnswerLogitsModel


class Wrapped(nn.Module):
    """Stands in for DistributedDataParallel: the model under ``.module``, forward delegated."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.module = inner

    def forward(self, *args, **kw):
        return self.module(*args, **kw)


@pytest.fixture(scope="module")
def models(tiny_teacher_dir):
    from transformers import AutoModelForCausalLM

    from distilltune.models import load_model

    teacher = AutoModelForCausalLM.from_pretrained(str(tiny_teacher_dir)).eval()
    with torch.no_grad():  # a random tiny model is near-uniform; sharpen the teacher so KD is far from 0
        teacher.model.norm.weight.mul_(40.0)
    student = load_model("teacher:n_layers=2", teacher=str(tiny_teacher_dir), trainable=True).model
    return teacher, student


@pytest.fixture(scope="module")
def batch_and_examples(tokenizer):
    from pathlib import Path

    from distilltune.task import load_task

    task = load_task(Path(__file__).parent / "data" / "tiny-task")
    convs = [with_system(task.system_prompt, [m.model_dump() for m in c.messages]) for c in task.train]
    examples, _ = encode_many(tokenizer, convs, max_length=128)
    idx = [2, 7, 0, 11]
    batch = collate([examples[i] for i in idx], tokenizer.pad_token_id)
    batch["index"] = torch.tensor(idx)
    return batch, examples


def _loss_and_grads(objective, net, model, batch):
    model.zero_grad(set_to_none=True)
    loss, metrics = objective(net, batch, 0)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), metrics, grads


def _assert_same(a, b):
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-6)
    assert a[2].keys() == b[2].keys() and a[2]
    for k in a[2]:
        torch.testing.assert_close(a[2][k], b[2][k], rtol=1e-4, atol=1e-6)
    for k in ("kd", "ce"):
        assert a[1][k] > 0.1 and a[1][k] == pytest.approx(b[1][k], rel=1e-5)


@pytest.mark.parametrize("positions", ["answer", "all"])
@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_cached_objective_fast_path_equals_wrapped_path(
    models, batch_and_examples, tokenizer, tmp_path, alpha, positions
):
    teacher, student = models
    batch, examples = batch_and_examples
    cache = build_teacher_cache(
        teacher, examples, tmp_path / "c", key="o", k=8, pad_id=tokenizer.pad_token_id, positions=positions
    )
    obj = CachedKD(cache, KDSettings(loss="jsd", alpha=alpha, chunk_size=7))
    net = AnswerLogitsModel(student)
    fast = _loss_and_grads(obj, net, student, batch)
    wrapped = _loss_and_grads(obj, Wrapped(net), student, batch)
    _assert_same(fast, wrapped)
    assert fast[1]["answer_tokens"] == float((batch["labels"][:, 1:] != -100).sum())
    if positions == "all":  # every real token predicts its successor
        assert fast[1]["kd_positions"] == float((batch["attention_mask"].sum(1) - 1).sum())
    else:
        assert "kd_positions" not in fast[1]


@pytest.mark.parametrize("positions", ["answer", "all"])
def test_online_objective_fast_path_equals_wrapped_path(models, batch_and_examples, positions):
    teacher, student = models
    batch, _ = batch_and_examples
    obj = OnlineKD(
        teacher, KDSettings(loss="srkl", alpha=0.3, temperature=2.0, chunk_size=5, positions=positions)
    )
    net = AnswerLogitsModel(student)
    _assert_same(
        _loss_and_grads(obj, net, student, batch), _loss_and_grads(obj, Wrapped(net), student, batch)
    )


@pytest.mark.parametrize("alpha", [0.0, 0.4, 1.0])
def test_all_positions_loss_is_ce_on_answers_plus_kd_on_every_token(models, batch_and_examples, alpha):
    """Reference from full forwards: alpha·mean CE over the answer tokens + (1-alpha)·mean KD over every
    real position (prompt included), padding excluded."""
    from distilltune.distill.losses import kd_loss

    teacher, student = models
    batch, _ = batch_and_examples
    obj = OnlineKD(teacher, KDSettings(loss="fkl", alpha=alpha, chunk_size=6, positions="all"))
    got = _loss_and_grads(obj, AnswerLogitsModel(student), student, batch)

    student.zero_grad(set_to_none=True)
    ids, am, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    s = student(input_ids=ids, attention_mask=am).logits[:, :-1]
    with torch.no_grad():
        t = teacher(input_ids=ids, attention_mask=am).logits[:, :-1]
    real = am[:, 1:].bool() & am[:, :-1].bool()
    assert real.sum() > 2 * (labels[:, 1:] != -100).sum()  # the prompt really adds positions
    kd = kd_loss(s[real], t[real], reduction="mean")
    ce = torch.nn.functional.cross_entropy(s.reshape(-1, s.shape[-1]), labels[:, 1:].reshape(-1))
    ref = alpha * ce + (1 - alpha) * kd
    ref.backward()
    torch.testing.assert_close(got[0], ref.detach(), rtol=1e-5, atol=1e-6)
    for n, p in student.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(got[2][n], p.grad, rtol=1e-4, atol=1e-6)
    assert got[1]["kd"] == pytest.approx(float(kd.detach()), rel=1e-5)
    assert got[1]["ce"] == pytest.approx(float(ce.detach()), rel=1e-5)


@pytest.mark.parametrize("positions", ["answer", "all"])
def test_cached_with_the_whole_vocabulary_equals_online(
    models, batch_and_examples, tokenizer, tmp_path, positions
):
    teacher, student = models
    batch, examples = batch_and_examples
    vocab = student.get_output_embeddings().weight.shape[0]
    sub = [examples[i] for i in batch["index"].tolist()]
    cache = build_teacher_cache(
        teacher, sub, tmp_path / "full", key="v", k=vocab, pad_id=tokenizer.pad_token_id, positions=positions
    )
    b = dict(batch, index=torch.arange(len(sub)))
    params = KDSettings(loss="fkl", alpha=0.3, positions=positions)
    net = AnswerLogitsModel(student)
    cached = _loss_and_grads(CachedKD(cache, params), net, student, b)
    online = _loss_and_grads(OnlineKD(teacher, params), net, student, b)
    # fp16 storage of the teacher's log-probs is the only difference
    torch.testing.assert_close(cached[0], online[0], rtol=2e-3, atol=2e-3)
    for n in cached[2]:
        torch.testing.assert_close(cached[2][n], online[2][n], rtol=2e-2, atol=2e-4)


def test_cache_for_other_data_is_refused(models, batch_and_examples, tokenizer, tmp_path):
    teacher, student = models
    batch, examples = batch_and_examples
    cache = build_teacher_cache(
        teacher, examples, tmp_path / "c", key="o", k=4, pad_id=tokenizer.pad_token_id
    )
    shifted = dict(batch, index=(batch["index"] + 1) % len(examples))
    with pytest.raises(UserError, match="does not match this batch"):
        CachedKD(cache, KDSettings())(AnswerLogitsModel(student), shifted, 0)
