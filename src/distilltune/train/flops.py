"""Training FLOPs of one step as this loop runs it, for an honest MFU.

PaLM's accounting (Chowdhery et al. 2022, "PaLM: Scaling Language Modeling with Pathways", Appendix B)
gives 6·N + 12·L·H·Q·T FLOPs per trained token: N the non-embedding parameters, L layers, H query
heads, Q the head dimension, T the sequence length, attention counted over the full T×T (not halved
for the causal mask). Two corrections make it describe this loop rather than an idealised one:

    FLOPs/step = 6 · N_trained · B·T  +  4 · N_frozen · B·T          (decoder matmuls)
               + (6 or 4) · d · V · P                               (vocabulary head)
               + 12 · L · H · Q · B · T²                             (attention: QKᵀ and AV)

- N counts the weights of every ``nn.Linear`` in the decoder body; embeddings are lookups, not
  matmuls. A trained weight costs 2 (forward) + 2 (input gradient) + 2 (weight gradient) FLOPs per
  token; a frozen one (LoRA's base weights) needs no weight gradient: 4. LoRA's A and B are trained.
- The vocabulary head (d × V) runs only at the P positions that carry a loss: the loop computes
  logits for the labelled positions alone (``train.forward``, ``AnswerLogitsModel``). 6 when the
  head is trained (full fine-tuning, tied to the embedding or not), 4 when frozen.
- Attention has no weights; its backward computes the gradients of Q, K and V: 3 × the forward's
  4·H·Q·T per token and layer.

``tests/test_train_flops.py`` checks the total against ``torch.utils.flop_counter.FlopCounterMode`` on
a real training step: equal for full fine-tuning; for LoRA the formula is high by the input gradient
of the first layer's frozen projections, which autograd skips (well under 1 %).
"""

from __future__ import annotations

from torch import nn


def training_flops(model: nn.Module, batch: int, seq: int, head_positions: float) -> dict[str, float]:
    """FLOPs of one training step by term, plus the counts they came from (see the module docstring).

    ``head_positions``: positions per step where the vocabulary head runs (the loss positions)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body, head = base.get_decoder(), base.get_output_embeddings()
    trained = frozen = 0
    for m in body.modules():
        if isinstance(m, nn.Linear):
            for p in (m.weight, m.bias):
                if p is not None:
                    trained += p.numel() if p.requires_grad else 0
                    frozen += 0 if p.requires_grad else p.numel()
    cfg = base.config
    n_layers = len(body.layers) if hasattr(body, "layers") else cfg.num_hidden_layers
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    vocab, d = head.weight.shape
    tokens = batch * seq
    terms = {
        "decoder_matmuls": 6 * trained * tokens + 4 * frozen * tokens,
        "vocabulary_head": (6 if head.weight.requires_grad else 4) * d * vocab * head_positions,
        "attention": 12 * n_layers * heads * head_dim * batch * seq * seq,
    }
    return {
        **terms,
        "total": sum(terms.values()),
        "non_embedding_params_trained": trained,
        "non_embedding_params_frozen": frozen,
        "layers": n_layers,
        "heads": heads,
        "head_dim": head_dim,
        "head_positions_per_step": head_positions,
    }
