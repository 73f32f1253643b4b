"""Distillation objectives for the shared training loop: ``objective(model, batch, step) -> (loss, metrics)``.

- ``CachedKD``  — the teacher's top-k + tail bucket from the memory-mapped cache (no teacher in memory);
- ``OnlineKD``  — the live teacher (eval mode, no grad), full-vocabulary loss, optional hidden-state term;
- ``OnPolicyKD`` (``distill.onpolicy``) wraps one of them and replaces a share of the batches by
  student-written answers that the live teacher scores.

Each takes the config's ``kd:`` section (``KDSettings``) as it is: loss, temperature, alpha, beta,
skew, positions and chunk size have one name and one default, the config's.

All of them project the student's hidden states to the vocabulary only at the distilled positions
(the answer tokens, or every token with ``positions="all"``; ``forward.kd_mask``) and chunk by chunk
(``losses.chunked_head_loss``), so neither model's full-vocabulary logits ever exist for the whole
batch. The loss is ``alpha·CE + (1 - alpha)·T²·D`` with CE averaged over the batch's answer tokens and
D over its distilled positions (``losses.mix_weights``; the loop weights micro-batches by answer
tokens); metrics ``kd`` and ``ce`` are logged separately.

With several processes (DDP, FSDP) the student must run through the prepared wrapper's ``forward``
(gradient-sync and unsharding hooks), so there the objective takes the wrapper's answer logits
([N, V] for the whole micro-batch) and chunks only the loss (``chunked_logits_loss``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from distilltune.data.chat import IGNORE_INDEX
from distilltune.distill.config import KDSettings
from distilltune.distill.losses import (
    chunked_head_loss,
    chunked_logits_loss,
    kd_loss,
    mix_weights,
    mix_with_ce,
    topk_kd_ce_with_grad,
)
from distilltune.errors import UserError
from distilltune.train.forward import AnswerStates, answer_states, kd_mask, unwrap

TeacherTerm = Callable[[torch.Tensor, int, int], torch.Tensor]  # (student logits chunk, start, end) → KD sum


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def student_states(
    net: nn.Module, batch: dict, output_hidden_states: bool = False, positions: str = "answer"
) -> AnswerStates:
    """The student's states at the distilled positions; through the DDP wrapper's forward when distributed."""
    if hasattr(net, "module") or _distributed():  # DDP / FSDP: keep the wrapper's forward hooks
        if output_hidden_states:
            raise UserError("hidden-state distillation is not supported with several processes yet")
        mask = kd_mask(batch["labels"], batch["attention_mask"], positions)
        logits, targets = net(batch["input_ids"], batch["attention_mask"], batch["labels"], mask)
        return AnswerStates(targets, logits=logits)
    return answer_states(
        unwrap(net),
        batch["input_ids"],
        batch["attention_mask"],
        batch["labels"],
        output_hidden_states,
        positions,
    )


def mixed_fn(targets: torch.Tensor, teacher_term: TeacherTerm, p: KDSettings, alpha: float):
    """A chunk function for ``chunked_head_loss``: alpha·CE + (1 - alpha)·KD, autograd for the gradient."""

    def fn(logits: torch.Tensor, s: int, e: int):
        kd = teacher_term(logits, s, e)
        if alpha > 0:
            ce = F.cross_entropy(logits.float(), targets[s:e], ignore_index=IGNORE_INDEX, reduction="sum")
        else:
            with torch.no_grad():
                ce = F.cross_entropy(logits.float(), targets[s:e], ignore_index=IGNORE_INDEX, reduction="sum")
        return mix_with_ce(kd, ce, alpha), {"kd": kd, "ce": ce}

    return fn


def kd_step(st: AnswerStates, make_fn: Callable[[float], Callable], p: KDSettings):
    """(loss, metrics) for one batch, chunked over positions.

    ``make_fn(alpha')`` builds the chunk function for the CE weight ``alpha'`` that, times the scale
    of ``mix_weights``, averages CE over the answer tokens and KD over the distilled positions.
    """
    n_ce, n_kd = st.n_labelled, st.n
    alpha, scale = mix_weights(p.alpha, n_ce, n_kd)
    fn = make_fn(alpha)
    stats: dict[str, torch.Tensor] = {}
    if st.hidden is not None:
        total = chunked_head_loss(st.hidden, st.weight, st.bias, fn, p.chunk_size, stats)
    else:
        total = chunked_logits_loss(st.logits, fn, p.chunk_size, stats)
    metrics = {k: float(v) / max(n_ce if k == "ce" else n_kd, 1) for k, v in stats.items()}
    metrics["answer_tokens"] = float(n_ce)
    if n_kd != n_ce:
        metrics["kd_positions"] = float(n_kd)
    return total * scale, metrics


class CachedKD:
    """KD against the cached teacher top-k (+ tail bucket); the teacher is never loaded."""

    def __init__(self, cache, params: KDSettings):
        self.cache = cache
        self.p = params

    def targets_for(self, batch: dict):
        tgt = self.cache.get(batch["index"].tolist())
        expected = kd_mask(batch["labels"], batch["attention_mask"], self.cache.positions).sum(1).tolist()
        if tgt.counts != expected:
            raise UserError(
                f"teacher cache {self.cache.path} does not match this batch's positions "
                f"(cached {tgt.counts}, batch {expected}); the cache was built for other data"
            )
        return tgt

    def __call__(self, net: nn.Module, batch: dict, step: int):
        st = student_states(net, batch, positions=self.cache.positions)  # the positions it stores
        tgt = self.targets_for(batch)
        dev = st.targets.device
        logp, ids, tail = tgt.logp.to(dev), tgt.ids.to(dev), tgt.tail.to(dev)
        p = self.p
        targets = st.targets

        def make_fn(alpha: float):
            def fn(logits, s, e):  # closed-form gradient: ~2x less elementwise work than autograd here
                value, kd, ce, grad = topk_kd_ce_with_grad(
                    logits,
                    logp[s:e],
                    ids[s:e],
                    tail[s:e],
                    targets[s:e],
                    loss=p.loss,
                    temperature=p.temperature,
                    beta=p.beta,
                    skew=p.skew,
                    alpha=alpha,
                )
                return value, {"kd": kd, "ce": ce}, grad

            return fn

        return kd_step(st, make_fn, p)


@dataclass
class HiddenTerm:
    weight: float
    kind: str
    pairs: list[tuple[int, int]]
    projection: nn.Module | None


class OnlineKD:
    """KD against the live teacher's full-vocabulary distribution (teacher frozen, eval mode)."""

    def __init__(self, teacher: nn.Module, params: KDSettings, hidden: HiddenTerm | None = None):
        self.teacher = teacher.eval()
        for q in self.teacher.parameters():
            q.requires_grad_(False)
        self.p = params
        self.hidden = hidden

    def teacher_states(self, batch: dict, positions: str) -> AnswerStates:
        with torch.no_grad():
            return answer_states(
                self.teacher,
                batch["input_ids"],
                batch["attention_mask"],
                batch["labels"],
                output_hidden_states=self.hidden is not None,
                positions=positions,
            )

    def loss(self, net: nn.Module, batch: dict, alpha: float | None = None, positions: str | None = None):
        """``alpha`` and ``positions`` override the configured ones (on-policy batches use 0 and answer)."""
        want_hidden = self.hidden is not None
        where = positions or self.p.positions
        st = student_states(net, batch, output_hidden_states=want_hidden, positions=where)
        tst = self.teacher_states(batch, where)
        p = self.p

        def term(logits, s, e):
            with torch.no_grad():
                t_logits = tst.logits_chunk(s, e)
            return kd_loss(
                logits,
                t_logits,
                loss=p.loss,
                temperature=p.temperature,
                beta=p.beta,
                skew=p.skew,
                reduction="sum",
            )

        if alpha is not None:
            p = p.model_copy(update={"alpha": alpha})
        loss, metrics = kd_step(st, lambda a: mixed_fn(st.targets, term, p, a), p)
        if want_hidden:
            from distilltune.distill.hidden import hidden_loss

            h = self.hidden
            hl = hidden_loss(st.layers, tst.layers, h.pairs, batch["attention_mask"], h.kind, h.projection)
            loss = loss + h.weight * hl
            metrics["hidden"] = float(hl.detach())
        return loss, metrics

    def __call__(self, net: nn.Module, batch: dict, step: int):
        return self.loss(net, batch)
