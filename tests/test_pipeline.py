"""Blend pipelines: parsing and validation, named outputs, skip complete, resume interrupted, examples."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from distilltune.distill.pipeline import load_pipeline, run_pipeline, step_state
from distilltune.errors import UserError
from distilltune.train.progress import SilentReporter

EXAMPLES = Path(__file__).parent.parent / "examples" / "pipelines"
TRAIN = {
    "max_steps": 2,
    "batch_size": 4,
    "warmup_steps": 0,
    "eval_every": 0,
    "eval_samples": 1,
    "eval_loss_items": 3,
    "eval_max_new_tokens": 3,
    "save_every": 1,
    "max_length": 128,
}


def _write(tmp_path, data) -> Path:
    p = tmp_path / "pipe.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def _blend1(tmp_path, task, teacher) -> dict:
    return {
        "name": "blend1",
        "output": str(tmp_path / "runs"),
        "vars": {"task": str(task), "base": str(teacher)},
        "steps": [
            {
                "name": "teacher_lora",
                "finetune": {"task": "${task}", "model": "${base}", "method": "lora", "train": TRAIN},
            },
            {
                "name": "student",
                "distill": {
                    "task": "${task}",
                    "teacher": "${teacher_lora}",
                    "student": "teacher:n_layers=2",
                    "kd": {"top_k": 4},
                    "cache": {"dir": str(tmp_path / "cache")},
                    "train": TRAIN,
                },
            },
        ],
    }


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_shipped_pipelines_validate(name):
    pipe = load_pipeline(EXAMPLES / name)
    assert len(pipe.steps) == 2
    kinds = [s.kind for s in pipe.steps]
    assert sorted(kinds) == ["distill", "finetune"]
    # the second step consumes the first step's output
    first, second = pipe.steps
    body = second.config.model_dump()
    assert str(first.output) in (body.get("teacher"), body.get("model"))
    assert "acme-support" in first.config.task


def test_substitution_defaults_and_overrides(tmp_path, tiny_task, tiny_teacher_dir):
    pipe = load_pipeline(
        _write(tmp_path, _blend1(tmp_path, tiny_task, tiny_teacher_dir)),
        [
            "student.kd.loss=rkl",
            "teacher_lora.train.max_steps=1",
            "vars.task=/elsewhere",
            f"output={tmp_path / 'o'}",
        ],
    )
    t, s = pipe.steps
    assert t.output == tmp_path / "o" / "teacher_lora" and s.output == tmp_path / "o" / "student"
    assert s.config.teacher == str(t.output)
    assert s.config.kd.loss == "rkl" and t.config.train.max_steps == 1
    assert t.config.task == "/elsewhere"


def test_every_problem_is_reported_at_once(tmp_path):
    data = {
        "name": "bad",
        "colour": "blue",
        "steps": [
            {
                "name": "a",
                "distill": {"task": "t", "teacher": "${later}", "output": "o1", "kd": {"loss": "nope"}},
            },
            {"name": "later", "finetune": {"task": "t", "model": "m", "output": "o2"}},
            {"name": "a", "finetune": {"task": "t", "model": "m"}},
            {"name": "both", "finetune": {}, "distill": {}},
            {"name": "c", "distill": {"task": "t", "teacher": "x", "output": "o2"}},
        ],
    }
    with pytest.raises(UserError) as e:
        load_pipeline(_write(tmp_path, data))
    text = "\n".join(str(p) for p in e.value.problems)
    assert "colour" in text
    assert "${later} is neither a variable nor the output of an earlier step" in text
    assert "steps.0.distill.kd.loss" in text and "known losses: fkl, rkl" in text
    assert "'a' is already used" in text
    assert "exactly one of finetune: or distill:" in text
    assert "same output" in text
    with pytest.raises(UserError, match="not found"):
        load_pipeline(tmp_path / "missing.yaml")


def test_blend_finetune_teacher_then_distill_skips_and_resumes(tmp_path, tiny_task, tiny_teacher_dir):
    pipe = load_pipeline(_write(tmp_path, _blend1(tmp_path, tiny_task, tiny_teacher_dir)))
    outs = run_pipeline(pipe, reporter=SilentReporter())
    teacher_run, student_run = outs["teacher_lora"], outs["student"]
    assert (teacher_run / "adapter" / "adapter_config.json").is_file()
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_pretrained(str(student_run / "model"))
    assert student.config.num_hidden_layers == 2
    summary = json.loads((student_run / "train_summary.json").read_text())
    assert summary["teacher"] == str(teacher_run)

    # interrupt the student step after its first checkpoint; the teacher step stays complete
    (student_run / ".complete").unlink()
    shutil.rmtree(student_run / "model")
    shutil.rmtree(student_run / "checkpoints" / "step-2")
    assert step_state(pipe.steps[0]) == "complete" and step_state(pipe.steps[1]) == "interrupted"
    teacher_mtime = (teacher_run / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    run_pipeline(pipe, reporter=SilentReporter())
    assert (teacher_run / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == teacher_mtime
    summary = json.loads((student_run / "train_summary.json").read_text())
    assert summary["resumed_from"] == 1 and (student_run / ".complete").exists()


def test_blend_distill_then_finetune_student(tmp_path, tiny_task, tiny_teacher_dir):
    data = {
        "name": "blend2",
        "output": str(tmp_path / "runs"),
        "steps": [
            {
                "name": "student",
                "distill": {
                    "task": str(tiny_task),
                    "teacher": str(tiny_teacher_dir),
                    "student": "teacher:n_layers=2",
                    "kd": {"top_k": 4},
                    "cache": {"dir": str(tmp_path / "cache")},
                    "train": TRAIN,
                },
            },
            {
                "name": "student_lora",
                "finetune": {"task": str(tiny_task), "model": "${student}", "method": "lora", "train": TRAIN},
            },
        ],
    }
    outs = run_pipeline(load_pipeline(_write(tmp_path, data)), reporter=SilentReporter())
    adapter = outs["student_lora"] / "adapter"
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert Path(cfg["base_model_name_or_path"]) == (outs["student"] / "model").resolve()
    from peft import AutoPeftModelForCausalLM

    model = AutoPeftModelForCausalLM.from_pretrained(str(adapter))
    assert model.get_base_model().config.num_hidden_layers == 2


def test_cli_run_dry_run_lists_the_steps():
    from typer.testing import CliRunner

    from distilltune.cli import app

    res = CliRunner().invoke(app, ["run", str(EXAMPLES / "distill-then-finetune-student.yaml"), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "student: distill -> runs/distill-then-finetune-student/student" in res.output
    assert "student_lora: finetune -> runs/distill-then-finetune-student/student_lora" in res.output
