"""Shared CLI plumbing: the console, config resolution with overrides, clean error printing."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console

from distilltune.config import resolve_config, to_yaml
from distilltune.errors import UserError

console = Console(stderr=True, highlight=False)
out = Console(highlight=False, soft_wrap=True)
T = TypeVar("T", bound=BaseModel)

CONFIG_OPT = typer.Option(None, "--config", help="YAML file filling the command's typed config.")
PRINT_CONFIG_OPT = typer.Option(False, "--print-config", help="Print the resolved config as YAML and exit.")
OVERRIDES_ARG = typer.Argument(
    None, help="Dotted overrides like train.lr=1e-4 (applied last).", show_default=False
)


def build_config(
    cls: type[T],
    config: Path | None,
    cli_values: dict[str, Any],
    overrides: list[str] | None,
    print_config: bool = False,
) -> T:
    cfg = resolve_config(cls, config, cli_values, overrides or [])
    if print_config:
        out.print(to_yaml(cfg), end="", markup=False)
        raise typer.Exit(0)
    return cfg


def report_user_error(err: UserError) -> None:
    # The message is plain text: escaped, so an install line like `distilltune[gguf]` is not read as markup.
    # soft_wrap: the terminal wraps long lines; rich would insert newlines into paths and grep-able text.
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(err.message)}", markup=True, soft_wrap=True)
    for p in err.problems:
        style = "red" if p.severity == "error" else "yellow"
        console.print(f"  [{style}]{escape(str(p))}[/]", markup=True, soft_wrap=True)


def fail(message: str) -> None:
    raise UserError(message)


def nested(prefix: str, **values: Any) -> dict[str, Any]:
    """CLI options that map to a config section: nested("train", lr=...) → {"train": {"lr": ...}}."""
    vals = {k: v for k, v in values.items() if v is not None}
    return {prefix: vals} if vals else {}


def stdout_is_tty() -> bool:
    return sys.stdout.isatty()
