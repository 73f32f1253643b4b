"""Width pruning (Minitron-style): keep the most important MLP channels and attention heads of each layer.

A student spec's ``mlp=F`` keeps ``round(F × intermediate_size)`` channels in every layer and
``heads=F`` keeps ``round(F × num_attention_heads)`` query heads. The count is the same in every
layer because a Hugging Face config has one ``intermediate_size`` and one head count; *which* channels
and heads survive is chosen per layer, by importance. The result is a plain model of the same class
with a smaller config: it saves as safetensors, loads with ``from_pretrained`` and trains like any other.

**Heads under grouped-query attention.** Query heads share key/value heads in groups, and the model
code repeats each KV head for ``num_attention_heads / num_key_value_heads`` queries, so every group
must keep the same number of query heads. Two cuts stay valid: the same number of query heads in
every group (all K/V kept, so the KV cache does not shrink but no query loses the keys it attends
to), or whole groups (a KV head with all its queries). We take the first when the count divides
among the groups, because it drops the least important single heads rather than a whole group of
them (a third of all heads at once on the bundled teacher, 9 heads in 3 groups); the second covers
the counts the first cannot, which is every count below all heads on a model without GQA.

**Importance.** A unit matters by what it adds to the residual stream. For an MLP channel that is the
mean |act(gate)·up| over real tokens (Minitron's activation score) times the norm of its
``down_proj`` column; for a head, the mean norm of its output after its own ``o_proj`` columns. Measured
after the output projection, a channel or head whose output projection is (near) zero ranks last,
which the bare activation would miss. ``models.importance.task_width_importance`` measures this on
the task's prompts; without prompts, ``weight_importance`` ranks by weight norms alone (a data-free
proxy: a unit with a zero input or output row scores zero either way).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from distilltune.errors import UserError


def width_modules(layer: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(mlp, self_attn) of a Llama-style decoder layer, or a clear error for any other layout."""
    mlp, attn = getattr(layer, "mlp", None), getattr(layer, "self_attn", None)
    need_mlp = all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj"))
    need_attn = all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
    if not (need_mlp and need_attn):
        raise UserError(
            f"width pruning (mlp=, heads=) supports Llama-style layers (mlp.gate_proj/up_proj/down_proj, "
            f"self_attn.q_proj/k_proj/v_proj/o_proj); {type(layer).__name__} has another layout"
        )
    return mlp, attn


def head_dims(config) -> tuple[int, int, int]:
    """(num_attention_heads, num_key_value_heads, head_dim) of a config."""
    n_heads = int(config.num_attention_heads)
    n_kv = int(getattr(config, "num_key_value_heads", None) or n_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // n_heads)
    return n_heads, n_kv, head_dim


def mlp_keep(fraction: float, intermediate: int) -> int:
    k = round(fraction * intermediate)
    if k < 1:
        raise UserError(
            f"mlp={fraction:g} keeps no channel of the {intermediate} in each MLP; use a larger fraction"
        )
    return k


def heads_keep(fraction: float, n_heads: int, n_kv: int) -> tuple[int, int]:
    """(query heads, key/value heads) kept for ``heads=fraction`` (see the module docstring)."""
    k = round(fraction * n_heads)
    per_group = n_heads // n_kv
    if k >= 1 and k % n_kv == 0:
        return k, n_kv  # the same number of query heads in every group, all K/V kept
    if k >= 1 and k % per_group == 0:
        return k, k // per_group  # whole groups
    valid = [c for c in range(1, n_heads + 1) if c % n_kv == 0 or c % per_group == 0]
    options = ", ".join(f"heads={c / n_heads:.2g} ({c})" for c in valid)
    raise UserError(
        f"heads={fraction:g} keeps {k} of {n_heads} attention heads, but with {n_kv} key/value heads "
        f"({per_group} query heads each) the count must be a multiple of {n_kv} (the same number in "
        f"every group) or of {per_group} (whole groups); valid here: {options}"
    )


def width_config(config, mlp: float | None, heads: float | None):
    """A copy of ``config`` with the pruned widths (no weights needed: used for meta-device checks too)."""
    cfg = copy.deepcopy(config)
    n_heads, n_kv, head_dim = head_dims(config)
    if mlp is not None:
        cfg.intermediate_size = mlp_keep(mlp, int(config.intermediate_size))
    if heads is not None:
        cfg.num_attention_heads, cfg.num_key_value_heads = heads_keep(heads, n_heads, n_kv)
    cfg.head_dim = head_dim  # else derived from hidden_size / num_attention_heads, which changed
    return cfg


def top_units(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the ``k`` highest scores, in model order (ties: the earlier unit)."""
    vals = scores.tolist()
    order = sorted(range(len(vals)), key=lambda i: (-vals[i], i))
    return sorted(order[:k])


def select_heads(scores: torch.Tensor, n_heads: int, n_kv: int, q_keep: int, kv_keep: int):
    """(query heads, KV heads) to keep, grouped so the kept queries of KV head j stay together."""
    per_group = n_heads // n_kv
    if kv_keep == n_kv:
        per_keep = q_keep // n_kv
        q: list[int] = []
        for g in range(n_kv):
            members = scores[g * per_group : (g + 1) * per_group]
            q += [g * per_group + i for i in top_units(members, per_keep)]
        return q, list(range(n_kv))
    groups = scores.view(n_kv, per_group).sum(dim=1)
    kv = top_units(groups, kv_keep)
    return [g * per_group + i for g in kv for i in range(per_group)], kv


@torch.no_grad()
def weight_importance(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Data-free fallback scores, ([layers, intermediate], [layers, heads]), from weight norms alone.

    An MLP channel: ‖gate row‖·‖up row‖·‖down column‖; a head: ‖its o_proj columns‖ times the norm
    of its KV head's v_proj rows (the parts that carry its output; q/k only steer attention)."""
    from distilltune.models.student import _decoder_layers

    n_heads, n_kv, hd = head_dims(model.config)
    mlp_rows, head_rows = [], []
    for layer in _decoder_layers(model):
        mlp, attn = width_modules(layer)
        g, u, d = (m.weight.float() for m in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))
        mlp_rows.append(g.norm(dim=1) * u.norm(dim=1) * d.norm(dim=0))
        o = attn.o_proj.weight.float().view(-1, n_heads, hd).pow(2).sum(dim=(0, 2)).sqrt()
        v = attn.v_proj.weight.float().view(n_kv, hd, -1).pow(2).sum(dim=(1, 2)).sqrt()
        head_rows.append(o * v.repeat_interleave(n_heads // n_kv))
    return torch.stack(mlp_rows), torch.stack(head_rows)


def save_scores(path, mlp_scores: torch.Tensor, head_scores: torch.Tensor, meta: dict[str, str]) -> None:
    """Write importance scores (float32, one row per layer of the model they were measured on)."""
    from safetensors.torch import save

    from distilltune.io import atomic_write_bytes

    tensors = {"mlp": mlp_scores.float().contiguous(), "heads": head_scores.float().contiguous()}
    atomic_write_bytes(path, save(tensors, metadata=meta))


def load_scores(path) -> tuple[torch.Tensor, torch.Tensor]:
    """(mlp [layers, intermediate], heads [layers, heads]) from a file written by ``save_scores``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        t = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise UserError(f"importance={path}: cannot read the scores file ({e})") from None
    ok = {"mlp", "heads"} <= set(t) and t["mlp"].dim() == 2 and t["heads"].dim() == 2
    if not ok:
        raise UserError(f"importance={path}: expected 2-D tensors 'mlp' and 'heads', found {sorted(t)}")
    return t["mlp"], t["heads"]


def _rows(t: torch.Tensor, idx: list[int], block: int = 1, dim: int = 0) -> torch.Tensor:
    """Slice ``t`` along ``dim`` keeping units ``idx`` of ``block`` consecutive entries each."""
    pos = torch.tensor([i * block + j for i in idx for j in range(block)], dtype=torch.long)
    return t.detach().index_select(dim, pos.to(t.device))  # a new tensor: nothing aliases ``t``


def _slice_layer(
    state: dict, prefix: str, ch: list[int] | None, q: list[int] | None, kv: list[int] | None, hd: int
):
    """Slice one layer's tensors in ``state`` (in place): gate/up rows and down columns for
    channels ``ch``; q rows and o columns for query heads ``q``; k/v rows for KV heads ``kv``."""
    if ch is not None:
        for name in ("gate_proj", "up_proj"):
            for part in ("weight", "bias"):
                key = f"{prefix}mlp.{name}.{part}"
                if key in state:
                    state[key] = _rows(state[key], ch)
        state[f"{prefix}mlp.down_proj.weight"] = _rows(state[f"{prefix}mlp.down_proj.weight"], ch, dim=1)
    if q is not None:
        for name, idx in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
            for part in ("weight", "bias"):
                key = f"{prefix}self_attn.{name}.{part}"
                if key in state:
                    state[key] = _rows(state[key], idx, block=hd)
        key = f"{prefix}self_attn.o_proj.weight"
        state[key] = _rows(state[key], q, block=hd, dim=1)


def prune_width(
    model: nn.Module,
    mlp: float | None,
    heads: float | None,
    mlp_scores: torch.Tensor,
    head_scores: torch.Tensor,
    source: str,
) -> nn.Module:
    """A new model keeping, in every layer, the top ``mlp``/``heads`` fraction by the given scores
    (``[layers, intermediate]`` and ``[layers, heads]``, one row per layer of ``model``)."""
    from distilltune.models.student import _decoder_layers, instantiate

    cfg = width_config(model.config, mlp, heads)
    n_heads, n_kv, hd = head_dims(model.config)
    layers = _decoder_layers(model)
    want = (len(layers), int(model.config.intermediate_size)), (len(layers), n_heads)
    if tuple(mlp_scores.shape) != want[0] or tuple(head_scores.shape) != want[1]:
        raise UserError(
            f"importance scores have shapes {tuple(mlp_scores.shape)} and {tuple(head_scores.shape)}; "
            f"expected {want[0]} (layers × MLP channels) and {want[1]} (layers × heads)"
        )
    state = dict(model.state_dict())
    record: dict = {"mlp": mlp, "heads": heads, "importance": source, "heads_kept": [] if heads else None}
    for i, layer in enumerate(layers):
        width_modules(layer)
        ch = top_units(mlp_scores[i], cfg.intermediate_size) if mlp is not None else None
        q = kv = None
        if heads is not None:
            q, kv = select_heads(
                head_scores[i], n_heads, n_kv, cfg.num_attention_heads, cfg.num_key_value_heads
            )
            record["heads_kept"].append(q)
        _slice_layer(state, f"model.layers.{i}.", ch, q, kv, hd)
    record.update(
        intermediate_size=int(cfg.intermediate_size),
        num_attention_heads=int(cfg.num_attention_heads),
        num_key_value_heads=int(cfg.num_key_value_heads),
    )
    cfg.distilltune_student_width = record
    student = instantiate(model, cfg, state, dict(model.named_buffers()))
    student.generation_config = copy.deepcopy(model.generation_config)
    return student.eval()
