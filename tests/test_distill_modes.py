"""run_distill in the live-teacher modes (online, on-policy, hidden-state term) and sequence-level mode."""

from __future__ import annotations

import json

import pytest

from distill_helpers import distill_cfg, load_artifact
from distilltune.distill.distill import run_distill
from distilltune.io import read_jsonl
from distilltune.train.progress import SilentReporter


@pytest.mark.parametrize("mode", ["online", "on-policy"])
def test_online_and_on_policy_modes(tiny_task, tiny_teacher_dir, tmp_path, mode):
    out = tmp_path / mode
    cfg = distill_cfg(
        tiny_task,
        tiny_teacher_dir,
        out,
        mode=mode,
        kd={"loss": "skl"},
        onpolicy={"lmbda": 0.5, "max_new_tokens": 5},
        train={"max_steps": 4},
    )
    run_distill(cfg, reporter=SilentReporter())
    load_artifact(out)
    rows = [r for r in read_jsonl(out / "metrics.jsonl") if r.get("type") == "train"]
    assert all(r["kd"] > 0 for r in rows)
    if mode == "on-policy":
        flags = [r["on_policy"] for r in rows]
        assert set(flags) <= {0.0, 1.0} and 1.0 in flags


def test_hidden_state_term_with_a_narrower_student(tiny_task, tiny_teacher_dir, tiny_model_dir, tmp_path):
    out = tmp_path / "hidden"
    cfg = distill_cfg(
        tiny_task,
        tiny_teacher_dir,
        out,
        student=str(tiny_model_dir),
        mode="online",
        hidden={"weight": 0.5, "loss": "cosine"},
    )
    run_distill(cfg, reporter=SilentReporter())
    rows = [r for r in read_jsonl(out / "metrics.jsonl") if r.get("type") == "train"]
    assert all(r["hidden"] > 0 for r in rows)
    # the learned projection (32 → 64) trained with the student but is not part of the artifact
    from safetensors.torch import load_file

    weights = load_file(out / "model" / "model.safetensors")
    assert not any("distill_projection" in k for k in weights)
    load_artifact(out)


def test_sequence_mode_with_patch(tiny_task, tiny_teacher_dir, tmp_path):
    out = tmp_path / "seq"
    seq = {"max_new_tokens": 6, "drop_truncated": False, "max_ngram_repeats": 50}
    cfg = distill_cfg(
        tiny_task, tiny_teacher_dir, out, mode="sequence", sequence={**seq, "generate_only": True}
    )
    run_distill(cfg, reporter=SilentReporter())
    review = out / "sequence" / "teacher_answers.jsonl"
    records = [json.loads(line) for line in review.read_text().splitlines()]
    assert len(records) == 12 and not (out / ".complete").exists()
    assert all("source" in r and "teacher" in r for r in records)
    kept = [r for r in records if r["status"] == "kept"]
    patch = tmp_path / "patch.jsonl"
    patch.write_text(
        json.dumps({"id": kept[0]["id"], "answer": "The shop opens at 9 am."})
        + "\n"
        + json.dumps({"id": kept[1]["id"], "drop": True})
        + "\n"
    )
    cfg2 = distill_cfg(
        tiny_task, tiny_teacher_dir, out, mode="sequence", sequence={**seq, "patch": str(patch)}
    )
    run_distill(cfg2, reporter=SilentReporter())  # after review: no --resume needed, config may change
    assert (out / ".complete").exists()
    summary = json.loads((out / "train_summary.json").read_text())["sequence"]
    assert summary["patched"] == 2 and summary["kept"] == len(kept) - 1
    trained = [json.loads(line) for line in (out / "sequence" / "train_data.jsonl").read_text().splitlines()]
    fixed = next(r for r in trained if r["id"] == kept[0]["id"])
    assert fixed["messages"][-1]["content"] == "The shop opens at 9 am." and fixed["origin"] == "patch"
    load_artifact(out)
