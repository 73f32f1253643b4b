"""Accelerate, bound once per run: the precision choice, collective finiteness checks, and the
FSDP2 parameter gathering that evaluation outside the prepared forward needs."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from distilltune.errors import UserError


def make_accelerator(precision: str = "auto"):
    """fp32 on CPU; bf16 autocast on a GPU that supports it; ``accelerate launch`` settings win on auto."""
    import os

    from accelerate import Accelerator

    if precision == "fp32":
        mixed = "no"
    elif precision == "bf16":
        mixed = "bf16"
    elif os.environ.get("ACCELERATE_MIXED_PRECISION"):
        mixed = None  # chosen by the accelerate config / launcher
    else:
        mixed = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    # Accelerate keeps one process-wide state and refuses a second Accelerator with another precision
    # (an fp32 run, then a bf16 run, in one process: compare, notebooks). The precision part of that
    # state is per run here; the process group (PartialState) is kept.
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    # On a machine without a GPU, Accelerate only forms a multi-process (gloo) group when told cpu=True.
    acc = Accelerator(mixed_precision=mixed, cpu=not torch.cuda.is_available())
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != acc.num_processes:
        raise UserError(
            f"launched as {launched} processes but Accelerate formed a group of {acc.num_processes}; "
            "every process would write the same run directory"
        )
    return acc


def _all_finite(value: torch.Tensor, accelerator) -> bool:
    ok = torch.isfinite(value.detach().float()).all().reshape(1).to(accelerator.device)
    if accelerator.num_processes > 1:
        ok = accelerator.reduce(ok.float(), reduction="sum") == accelerator.num_processes
    return bool(ok.all())


@contextmanager
def _full_params(net: nn.Module, sharded: bool):
    """Evaluation calls the raw model, outside the prepared wrapper's forward; under FSDP2 the
    wrapper's own (root) parameters must be gathered first (decoder layers gather themselves)."""
    unshard = getattr(net, "unshard", None) if sharded else None
    if unshard is None:
        yield
        return
    unshard()
    try:
        yield
    finally:
        net.reshard()
