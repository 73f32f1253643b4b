"""The one run setup (train.run) and the KD loss registry.

- a loss registered by a user is one entry: config, objective (cached fast path included), card and
  CLI help pick it up, and a tiny distillation trains with it end to end;
- unknown losses and the old flat KD keys are rejected when the config is read, before any weight loads;
- the save path is shared: when the loop gathered full weights (FSDP / DeepSpeed, where the main
  process's model holds only its shard), fine-tuning *and* distillation save those, not the local model.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from distill_helpers import FAST_TRAIN, distill_cfg, load_artifact
from distilltune.errors import UserError
from distilltune.train.progress import SilentReporter

TOY = "prob-mse"
SCALE = 10.0


def _prob_mse(q, p, **_):
    """A toy divergence: SCALE · Σ_v (p_v - q_v)² on probabilities (0 iff the distributions agree)."""
    return SCALE * (p.exp() - q.exp()).pow(2).sum(-1)


@pytest.fixture()
def toy_loss():
    from distilltune.distill.kd_losses import KD_LOSSES, register_loss

    entry = register_loss(
        TOY,
        _prob_mse,
        lambda kd: f"scaled probability MSE (×{SCALE:g})",
        "toy loss: squared error of probabilities",
    )
    yield entry
    KD_LOSSES.pop(TOY)


def test_registered_loss_matches_numpy_and_its_cached_gradient_matches_autograd(toy_loss):
    import numpy as np

    from distilltune.distill.losses import kd_loss, topk_kd_ce_with_grad, topk_kd_loss

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 11, generator=g), torch.randn(6, 11, generator=g)
    ps = np.exp(s.numpy() / 2) / np.exp(s.numpy() / 2).sum(-1, keepdims=True)
    pt = np.exp(t.numpy() / 2) / np.exp(t.numpy() / 2).sum(-1, keepdims=True)
    ref = 4 * SCALE * ((pt - ps) ** 2).sum(-1).mean()  # T² = 4
    assert float(kd_loss(s, t, loss=TOY, temperature=2.0)) == pytest.approx(float(ref), rel=1e-5)

    # the closed-form gradient of the cached path works for any registered loss: autograd as reference
    logp = torch.log_softmax(t, -1)
    vals, ids = logp.topk(4, -1)
    tail = torch.log1p(-vals.exp().sum(-1).clamp(max=1 - 1e-6))
    x = s.clone().requires_grad_(True)
    topk_kd_loss(x, vals, ids, tail, loss=TOY, reduction="sum").backward()
    targets = torch.full((6,), -100)
    _, kd, _, grad = topk_kd_ce_with_grad(s, vals, ids, tail, targets, loss=TOY)
    torch.testing.assert_close(grad, x.grad, rtol=1e-4, atol=1e-6)
    assert float(kd) > 0


def test_a_registered_loss_trains_end_to_end(toy_loss, tiny_task, tiny_teacher_dir, tmp_path):
    from distilltune.distill.distill import run_distill
    from distilltune.io import read_jsonl

    calls = []
    orig = toy_loss.fn

    def counting(q, p, **kw):
        calls.append(tuple(q.shape))
        return orig(q, p, **kw)

    object.__setattr__(toy_loss, "fn", counting)
    out = tmp_path / "toy"
    cfg = distill_cfg(tiny_task, tiny_teacher_dir, out, kd={"loss": TOY, "top_k": 4, "alpha": 0.0})
    run_distill(cfg, reporter=SilentReporter())
    assert calls and all(shape[-1] == 5 for shape in calls)  # the cached k=4 buckets + the tail bucket
    rows = [r for r in read_jsonl(out / "metrics.jsonl") if r.get("type") == "train"]
    # with alpha 0 the loss is the toy divergence alone: positive, at most 2·SCALE per position
    assert rows and all(
        0 < r["kd"] <= 2 * SCALE and r["loss"] == pytest.approx(r["kd"], rel=1e-4) for r in rows
    )
    assert json.loads((out / "train_summary.json").read_text())["loss"] == TOY
    card = (out / "README.md").read_text()
    assert f"scaled probability MSE (×{SCALE:g})" in card
    load_artifact(out)


def test_cli_help_lists_registered_losses(toy_loss):
    from typer.testing import CliRunner

    from distilltune.cli.distill_cmd import _loss_help

    assert TOY in _loss_help() and "squared error of probabilities" in _loss_help()
    from distilltune.cli import app

    res = CliRunner().invoke(app, ["distill", "--help"], env={"COLUMNS": "400"})
    assert res.exit_code == 0 and "fkl" in res.output and "tvd" in res.output


def test_unknown_loss_and_moved_keys_are_rejected_with_their_place(tmp_path):
    from distilltune.distill.distill import load_distill_config

    path = tmp_path / "distill.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "task": "t",
                "teacher": "x",
                "output": str(tmp_path / "o"),
                "loss": "jsd",
                "temperature": 2.0,
                "positions": "answer",
                "cache": {"k": 8},
                "kd": {"loss": "nope"},
            }
        )
    )
    with pytest.raises(UserError) as e:
        load_distill_config(path, {}, [])
    text = "\n".join(str(p) for p in e.value.problems)
    assert "kd.loss: Value error, unknown loss 'nope'; known losses: fkl, rkl, jsd, skl, srkl, tvd" in text
    for old, new in [("loss", "kd.loss"), ("temperature", "kd.temperature"), ("positions", "kd.positions")]:
        assert f"{old}: moved to {new}" in text
    assert "cache.k: moved to kd.top_k" in text
    assert not (tmp_path / "o").exists()


def test_one_default_per_kd_setting():
    from distilltune.distill.config import DistillConfig, KDSettings

    cfg = DistillConfig(task="t", teacher="x", output="o")
    assert cfg.kd == KDSettings() and cfg.kd.positions == "all" and cfg.kd.top_k == 32


def _gathered_state(monkeypatch, delta: float) -> dict:
    """Make the loop behave as under FSDP: it returns gathered full weights, and the main process's
    model holds something else (here zeros standing in for its shard)."""
    import distilltune.train.loop as loop

    real = loop.train_loop
    seen: dict = {}

    def sharded_loop(**kw):
        result = real(**kw)
        seen["full"] = {k: v.detach().clone() + delta for k, v in result.model.state_dict().items()}
        with torch.no_grad():
            for p in result.model.parameters():
                p.zero_()
        result.state_dict = {k: v.clone() for k, v in seen["full"].items()}  # save_pretrained consumes it
        return result

    monkeypatch.setattr(loop, "train_loop", sharded_loop)
    return seen


def _assert_saved(model, full: dict) -> None:
    saved = model.state_dict()
    for k, v in saved.items():
        torch.testing.assert_close(v, full[k], msg=k)
    assert any(float(v.abs().sum()) > 0 for v in saved.values())


def test_finetune_saves_the_gathered_weights(monkeypatch, tiny_task, tiny_model_dir, tmp_path):
    from distilltune.train.config import FinetuneConfig
    from distilltune.train.finetune import run_finetune

    seen = _gathered_state(monkeypatch, 0.25)
    out = tmp_path / "ft"
    cfg = FinetuneConfig(
        task=str(tiny_task), model=str(tiny_model_dir), method="full", output=str(out), train=FAST_TRAIN
    )
    run_finetune(cfg, reporter=SilentReporter())
    _assert_saved(load_artifact(out), seen["full"])


def test_distill_saves_the_gathered_weights(monkeypatch, tiny_task, tiny_teacher_dir, tmp_path):
    from distilltune.distill.distill import run_distill

    seen = _gathered_state(monkeypatch, -0.5)
    out = tmp_path / "kd"
    run_distill(distill_cfg(tiny_task, tiny_teacher_dir, out, kd={"top_k": 4}), reporter=SilentReporter())
    _assert_saved(load_artifact(out), seen["full"])
