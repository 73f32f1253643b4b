"""Resumable checkpoints: ``OUT/checkpoints/step-N/``, complete or absent.

A checkpoint holds the trainable weights (safetensors), optimizer and scheduler state, every
process's RNG states (under FSDP / DeepSpeed: Accelerate's sharded ``save_state`` instead) (torch.save, read back with ``weights_only=True``) and ``state.json`` (step,
data position, best metric so far, early-stopping counter). It is assembled in a hidden staging
directory and renamed into place as the last act, so a run killed at any instant (SIGKILL included)
never leaves a directory that looks complete; ``latest_checkpoint`` only sees complete ones.

Only trainable parameters are stored (all of them for full fine-tuning, the adapter for PEFT
methods): the frozen base is re-created from the model reference on resume.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from distilltune.errors import UserError
from distilltune.io import atomic_write_json

CHECKPOINTS = "checkpoints"
WEIGHTS = "trainable.safetensors"
STATE = "state.json"
_STEP_RE = re.compile(r"^step-(\d+)$")


def checkpoint_root(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir() and (p / STATE).is_file():
            found.append((int(m[1]), p))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1][1] if ckpts else None


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter that requires a gradient (tied parameters once), as contiguous CPU tensors."""
    return {
        name: p.detach().to("cpu").contiguous() for name, p in model.named_parameters() if p.requires_grad
    }


def load_trainable_weights(model: nn.Module, path: Path) -> None:
    """Copy a checkpoint's trainable weights into ``model`` in place; every trainable name must match."""
    state = load_file(str(Path(path) / WEIGHTS))
    params = dict(model.named_parameters())
    wanted = {n for n, p in params.items() if p.requires_grad}
    missing, unexpected = wanted - state.keys(), state.keys() - params.keys()
    if missing or unexpected:
        raise UserError(
            f"{path}: checkpoint does not fit the model (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]}); was the run's config changed?"
        )
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))


def capture_rng() -> dict:
    np_state = np.random.get_state()
    out = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: nn.Module,
    optimizer,
    scheduler,
    state: dict,
    accelerator,
    sharded: bool = False,
) -> Path:
    """Write ``checkpoints/step-{step}`` atomically (collective: every process must call it).

    ``sharded`` (FSDP, DeepSpeed): weights, optimizer and RNG go through ``accelerator.save_state``,
    which writes each process's shard; the directory is still staged and renamed as a whole.
    """
    root = checkpoint_root(run_dir)
    final = root / f"step-{step}"
    staging = root / f".step-{step}.staging"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    if sharded:
        accelerator.save_state(str(staging / "accelerate"), safe_serialization=True)
    else:
        torch.save(capture_rng(), staging / f"rng-{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if not sharded:
            save_file(trainable_state(model), str(staging / WEIGHTS))
            torch.save(optimizer.state_dict(), staging / "optimizer.pt")
        torch.save(scheduler.state_dict(), staging / "scheduler.pt")
        atomic_write_json(staging / STATE, {**state, "step": step, "world_size": accelerator.num_processes})
        _fsync_dir(staging)
        if final.exists():  # re-saving a step (e.g. after resuming from it): replace it
            old = root / f".step-{step}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(staging, final)
        _fsync_dir(root)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(
    path: Path, model: nn.Module, optimizer, scheduler, accelerator, sharded: bool = False
) -> dict:
    """Restore weights, optimizer, scheduler and this process's RNG; return ``state.json``."""
    state = json.loads((path / STATE).read_text())
    if state.get("world_size", 1) != accelerator.num_processes:
        raise UserError(
            f"{path}: written by {state.get('world_size')} processes, resuming with "
            f"{accelerator.num_processes}; resume with the same launch configuration"
        )
    if sharded:
        accelerator.load_state(str(path / "accelerate"))
    else:
        load_trainable_weights(model, path)
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"))
        restore_rng(torch.load(path / f"rng-{accelerator.process_index}.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    return state


def prune_checkpoints(run_dir: Path, keep_last: int, best_step: int | None) -> None:
    """Keep the newest ``keep_last`` checkpoints plus the best one; remove the rest and stale staging dirs."""
    ckpts = list_checkpoints(run_dir)
    keep = {s for s, _ in ckpts[-keep_last:]}
    if best_step is not None:
        keep.add(best_step)
    for s, p in ckpts:
        if s not in keep:
            shutil.rmtree(p, ignore_errors=True)


def remove_stale_staging(run_dir: Path) -> None:
    root = checkpoint_root(run_dir)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".") and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
