"""``distilltune flywheel``: turn production failures into reviewed training data, then gate the retrained model."""

from __future__ import annotations

from pathlib import Path

import typer

from distilltune.cli.common import console, out


def _settings(min_confidence: float, heldout: float, max_items: int, max_new_tokens: int):
    """The options as FlywheelSettings; a bad value is named by its option, not its field."""
    from pydantic import ValidationError

    from distilltune.errors import UserError
    from distilltune.flywheel import FlywheelSettings

    try:
        return FlywheelSettings(
            min_confidence=min_confidence, heldout_share=heldout, max_items=max_items,
            max_new_tokens=max_new_tokens,
        )  # fmt: skip
    except ValidationError as e:
        names = {
            "heldout_share": "--heldout",
            "max_items": "--max-items",
            "max_new_tokens": "--max-new-tokens",
        }
        msgs = [f"{names.get(str(x['loc'][0]), x['loc'][0])}: {x['msg']}" for x in e.errors()]
        raise UserError("invalid option: " + "; ".join(msgs)) from None


def flywheel(
    db: Path = typer.Argument(..., help="The request log distilltune serve writes (SQLite; --log-db there)."),
    task: Path = typer.Option(..., "--task", help="The task directory the served model was trained on."),
    output: Path = typer.Option(..., "--output", help="Review directory (created; re-runs resume in it)."),
    teacher: str = typer.Option(None, "--teacher", help="Model that labels the harvested questions."),
    decisions: Path = typer.Option(
        None, "--decisions", help="decisions.json exported by review.html: written into review.jsonl."
    ),
    merge_now: bool = typer.Option(
        False, "--merge", help="Merge now even if some items are undecided (they are left out)."
    ),
    candidate: str = typer.Option(None, "--candidate", help="Retrained model to gate (needs --current)."),
    current: str = typer.Option(None, "--current", help="The model serving now."),
    pipeline: Path = typer.Option(
        None,
        "--pipeline",
        help="Retrain after merging: a pipeline file (its ${task} becomes the new version) or the "
        "current model's run directory (its config.yaml, task swapped); the result is the gate's candidate.",
    ),
    pipeline_set: list[str] = typer.Option(
        None,
        "--set",
        help="Override in the retraining pipeline, as for distilltune run: STEP.train.max_steps=20.",
    ),
    min_confidence: float = typer.Option(-1.5, help="Harvest student answers below this mean log-prob."),
    heldout: float = typer.Option(0.3, help="Share of items kept back for the gate's failures set."),
    max_items: int = typer.Option(500, help="Harvest at most this many distinct questions."),
    max_new_tokens: int = typer.Option(128, help="Cap on each teacher answer and each gate answer."),
    ood: bool = typer.Option(
        True, "--ood/--no-ood", help="Also harvest out-of-distribution questions (bundled MiniLM)."
    ),
    embedding_model: str = typer.Option(None, help="sentence-transformers dir for --ood (default: bundled)."),
) -> None:
    """Harvest → label → review → merge → gate; each call advances as far as it can (docs/flywheel.md).

    Exit status: 0, or 1 when the gate ran and keeps the current model; 2 on bad input.
    """
    if pipeline is not None:
        from distilltune.runtime import ensure_fast_allocator, set_threads

        ensure_fast_allocator(quiet=True)  # training: re-exec once with the tuned malloc
        set_threads()

    from distilltune.flywheel import run_flywheel

    settings = _settings(min_confidence, heldout, max_items, max_new_tokens)
    embedder = None
    if ood:
        from distilltune.retrieval.embed import load_embedder

        embedder = load_embedder(embedding_model)
    state = run_flywheel(
        db, task, output, teacher=teacher, decisions=decisions, merge_now=merge_now,
        candidate=candidate, current=current, settings=settings, embedder=embedder,
        log=lambda m: console.print(f"[flywheel] {m}", markup=False, highlight=False),
        pipeline=pipeline, pipeline_overrides=pipeline_set or [],
    )  # fmt: skip
    out.print(f"status: {state['status']}", markup=False, highlight=False)
    if "gate" in state:
        for line in state["gate"]["why"]:
            out.print(f"  {line}", markup=False, highlight=False)
        if not state["gate"]["promote"]:
            raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("flywheel")(flywheel)
