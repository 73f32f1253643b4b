"""run_distill end to end on tiny models (cached mode): artifacts, card, cache reuse, vocab check, resume, CLI."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from distill_helpers import FAST_TRAIN, distill_cfg, load_artifact
from distilltune.distill.distill import run_distill
from distilltune.errors import UserError
from distilltune.io import read_jsonl
from distilltune.train.progress import SilentReporter


def test_cached_kd_end_to_end(tiny_task, tiny_teacher_dir, tmp_path):
    out = tmp_path / "run"
    cfg = distill_cfg(tiny_task, tiny_teacher_dir, out, kd={"loss": "jsd", "top_k": 8})
    assert run_distill(cfg, reporter=SilentReporter()) == out
    for name in ("config.yaml", "metrics.jsonl", "README.md", "train_summary.json", ".complete"):
        assert (out / name).is_file(), name
    model = load_artifact(out)
    assert model.config.num_hidden_layers == 2
    rows = [r for r in read_jsonl(out / "metrics.jsonl") if r.get("type") == "train"]
    assert len(rows) == 3 and all("kd" in r and "ce" in r for r in rows)
    assert all(r["kd"] > 0 for r in rows)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["teacher_cache"]["k"] == 8 and summary["teacher_cache"]["payload_bytes_per_token"] == 32
    card = (out / "README.md").read_text()
    assert "fact recall on held-out eval answers" in card and "top-8 cache" in card
    assert "fact_recall" in (summary["last_eval"] or {})
    # the student really changed
    from distilltune.models import load_model

    before = load_model("teacher:n_layers=2", teacher=str(tiny_teacher_dir)).model
    changed = any(
        not torch.equal(a, b)
        for a, b in zip(before.state_dict().values(), model.state_dict().values(), strict=True)
    )
    assert changed
    # a complete run is returned as is
    assert run_distill(cfg, reporter=SilentReporter()) == out


def test_second_strategy_reuses_the_cache_without_loading_the_teacher(
    tiny_task, tiny_teacher_dir, tmp_path, monkeypatch
):
    run_distill(
        distill_cfg(tiny_task, tiny_teacher_dir, tmp_path / "a", kd={"loss": "fkl"}),
        reporter=SilentReporter(),
    )
    import distilltune.distill.distill as dd

    def no_teacher(*a, **k):
        raise AssertionError("the teacher must not be loaded in cached mode when the cache exists")

    monkeypatch.setattr(dd, "load_teacher", no_teacher)
    out = run_distill(
        distill_cfg(tiny_task, tiny_teacher_dir, tmp_path / "b", kd={"loss": "rkl"}),
        reporter=SilentReporter(),
    )
    a = json.loads((tmp_path / "a" / "train_summary.json").read_text())["teacher_cache"]
    b = json.loads((out / "train_summary.json").read_text())["teacher_cache"]
    assert a["key"] == b["key"]


def test_vocabulary_mismatch_is_reported_before_training(
    tiny_task, tiny_teacher_dir, tiny_model_dir, tmp_path
):
    from transformers import AutoTokenizer

    other = tmp_path / "other-student"
    shutil.copytree(tiny_model_dir, other)
    tok = AutoTokenizer.from_pretrained(str(other))
    tok.add_tokens(["<zz_new_token>"])
    tok.save_pretrained(other)
    out = tmp_path / "run"
    with pytest.raises(UserError) as e:
        run_distill(
            distill_cfg(tiny_task, tiny_teacher_dir, out, student=str(other)), reporter=SilentReporter()
        )
    assert "different vocabularies" in "\n".join(str(p) for p in e.value.problems)
    assert not out.exists()  # nothing was written


def test_config_problems_are_collected(tiny_task, tiny_teacher_dir, tmp_path):
    with pytest.raises(Exception, match="hidden-state distillation needs the live teacher"):
        distill_cfg(tiny_task, tiny_teacher_dir, tmp_path / "x", hidden={"weight": 1.0})
    with pytest.raises(UserError) as e:
        run_distill(
            distill_cfg(
                tmp_path / "no-task",
                tiny_teacher_dir,
                tmp_path / "x",
                student="teacher:n_layers=9",
                mode="sequence",
                sequence={"patch": str(tmp_path / "missing.jsonl")},
            ),
            reporter=SilentReporter(),
        )
    text = "\n".join(str(p) for p in e.value.problems)
    assert "missing.jsonl" in text and "n_layers=9" in text and "no-task" in text


def test_resume_after_interruption_matches_an_uninterrupted_run(tiny_task, tiny_teacher_dir, tmp_path):
    train = {"max_steps": 4, "save_every": 2, "keep_last": 5, "eval_samples": 0, "eval_loss_items": 0}
    full = tmp_path / "full"
    run_distill(distill_cfg(tiny_task, tiny_teacher_dir, full, train=train), reporter=SilentReporter())
    # an interrupted run: the config and the step-2 checkpoint exist, nothing else
    cut = tmp_path / "cut"
    cut.mkdir()
    cfg = distill_cfg(tiny_task, tiny_teacher_dir, cut, train=train)
    (cut / "config.yaml").write_text((full / "config.yaml").read_text().replace(str(full), str(cut)))
    shutil.copytree(full / "checkpoints" / "step-2", cut / "checkpoints" / "step-2")
    with pytest.raises(UserError) as e:
        run_distill(cfg, reporter=SilentReporter())
    assert "unfinished run; pass --resume" in str(e.value.problems[0])
    run_distill(cfg, resume=True, reporter=SilentReporter())
    a, b = load_artifact(full).state_dict(), load_artifact(cut).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((cut / "train_summary.json").read_text())
    assert summary["resumed_from"] == 2


def test_cli_distill_and_bad_input(tiny_task, tiny_teacher_dir, tmp_path):
    from typer.testing import CliRunner

    from distilltune.cli import app

    runner = CliRunner()
    out = tmp_path / "cli"
    args = [
        "distill",
        "--task",
        str(tiny_task),
        "--teacher",
        str(tiny_teacher_dir),
        "--student",
        "teacher:n_layers=2",
        "--output",
        str(out),
        "--loss",
        "tvd",
        "--mode",
        "cached",
        "-q",
        *[f"train.{k}={v}" for k, v in FAST_TRAIN.items()],
        f"cache.dir={tmp_path / 'cache'}",
        "kd.top_k=4",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert (out / ".complete").exists()
    bad = runner.invoke(app, [*args[:-3], "--loss", "nope", "--output", str(tmp_path / "bad")])
    assert bad.exit_code != 0
    assert not (tmp_path / "bad").exists()
