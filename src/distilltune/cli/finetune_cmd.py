"""``distilltune finetune`` (train a model on a task) and ``distilltune merge`` (fold a LoRA into its base).

CLI-only concerns live here: the tuned-allocator re-exec and thread setup (1.4-2.2x on CPU, see
``distilltune.runtime``), the choice between a rich progress bar and one line per step, and the exit
message. The work itself is ``distilltune.train.finetune.run_finetune``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from distilltune.cli.common import CONFIG_OPT, OVERRIDES_ARG, PRINT_CONFIG_OPT, console, out


def register(app: typer.Typer) -> None:
    @app.command("finetune")
    def finetune(
        task: Path = typer.Option(None, "--task", help="Task directory (task.yaml, train.jsonl, ...)."),
        model: str = typer.Option(
            None, "--model", help="Model: built-in name, HF dir, run dir, .gguf, or student spec."
        ),
        method: str = typer.Option(
            None, "--method", help="full | lora | adapter | prefix | ia3 (default lora)."
        ),
        output: Path = typer.Option(None, "--output", "-o", help="Run directory to write."),
        resume: bool = typer.Option(
            False, "--resume", help="Continue an interrupted run from its last checkpoint."
        ),
        quiet: bool = typer.Option(
            False, "--quiet", "-q", help="One line per log step instead of a progress bar."
        ),
        config: Path = CONFIG_OPT,
        print_config: bool = PRINT_CONFIG_OPT,
        overrides: list[str] = OVERRIDES_ARG,
    ) -> None:
        """Fine-tune a model on a task (full, LoRA, bottleneck adapter, prefix tuning or IA3)."""
        from distilltune.config import to_yaml
        from distilltune.train.finetune import load_finetune_config

        cli_values = {
            "task": str(task) if task else None,
            "model": model,
            "method": method,
            "output": str(output) if output else None,
        }
        cfg = load_finetune_config(config, cli_values, overrides, resume=resume)
        if print_config:
            out.print(to_yaml(cfg), end="", markup=False)
            raise typer.Exit(0)
        from distilltune.runtime import ensure_fast_allocator, set_threads

        ensure_fast_allocator(quiet=quiet)
        set_threads()
        from distilltune.train.finetune import run_finetune
        from distilltune.train.progress import make_reporter

        reporter = make_reporter(quiet)
        run_dir = run_finetune(cfg, resume=resume, reporter=reporter)
        out.print(str(run_dir), markup=False)

    @app.command("merge")
    def merge(
        adapter: Path = typer.Argument(..., help="A LoRA/IA3 adapter dir, or a run dir with adapter/."),
        output: Path = typer.Option(..., "--output", "-o", help="Directory for the merged model."),
    ) -> None:
        """Merge a LoRA (or IA3) adapter into its base model and save a plain transformers model."""
        from distilltune.runtime import set_threads
        from distilltune.train.merge import merge_adapter

        set_threads()
        merged = merge_adapter(adapter, output)
        console.print(f"merged {adapter} into {merged}", markup=False)
        out.print(str(merged), markup=False)
