"""Size facts about a model: parameters, embedding share, bytes on disk."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from torch import nn


@dataclass
class ModelInfo:
    params: int
    trainable: int
    embedding_params: int
    layers: int | None
    hidden: int | None

    @property
    def embedding_share(self) -> float:
        return self.embedding_params / self.params if self.params else 0.0

    def as_dict(self) -> dict:
        return asdict(self) | {"embedding_share": round(self.embedding_share, 4)}

    def line(self) -> str:
        return (
            f"{self.params / 1e6:.1f}M params ({self.embedding_share:.0%} embeddings), "
            f"{self.layers} layers, hidden {self.hidden}, {self.trainable / 1e6:.2f}M trainable"
        )


def model_info(model: nn.Module) -> ModelInfo:
    seen: set[int] = set()
    total = trainable = 0
    for p in model.parameters():  # parameters() already skips tied duplicates
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    emb_params = emb.weight.numel() if emb is not None else 0
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is not None and emb is not None and out.weight is not emb.weight:
        emb_params += out.weight.numel()
    cfg = getattr(model, "config", None)
    return ModelInfo(
        params=total,
        trainable=trainable,
        embedding_params=emb_params,
        layers=getattr(cfg, "num_hidden_layers", None),
        hidden=getattr(cfg, "hidden_size", None),
    )


def dir_size_bytes(path: str | Path) -> int:
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
