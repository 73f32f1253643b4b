"""Progress reporting for training runs: a rich bar on a terminal, one line per log step otherwise.

The loop talks to a ``Reporter`` (``start`` / ``log`` / ``message`` / ``close``) and never prints
itself, so programmatic callers (``compare``) choose where output goes. ``make_reporter`` picks the
rich bar only when asked for progress and stdout is a terminal; CI logs get plain lines.
Optional TensorBoard logging lives here too: used only if ``tensorboard`` is importable.
"""

from __future__ import annotations

import sys
import time
from typing import Protocol, TextIO


class Reporter(Protocol):
    def start(self, total_steps: int, done_steps: int, header: str) -> None: ...
    def log(self, row: dict) -> None: ...
    def message(self, text: str) -> None: ...
    def close(self) -> None: ...


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def format_row(row: dict) -> str:
    """``step 12/40 loss 2.31 lr 1.9e-04 tok/s 512 eta 0:00:41``-style text of one metrics row."""
    if row.get("type") == "eval":
        keys = [k for k in row if k not in ("type", "step", "epoch", "elapsed_s")]
        return f"eval @ step {row['step']}: " + ", ".join(f"{k} {_fmt(row[k])}" for k in keys)
    parts = [f"step {row['step']}/{row.get('total_steps', '?')}"]
    for key, label in (("loss", "loss"), ("lr", "lr"), ("grad_norm", "gnorm"), ("tokens_per_s", "tok/s")):
        if key in row:
            v = row[key]
            parts.append(f"{label} {v:.2e}" if key == "lr" else f"{label} {_fmt(v)}")
    if "eta_s" in row:
        parts.append(f"eta {_hms(row['eta_s'])}")
    return "  ".join(parts)


def _hms(seconds: float) -> str:
    s = int(max(seconds, 0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class LineReporter:
    """One line per logged step or evaluation (CI, logs, ``--quiet``)."""

    def __init__(self, stream: TextIO | None = None, prefix: str = "[train] "):
        self.stream = stream or sys.stderr
        self.prefix = prefix

    def start(self, total_steps: int, done_steps: int, header: str) -> None:
        self.message(header)

    def log(self, row: dict) -> None:
        print(self.prefix + format_row(row), file=self.stream, flush=True)

    def message(self, text: str) -> None:
        print(self.prefix + text, file=self.stream, flush=True)

    def close(self) -> None:
        pass


class SilentReporter:
    def start(self, total_steps: int, done_steps: int, header: str) -> None:
        pass

    def log(self, row: dict) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class RichReporter:
    """A live bar: step, loss, learning rate, tokens/s, ETA; evaluations printed above it."""

    def __init__(self, console=None):
        from rich.console import Console

        self.console = console or Console(stderr=True, highlight=False)
        self.progress = None
        self.task = None

    def start(self, total_steps: int, done_steps: int, header: str) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console.print(header, markup=False)
        self.progress = Progress(
            TextColumn("train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[tps]} tok/s"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(
            "train", total=total_steps, completed=done_steps, loss="-", lr="-", tps="-"
        )

    def log(self, row: dict) -> None:
        if self.progress is None:
            return
        if row.get("type") == "eval":
            self.progress.console.print(format_row(row), markup=False)
            return
        self.progress.update(
            self.task,
            completed=row["step"],
            loss=f"{row['loss']:.4f}",
            lr=f"{row['lr']:.2e}",
            tps=f"{row.get('tokens_per_s', 0):.0f}",
        )

    def message(self, text: str) -> None:
        (self.progress.console if self.progress else self.console).print(text, markup=False)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def make_reporter(quiet: bool = False, stream: TextIO | None = None) -> Reporter:
    """Rich bar on an interactive terminal; plain lines when quiet or when stdout is not a TTY."""
    if quiet or not sys.stdout.isatty() or not sys.stderr.isatty():
        return LineReporter(stream)
    return RichReporter()


class TensorBoardLogger:
    """Scalars to ``OUT/tensorboard``; a no-op (with one message) when tensorboard is not installed."""

    def __init__(self, log_dir, reporter: Reporter | None = None):
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            if reporter is not None:
                reporter.message("train.tensorboard is on but tensorboard is not installed; skipping it")
            return
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, row: dict) -> None:
        if self.writer is None:
            return
        prefix = "eval/" if row.get("type") == "eval" else "train/"
        for k, v in row.items():
            if isinstance(v, int | float) and not isinstance(v, bool) and k not in ("step", "type"):
                self.writer.add_scalar(prefix + k, v, row["step"], walltime=time.time())

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
