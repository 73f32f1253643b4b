"""Run a comparison: train every selected strategy, evaluate each one the same way, write the report.

Layout of ``OUT/``::

    config.yaml       the resolved CompareConfig (re-run with ``distilltune compare --config``)
    task/             the task view every run uses (sampled per the preset; see compare.subset)
    runs/<strategy>/  one training run dir per trained strategy (resumable, skipped when complete)
    exports/<name>/   the export of each SOURCE@QUANT candidate (skipped when complete)
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
import re
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

from distilltune.compare.config import CompareConfig
from distilltune.compare.progress import Progress, Stage, StageReporter
from distilltune.compare.recipes import (
    Refs,
    deployed_file,
    evaluate_config,
    export_config,
    stage_weight,
    student_specs,
    training_configs,
)
from distilltune.compare.strategies import TRAINER, Strategy, needs
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


def _cli_config_command(command: str, config_path: Path) -> str:
    return f"distilltune {command} --config {shlex.quote(str(config_path))}"


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

    table = cfg.table()
    s = table[name]
    run_dir = out / "runs" / name
    summary = _read_json(run_dir / "train_summary.json") if s.trained else {}
    # Training cost: the whole stage as measured here (model loading, teacher cache or teacher
    # generation included), else the loop's own time.
    times = _read_json(out / STAGE_TIMES)
    wall = (
        times.get(f"export {name}") if s.deploy else times.get(f"train {name}", summary.get("train_seconds"))
    )
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
        kind="deployed" if s.deploy else s.kind,
        eval=ev,
        wall_s=wall if isinstance(wall, int | float) else None,
        steps=summary.get("final_step"),
        tokens=tokens,
        curve=curve_from_metrics(read_jsonl(run_dir / "metrics.jsonl")) if s.trained else [],
        price_per_hour=cfg.price_per_hour,
        currency=cfg.currency,
        reproduce_command=commands.get(f"train {name}")
        or commands.get(f"export {name}")
        or commands.get(f"evaluate {name}"),
        serve_command=serve_command(cfg, out, name),
        run_dir=str(run_dir) if s.trained else None,
        error=error,
        train_total_s=_total_train_s(table, name, times),
        base=s.base if s.base in cfg.strategies else None,
    )


def _total_train_s(table: dict[str, Strategy], name: str, times: dict) -> float | None:
    """Training wall time of ``name`` plus the runs it starts from (a blend pays for its source; a
    deployed candidate pays for its source and its export)."""
    s = table[name]
    if s.deploy:
        export_s = times.get(f"export {name}")
        source = _total_train_s(table, s.model, times) if s.model in table else 0.0
        if not isinstance(export_s, int | float) or source is None:
            return None
        return export_s + source
    if not s.trained:
        return 0.0
    own = times.get(f"train {name}")
    if not isinstance(own, int | float):
        return None
    deps = [_total_train_s(table, d, times) for d in needs(table, name)]
    return None if any(d is None for d in deps) else own + sum(deps)  # type: ignore[arg-type]


def serve_command(cfg: CompareConfig, out: Path, name: str) -> str:
    refs = Refs(cfg, cfg.table(), out / "runs")
    s = refs.table[name]
    if s.deploy:
        from distilltune.compare.strategies import DEPLOY

        artifact = deployed_file(export_config(cfg, out, name, refs))
        return (
            f"distilltune serve {shlex.quote(str(artifact))} --backend {DEPLOY[s.deploy][0]} "
            f"--task {shlex.quote(str(out / 'task'))}"
        )
    cmd = f"distilltune serve {shlex.quote(refs(name))} --task {shlex.quote(str(out / 'task'))}"
    if refs.is_student(name):
        # small model first; the fine-tuned teacher answers when the student is unsure
        fallback = out / "runs" / "teacher-lora"
        cmd += f" --fallback {shlex.quote(str(fallback if (fallback / 'adapter').exists() else cfg.teacher))}"
    return cmd


def _resolve_students(cfg: CompareConfig, view: Path, out: Path, log) -> dict[str, str]:
    """Bound student spec → the spec with measured layers, for every student the plan starts from.

    The comparison's own student keeps OUT/student_layers.json; any other (a custom strategy's
    ``teacher:n_layers=12``) gets its own measurement under OUT/students/<spec>/.
    """
    resolved = {}
    for spec in student_specs(cfg, cfg.table()):
        if spec == cfg.student_spec():
            resolved[spec] = resolve_student(cfg, view, out, log)
        else:
            where = out / "students" / re.sub(r"[^A-Za-z0-9=_-]+", "_", spec)
            where.mkdir(parents=True, exist_ok=True)
            resolved[spec] = resolve_student(cfg.model_copy(update={"student": spec}), view, where, log)
    return resolved


def _write_configs(
    out: Path, train_cfgs: dict, eval_cfgs: dict, table: dict[str, Strategy], export_cfgs: dict | None = None
) -> dict[str, str]:
    """configs/*.yaml for every stage, and the command that re-runs each one on its own."""
    commands: dict[str, str] = {}
    for name, xc in (export_cfgs or {}).items():
        path = out / "configs" / f"export-{name}.yaml"
        atomic_write_text(path, to_yaml(xc))
        commands[f"export {name}"] = _cli_config_command("export", path)
    for name, tc in train_cfgs.items():
        path = out / "configs" / f"train-{name}.yaml"
        atomic_write_text(path, to_yaml(tc))
        commands[f"train {name}"] = _cli_config_command(TRAINER[table[name].kind], path)
    for name, ec in eval_cfgs.items():
        path = out / "configs" / f"evaluate-{name}.yaml"
        atomic_write_text(path, to_yaml(ec))
        commands[f"evaluate {name}"] = _cli_config_command("evaluate", path)
    return commands


def _eval_state(output: Path) -> str:
    return "complete" if (output / "eval.json").exists() else "new"


def _export_state(output: Path) -> str:
    return "complete" if (output / "export.json").exists() else "new"


def _export_jobs(export_cfgs: dict, train_cfgs: dict, table: dict[str, Strategy], reporter) -> list:
    from distilltune.distill.orchestrate import Job

    jobs = []
    for n, xc in export_cfgs.items():
        src = table[n].model
        after = tuple(f"train {d}" for d in [src] if d in train_cfgs)
        jobs.append(Job(f"export {n}", "export", xc, Path(xc.output), needs=after, reporter=reporter(n)))
    return jobs


def _run_stages(
    cfg, out: Path, view: Path, train_cfgs: dict, eval_cfgs: dict, log, export_cfgs: dict | None = None
) -> dict[str, str]:
    """Train, export, then evaluate through the shared orchestrator; strategy → error of its first failed stage."""
    from distilltune.distill.orchestrate import Hooks, Job, Runner, run_jobs
    from distilltune.evaluation.evaluate import evaluate
    from distilltune.export.run import export_model

    export_cfgs = export_cfgs or {}

    table = cfg.table()
    refs = Refs(cfg, table, out / "runs")
    task = load_task(view)
    n_train, n_eval = len(task.train), len(task.eval) + len(task.scenarios) + len(task.adversarial)
    jobs = [
        Job(f"train {n}", TRAINER[table[n].kind], tc, Path(tc.output),
            needs=tuple(f"train {d}" for d in needs(table, n)), reporter=StageReporter(n, log))
        for n, tc in train_cfgs.items()
    ] + _export_jobs(export_cfgs, train_cfgs, table, lambda n: StageReporter(n, log)) + [
        Job(f"evaluate {n}", "evaluate", ec, Path(ec.output),
            needs=(f"train {n}",) if n in train_cfgs else (f"export {n}",) if n in export_cfgs else (),
            reporter=StageReporter(n, log))
        for n, ec in eval_cfgs.items()
    ]  # fmt: skip
    stages = []
    for job in jobs:
        action, name = job.name.split(" ", 1)
        weight = stage_weight(cfg, refs, name, action, n_train, n_eval, train_cfgs.get(name))
        stages.append(Stage(name, action, weight))
    progress = Progress(stages, log)

    def end(job: Job, outcome) -> None:
        stage = stages[jobs.index(job)]
        if outcome.error and not outcome.blocked_by:
            log(f"  {stage.strategy}: {stage.action} failed: {outcome.error}")
        if outcome.seconds:  # it ran (a skipped or blocked stage did not)
            times = _read_json(out / STAGE_TIMES)
            times[job.name] = times.get(job.name, 0.0) + outcome.seconds
            atomic_write_text(out / STAGE_TIMES, json.dumps(times, indent=2) + "\n")
        progress.end(stage, skipped=outcome.state == "complete")

    hooks = Hooks(
        begin=lambda i, job, state: progress.begin(i, stages[i - 1], skipped=state == "complete"),
        end=end,
        extra={
            "evaluate": Runner(lambda ec, resume, rep: evaluate(ec, log=rep.message), _eval_state),
            "export": Runner(lambda xc, resume, rep: export_model(xc), _export_state),
        },
    )
    outcomes = run_jobs(jobs, hooks, keep_going=True)
    errors: dict[str, str] = {}
    for job in jobs:  # a strategy's first failure is its error (training before evaluation)
        action, name = job.name.split(" ", 1)
        o = outcomes[job.name]
        if o.blocked_by and name not in errors:
            errors[name] = f"not trained: it needs {o.blocked_by.split(' ', 1)[1]}, which failed"
        elif o.error and name not in errors:
            errors[name] = f"{action} failed: {o.error}"
    return errors


def run_compare(cfg: CompareConfig, log: Callable[[str], None] | None = None) -> dict:
    """Run (or resume) the comparison described by ``cfg``; returns the report dict."""
    from distilltune.compare.report import build_report
    from distilltune.runtime import set_threads

    def _stderr(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    log = log or _stderr
    set_threads()
    task = load_task(cfg.task)  # fails fast, with every problem, on a bad task
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", to_yaml(cfg))
    view = prepare_view(cfg, out)
    students = _resolve_students(cfg, view, out, log)
    table = cfg.table()
    train_cfgs = training_configs(cfg, view, out, students)  # every config problem before any weight moves
    refs = Refs(cfg, table, out / "runs", students)
    eval_cfgs = {name: evaluate_config(cfg, view, out, name, refs) for name in cfg.strategies}
    export_cfgs = {n: export_config(cfg, out, n, refs) for n in cfg.strategies if table[n].deploy}
    commands = _write_configs(out, train_cfgs, eval_cfgs, table, export_cfgs)
    log(
        f"comparing {len(cfg.strategies)} strategies on {task.name!r} ({cfg.preset} preset): "
        f"{', '.join(cfg.strategies)}; output in {out}"
    )
    started = time.perf_counter()
    errors = _run_stages(cfg, out, view, train_cfgs, eval_cfgs, log, export_cfgs)
    teacher_answers = _eval_answers(out, "teacher") if "teacher" in cfg.strategies else {}
    results = [strategy_result(cfg, out, n, errors.get(n), commands, teacher_answers) for n in cfg.strategies]
    commands = {"compare (this report)": _cli_config_command("compare", out / "config.yaml"), **commands}
    report = build_report(results, effective_budgets(task.spec.budgets, cfg), task.name, out, commands)
    log(
        f"report: {out / 'report.html'} (also report.md, report.json) — total {Progress._fmt(time.perf_counter() - started)}"
    )
    return report
