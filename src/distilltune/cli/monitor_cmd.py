"""``distilltune monitor``: drift and health signals from the server's request log, with alerts for cron/CI."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from distilltune.cli.common import console, out
from distilltune.errors import UserError


def register(app: typer.Typer) -> None:
    @app.command("monitor")
    def monitor(
        db: Path = typer.Argument(
            ..., help="The request log distilltune serve writes (SQLite; --log-db there)."
        ),
        task: Path = typer.Option(
            ..., "--task", help="Task directory (training questions, knowledge, thresholds)."
        ),
        window: str = typer.Option(
            "1h", help="Window length: 30m, 1h, 1d, 1w ... (the latest window ends at the newest request)."
        ),
        since: str = typer.Option(
            None, help="Only the last DURATION of the log (e.g. 7d); default: all of it."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON on stdout."),
        html: Path = typer.Option(None, "--html", help="Write a self-contained HTML page here."),
        embedding_model: str = typer.Option(
            None, help="sentence-transformers model dir (default: the bundled all-MiniLM-L6-v2)."
        ),
    ) -> None:
        """Per-window traffic, route shares, confidence, latency, input/knowledge/output drift.

        Exits 1 when the latest window fires an alert (thresholds: the task card's monitoring: section),
        0 otherwise, 2 on bad input.
        """
        from distilltune.io import atomic_write_text
        from distilltune.monitor import parse_duration, render_html, run_monitor, summary_lines

        window_s = parse_duration(window, "--window")
        since_s = parse_duration(since, "--since") if since else None
        if html is not None and html.is_dir():
            raise UserError(f"{html}: --html must be a file path (it is a directory)")
        report = run_monitor(
            db, task, window_s, since_s, embedding_model=embedding_model,
            log=lambda m: console.print(f"[monitor] {m}", markup=False, highlight=False),
        )  # fmt: skip
        if html is not None:
            atomic_write_text(html, render_html(report))
            console.print(f"[monitor] page: {html}", markup=False, highlight=False)
        if as_json:
            out.print(json.dumps(report, indent=2, ensure_ascii=False), markup=False, highlight=False)
        else:
            for line in summary_lines(report):
                out.print(line, markup=False, highlight=False)
        if report["alerts"]:
            raise typer.Exit(1)
