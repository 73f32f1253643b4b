"""``distilltune distill`` (train a student from a teacher) and ``distilltune run PIPELINE.yaml`` (blends).

CLI-only concerns live here: the tuned-allocator re-exec and thread setup (see ``distilltune.runtime``),
progress output and the exit message. The work is ``distilltune.distill.distill.run_distill`` and
``distilltune.distill.pipeline.run_pipeline``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from distilltune.cli.common import CONFIG_OPT, OVERRIDES_ARG, PRINT_CONFIG_OPT, nested, out


def _loss_help() -> str:
    """The registered KD losses, from the registry (a registered loss appears here by itself)."""
    from distilltune.distill.kd_losses import loss_help

    return loss_help()


def register(app: typer.Typer) -> None:
    _register_distill(app)
    _register_run(app)


def _register_distill(app: typer.Typer) -> None:
    @app.command("distill")
    def distill(
        task: Path = typer.Option(None, "--task", help="Task directory (task.yaml, train.jsonl, ...)."),
        teacher: str = typer.Option(
            None,
            "--teacher",
            help="Teacher: built-in name, HF dir, run dir (e.g. a fine-tuned teacher), .gguf.",
        ),
        student: str = typer.Option(
            None,
            "--student",
            help="Student: a spec like teacher:n_layers=6 / teacher:layers=0,1,2,27,28,29, or a model with the same tokenizer.",
        ),
        output: Path = typer.Option(None, "--output", "-o", help="Run directory to write."),
        loss: str = typer.Option(
            None, "--loss", help=f"KD loss, sets kd.loss (default fkl). {_loss_help()}."
        ),
        mode: str = typer.Option(
            None, "--mode", help="cached | online | sequence | on-policy (default cached)."
        ),
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
        """Distill a teacher into a smaller student (logit KD, sequence-level or on-policy)."""
        from distilltune.config import to_yaml
        from distilltune.distill.distill import load_distill_config

        cli_values = {
            "task": str(task) if task else None,
            "teacher": teacher,
            "student": student,
            "output": str(output) if output else None,
            "mode": mode,
            **nested("kd", loss=loss),
        }
        cfg = load_distill_config(config, cli_values, overrides, resume=resume)
        if print_config:
            out.print(to_yaml(cfg), end="", markup=False)
            raise typer.Exit(0)
        from distilltune.runtime import ensure_fast_allocator, set_threads

        ensure_fast_allocator(quiet=quiet)
        threads = set_threads()
        from distilltune.distill.distill import run_distill
        from distilltune.train.progress import make_reporter

        reporter = make_reporter(quiet)
        reporter.message(f"{threads} threads")
        run_dir = run_distill(cfg, resume=resume, reporter=reporter)
        out.print(str(run_dir), markup=False)


def _register_run(app: typer.Typer) -> None:
    @app.command("run")
    def run(
        pipeline: Path = typer.Argument(
            ..., help="Pipeline YAML: steps (finetune / distill) with named outputs."
        ),
        quiet: bool = typer.Option(
            False, "--quiet", "-q", help="One line per log step instead of a progress bar."
        ),
        dry_run: bool = typer.Option(
            False, "--dry-run", help="Validate and print the resolved steps; train nothing."
        ),
        overrides: list[str] = OVERRIDES_ARG,
    ) -> None:
        """Run a blend pipeline (e.g. fine-tune the teacher, then distill the student from it).

        Steps whose outputs are complete are skipped; an interrupted step is resumed.
        """
        from distilltune.distill.pipeline import load_pipeline

        pipe = load_pipeline(pipeline, overrides or [])
        if dry_run:
            for step in pipe.steps:
                out.print(f"{step.name}: {step.kind} -> {step.output}", markup=False)
            return
        from distilltune.runtime import ensure_fast_allocator, set_threads

        ensure_fast_allocator(quiet=quiet)
        set_threads()
        from distilltune.distill.pipeline import run_pipeline
        from distilltune.train.progress import make_reporter

        outputs = run_pipeline(pipe, reporter=make_reporter(quiet))
        for name, path in outputs.items():
            out.print(f"{name}\t{path}", markup=False)
