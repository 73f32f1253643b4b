"""The KD loss registry: every divergence a distillation can minimise, with its card text and CLI help.

Why a registry: a loss is used by the config check (``kd.loss`` must name a registered loss, checked
before any weight is loaded), the objectives (through ``divergence``), the model card (``describe``)
and the CLI help (``help``). One entry holds all four, so adding a loss is one ``register_loss`` call
and nothing can be forgotten until after training.

A loss function takes per-position log-probabilities of the student (``q``) and the teacher (``p``),
shapes [..., V] (or [..., k+1] cached buckets), and the loss settings of ``kd:`` as keywords
(``beta``, ``skew``; a loss ignores those it does not use), and returns the divergence per position,
[...], summed over the last dim. Inputs are already floored at ``LOG_FLOOR``, so a zero-probability
entry is finite. Temperature, the T² scale, the label cross-entropy and chunking are applied around
it (``distill.losses``), the same for every loss; the cached top-k path differentiates it with
autograd on the small bucket problem, so any differentiable function works there too.

Built in, with ``p`` = teacher, ``q`` = student:

- ``fkl``  forward KL  KL(p‖q) (mode-covering, the classic Hinton KD);
- ``rkl``  reverse KL  KL(q‖p) (mode-seeking, MiniLLM);
- ``jsd``  generalised Jensen-Shannon (GKD, Agarwal et al. 2024):
  β·KL(p‖m) + (1-β)·KL(q‖m) with m = β·p + (1-β)·q; β=0 is forward KL and β=1 reverse KL,
  exactly as ``trl.experimental.gkd.GKDTrainer.generalized_jsd_loss`` defines it;
- ``skl``  skew forward KL  KL(p‖α·p + (1-α)·q)  (DistiLLM, skew α);
- ``srkl`` skew reverse KL  KL(q‖α·q + (1-α)·p);
- ``tvd``  total variation  ½·Σ|p - q|.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the registry is read by configs and the CLI; only the losses themselves need torch
    import torch

LOG_FLOOR = -1.0e4  # exp(LOG_FLOOR) == 0 in float32: "impossible", but finite (no inf * 0 = NaN)

LossFn = Callable[..., "torch.Tensor"]  # (student_logp, teacher_logp, *, beta, skew) -> per-position [...]


@dataclass(frozen=True)
class KDLoss:
    """One registered loss: its function, its model-card text (from the ``kd`` settings), its CLI help."""

    name: str
    fn: LossFn
    describe: Callable[[Any], str]  # kd settings (loss, beta, skew, ...) -> e.g. "generalised JSD (β=0.5)"
    help: str  # one line for ``distilltune distill --help`` and the docs


KD_LOSSES: dict[str, KDLoss] = {}


def register_loss(name: str, fn: LossFn, describe: str | Callable[[Any], str], help: str) -> KDLoss:
    """Add a loss under ``name`` (``describe`` may be fixed text); it is then valid as ``kd.loss``."""
    if name in KD_LOSSES:
        raise ValueError(f"a KD loss named {name!r} is already registered")
    entry = KDLoss(name, fn, describe if callable(describe) else (lambda _kd, text=describe: text), help)
    KD_LOSSES[name] = entry
    return entry


def get_loss(name: str) -> KDLoss:
    try:
        return KD_LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(KD_LOSSES)}") from None


def loss_help() -> str:
    """``name: help`` of every registered loss, for the CLI."""
    return "; ".join(f"{e.name}: {e.help}" for e in KD_LOSSES.values())


def divergence(
    student_logp: torch.Tensor,
    teacher_logp: torch.Tensor,
    loss: str = "fkl",
    beta: float = 0.5,
    skew: float = 0.1,
) -> torch.Tensor:
    """Per-position divergence between two distributions given as log-probabilities.

    student_logp, teacher_logp: [..., V] (normalised over the last dim). Returns [...].
    ``beta`` is the JSD interpolation (0 = forward KL, 1 = reverse KL); ``skew`` is DistiLLM's α.
    """
    fn = get_loss(loss).fn
    return fn(student_logp.clamp(min=LOG_FLOOR), teacher_logp.clamp(min=LOG_FLOOR), beta=beta, skew=skew)


def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p‖q) per position from log-probabilities [..., V] → [...]."""
    return (logp.exp() * (logp - logq)).sum(-1)


def _log_mix(logp: torch.Tensor, logq: torch.Tensor, w: float) -> torch.Tensor:
    """log(w·p + (1-w)·q), computed in log space; w in (0, 1)."""
    return (logp + math.log(w)).logaddexp(logq + math.log1p(-w))


def _fkl(q: torch.Tensor, p: torch.Tensor, **_: float) -> torch.Tensor:
    return _kl(p, q)


def _rkl(q: torch.Tensor, p: torch.Tensor, **_: float) -> torch.Tensor:
    return _kl(q, p)


def _jsd(q: torch.Tensor, p: torch.Tensor, *, beta: float = 0.5, **_: float) -> torch.Tensor:
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"jsd beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        return _kl(p, q)
    if beta == 1.0:
        return _kl(q, p)
    m = _log_mix(p, q, beta)
    return beta * _kl(p, m) + (1.0 - beta) * _kl(q, m)


def _check_skew(skew: float) -> None:
    if not 0.0 <= skew < 1.0:
        raise ValueError(f"skew alpha must be in [0, 1), got {skew}")


def _skl(q: torch.Tensor, p: torch.Tensor, *, skew: float = 0.1, **_: float) -> torch.Tensor:
    _check_skew(skew)
    return _kl(p, q) if skew == 0.0 else _kl(p, _log_mix(p, q, skew))


def _srkl(q: torch.Tensor, p: torch.Tensor, *, skew: float = 0.1, **_: float) -> torch.Tensor:
    _check_skew(skew)
    return _kl(q, p) if skew == 0.0 else _kl(q, _log_mix(q, p, skew))


def _tvd(q: torch.Tensor, p: torch.Tensor, **_: float) -> torch.Tensor:
    return 0.5 * (p.exp() - q.exp()).abs().sum(-1)


register_loss("fkl", _fkl, "forward KL", "forward KL(teacher‖student), mode-covering (default)")
register_loss("rkl", _rkl, "reverse KL", "reverse KL(student‖teacher), mode-seeking")
register_loss(
    "jsd",
    _jsd,
    lambda kd: f"generalised JSD (β={kd.beta})",
    "generalised Jensen-Shannon, kd.beta interpolates",
)
register_loss("skl", _skl, lambda kd: f"skew forward KL (α={kd.skew})", "skew forward KL (DistiLLM), kd.skew")
register_loss(
    "srkl", _srkl, lambda kd: f"skew reverse KL (α={kd.skew})", "skew reverse KL (DistiLLM), kd.skew"
)
register_loss("tvd", _tvd, "total variation", "total variation distance")

BUILTIN_LOSSES: tuple[str, ...] = tuple(KD_LOSSES)
