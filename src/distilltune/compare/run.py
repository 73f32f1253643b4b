"""Run a comparison: train every selected strategy, evaluate each one the same way, write the report.

Layout of ``OUT/``::

    config.yaml       the resolved CompareConfig (re-run with ``distilltune compare --config``)
    task/             the task view every run uses (sampled per the preset; see compare.subset)
    runs/<strategy>/  one training run dir per trained strategy (resumable, skipped when complete)
    evals/<strategy>/ one evaluation dir per strategy (eval.json, items.jsonl; skipped when present)
    report.html|md|json

Re-running the same command skips finished work and resumes an interrupted run, so a comparison
killed halfway costs only the stage that was running. A strategy that fails is reported with its
error (and its dependents are skipped) instead of sinking the whole comparison; configuration
problems are found before anything runs. All strategies share one knowledge index and one teacher
top-k cache (its key covers teacher weights, data, prompt assembly, k and positions).
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

from distilltune.compare.config import CompareConfig
from distilltune.compare.progress import Progress, Stage, StageReporter
from distilltune.compare.strategies import STRATEGIES, training_order
from distilltune.compare.students import resolve_student
from distilltune.compare.subset import write_task_view
from distilltune.config import to_yaml
from distilltune.errors import UserError
from distilltune.io import atomic_write_text, read_jsonl
from distilltune.task import Budgets, load_task

VIEW_STAMP = ".compare-view.json"
STAGE_TIMES = "stage_times.json"


def _view_fingerprint(cfg: CompareConfig) -> dict:
    return {
        "task": str(Path(cfg.task).resolve()),
        "train_limit": cfg.train_limit,
        "eval_limit": cfg.eval_limit,
        "behaviour_limit": cfg.behaviour_limit,
        "seed": cfg.seed,
    }


def prepare_view(cfg: CompareConfig, out: Path) -> Path:
    """Write OUT/task once; refuse to mix runs made on a different view."""
    view = out / "task"
    stamp = view / VIEW_STAMP
    want = _view_fingerprint(cfg)
    if stamp.exists():
        have = json.loads(stamp.read_text())
        if have != want:
            diff = ", ".join(f"{k}: {have.get(k)!r} → {want[k]!r}" for k in want if have.get(k) != want[k])
            raise UserError(
                f"{out} holds a comparison made on different data ({diff}); its runs would not be comparable. "
                "Use a new --output directory."
            )
        return view
    write_task_view(load_task(cfg.task), view, cfg.train_limit, cfg.eval_limit, cfg.behaviour_limit, cfg.seed)
    atomic_write_text(stamp, json.dumps(want, indent=2) + "\n")
    return view


def effective_budgets(task_budgets: Budgets, cfg: CompareConfig) -> Budgets:
    merged = task_budgets.model_dump()
    merged.update({k: v for k, v in cfg.budgets.model_dump().items() if v is not None})
    return Budgets(**merged)


def _train_settings(cfg: CompareConfig, steps: int):
    from distilltune.train.config import TrainSettings

    return TrainSettings(
        max_steps=steps,
        batch_size=cfg.batch_size,
        warmup_steps=max(1, steps // 10),
        max_length=cfg.max_length,
        # One held-out loss at the end, no generation: the comparison's evaluation is the real
        # measurement, and answering eval items twice would only cost time.
        eval_every=0,
        eval_samples=0,
        eval_loss_items=min(32, cfg.eval_limit or 32),
        select_metric="eval_loss",
        save_every=max(1, steps // 2),
        keep_last=1,
        seed=cfg.seed,
    )


def training_configs(
    cfg: CompareConfig, view: Path, out: Path, student: str | None = None
) -> dict[str, object]:
    """The FinetuneConfig / DistillConfig of every strategy to train (validated before anything runs).

    ``student``: the resolved student spec (``students.resolve_student``); default ``cfg.student_spec()``.
    """
    from distilltune.distill.config import DistillConfig, KDSettings
    from distilltune.distill.sequence import SequenceSettings
    from distilltune.train.config import FinetuneConfig

    runs = out / "runs"
    student = student or cfg.student_spec()
    common = {"task": str(view), "rag": True, "retrieval": cfg.retrieval}
    make = {
        "teacher-lora": lambda: FinetuneConfig(
            **common,
            model=cfg.teacher,
            method="lora",
            output=str(runs / "teacher-lora"),
            lora=cfg.teacher_lora,
            train=_train_settings(cfg, cfg.steps.teacher_lora).model_copy(update={"lr": cfg.teacher_lora_lr}),
        ),
        "student-ft": lambda: FinetuneConfig(
            **common,
            model=student,
            method="full",
            output=str(runs / "student-ft"),
            train=_train_settings(cfg, cfg.steps.student_ft),
        ),
        "student-kd": lambda: DistillConfig(
            **common,
            teacher=str(runs / "teacher-lora"),
            student=student,
            output=str(runs / "student-kd"),
            mode="cached",
            kd=KDSettings(loss=cfg.kd_loss, top_k=cfg.kd_top_k),
            train=_train_settings(cfg, cfg.steps.student_kd),
        ),
        "student-kd-lora": lambda: FinetuneConfig(
            **common,
            model=str(runs / "student-kd"),
            method="lora",
            output=str(runs / "student-kd-lora"),
            train=_train_settings(cfg, cfg.steps.student_kd_lora),
        ),
        "student-seqkd": lambda: DistillConfig(
            **common,
            teacher=str(runs / "teacher-lora"),
            student=student,
            output=str(runs / "student-seqkd"),
            mode="sequence",
            # Teacher generation dominates this strategy's cost (24 of ~41 training minutes in a quick
            # demo answering all 160 prompts), so the quick preset answers a sample.
            sequence=SequenceSettings(max_new_tokens=cfg.seqkd_max_new_tokens, max_prompts=cfg.seqkd_prompts),
            train=_train_settings(cfg, cfg.steps.student_seqkd),
        ),
    }
    return {name: make[name]() for name in training_order(cfg.strategies)}


def evaluate_config(cfg: CompareConfig, view: Path, out: Path, name: str):
    from distilltune.evaluation.config import EfficiencySettings, EvaluateConfig

    model = cfg.teacher if name == "teacher" else str(out / "runs" / name)
    return EvaluateConfig(
        model=model,
        task=str(view),
        output=str(out / "evals" / name),
        retrieval=cfg.retrieval,
        teacher_agreement=False,
        max_new_tokens=cfg.max_new_tokens,
        efficiency=EfficiencySettings(
            prompts=cfg.efficiency_prompts,
            warmup=1,
            max_new_tokens=cfg.max_new_tokens,
            time_budget_s=cfg.efficiency_time_budget_s,
        ),
    )


def _cli_config_command(command: str, config_path: Path) -> str:
    return f"distilltune {command} --config {shlex.quote(str(config_path))}"


def _stage_weight(cfg: CompareConfig, name: str, action: str) -> float:
    """Seconds a stage takes in the quick preset here, scaled by its size; only the ETA uses it."""
    n_eval = (cfg.eval_limit or 180) + 2 * (cfg.behaviour_limit or 40)
    teacher_like = name in ("teacher", "teacher-lora")
    if action == "evaluate":
        return n_eval * (2.0 if teacher_like else 0.8) + 15
    per_step = (
        {
            "teacher-lora": 6.0,
            "student-ft": 1.6,
            "student-kd": 1.6,
            "student-kd-lora": 1.2,
            "student-seqkd": 1.6,
        }[name]
        * cfg.batch_size
        / 4
    )
    steps = getattr(cfg.steps, name.replace("-", "_"))
    extra = {"student-kd": 0.4, "student-seqkd": 0.8}.get(name, 0.0) * (cfg.train_limit or 546)
    return steps * per_step + extra + 15


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def eval_items(out: Path, name: str) -> dict[str, dict]:
    """id → the saved (redacted) record of every eval item a strategy's evaluation answered."""
    path = out / "evals" / name / "items.jsonl"
    if not path.is_file():
        return {}
    return {str(r["id"]): r for r in read_jsonl(path) if r.get("suite") == "eval" and "id" in r}


def _eval_answers(out: Path, name: str) -> dict[str, str]:
    return {i: r["answer"] for i, r in eval_items(out, name).items() if isinstance(r.get("answer"), str)}


def teacher_agreement_of(answers: dict[str, str], teacher_answers: dict[str, str]) -> float | None:
    """Mean token F1 between a strategy's answers and the base teacher's on the items both answered.

    The teacher's answers come from its own evaluation in the same comparison (same prompts,
    retrieval and decoding), so agreement costs no extra generation.
    """
    from distilltune.evaluation.metrics import teacher_agreement

    shared = sorted(set(answers) & set(teacher_answers))
    if not shared:
        return None
    return sum(teacher_agreement(answers[i], teacher_answers[i]) for i in shared) / len(shared)


def strategy_result(
    cfg: CompareConfig,
    out: Path,
    name: str,
    error: str | None,
    commands: dict[str, str],
    teacher_answers: dict[str, str] | None = None,
):
    from distilltune.compare.report import StrategyResult, curve_from_metrics

    s = STRATEGIES[name]
    run_dir = out / "runs" / name
    summary = _read_json(run_dir / "train_summary.json") if name != "teacher" else {}
    # Training cost: the whole stage as measured here (model loading, teacher cache or teacher
    # generation included), else the loop's own time.
    times = _read_json(out / STAGE_TIMES)
    wall = times.get(f"train {name}", summary.get("train_seconds"))
    tps, secs = summary.get("tokens_per_s"), summary.get("train_seconds")
    tokens = int(tps * secs) if isinstance(tps, int | float) and isinstance(secs, int | float) else None
    ev = _read_json(out / "evals" / name / "eval.json")
    if teacher_answers and name != "teacher" and isinstance(ev.get("quality"), dict):
        agreement = teacher_agreement_of(_eval_answers(out, name), teacher_answers)
        if agreement is not None:
            ev["quality"]["teacher_agreement"] = agreement
    return StrategyResult(
        name=name,
        description=s.description,
        kind=s.kind,
        eval=ev,
        wall_s=wall if isinstance(wall, int | float) else None,
        steps=summary.get("final_step"),
        tokens=tokens,
        curve=curve_from_metrics(read_jsonl(run_dir / "metrics.jsonl")) if name != "teacher" else [],
        price_per_hour=cfg.price_per_hour,
        currency=cfg.currency,
        reproduce_command=commands.get(f"train {name}") or commands.get(f"evaluate {name}"),
        serve_command=serve_command(cfg, out, name),
        run_dir=str(run_dir) if name != "teacher" else None,
        error=error,
        train_total_s=_total_train_s(name, times),
        base=s.base if s.base in cfg.strategies else None,
    )


def _total_train_s(name: str, times: dict) -> float | None:
    """Training wall time of ``name`` plus the runs it starts from (a blend pays for its source)."""
    if name == "teacher":
        return 0.0
    own = times.get(f"train {name}")
    if not isinstance(own, int | float):
        return None
    deps = [_total_train_s(d, times) for d in STRATEGIES[name].needs]
    return None if any(d is None for d in deps) else own + sum(deps)  # type: ignore[arg-type]


def serve_command(cfg: CompareConfig, out: Path, name: str) -> str:
    model = cfg.teacher if name == "teacher" else str(out / "runs" / name)
    cmd = f"distilltune serve {shlex.quote(model)} --task {shlex.quote(str(out / 'task'))}"
    if name != "teacher" and name != "teacher-lora":
        # small model first; the fine-tuned teacher answers when the student is unsure
        fallback = out / "runs" / "teacher-lora"
        cmd += f" --fallback {shlex.quote(str(fallback if (fallback / 'adapter').exists() else cfg.teacher))}"
    return cmd


def run_compare(cfg: CompareConfig, log: Callable[[str], None] | None = None) -> dict:
    """Run (or resume) the comparison described by ``cfg``; returns the report dict."""
    from distilltune.compare.report import build_report
    from distilltune.distill.distill import run_distill
    from distilltune.evaluation.evaluate import evaluate
    from distilltune.runtime import set_threads
    from distilltune.train.artifacts import is_complete
    from distilltune.train.finetune import run_finetune

    def _stderr(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    log = log or _stderr
    set_threads()
    task = load_task(cfg.task)  # fails fast, with every problem, on a bad task
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", to_yaml(cfg))
    view = prepare_view(cfg, out)
    needs_student = set(training_order(cfg.strategies)) - {"teacher-lora"}
    student = resolve_student(cfg, view, out, log) if needs_student else None
    train_cfgs = training_configs(cfg, view, out, student)  # every config problem before any weight moves
    eval_cfgs = {name: evaluate_config(cfg, view, out, name) for name in cfg.strategies}
    for name, tc in train_cfgs.items():
        atomic_write_text(out / "configs" / f"train-{name}.yaml", to_yaml(tc))
    for name, ec in eval_cfgs.items():
        atomic_write_text(out / "configs" / f"evaluate-{name}.yaml", to_yaml(ec))
    commands: dict[str, str] = {}
    for name, tc in train_cfgs.items():
        verb = "finetune" if type(tc).__name__ == "FinetuneConfig" else "distill"
        commands[f"train {name}"] = _cli_config_command(verb, out / "configs" / f"train-{name}.yaml")
    for name in cfg.strategies:
        commands[f"evaluate {name}"] = _cli_config_command(
            "evaluate", out / "configs" / f"evaluate-{name}.yaml"
        )

    errors: dict[str, str] = {}

    def train(name: str) -> None:
        blocked = [d for d in STRATEGIES[name].needs if d in errors]
        if blocked:
            errors[name] = f"not trained: it needs {blocked[0]}, which failed"
            return
        tc = train_cfgs[name]
        reporter = StageReporter(name, log)
        runner = run_finetune if type(tc).__name__ == "FinetuneConfig" else run_distill
        runner(tc, resume=True, reporter=reporter)

    def evaluate_one(name: str) -> None:
        if name in errors:
            return
        evaluate(eval_cfgs[name], log=lambda m: log(f"  {name}: {m}"))

    stages = [Stage(n, "train", _stage_weight(cfg, n, "train"), lambda n=n: train(n)) for n in train_cfgs]
    stages += [
        Stage(n, "evaluate", _stage_weight(cfg, n, "evaluate"), lambda n=n: evaluate_one(n))
        for n in cfg.strategies
    ]
    progress = Progress(stages, log)
    log(
        f"comparing {len(cfg.strategies)} strategies on {task.name!r} ({cfg.preset} preset): "
        f"{', '.join(cfg.strategies)}; output in {out}"
    )
    for i, stage in enumerate(stages, start=1):
        if stage.action == "train":
            done = is_complete(out / "runs" / stage.strategy)
        else:
            done = (out / "evals" / stage.strategy / "eval.json").exists()
        progress.begin(i, stage, skipped=done)
        if not done:
            t0 = time.perf_counter()
            try:
                stage.run()
            except UserError:
                raise
            except Exception as e:  # one failed strategy must not sink the comparison
                errors[stage.strategy] = f"{stage.action} failed: {type(e).__name__}: {e}"
                log(f"  {stage.strategy}: {errors[stage.strategy]}")
            finally:
                times = _read_json(out / STAGE_TIMES)
                key = f"{stage.action} {stage.strategy}"
                times[key] = times.get(key, 0.0) + time.perf_counter() - t0
                atomic_write_text(out / STAGE_TIMES, json.dumps(times, indent=2) + "\n")
        progress.end(stage, skipped=done)

    teacher_answers = _eval_answers(out, "teacher") if "teacher" in cfg.strategies else {}
    results = [strategy_result(cfg, out, n, errors.get(n), commands, teacher_answers) for n in cfg.strategies]
    commands = {"compare (this report)": _cli_config_command("compare", out / "config.yaml"), **commands}
    report = build_report(results, effective_budgets(task.spec.budgets, cfg), task.name, out, commands)
    log(
        f"report: {out / 'report.html'} (also report.md, report.json) — total {Progress._fmt(time.perf_counter() - progress.started)}"
    )
    return report
