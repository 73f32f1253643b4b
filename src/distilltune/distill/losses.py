"""Knowledge-distillation losses as pure functions of tensors.

Shapes: ``N`` positions (the distillation positions of a batch, already gathered: every real token
by default, ``positions: answer`` for the answer tokens only), ``V`` vocabulary,
``k`` cached teacher entries per position, ``H`` hidden width.

The divergences themselves (``fkl``, ``rkl``, ``jsd``, ``skl``, ``srkl``, ``tvd`` and any loss a user
registers) live in the registry ``distill.kd_losses``; ``divergence`` looks the name up there.

Temperature T divides both sides' logits and the divergence is multiplied by T² so gradient
magnitudes stay comparable across temperatures (Hinton et al.). The cross-entropy on the labels is
mixed in with weight ``alpha``: loss = alpha·CE + (1 - alpha)·T²·D.

Memory: ``chunked_head_loss`` computes the vocabulary projection chunk by chunk *and* its gradient
inside the forward pass, so the full-vocabulary logits of the student (and of the teacher, in online
mode) exist for one chunk of positions at a time, never for the whole batch. Only the answer
positions are projected at all (docs/design.md: 1.24x faster and less memory than projecting every token).

Cached top-k: the teacher stores, per position, its top-k log-probabilities, their ids and the log of
the remaining mass. ``bucket_logprobs`` projects the student onto the same k+1 buckets (the k ids
plus one "rest" bucket = logsumexp of the remaining logits), and the divergence is taken between the
two (k+1)-bucket distributions. With T != 1 both bucket distributions are tempered the same way
(the tail's mass at another temperature is not recoverable from its sum), which keeps the loss zero
for identical models. Log-probabilities are floored at ``LOG_FLOOR`` so a zero-probability bucket
contributes exactly zero and never NaN.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

from distilltune.distill.kd_losses import BUILTIN_LOSSES, LOG_FLOOR, divergence

IGNORE_INDEX = -100
LOSSES: tuple[str, ...] = BUILTIN_LOSSES  # the built-in losses (the registry may hold more)


def _position_mask(shape: torch.Size, labels: torch.Tensor | None, ignore_index: int, device) -> torch.Tensor:
    if labels is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    return labels != ignore_index


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    loss: str = "fkl",
    temperature: float = 1.0,
    beta: float = 0.5,
    skew: float = 0.1,
    ignore_index: int = IGNORE_INDEX,
    reduction: Literal["mean", "sum", "none"] = "mean",
) -> torch.Tensor:
    """Full-vocabulary distillation loss, T²-scaled.

    student_logits, teacher_logits: [..., V]; labels: [...] (positions equal to ``ignore_index`` are
    skipped; ``None`` keeps every position). "mean" divides by the number of kept positions and is 0
    (with zero gradients) when there are none; "none" returns [...] with zeros at ignored positions.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    mask = _position_mask(student_logits.shape[:-1], labels, ignore_index, student_logits.device)
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    per_pos = divergence(s, t, loss, beta, skew) * (temperature**2)
    per_pos = torch.where(mask, per_pos, torch.zeros_like(per_pos))
    if reduction == "none":
        return per_pos
    total = per_pos.sum()
    return total if reduction == "sum" else total / mask.sum().clamp(min=1)


def bucket_logprobs(student_logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Project the student onto the teacher's top-k ids plus one rest bucket.

    student_logits: [N, V]; ids: [N, k] (long). Returns [N, k+1] log-probabilities (normalised):
    the log-probability of each id, then log(1 - Σ those), computed as the logsumexp of the
    remaining logits (stable even when the top-k hold almost all the mass).
    """
    logits = student_logits.float()
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    top = logits.gather(-1, ids) - lse
    rest = logits.scatter(-1, ids, float("-inf")).logsumexp(-1, keepdim=True) - lse
    return torch.cat([top, rest.clamp(min=LOG_FLOOR)], dim=-1)


def teacher_buckets(topk_logp: torch.Tensor, tail_logp: torch.Tensor) -> torch.Tensor:
    """[N, k] top-k log-probs + [N] log tail mass → [N, k+1] bucket log-probs (renormalised).

    Renormalising absorbs the fp16 rounding of the stored values (a few 1e-4 of mass).
    """
    b = torch.cat([topk_logp.float(), tail_logp.float()[:, None]], dim=-1).clamp(min=LOG_FLOOR)
    return b - b.logsumexp(-1, keepdim=True)


def temper(logp: torch.Tensor, temperature: float) -> torch.Tensor:
    """Re-temper a distribution given as log-probs: softmax(log p / T)."""
    if temperature == 1.0:
        return logp
    return F.log_softmax(logp / temperature, dim=-1)


def topk_kd_loss(
    student_logits: torch.Tensor,
    topk_logp: torch.Tensor,
    topk_ids: torch.Tensor,
    tail_logp: torch.Tensor,
    *,
    loss: str = "fkl",
    temperature: float = 1.0,
    beta: float = 0.5,
    skew: float = 0.1,
    reduction: Literal["mean", "sum", "none"] = "mean",
) -> torch.Tensor:
    """Distillation loss against a cached teacher top-k + tail bucket, T²-scaled.

    student_logits: [N, V]; topk_logp: [N, k] teacher log-probs (any float dtype);
    topk_ids: [N, k] integer ids; tail_logp: [N] log of the teacher's remaining mass.
    Positions are all kept (gather the answer positions first). Returns a scalar or [N].
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    s = temper(bucket_logprobs(student_logits, topk_ids.long()), temperature)
    t = temper(teacher_buckets(topk_logp, tail_logp), temperature)
    per_pos = divergence(s, t, loss, beta, skew) * (temperature**2)
    if reduction == "none":
        return per_pos
    total = per_pos.sum()
    return total if reduction == "sum" else total / max(per_pos.numel(), 1)


def mix_with_ce(kd: torch.Tensor, ce: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha·CE + (1 - alpha)·KD; alpha = 0 is pure distillation, 1 is plain fine-tuning."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if alpha == 0.0:
        return kd
    if alpha == 1.0:
        return ce
    return alpha * ce + (1.0 - alpha) * kd


def mix_weights(alpha: float, n_labelled: int, n_positions: int) -> tuple[float, float]:
    """(alpha', scale) with scale·(alpha'·CE_sum + (1 - alpha')·KD_sum) equal to
    alpha·CE_sum / n_labelled + (1 - alpha)·KD_sum / n_positions.

    The two terms are averaged over their own positions: CE over the labelled (answer) tokens, KD over
    every distilled position (the same tokens, or more when distilling at the prompt too). A term with
    no positions contributes nothing; with neither, scale is 0.
    """
    w_ce = alpha / n_labelled if n_labelled else 0.0
    w_kd = (1.0 - alpha) / n_positions if n_positions else 0.0
    scale = w_ce + w_kd
    if scale == 0.0:
        return 0.0, 0.0
    return w_ce / scale, scale


def topk_kd_ce_with_grad(
    logits: torch.Tensor,
    topk_logp: torch.Tensor,
    topk_ids: torch.Tensor,
    tail_logp: torch.Tensor,
    targets: torch.Tensor,
    *,
    loss: str = "fkl",
    temperature: float = 1.0,
    beta: float = 0.5,
    skew: float = 0.1,
    alpha: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``alpha·CE + (1-alpha)·topk_kd_loss`` summed over positions, *and* its gradient w.r.t. the logits.

    logits: [N, V] (no grad needed); teacher tensors as in ``topk_kd_loss``; targets: [N] label ids,
    ``IGNORE_INDEX`` at positions without a label (they get the KD term only).
    Returns (value, kd sum, ce sum, dvalue/dlogits [N, V]).

    Why closed form: with log q_b = logsumexp_{j∈b} z_j - lse(z) the chain rule gives, for g_b =
    ∂KD/∂log q_b (autograd on the tiny [N, k+1] bucket problem, so every divergence and temperature
    works) and G = Σ_b g_b: ∂KD/∂z_j = g_b - q_j·G for a top-k token, q_j·(g_rest/q_rest - G) for the
    rest; ∂CE/∂z = q - onehot(target). One softmax buffer is reused for the gradient, so a chunk
    costs ~5 passes over [N, V] instead of the ~12 of autograd through logsumexp/scatter/log_softmax.
    """
    z = logits.detach().float()
    ids = topk_ids.long()
    labelled = targets != IGNORE_INDEX
    tgt = torch.where(labelled, targets, torch.zeros_like(targets))[:, None]
    a_row = alpha * labelled.to(z.dtype)[:, None]  # CE weight per position: 0 where nothing is labelled
    lse = torch.logsumexp(z, dim=-1, keepdim=True)
    q = torch.exp(z - lse)  # becomes the gradient buffer below
    top_lq = z.gather(-1, ids) - lse
    q.scatter_(-1, ids, 0.0)
    q_rest = q.sum(-1, keepdim=True)
    rest_lq = torch.log(q_rest).clamp(min=LOG_FLOOR)
    with torch.enable_grad():
        s_buckets = torch.cat([top_lq, rest_lq], dim=-1).requires_grad_(True)
        s = temper(s_buckets, temperature)
        t = temper(teacher_buckets(topk_logp, tail_logp), temperature)
        kd = (divergence(s, t, loss, beta, skew) * (temperature**2)).sum()
        (g,) = torch.autograd.grad(kd, s_buckets)
    ce = ((lse - z.gather(-1, tgt))[:, 0] * labelled).sum()
    w_kd = 1.0 - alpha
    g_sum = g.sum(-1, keepdim=True)
    rest_coef = w_kd * (g[:, -1:] / q_rest.clamp(min=1e-30) - g_sum) + a_row
    grad = q.mul_(rest_coef)  # rest tokens; the top-k entries are 0 here and set next
    q_top = top_lq.exp()
    grad.scatter_(-1, ids, w_kd * (g[:, :-1] - q_top * g_sum) + a_row * q_top)
    if alpha:
        grad.scatter_add_(-1, tgt, -a_row)
    value = mix_with_ce(kd.detach(), ce, alpha)
    return value, kd.detach(), ce, grad


ChunkFn = Callable[[torch.Tensor, int, int], tuple]  # → (value, stats) or (value, stats, dvalue/dlogits)


class _ChunkedHead(torch.autograd.Function):
    """Σ_chunks fn(hidden[s:e] @ Wᵀ + b) with the gradient computed chunk by chunk in forward.

    Storing dL/dhidden [N, H] and dL/dW [V, H] instead of every chunk's [c, V] logits (and the
    softmax intermediates the loss would save) is what keeps peak memory at one chunk of logits.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, fn, chunk_size, stats):
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        n = hidden.shape[0]
        dh = torch.zeros_like(hidden) if need_h else None
        dw = torch.zeros_like(weight) if need_w else None
        db = torch.zeros_like(bias) if (bias is not None and need_b) else None
        total = hidden.new_zeros((), dtype=torch.float32)
        for s in range(0, n, chunk_size):
            e = min(s + chunk_size, n)
            h = hidden[s:e]
            logits = F.linear(h, weight, bias).detach().requires_grad_(True)
            with torch.enable_grad():
                value, extra, *given = fn(logits, s, e)
                (g,) = given if given else torch.autograd.grad(value, logits)
            g = g.to(hidden.dtype)
            if dh is not None:
                dh[s:e] = g @ weight
            if dw is not None:
                dw.addmm_(g.t(), h)
            if db is not None:
                db += g.sum(0)
            total += value.detach().float()
            for k, v in extra.items():
                stats[k] = stats.get(k, 0.0) + v.detach().float()
        ctx.save_for_backward(*(t for t in (dh, dw, db) if t is not None))
        ctx.have = (dh is not None, dw is not None, db is not None)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        saved = list(ctx.saved_tensors)
        out = []
        for have in ctx.have:
            out.append(saved.pop(0) * grad_out if have else None)
        return (*out, None, None, None)


def chunked_head_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    fn: ChunkFn,
    chunk_size: int = 1024,
    stats: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Σ over position chunks of ``fn(logits_chunk, start, end)``, differentiable in hidden/weight/bias.

    hidden: [N, H] (final hidden states at the loss positions); weight: [V, H]; bias: [V] or None.
    ``fn`` returns (a scalar to differentiate — usually a *sum* over the chunk's positions —, a dict
    of detached scalars to accumulate into ``stats``), optionally followed by the scalar's gradient
    w.r.t. the logits when it knows it in closed form (``topk_kd_ce_with_grad``); otherwise autograd
    takes it inside. ``fn`` must not need gradients for anything but the logits (teacher tensors are
    constants). Returns the summed scalar; divide by N (or the token count) outside.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    if stats is None:
        stats = {}
    if hidden.shape[0] == 0:
        # No loss positions: a zero that still depends on the parameters (so backward is a no-op).
        return (hidden.sum() * 0.0 + weight.sum() * 0.0).float()
    return _ChunkedHead.apply(hidden, weight, bias, fn, chunk_size, stats)


class _ChunkedLogits(torch.autograd.Function):
    """Σ_chunks fn(logits[s:e]) with dL/dlogits computed chunk by chunk in forward (stores [N, V] once)."""

    @staticmethod
    def forward(ctx, logits, fn, chunk_size, stats):
        grad = torch.zeros_like(logits) if ctx.needs_input_grad[0] else None
        total = logits.new_zeros((), dtype=torch.float32)
        for s in range(0, logits.shape[0], chunk_size):
            e = min(s + chunk_size, logits.shape[0])
            chunk = logits[s:e].detach().requires_grad_(True)
            with torch.enable_grad():
                value, extra, *given = fn(chunk, s, e)
                if grad is not None:
                    (grad[s:e],) = given if given else torch.autograd.grad(value, chunk)
            total += value.detach().float()
            for k, v in extra.items():
                stats[k] = stats.get(k, 0.0) + v.detach().float()
        ctx.save_for_backward(*(() if grad is None else (grad,)))
        return total

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        return grad * grad_out, None, None, None


def chunked_logits_loss(
    logits: torch.Tensor, fn: ChunkFn, chunk_size: int = 1024, stats: dict[str, torch.Tensor] | None = None
) -> torch.Tensor:
    """Like ``chunked_head_loss`` for logits that already exist ([N, V]): the loss's intermediates
    (softmaxes, the teacher's chunk) live one chunk at a time; only dL/dlogits is kept."""
    if stats is None:
        stats = {}
    if logits.shape[0] == 0:
        return logits.sum().float() * 0.0
    return _ChunkedLogits.apply(logits, fn, chunk_size, stats)
