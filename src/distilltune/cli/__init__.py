"""The ``distilltune`` command line (typer + rich).

Each pipeline stage registers its commands from its own module here, so the top-level help lists
only commands that exist. A ``UserError`` anywhere prints a clean message and exits 2.
"""

from __future__ import annotations

import sys

import typer

from distilltune.cli import (
    ab_cmd,
    compare_cmd,
    distill_cmd,
    evaluate_cmd,
    export_cmd,
    finetune_cmd,
    flywheel_cmd,
    generate_cmd,
    guard_cmd,
    index_cmd,
    monitor_cmd,
    serve_cmd,
    task_cmd,
)
from distilltune.cli.common import report_user_error
from distilltune.errors import UserError

app = typer.Typer(
    name="distilltune",
    help="Distill, fine-tune, or both: measure the strategies on your task, pick one under your budgets, serve it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)

task_cmd.register(app)
generate_cmd.register(app)
evaluate_cmd.register(app)
finetune_cmd.register(app)
distill_cmd.register(app)
serve_cmd.register(app)
index_cmd.register(app)
guard_cmd.register(app)
compare_cmd.register(app)
monitor_cmd.register(app)
flywheel_cmd.register(app)
ab_cmd.register(app)
export_cmd.register(app)


def _quiet_libraries() -> None:
    """Library progress bars and advisory warnings drown our own progress output."""
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning)


def main() -> None:
    _quiet_libraries()
    try:
        app()
    except UserError as e:
        report_user_error(e)
        sys.exit(2)
    except KeyboardInterrupt:
        print(
            "\ninterrupted; completed checkpoints and outputs are kept (re-run with --resume)",
            file=sys.stderr,
        )
        sys.exit(130)
