"""Strategies as data: the built-in matrix builds exactly the configs the hand-written recipes built,
user strategies merge and validate with errors that name them, and the ETA scales with the task.

The reference for the built-ins is a copy of ``compare.run.training_configs`` / ``evaluate_config``
as they were before strategies became data (commit be5acf5), reading the presets' values as they
were then, kept here only as a second path to the same configs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from distilltune.compare.config import CompareConfig
from distilltune.compare.recipes import Refs, evaluate_config, size_fraction, stage_weight, training_configs
from distilltune.config import to_yaml
from distilltune.distill.config import DistillConfig, KDSettings
from distilltune.distill.sequence import SequenceSettings
from distilltune.evaluation.config import EfficiencySettings, EvaluateConfig
from distilltune.retrieval.config import RetrievalConfig
from distilltune.train.config import FinetuneConfig, LoraSettings, TrainSettings

ALL_SIX = ["teacher", "teacher-lora", "student-ft", "student-kd", "student-kd-lora", "student-seqkd"]
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# The presets' values at be5acf5 that the recipes read (compare/config.py PRESETS and field defaults).
OLD = {
    "quick": {
        "eval_limit": 32, "max_new_tokens": 48, "efficiency_prompts": 20, "efficiency_time_budget_s": 20,
        "retrieval": {"k": 2, "max_context_tokens": 192},
        "teacher_lora": {"r": 16, "alpha": 32, "target_modules": LINEAR}, "teacher_lora_lr": 2e-3,
        "steps": {"teacher_lora": 24, "student_ft": 40, "student_kd": 40, "student_kd_lora": 12,
                  "student_seqkd": 40},
        "batch_size": 4, "max_length": 448, "seqkd_prompts": 32, "seqkd_max_new_tokens": 128,
    },
    "full": {
        "eval_limit": None, "max_new_tokens": 64, "efficiency_prompts": 20, "efficiency_time_budget_s": 60,
        "retrieval": {"k": 2, "max_context_tokens": 192},
        "teacher_lora": {"r": 16, "alpha": 32, "target_modules": LINEAR}, "teacher_lora_lr": 1e-3,
        "steps": {"teacher_lora": 48, "student_ft": 120, "student_kd": 120, "student_kd_lora": 40,
                  "student_seqkd": 120},
        "batch_size": 8, "max_length": 448, "seqkd_prompts": 200, "seqkd_max_new_tokens": 128,
    },
}  # fmt: skip
DEFAULTS = {"teacher": "smollm2-135m-instruct", "kd_loss": "fkl", "kd_top_k": 32, "seed": 0}


def _old_train_settings(o: dict, steps: int) -> TrainSettings:
    return TrainSettings(
        max_steps=steps,
        batch_size=o["batch_size"],
        warmup_steps=max(1, steps // 10),
        max_length=o["max_length"],
        eval_every=0,
        eval_samples=0,
        eval_loss_items=min(32, o["eval_limit"] or 32),
        select_metric="eval_loss",
        save_every=max(1, steps // 2),
        keep_last=1,
        seed=o["seed"],
    )


def _old_training_configs(o: dict, view: Path, out: Path, student: str) -> dict:
    runs = out / "runs"
    retrieval = RetrievalConfig.model_validate(o["retrieval"])
    common = {"task": str(view), "rag": True, "retrieval": retrieval}
    st = o["steps"]
    return {
        "teacher-lora": FinetuneConfig(
            **common, model=o["teacher"], method="lora", output=str(runs / "teacher-lora"),
            lora=LoraSettings.model_validate(o["teacher_lora"]),
            train=_old_train_settings(o, st["teacher_lora"]).model_copy(update={"lr": o["teacher_lora_lr"]}),
        ),
        "student-ft": FinetuneConfig(
            **common, model=student, method="full", output=str(runs / "student-ft"),
            train=_old_train_settings(o, st["student_ft"]),
        ),
        "student-kd": DistillConfig(
            **common, teacher=str(runs / "teacher-lora"), student=student, output=str(runs / "student-kd"),
            mode="cached", kd=KDSettings(loss=o["kd_loss"], top_k=o["kd_top_k"]),
            train=_old_train_settings(o, st["student_kd"]),
        ),
        "student-kd-lora": FinetuneConfig(
            **common, model=str(runs / "student-kd"), method="lora", output=str(runs / "student-kd-lora"),
            train=_old_train_settings(o, st["student_kd_lora"]),
        ),
        "student-seqkd": DistillConfig(
            **common, teacher=str(runs / "teacher-lora"), student=student, output=str(runs / "student-seqkd"),
            mode="sequence",
            sequence=SequenceSettings(max_new_tokens=o["seqkd_max_new_tokens"], max_prompts=o["seqkd_prompts"]),
            train=_old_train_settings(o, st["student_seqkd"]),
        ),
    }  # fmt: skip


def _old_evaluate_config(o: dict, view: Path, out: Path, name: str) -> EvaluateConfig:
    return EvaluateConfig(
        model=o["teacher"] if name == "teacher" else str(out / "runs" / name),
        task=str(view),
        output=str(out / "evals" / name),
        retrieval=RetrievalConfig.model_validate(o["retrieval"]),
        teacher_agreement=False,
        max_new_tokens=o["max_new_tokens"],
        efficiency=EfficiencySettings(
            prompts=o["efficiency_prompts"], warmup=1, max_new_tokens=o["max_new_tokens"],
            time_budget_s=o["efficiency_time_budget_s"],
        ),
    )  # fmt: skip


CHANGES = [
    {},
    {"kd_loss": "jsd", "kd_top_k": 8, "seed": 3, "batch_size": 2, "eval_limit": 10, "teacher_lora_lr": 5e-4},
    {"steps": {"student_kd": 7, "teacher_lora": 3}, "seqkd_prompts": 5, "teacher_lora": {"r": 4}},
]


@pytest.mark.parametrize("preset", ["quick", "full"])
@pytest.mark.parametrize("change", CHANGES)
def test_builtin_strategies_build_the_same_configs_as_before(preset, change, tmp_path):
    cfg = CompareConfig.model_validate(
        {"task": "t", "output": "o", "preset": preset, "strategies": ALL_SIX, **change}
    )
    old = {**OLD[preset], **DEFAULTS, **change}
    old["steps"] = {**OLD[preset]["steps"], **change.get("steps", {})}
    if "teacher_lora" in change:
        old["teacher_lora"] = {**OLD[preset]["teacher_lora"], **change["teacher_lora"]}
    view, out, student = tmp_path / "task", tmp_path / "cmp", "tiny:layers=0,3"
    want = _old_training_configs(old, view, out, student)
    got = training_configs(cfg, view, out, {cfg.student_spec(): student})
    assert list(got) == list(want)  # same strategies, same order
    for name in want:
        assert type(got[name]) is type(want[name]), name
        assert got[name] == want[name], name
        assert to_yaml(got[name]) == to_yaml(want[name]), name  # what configs/ and resume compare
    refs = Refs(cfg, cfg.table(), out / "runs", {cfg.student_spec(): student})
    for name in ALL_SIX:
        assert evaluate_config(cfg, view, out, name, refs) == _old_evaluate_config(old, view, out, name)


def test_quick_selection_trains_the_teacher_it_needs(tmp_path):
    cfg = CompareConfig.model_validate({"task": "t", "output": "o"})
    assert cfg.strategies == ["teacher", "teacher-lora", "student-ft", "student-kd"]
    cfg = CompareConfig.model_validate({"task": "t", "output": "o", "strategies": ["student-kd-lora"]})
    assert list(training_configs(cfg, tmp_path, tmp_path)) == [
        "teacher-lora",
        "student-kd",
        "student-kd-lora",
    ]


EXAMPLE = Path(__file__).parent.parent / "examples" / "compare" / "custom-strategies.yaml"


def _example(**extra) -> CompareConfig:
    data = yaml.safe_load(EXAMPLE.read_text())
    return CompareConfig.model_validate({**data, "task": "t", "output": "o", **extra})


def test_example_custom_strategies_join_the_builtins(tmp_path):
    cfg = _example()
    new = ["student-12l-jsd", "teacher-lora-r32", "student-ft-3x"]
    assert cfg.strategies == ["teacher", "teacher-lora", "student-ft", "student-kd", *new]
    got = training_configs(cfg, tmp_path / "task", tmp_path / "cmp")
    kd, jsd = got["student-kd"], got["student-12l-jsd"]
    assert isinstance(jsd, DistillConfig) and jsd.kd.loss == "jsd" and kd.kd.loss == "fkl"
    assert jsd.student == "smollm2-135m-instruct:n_layers=12"  # 'teacher' is the comparison's teacher
    assert jsd.teacher == str(tmp_path / "cmp" / "runs" / "teacher-lora")
    # apart from the loss, the student and the output, the JSD student is trained exactly as student-kd
    same = {"student", "output"}
    jsd_rest, kd_rest = ({k: v for k, v in c.model_dump().items() if k not in same} for c in (jsd, kd))
    assert jsd_rest["kd"].pop("loss") == "jsd" and kd_rest["kd"].pop("loss") == "fkl"
    assert jsd_rest == kd_rest
    r32 = got["teacher-lora-r32"]
    assert isinstance(r32, FinetuneConfig) and r32.method == "lora" and r32.lora.r == 32
    assert r32.model == "smollm2-135m-instruct" and r32.train.lr == got["teacher-lora"].train.lr
    ft3 = got["student-ft-3x"]
    assert ft3.train.max_steps == 3 * got["student-ft"].train.max_steps == 120
    assert ft3.model == got["student-ft"].model and ft3.method == "full"
    full = _example(preset="full")
    assert training_configs(full, tmp_path, tmp_path)["student-ft-3x"].train.max_steps == 360
    # an explicit selection is exactly what runs
    assert _example(strategies=["teacher", "student-12l-jsd"]).strategies == ["teacher", "student-12l-jsd"]


def test_custom_strategy_can_change_a_builtin(tmp_path):
    cfg = CompareConfig.model_validate(
        {
            "task": "t",
            "output": "o",
            "custom_strategies": {"student-kd": {"recipe": {"kd": {"temperature": 2.0}}, "steps": 9}},
        }
    )
    kd = training_configs(cfg, tmp_path, tmp_path)["student-kd"]
    assert kd.kd.temperature == 2.0 and kd.train.max_steps == 9 and kd.mode == "cached"
    assert kd.kd.top_k == 32 and kd.kd.loss == "fkl"  # the rest of the built-in kd section is kept
    assert cfg.strategies == ["teacher", "teacher-lora", "student-ft", "student-kd"]  # no new candidate


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"kind": "distill", "steps": 5, "recipe": {"kd": {"loss": "nope"}}}, "custom_strategies.mine.recipe.kd.loss"),
        ({"kind": "distill", "steps": 5, "recipe": {"loss": "jsd"}}, "custom_strategies.mine.recipe.loss: moved to kd.loss"),
        ({"kind": "distill", "steps": 5, "recipe": {"tempreature": 2}}, "custom_strategies.mine.recipe.tempreature: unknown key"),
        ({"kind": "distill"}, "custom_strategies.mine.steps: required"),
        ({"steps": 5}, "custom_strategies.mine.kind: required"),
        ({"kind": "finetune", "steps": 5, "recipe": {"model": "x"}}, "custom_strategies.mine.recipe.model: set by the comparison"),
        ({"kind": "blend", "model": "teacher", "steps": 5}, "custom_strategies.mine.model: a blend continues"),
        ({"kind": "distill", "steps": 5, "depends_on": ["ghost"]}, "custom_strategies.mine.depends_on: no strategy named 'ghost'"),
        ({"kind": "distill", "steps": 5, "teacher": "mine"}, "cycle"),
        ({"kind": "distill", "steps": {"full": 5}}, "none for quick"),
        ({"kind": "finetune", "steps": 5, "recipe": {"train": {"lr": "${nope}"}}}, "custom_strategies.mine.recipe.train.lr"),
        ({"kind": "wizard", "steps": 5}, "custom_strategies.mine.kind"),
    ],
)  # fmt: skip
def test_invalid_custom_strategies_name_the_strategy_and_field(entry, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as e:
        CompareConfig.model_validate({"task": "t", "output": "o", "custom_strategies": {"mine": entry}})
    assert message in str(e.value)


def test_steps_accept_strategy_names_and_reject_unknown_ones():
    cfg = CompareConfig.model_validate(
        {"task": "t", "output": "o", "steps": {"student-kd": 5, "student_ft": 6}}
    )
    table = cfg.table()
    assert cfg.steps_for(table["student-kd"]) == 5 and cfg.steps_for(table["student-ft"]) == 6
    assert cfg.steps_for(table["teacher-lora"]) == 24
    with pytest.raises(Exception, match=r"steps\.ghost: no trained strategy"):
        CompareConfig.model_validate({"task": "t", "output": "o", "steps": {"ghost": 5}})


def test_eta_scales_with_the_task_size_and_the_model(tmp_path):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "config.json").write_text(json.dumps({"num_hidden_layers": 30}))
    cfg = _example(teacher=str(teacher))
    refs = Refs(cfg, cfg.table(), tmp_path / "runs")
    tcs = training_configs(cfg, tmp_path, tmp_path)
    assert size_fraction(refs, "teacher-lora") == 1.0 and size_fraction(refs, "teacher") == 1.0
    assert size_fraction(refs, "student-ft") == pytest.approx(6 / 30)
    assert size_fraction(refs, "student-12l-jsd") == pytest.approx(12 / 30)

    def w(name, n_train=100, action="train"):
        return stage_weight(cfg, refs, name, action, n_train, 50, tcs.get(name))

    # 3x the updates cost 3x the loop; twice the training examples cost twice the teacher pass
    assert w("student-ft-3x") - 15 == pytest.approx(3 * (w("student-ft") - 15))
    assert w("student-kd", 200) - w("student-kd", 100) == pytest.approx(
        w("student-kd", 100) - w("student-kd", 0)
    )
    assert w("student-12l-jsd", 0) - 15 == pytest.approx(2 * (w("student-kd", 0) - 15))  # 12 vs 6 layers
    assert w("teacher", action="evaluate") > w("student-ft", action="evaluate")


def test_a_custom_student_gets_its_own_measured_layers(tiny_task, tiny_teacher_dir, tmp_path):
    from distilltune.compare.run import _resolve_students, prepare_view

    custom = {
        "student-3l": {
            "kind": "finetune",
            "model": "teacher:n_layers=3",
            "recipe": {"method": "full"},
            "steps": 1,
        }
    }
    cfg = CompareConfig.model_validate(
        {"task": str(tiny_task), "output": str(tmp_path / "cmp"), "teacher": str(tiny_teacher_dir),
         "student": "teacher:n_layers=2", "strategies": ["student-ft", "student-3l"], "custom_strategies": custom}
    )  # fmt: skip
    out = tmp_path / "cmp"
    view = prepare_view(cfg, out)
    resolved = _resolve_students(cfg, view, out, lambda m: None)
    two, three = resolved[f"{tiny_teacher_dir}:n_layers=2"], resolved[f"{tiny_teacher_dir}:n_layers=3"]
    assert two.count(",") == 1 and three.count(",") == 2 and ":layers=" in three
    scores = json.loads((out / "student_layers.json").read_text())["block_influence"]
    kept = [int(i) for i in three.split("=")[1].split(",")]
    assert sorted(kept) == sorted(sorted(range(4), key=lambda i: -scores[i])[:3])  # the 3 most influential
    tcs = training_configs(cfg, view, out, resolved)
    assert tcs["student-3l"].model == three and tcs["student-ft"].model == two


def test_kd_loss_is_any_registered_loss_and_reaches_the_kd_section(tmp_path):
    from distilltune.distill.kd_losses import KD_LOSSES, register_loss

    with pytest.raises(Exception, match=r"kd_loss[\s\S]*unknown loss 'half-l1'; known losses: fkl, rkl"):
        CompareConfig.model_validate({"task": "t", "output": "o", "kd_loss": "half-l1"})
    register_loss("half-l1", lambda q, p, **_: 0.5 * (p.exp() - q.exp()).abs().sum(-1), "half L1", "half L1")
    try:
        cfg = CompareConfig.model_validate({"task": "t", "output": "o", "kd_loss": "half-l1", "kd_top_k": 4})
        kd = training_configs(cfg, tmp_path, tmp_path)["student-kd"]
        assert (kd.kd.loss, kd.kd.top_k) == ("half-l1", 4)
    finally:
        KD_LOSSES.pop("half-l1")
