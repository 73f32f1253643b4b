"""``distilltune guard TASK "text"``: what the policy guard decides about one input (or output)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Literal

import typer

from distilltune.cli.common import CONFIG_OPT, OVERRIDES_ARG, PRINT_CONFIG_OPT, build_config, out
from distilltune.config import StrictModel
from distilltune.errors import UserError
from distilltune.policy.guard import GuardConfig


class GuardCmdConfig(StrictModel):
    task: str
    side: Literal["input", "output"] = "input"
    guard: GuardConfig = GuardConfig()
    json_output: bool = False


def register(app: typer.Typer) -> None:
    @app.command("guard")
    def guard_cmd(
        task: Path = typer.Argument(..., help="Task directory (its policy.yaml and system prompt apply)."),
        text: str = typer.Argument(..., help="Text to check; '-' reads it from standard input."),
        output_side: bool = typer.Option(
            None, "--output", help="Check it as a model answer (leak, refusal, PII) instead of a user input."
        ),
        json_output: bool = typer.Option(None, "--json", help="Print the decision as JSON."),
        config: Path = CONFIG_OPT,
        print_config: bool = PRINT_CONFIG_OPT,
        overrides: list[str] = OVERRIDES_ARG,
    ) -> None:
        """Print the guard's decision: action, risk, reasons, redacted text and flagged spans.

        The original text is never echoed: only its redacted form and span offsets are printed.
        """
        cfg = build_config(
            GuardCmdConfig,
            config,
            {"task": str(task), "json_output": json_output, "side": "output" if output_side else None},
            overrides,
            print_config,
        )
        from distilltune.policy import Guard
        from distilltune.task import load_task

        if text == "-":
            text = sys.stdin.read().rstrip("\n")
        if not text.strip():
            raise UserError("the text to check is empty")
        t = load_task(cfg.task)
        guard = Guard.for_task(t, cfg.guard)
        decision = guard.check_input(text) if cfg.side == "input" else guard.check_output(text)
        if cfg.json_output:
            payload = {"side": cfg.side, **decision.to_dict()}
            out.print(json.dumps(payload, indent=2, ensure_ascii=False), markup=False)
            return
        if guard.calibration is not None:
            out.print(guard.calibration.line(), markup=False)
        out.print(f"action: {decision.action}   risk: {decision.risk:.2f}", markup=False)
        out.print(f"reasons: {', '.join(decision.reasons) if decision.reasons else 'none'}", markup=False)
        out.print(f"redacted: {decision.redacted_text}", markup=False)
        for s in decision.spans:
            out.print(f"  span {s.start}-{s.end}: {s.kind} ({s.label})", markup=False)
        if decision.refused:
            out.print(f"reply: {guard.refusal_message}", markup=False)
