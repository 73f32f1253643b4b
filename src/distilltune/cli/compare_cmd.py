"""``distilltune compare`` (the main job) and ``distilltune demo`` (compare on the bundled example)."""

from __future__ import annotations

from pathlib import Path

import typer

from distilltune.cli.common import CONFIG_OPT, OVERRIDES_ARG, PRINT_CONFIG_OPT, build_config, console, out
from distilltune.errors import UserError

EXAMPLE = "acme-support"


def _example_task() -> Path:
    """The bundled example: ./examples/acme-support, else the one beside this source checkout."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[3]):
        p = root / "examples" / EXAMPLE
        if (p / "task.yaml").is_file():
            return p
    raise UserError(
        f"the bundled example examples/{EXAMPLE} was not found; pass a task: distilltune compare --task DIR"
    )


def _print_outcome(report: dict, output: Path) -> None:
    rec = report.get("recommendation") or {}
    out.print(f"report: {output / 'report.html'}")
    if rec.get("strategy"):
        out.print(f"recommendation: {rec['strategy']} — {rec.get('reason', '')}")
    else:
        out.print(f"no recommendation: {rec.get('reason', 'no strategy was evaluated successfully')}")
    if rec.get("serve_command"):
        out.print(f"serve it: {rec['serve_command']}")


def _print_samples(report: dict, output: Path, n: int = 3) -> None:
    """A few eval questions with the teacher's answer and the recommended strategy's (as saved, redacted)."""
    from distilltune.compare.run import eval_items

    teacher = eval_items(output, "teacher")
    rec = (report.get("recommendation") or {}).get("strategy")
    other = eval_items(output, rec) if rec and rec != "teacher" else {}
    shown = [r for r in teacher.values() if not r.get("expected_refusal")][:n]
    if not shown:
        return
    out.print("\nsample answers (eval items; full list in evals/<strategy>/items.jsonl):")
    for r in shown:
        question = next((m["content"] for m in reversed(r.get("prompt", [])) if m.get("role") == "user"), "")
        out.print(f"  Q: {question}", markup=False, highlight=False)
        out.print(f"    teacher: {' '.join(str(r.get('answer', '')).split())}", markup=False, highlight=False)
        if r["id"] in other:
            text = " ".join(str(other[r["id"]].get("answer", "")).split())
            out.print(f"    {rec}: {text}", markup=False, highlight=False)


def _run(cfg, samples: bool = False) -> None:
    from distilltune.compare.run import run_compare
    from distilltune.runtime import ensure_fast_allocator

    ensure_fast_allocator()
    report = run_compare(cfg, log=lambda m: console.print(m, markup=False, highlight=False))
    if samples:
        _print_samples(report, Path(cfg.output))
    _print_outcome(report, Path(cfg.output))


def register(app: typer.Typer) -> None:
    from distilltune.compare.config import CompareConfig

    @app.command("compare")
    def compare(
        task: Path = typer.Option(None, help="Task directory."),
        output: Path = typer.Option(None, "--output", "-o", help="Comparison directory (resumable)."),
        preset: str = typer.Option(
            None, help="quick (minutes, sampled data) or full (all data, more steps)."
        ),
        strategies: str = typer.Option(
            None,
            help="Comma-separated subset of: teacher, teacher-lora, student-ft, student-kd, "
            "student-kd-lora, student-seqkd and the config's custom_strategies (default: the preset's plus "
            "every custom strategy; quick leaves out student-kd-lora and student-seqkd; docs/compare.md).",
        ),
        teacher: str = typer.Option(None, help="Teacher model (default: smollm2-135m-instruct)."),
        student: str = typer.Option(
            None,
            help="Student spec (default: teacher:n_layers=6, keeping the layers with the most block "
            "influence on the task; student_layers=first-last keeps the first and last ones). Add mlp=0.5 "
            "or heads=0.67 to prune width too, by activations on the task: teacher:n_layers=12,mlp=0.5.",
        ),
        latency_budget: float = typer.Option(
            None, "--budget.latency_p95_ms", help="Override the task's p95 latency budget."
        ),
        concurrency: int = typer.Option(
            None,
            "--budget.concurrency",
            help="Requests in flight the latency budget holds at (also timed at this concurrency).",
        ),
        memory_budget: float = typer.Option(
            None, "--budget.memory_mb", help="Override the task's memory budget."
        ),
        quality_budget: float = typer.Option(
            None, "--budget.min_quality", help="Override the task's quality floor."
        ),
        config: Path = CONFIG_OPT,
        print_config: bool = PRINT_CONFIG_OPT,
        overrides: list[str] = OVERRIDES_ARG,
    ) -> None:
        """Train and evaluate every strategy side by side; recommend one under the budgets."""
        budgets = {
            k: v
            for k, v in (
                ("latency_p95_ms", latency_budget),
                ("concurrency", concurrency),
                ("memory_mb", memory_budget),
                ("min_quality", quality_budget),
            )
            if v is not None
        }
        values = {
            "task": str(task) if task else None,
            "output": str(output) if output else None,
            "preset": preset,
            "strategies": [s.strip() for s in strategies.split(",") if s.strip()] if strategies else None,
            "teacher": teacher,
            "student": student,
            "budgets": budgets or None,
        }
        cfg = build_config(CompareConfig, config, values, overrides, print_config)
        _run(cfg)

    @app.command("demo")
    def demo(
        output: Path = typer.Option(Path("demo-output"), "--output", "-o", help="Where the comparison goes."),
        preset: str = typer.Option(
            "quick",
            help="quick (about 15 minutes on 2 idle cores, first run included) or full (about 75 minutes).",
        ),
        print_config: bool = PRINT_CONFIG_OPT,
        overrides: list[str] = OVERRIDES_ARG,
    ) -> None:
        """Run the main job on the bundled example task (compare --preset quick) and print the recommendation."""
        values = {"task": str(_example_task()), "output": str(output), "preset": preset}
        cfg = build_config(CompareConfig, None, values, overrides, print_config)
        _run(cfg, samples=True)
