"""`compare` end to end on a tiny teacher and the tiny task: real training, real evaluation, a valid report.

The subset teacher, student-ft, student-kd still exercises every stage kind: LoRA fine-tuning of the
teacher (trained because student-kd needs it), full fine-tuning, the cached teacher top-k pass and
KD, evaluation with retrieval and the guard, and the report. Next to them runs a strategy the user
defined in the compare config (a 2-layer student distilled with JSD). A second run must skip all work.
"""

from __future__ import annotations

import json

import pytest
import yaml

from distilltune.compare.config import CompareConfig
from distilltune.compare.run import run_compare, teacher_agreement_of
from distilltune.compare.schema import validate_report
from distilltune.errors import UserError


def _cfg(task, teacher, out, **extra) -> CompareConfig:
    data = {
        "task": str(task),
        "output": str(out),
        "teacher": str(teacher),
        "student": "teacher:n_layers=2",
        "strategies": ["teacher", "student-ft", "student-kd"],
        "steps": {
            "teacher_lora": 2,
            "student_ft": 3,
            "student_kd": 3,
            "student_kd_lora": 1,
            "student_seqkd": 1,
        },
        "batch_size": 4,
        "max_new_tokens": 8,
        "efficiency_prompts": 2,
        "budgets": {"latency_p95_ms": 600000},
    }
    data.update(extra)
    return CompareConfig.model_validate(data)


# a user-defined candidate, as a compare YAML would add it (examples/compare/custom-strategies.yaml)
CUSTOM = {
    "student-jsd": {
        "kind": "distill",
        "description": "a 2-layer student distilled with JSD",
        "student": "teacher:n_layers=2",
        "recipe": {"kd": {"loss": "jsd"}},
        "steps": 2,
    }
}


def test_compare_end_to_end_and_resume(tiny_task, tiny_teacher_dir, tmp_path):
    out = tmp_path / "cmp"
    logs: list[str] = []
    strategies = ["teacher", "student-ft", "student-kd", "student-jsd"]
    cfg = _cfg(tiny_task, tiny_teacher_dir, out, custom_strategies=CUSTOM, strategies=strategies)
    report = run_compare(cfg, log=logs.append)

    assert validate_report(report) == []
    on_disk = json.loads((out / "report.json").read_text())
    assert validate_report(on_disk) == [] and on_disk["schema_version"] == 1
    names = [s["name"] for s in on_disk["strategies"]]
    assert names == ["teacher", "student-ft", "student-kd", "student-jsd"]
    for s in on_disk["strategies"]:
        assert s["error"] is None, s["error"]
        assert s["quality"]["n_items"] == 5  # every tiny eval item was answered and scored
        assert s["efficiency"]["latency_p95_ms"] > 0 and s["efficiency"]["peak_rss_mb"] > 0
    agreement = {s["name"]: s["quality"].get("teacher_agreement") for s in on_disk["strategies"]}
    assert agreement["teacher"] is None  # not compared with itself
    assert all(0.0 <= agreement[n] <= 1.0 for n in ("student-ft", "student-kd", "student-jsd"))
    trained = {s["name"]: s["training"] for s in on_disk["strategies"]}
    assert trained["student-kd"]["steps"] == 3 and trained["student-kd"]["wall_s"] > 0
    # the user's strategy ran as its recipe says, beside the built-ins, and is in both reports
    jsd = next(s for s in on_disk["strategies"] if s["name"] == "student-jsd")
    assert jsd["kind"] == "distill" and jsd["description"] == "a 2-layer student distilled with JSD"
    assert trained["student-jsd"]["steps"] == 2 and trained["student-jsd"]["wall_s"] > 0
    run_cfg = yaml.safe_load((out / "runs" / "student-jsd" / "config.yaml").read_text())
    assert run_cfg["kd"]["loss"] == "jsd" and run_cfg["teacher"] == str(out / "runs" / "teacher-lora")
    assert (
        run_cfg["student"]
        == yaml.safe_load((out / "configs" / "train-student-kd.yaml").read_text())["student"]
    )
    assert "distilltune distill --config" in on_disk["commands"]["train student-jsd"]
    md_rows = [line for line in (out / "report.md").read_text().splitlines() if "student-jsd" in line]
    assert any("| distill |" in line for line in md_rows), md_rows
    assert trained["teacher"]["wall_s"] is None  # nothing trained
    # the KD student learned from the fine-tuned teacher, which was trained although not evaluated
    assert (out / "runs" / "teacher-lora" / "adapter" / "adapter_config.json").exists()
    assert not (out / "evals" / "teacher-lora").exists()
    assert on_disk["recommendation"]["strategy"] in names
    # the decision states its stability and the pairwise evidence covers every pair and score
    assert abs(sum(on_disk["recommendation"]["stability"].values()) - 1.0) < 1e-9
    assert {(c["score"], c["strategy"], c["reference"]) for c in on_disk["pairwise"]} >= {
        ("primary", "teacher", "student-ft"),
        ("answer_nll", "student-ft", "student-kd"),
    }
    # the student kept the teacher's most influential layers, measured on the task and recorded
    layers = json.loads((out / "student_layers.json").read_text())
    assert len(layers["layers"]) == 2 and len(layers["block_influence"]) == 4
    assert (
        f"layers={','.join(map(str, layers['layers']))}"
        in (out / "configs" / "train-student-kd.yaml").read_text()
    )
    for s in on_disk["strategies"]:
        assert len(s["efficiency"]["latency_samples"]) == 2
    html = (out / "report.html").read_text()
    assert "How sure is this?" in html
    assert "Recommendation" in html or "recommendation" in html
    assert (out / "task" / "task.yaml").exists() and (out / "configs" / "train-student-kd.yaml").exists()

    # a second run reuses every finished stage
    times_before = json.loads((out / "stage_times.json").read_text())
    logs.clear()
    again = run_compare(cfg, log=logs.append)
    assert json.loads((out / "stage_times.json").read_text()) == times_before
    assert sum("skipping" in line for line in logs) == 8  # 4 trainings + 4 evaluations
    assert again["recommendation"]["strategy"] == report["recommendation"]["strategy"]


def test_teacher_agreement_joins_answers_on_item_id():
    teacher = {"a": "Refunds take 10 days.", "b": "The Pro plan costs $49."}
    assert teacher_agreement_of(dict(teacher), teacher) == 1.0
    assert teacher_agreement_of({"a": "completely different words"}, teacher) == 0.0
    half = teacher_agreement_of({"a": "Refunds take 10 days.", "b": "no"}, teacher)
    assert half == 0.5
    assert teacher_agreement_of({"zzz": "x"}, teacher) is None


def test_compare_refuses_to_mix_different_data(tiny_task, tiny_teacher_dir, tmp_path):
    from distilltune.compare.run import prepare_view

    out = tmp_path / "cmp"
    prepare_view(_cfg(tiny_task, tiny_teacher_dir, out), out)
    with pytest.raises(UserError, match="different data"):
        prepare_view(_cfg(tiny_task, tiny_teacher_dir, out, train_limit=3), out)


def test_compare_config_presets_and_errors():
    quick = CompareConfig.model_validate({"task": "t", "output": "o"})
    full = CompareConfig.model_validate({"task": "t", "output": "o", "preset": "full"})
    assert (
        quick.steps["student-kd"] < full.steps["student-kd"]
        and quick.train_limit
        and full.train_limit is None
    )
    mine = CompareConfig.model_validate({"task": "t", "output": "o", "steps": {"student_kd": 7}})
    assert mine.steps["student-kd"] == 7 and mine.steps["student-ft"] == quick.steps["student-ft"]
    with pytest.raises(Exception, match="unknown strategies"):
        CompareConfig.model_validate({"task": "t", "output": "o", "strategies": ["teacher", "magic"]})
    assert (
        CompareConfig.model_validate({"task": "t", "output": "o", "teacher": "x"}).student_spec()
        == "x:n_layers=6"
    )


def test_demo_prints_teacher_and_recommended_answers(tmp_path, capsys):
    from distilltune.cli.compare_cmd import _print_samples

    def write(name, rows):
        d = tmp_path / "evals" / name
        d.mkdir(parents=True)
        (d / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    q = [{"role": "user", "content": "How long do refunds take?"}]
    write(
        "teacher",
        [
            {
                "suite": "eval",
                "id": "e1",
                "prompt": q,
                "answer": "Refunds take 10 days.",
                "expected_refusal": False,
            },
            {"suite": "eval", "id": "e2", "prompt": q, "answer": "I can't help.", "expected_refusal": True},
            {"suite": "scenarios", "id": "s1", "prompt": q, "answer": "scenario answer"},
        ],
    )
    write("student-kd", [{"suite": "eval", "id": "e1", "prompt": q, "answer": "Ten days."}])
    _print_samples({"recommendation": {"strategy": "student-kd"}}, tmp_path)
    printed = capsys.readouterr().out
    assert "How long do refunds take?" in printed and "teacher: Refunds take 10 days." in printed
    assert "student-kd: Ten days." in printed
    assert "I can't help." not in printed and "scenario answer" not in printed  # refusal items, other suites
