"""``distilltune task validate|show``: check a task card and describe it."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from distilltune.cli.common import CONFIG_OPT, OVERRIDES_ARG, PRINT_CONFIG_OPT, build_config, console, out
from distilltune.config import StrictModel
from distilltune.task import load_task


class TaskShowConfig(StrictModel):
    task: str
    tokenizer: str | None = "smollm2-135m-instruct"  # token statistics under this model's tokenizer
    json_output: bool = False


def register(app: typer.Typer) -> None:
    task_app = typer.Typer(help="Validate and inspect task cards.", no_args_is_help=True)
    app.add_typer(task_app, name="task")

    @task_app.command("validate")
    def validate(
        task: Path = typer.Argument(..., help="Task directory (task.yaml, train.jsonl, ...)."),
    ) -> None:
        """Check a task directory; print every problem as FILE:LINE: message (exit 2 if any)."""
        t = load_task(task)
        for w in t.warnings:
            console.print(f"  [yellow]{w}[/]")
        out.print(f"ok: {t.summary_line()}" + (f" ({len(t.warnings)} warnings)" if t.warnings else ""))

    @task_app.command("show")
    def show(
        task: Path = typer.Argument(..., help="Task directory."),
        tokenizer: str = typer.Option(
            None, help="Model whose tokenizer measures lengths (default: the bundled teacher)."
        ),
        json_output: bool = typer.Option(None, "--json", help="Print JSON instead of tables."),
        config: Path = CONFIG_OPT,
        print_config: bool = PRINT_CONFIG_OPT,
        overrides: list[str] = OVERRIDES_ARG,
    ) -> None:
        """Counts, token lengths, uncited knowledge documents, refusal share."""
        cfg = build_config(
            TaskShowConfig,
            config,
            {"task": str(task), "tokenizer": tokenizer, "json_output": json_output},
            overrides,
            print_config,
        )
        from distilltune.data.summary import task_summary
        from distilltune.models import load_tokenizer

        t = load_task(cfg.task)
        tok = load_tokenizer(cfg.tokenizer) if cfg.tokenizer else None
        s = task_summary(t, tok)
        if cfg.json_output:
            out.print(json.dumps(s, indent=2), markup=False)
            return
        out.print(t.summary_line())
        table = Table(title="token lengths" + (f" ({cfg.tokenizer} tokenizer)" if tok else ""))
        for col in ("", "min", "p50", "p95", "max"):
            table.add_column(col, justify="right")
        for split in ("train", "eval"):
            if "tokens" in s:
                for what in ("sequence", "answer"):
                    p = s["tokens"][split][what]
                    table.add_row(f"{split} {what}", *(str(p[k]) for k in ("min", "p50", "p95", "max")))
        if "tokens" in s:
            p = s["tokens"]["knowledge_doc"]
            table.add_row("knowledge doc", *(str(p[k]) for k in ("min", "p50", "p95", "max")))
            out.print(table)
        out.print(
            f"refusal share: train {s['refusal_share']['train']:.1%}, eval {s['refusal_share']['eval']:.1%}"
        )
        out.print(
            f"multi-turn share: train {s['multi_turn_share']['train']:.1%}, eval {s['multi_turn_share']['eval']:.1%}"
        )
        unc = s["uncited_knowledge"]
        out.print(f"knowledge documents no train/eval item cites: {', '.join(unc) if unc else 'none'}")
