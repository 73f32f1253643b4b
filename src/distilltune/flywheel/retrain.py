"""Retrain: run the recipe that produced the current model on the merged task version.

The recipe comes from one of two places, whichever the user has:

- a pipeline file (``distilltune run``): its ``${task}`` variable becomes the new version. Every
  step must train on ``${task}``; a step with the old task path written into it would silently
  train on the old data, so that is refused with the step's name;
- a training run directory: every run writes the config it ran with (``config.yaml``), so the
  current model's own run is a one-step pipeline with the task swapped (``student`` in the config
  makes it a distill step, ``model`` a fine-tune step). Its paths are used as recorded.

The resolved pipeline is written to ``retrain/v<N>-<key>/pipeline.yaml`` (what ran; ``distilltune
run`` re-runs it with the overrides in ``retrain.json``), and the steps train below it through the
same orchestrator as ``distilltune run``: a complete step is skipped, an interrupted one resumed.
The key digests the merge (its own digest of the reviewed items), the recipe and the overrides, so
re-running the flywheel trains nothing, while a changed review or recipe trains into a directory of
its own instead of resuming checkpoints of another recipe. The last step's output is the candidate
the gate evaluates.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path

import yaml

from distilltune.config import read_yaml
from distilltune.errors import UserError
from distilltune.io import write_if_changed

_STEP = re.compile(r"[^A-Za-z0-9_\-]+")


def _from_run_dir(run: Path) -> dict:
    """A one-step pipeline (as data) that re-runs ``run``'s recorded config on ``${task}``."""
    cfg_path = run / "config.yaml"
    if not cfg_path.is_file():
        raise UserError(
            f"{run}: not a training run (no config.yaml); --pipeline takes a pipeline file or the run "
            "directory of the current model"
        )
    cfg = read_yaml(cfg_path, "run config")
    kind = "distill" if "student" in cfg else "finetune" if "model" in cfg else None
    if kind is None:
        raise UserError(f"{cfg_path}: neither a distill config (student:) nor a fine-tune config (model:)")
    body = {k: v for k, v in cfg.items() if k != "output"} | {"task": "${task}"}
    moved = _migrate(body, _moved_keys(kind), cfg_path)
    name = _STEP.sub("-", run.resolve().name).strip("-") or "model"
    if not name[0].isalpha():
        name = f"run-{name}"
    note = f"; keys of an older version moved: {', '.join(moved)}" if moved else ""
    return {
        "name": f"retrain-{name}",
        "description": f"the recipe of {run}{note}",
        "steps": [{"name": name, kind: body}],
    }


def _moved_keys(kind: str) -> dict[str, str]:
    if kind == "distill":
        from distilltune.distill.config import DistillConfig as cls
    else:
        from distilltune.train.config import FinetuneConfig as cls
    return getattr(cls, "MOVED_KEYS", {})


def _migrate(body: dict, moved: dict[str, str], source: Path) -> list[str]:
    """Move keys a run recorded under an older version's name to today's (``MOVED_KEYS``), in place.

    A user's config with an old key is refused with its new place; a *recorded* config is what a run
    did, so its values carry over unchanged, only their names change. Returns ``old -> new`` notes.
    """
    notes = []
    for old, new in moved.items():
        *path, leaf = old.split(".")
        parent = body
        for k in path:
            parent = parent.get(k) if isinstance(parent, dict) else None
        if not isinstance(parent, dict) or leaf not in parent:
            continue
        value = parent.pop(leaf)
        *npath, nleaf = new.split(".")
        node = body
        for k in npath:
            node = node.setdefault(k, {})
        if nleaf in node and node[nleaf] != value:
            raise UserError(f"{source}: {old} ({value!r}) and {new} ({node[nleaf]!r}) disagree")
        node[nleaf] = value
        notes.append(f"{old} -> {new}")
    return notes


def resolve_recipe(source: str | Path, task_dir: Path) -> dict:
    """The retraining pipeline (as data) with ``vars.task`` set to the new version ``task_dir``."""
    src = Path(source)
    if src.is_dir():
        data = _from_run_dir(src)
    elif src.is_file():
        data = read_yaml(src, "pipeline")
        if not isinstance(data.get("vars", {}), dict):
            raise UserError(f"{src}: vars must be a mapping")
    else:
        raise UserError(f"{src}: --pipeline not found (a pipeline file or a training run directory)")
    data = dict(data)
    data["vars"] = {**(data.get("vars") or {}), "task": str(task_dir.resolve())}
    return data


def _check_steps(pipe, task_dir: Path, source: str) -> None:
    want = task_dir.resolve()
    for step in pipe.steps:
        if Path(step.config.task).resolve() != want:
            raise UserError(
                f"{source}: step {step.name!r} trains on {step.config.task}, not on the new version: "
                "write task: ${task} in the pipeline so the flywheel can swap the version in"
            )


def retrain(
    source: str | Path,
    overrides: list[str],
    merged: dict,
    out: Path,
    reporter=None,
    log: Callable[[str], None] = lambda m: None,
) -> dict:
    """Train the recipe of ``source`` on ``merged['task_dir']``; the candidate is the last step's run dir."""
    from distilltune.distill.pipeline import load_pipeline, run_pipeline
    from distilltune.train.progress import LineReporter

    task_dir = Path(merged["task_dir"])
    data = resolve_recipe(source, task_dir)
    recipe = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    blob = json.dumps([merged.get("digest"), recipe, list(overrides)])
    key = hashlib.sha256(blob.encode("utf-8")).hexdigest()[:10]
    rdir = out / "retrain" / f"v{merged['version']}-{key}"
    data["output"] = str(rdir.resolve())
    path = rdir / "pipeline.yaml"
    text = f"# written by distilltune flywheel from {source}\n" + yaml.safe_dump(
        data, sort_keys=False, allow_unicode=True
    )
    write_if_changed(path, text)
    pipe = load_pipeline(path, overrides)  # validated before anything trains
    _check_steps(pipe, task_dir, str(source))
    info = {"source": str(source), "pipeline": str(path), "overrides": list(overrides), "key": key,
            "version": merged["version"], "task_dir": str(task_dir)}  # fmt: skip
    write_if_changed(rdir / "retrain.json", json.dumps(info, indent=2) + "\n")
    log(f"retrain: {len(pipe.steps)} step(s) of {source} on {task_dir.name} -> {rdir}")
    outputs = run_pipeline(pipe, reporter=reporter or LineReporter(prefix="[retrain] "))
    last = pipe.steps[-1].name
    if last not in outputs:
        raise UserError(f"{path}: the pipeline stopped before its last step {last!r}; re-run to continue")
    info |= {"steps": {k: str(v) for k, v in outputs.items()}, "candidate": str(outputs[last])}
    # a re-run that trained nothing rewrites nothing (the bytes atomic_write_json would write)
    write_if_changed(rdir / "result.json", json.dumps(info, indent=2, ensure_ascii=False, default=str) + "\n")
    log(f"retrain: candidate {outputs[last]}")
    return info
