"""One orchestrator for multi-run jobs: skip what is complete, resume what was interrupted, dispatch by kind.

``distilltune run`` (blend pipelines, ``distill.pipeline``) and ``compare`` both run a list of jobs
whose outputs feed later jobs. Both must behave the same when re-run after an interruption: a job
whose output is complete is skipped, one with a config or checkpoints in its output resumes, the
rest start fresh. A job's ``kind`` picks its runner from ``RUNNERS`` (``finetune``, ``distill``);
a caller adds its own kinds (``compare`` adds ``evaluate``) through ``extra_runners``.

It lives in ``distill`` because it dispatches to both trainers (``train.finetune`` and
``distill.distill``) and ``compare`` sits above ``distill``.

With ``keep_going`` a failed job is recorded and the jobs that need it are not run (``compare``:
one failed strategy must not sink the comparison); without it the error propagates (a pipeline
stops at its first failure). A ``UserError`` always propagates: it is the user's to fix.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from distilltune.errors import UserError

State = Literal["complete", "interrupted", "new"]


def training_state(output: Path) -> State:
    """A training run dir: complete (marker written last), interrupted (config or checkpoints), or new."""
    from distilltune.train.artifacts import is_complete
    from distilltune.train.checkpoint import list_checkpoints

    if is_complete(output):
        return "complete"
    if (output / "config.yaml").exists() or list_checkpoints(output):
        return "interrupted"
    return "new"


def _finetune(config, resume: bool, reporter) -> Path:
    from distilltune.train.finetune import run_finetune

    return run_finetune(config, resume=resume, reporter=reporter)


def _distill(config, resume: bool, reporter) -> Path:
    from distilltune.distill.distill import run_distill

    return run_distill(config, resume=resume, reporter=reporter)


@dataclass(frozen=True)
class Runner:
    """How a kind of job runs (config, resume, reporter → output) and how its output's state is read."""

    run: Callable[[Any, bool, Any], Any]
    state: Callable[[Path], State] = training_state


RUNNERS: dict[str, Runner] = {"finetune": Runner(_finetune), "distill": Runner(_distill)}


@dataclass
class Job:
    name: str
    kind: str  # a key of RUNNERS (or of the caller's extra runners)
    config: Any
    output: Path
    needs: tuple[str, ...] = ()  # jobs that must have succeeded first
    reporter: Any = None  # progress sink for the runner (default: the orchestrator's)
    stop_after: str | None = None  # after running, stop the whole list with this message


@dataclass
class Outcome:
    state: State  # the output's state before the job ran
    output: Path | None = None
    error: str | None = None
    seconds: float = 0.0  # time spent running it (0 when skipped or blocked)
    blocked_by: str | None = None  # the failed job it needed (it did not run)


@dataclass
class Hooks:
    """What a caller sees: ``begin(i, job, state)`` before a job, ``end(job, outcome)`` after it."""

    begin: Callable[[int, Job, State], None] = lambda i, job, state: None
    end: Callable[[Job, Outcome], None] = lambda job, outcome: None
    message: Callable[[str], None] = lambda text: None
    extra: dict[str, Runner] = field(default_factory=dict)


def run_jobs(
    jobs: list[Job], hooks: Hooks | None = None, keep_going: bool = False, reporter=None
) -> dict[str, Outcome]:
    """Run ``jobs`` in order (skip complete, resume interrupted); job name → outcome."""
    hooks = hooks or Hooks()
    runners = {**RUNNERS, **hooks.extra}
    done: dict[str, Outcome] = {}
    for i, job in enumerate(jobs, start=1):
        runner = runners[job.kind]
        state = runner.state(job.output)
        failed = next((d for d in job.needs if d in done and done[d].error), None)
        hooks.begin(i, job, state)
        outcome = done[job.name] = Outcome(state)
        if state == "complete":
            outcome.output = job.output
        elif failed is not None:
            outcome.error, outcome.blocked_by = f"not run: it needs {failed}, which failed", failed
        else:
            t0 = time.perf_counter()
            try:
                result = runner.run(job.config, state == "interrupted", job.reporter or reporter)
                outcome.output = Path(result) if isinstance(result, str | Path) else job.output
            except UserError:
                raise
            except Exception as e:
                if not keep_going:
                    raise
                outcome.error = f"{type(e).__name__}: {e}"
            finally:
                outcome.seconds = time.perf_counter() - t0
                hooks.end(job, outcome)
        if state == "complete" or failed is not None:
            hooks.end(job, outcome)
        if job.stop_after and state != "complete" and outcome.error is None:
            hooks.message(job.stop_after)
            break
    return done
