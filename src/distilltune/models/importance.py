"""Which layers of a teacher matter on *this* task: block influence, for choosing a pruned student's layers.

Block influence (ShortGPT; "The Unreasonable Ineffectiveness of the Deeper Layers") scores a decoder
layer by how much it turns its input: ``1 − cos(h_in, h_out)`` averaged over the real (non-padding)
tokens of sample prompts. A layer that barely rotates the residual stream can go at little cost;
keeping the highest-scoring layers beats keeping the first and last ones. Measured on the bundled
teacher with acme eval answers and no training (answer cross-entropy, teacher 3.19): 6 layers 10.44
vs 11.50 first+last, 15 layers 6.76 vs 8.37, 20 layers 4.77 vs 6.01. On the bundled teacher layer 0
(0.99) and layer 29 (0.94) dominate, then layers 1 (0.18) and 24 (0.17); the rest score 0.03–0.07.

``task_width_importance`` measures, in the same way, what each MLP channel and attention head adds
to the residual stream, for width pruning (``models.width``).

The scores come from the task's own prompts (the caller passes them, assembled as training assembles
them), so the chosen layers are the task's; the caller records them in the run (``layers=...``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distilltune.errors import UserError


@torch.no_grad()
def block_influence(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[float]:
    """Per decoder layer, mean ``1 − cos(input, output)`` over the real tokens of the batch.

    Inputs and outputs are captured with forward hooks on the layers themselves: the model's
    ``hidden_states`` output has the final norm applied to the last entry, which would score the
    norm's rescaling as the last layer's influence.
    """
    from distilltune.models.student import _decoder_layers

    layers = _decoder_layers(model)
    real = attention_mask.bool()
    scores: list[float] = [0.0] * len(layers)

    def hook(i: int):
        def fn(_module, args, output):
            h_in = args[0] if args else None
            h_out = output[0] if isinstance(output, tuple) else output
            if h_in is None:
                return
            cos = F.cosine_similarity(h_in[real].float(), h_out[real].float(), dim=-1)
            scores[i] = float((1.0 - cos).mean())

        return fn

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return scores


def _batches(model, tokenizer, texts: list[str], max_length: int, batch_size: int):
    """(input_ids, attention_mask) batches of ``texts``, each tokenised alone, right-padded."""
    if not texts:
        raise UserError("importance needs at least one sample prompt")
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for s in range(0, len(texts), batch_size):
        enc = [
            tokenizer(t, add_special_tokens=False)["input_ids"][:max_length]
            for t in texts[s : s + batch_size]
        ]
        width = max(len(e) for e in enc)
        ids = torch.full((len(enc), width), pad, dtype=torch.long)
        mask = torch.zeros((len(enc), width), dtype=torch.long)
        for j, e in enumerate(enc):
            ids[j, : len(e)] = torch.tensor(e, dtype=torch.long)
            mask[j, : len(e)] = 1
        yield ids.to(device), mask.to(device)


def task_block_influence(
    model, tokenizer, texts: list[str], max_length: int = 512, batch_size: int = 4
) -> list[float]:
    """Block influence averaged over ``texts`` (each tokenised alone, truncated to ``max_length``)."""
    was_training = model.training
    model.eval()
    totals: list[float] | None = None
    weight = 0
    try:
        for ids, mask in _batches(model, tokenizer, texts, max_length, batch_size):
            scores = block_influence(model, ids, mask)
            n = int(mask.sum())
            totals = (
                [x * n for x in scores]
                if totals is None
                else [t + x * n for t, x in zip(totals, scores, strict=True)]
            )
            weight += n
    finally:
        model.train(was_training)
    return [t / weight for t in totals or []]


@torch.no_grad()
def width_contributions(model, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """Sums over the batch's real tokens of each MLP channel's and each head's contribution to the
    residual stream: ([layers, intermediate], [layers, heads]); see ``models.width`` for why these.

    Forward pre-hooks read what enters ``down_proj`` (act(gate)·up, per channel) and ``o_proj`` (the
    heads' attention outputs side by side, head-major, which is how ``o_proj``'s columns are laid out).
    """
    from distilltune.models.student import _decoder_layers
    from distilltune.models.width import head_dims, width_modules

    n_heads, _, hd = head_dims(model.config)
    real = attention_mask.bool()
    pairs = [width_modules(layer) for layer in _decoder_layers(model)]
    mlp_sums: list[torch.Tensor | None] = [None] * len(pairs)
    head_sums: list[torch.Tensor | None] = [None] * len(pairs)

    def mlp_hook(i: int, down):
        def fn(_module, args):
            a = args[0][real].float().abs().sum(dim=0)  # [intermediate]
            mlp_sums[i] = a * down.weight.float().norm(dim=0)

        return fn

    def head_hook(i: int, o_proj):
        w = o_proj.weight.float().view(-1, n_heads, hd)  # [hidden, heads, head_dim]

        def fn(_module, args):
            x = args[0][real].float().view(-1, n_heads, hd)  # [tokens, heads, head_dim]
            total = x.new_zeros(n_heads)
            for c in range(0, x.shape[0], 256):  # [chunk, heads, hidden] stays small
                total += torch.einsum("nhd,ohd->nho", x[c : c + 256], w).norm(dim=-1).sum(dim=0)
            head_sums[i] = total

        return fn

    handles = []
    for i, (mlp, attn) in enumerate(pairs):
        handles.append(mlp.down_proj.register_forward_pre_hook(mlp_hook(i, mlp.down_proj)))
        handles.append(attn.o_proj.register_forward_pre_hook(head_hook(i, attn.o_proj)))
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return torch.stack(mlp_sums), torch.stack(head_sums)


def task_width_importance(
    model, tokenizer, texts: list[str], max_length: int = 512, batch_size: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean per-token contribution of every MLP channel and head over ``texts``:
    ([layers, intermediate], [layers, heads]), the scores ``models.width`` ranks by."""
    was_training = model.training
    model.eval()
    mlp = heads = None
    n = 0
    try:
        for ids, mask in _batches(model, tokenizer, texts, max_length, batch_size):
            m, h = width_contributions(model, ids, mask)
            mlp, heads = (m, h) if mlp is None else (mlp + m, heads + h)
            n += int(mask.sum())
    finally:
        model.train(was_training)
    return mlp / n, heads / n


def select_layers(scores: list[float], n_keep: int) -> list[int]:
    """The ``n_keep`` highest-influence layers, in model order (ties: the earlier layer)."""
    if not 1 <= n_keep <= len(scores):
        raise UserError(f"n_layers={n_keep} must be between 1 and the teacher's {len(scores)} layers")
    ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return sorted(ranked[:n_keep])
