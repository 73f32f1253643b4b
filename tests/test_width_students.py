"""Width-pruned students in the pipeline: compare measures and records the widths on the task's own
prompts, and the existing distillation path trains such a student and saves a loadable artifact."""

from __future__ import annotations

import json

import torch

from distill_helpers import distill_cfg, load_artifact
from distilltune.compare.config import CompareConfig
from distilltune.compare.students import IMPORTANCE_FILE, LAYERS_FILE, resolve_student
from distilltune.models import load_model
from distilltune.models.width import load_scores, top_units


def test_compare_measures_and_records_the_widths(tiny_task, tiny_teacher_dir, tmp_path, monkeypatch):
    cfg = CompareConfig.model_validate(
        {
            "task": str(tiny_task),
            "output": str(tmp_path / "cmp"),
            "teacher": str(tiny_teacher_dir),
            "student": "teacher:n_layers=2,mlp=0.5,heads=0.5",
            "retrieval": {"enabled": False},
            "max_length": 128,
        }
    )
    out = tmp_path / "cmp"
    out.mkdir()
    logs: list[str] = []
    resolved = resolve_student(cfg, tiny_task, out, logs.append)
    record = json.loads((out / LAYERS_FILE).read_text())
    layers = record["layers"]
    assert len(layers) == 2 and len(record["block_influence"]) == 4
    width = record["width"]
    assert width["intermediate_size"] == [64, 128] and width["num_attention_heads"] == [2, 4]
    assert width["num_key_value_heads"] == [2, 2] and sorted(width["heads_kept"]) == [str(i) for i in layers]
    assert resolved == record["resolved"]
    assert f"layers={','.join(map(str, layers))},mlp=0.5,heads=0.5,importance=" in resolved
    assert any("128 MLP channels" in line for line in logs)

    # every run loads the same student: the channels and heads the recorded scores rank first
    mlp_s, head_s = load_scores(out / IMPORTANCE_FILE)
    assert mlp_s.shape == (4, 128) and head_s.shape == (4, 4)
    teacher = load_model(str(tiny_teacher_dir)).model
    student = load_model(resolved).model
    for new_i, old_i in enumerate(layers):
        kept = top_units(mlp_s[old_i], 64)
        torch.testing.assert_close(
            student.model.layers[new_i].mlp.gate_proj.weight,
            teacher.model.layers[old_i].mlp.gate_proj.weight[kept],
        )
        heads = width["heads_kept"][str(old_i)]
        assert student.config.distilltune_student_width["heads_kept"][new_i] == heads
        o_cols = torch.cat(
            [teacher.model.layers[old_i].self_attn.o_proj.weight[:, h * 16 : (h + 1) * 16] for h in heads], 1
        )
        torch.testing.assert_close(student.model.layers[new_i].self_attn.o_proj.weight, o_cols)

    # resuming reuses the record without loading the teacher again
    import distilltune.models as models

    monkeypatch.setattr(
        models, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("reloaded"))
    )
    assert resolve_student(cfg, tiny_task, out, logs.append) == resolved


def test_distillation_trains_a_width_pruned_student(tiny_task, tiny_teacher_dir, tmp_path):
    from distilltune.distill.distill import run_distill
    from distilltune.train.progress import SilentReporter

    spec = "teacher:n_layers=2,mlp=0.5,heads=0.5"
    out = tmp_path / "run"
    run_distill(
        distill_cfg(tiny_task, tiny_teacher_dir, out, kd={"loss": "fkl"}, student=spec),
        reporter=SilentReporter(),
    )
    model = load_artifact(out)
    assert (model.config.num_hidden_layers, model.config.intermediate_size) == (2, 64)
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (2, 2)
    before = load_model(spec, teacher=str(tiny_teacher_dir)).model
    changed = any(
        not torch.equal(a, b)
        for a, b in zip(before.state_dict().values(), model.state_dict().values(), strict=True)
    )
    assert changed
