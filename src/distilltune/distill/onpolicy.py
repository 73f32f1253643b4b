"""On-policy distillation (GKD, Agarwal et al. 2024): the student answers, the teacher grades.

For a fraction λ of the batches the student samples its own answers to the batch's prompts (the
training prompts, assembled exactly as in the cache: everything before the last answer), at most
``max_new_tokens`` tokens, stopping on the chat template's end token; the live teacher then scores
every sampled token and the student is trained toward the teacher's distribution there (pure KD:
cross-entropy on the student's own samples would only reinforce them). The other batches use the
off-policy objective (the cached top-k by default, so the teacher runs only for on-policy batches).

Which batches are on-policy, and the sampling, are functions of (seed, step, batch indices), so a
resumed run makes the same choices.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from distilltune.data.chat import IGNORE_INDEX, Example, collate
from distilltune.distill.objectives import OnlineKD
from distilltune.models.generate import generate_ids
from distilltune.train.forward import unwrap


def _seed(seed: int, step: int, index: torch.Tensor) -> int:
    h = hashlib.sha256(f"{seed}:{step}:{index.tolist()}".encode()).digest()
    return int.from_bytes(h[:8], "little")


def is_on_policy(seed: int, step: int, index: torch.Tensor, lmbda: float) -> bool:
    if lmbda <= 0:
        return False
    if lmbda >= 1:
        return True
    return (_seed(seed, step, index) % 1_000_000) / 1_000_000 < lmbda


def prompt_of(input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor) -> list[int]:
    """Tokens before the last answer span of one (right-padded) row."""
    n = int(attention_mask.sum())
    lab = labels[:n]
    idx = (lab != IGNORE_INDEX).nonzero().flatten().tolist()
    if not idx:
        return input_ids[:n].tolist()
    start = idx[-1]
    while start - 1 >= 0 and int(lab[start - 1]) != IGNORE_INDEX:
        start -= 1
    return input_ids[:start].tolist()


def sampled_batch(
    model: nn.Module,
    batch: dict,
    stop_ids: list[int],
    pad_id: int,
    max_new_tokens: int,
    temperature: float,
    seed: int,
) -> dict[str, torch.Tensor]:
    """The batch with each row's last answer replaced by the student's own sample."""
    b = batch["input_ids"].shape[0]
    prompts = [
        prompt_of(batch["input_ids"][i].cpu(), batch["labels"][i].cpu(), batch["attention_mask"][i].cpu())
        for i in range(b)
    ]
    gen = torch.Generator(device=batch["input_ids"].device).manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        new, _, _, _ = generate_ids(model, prompts, stop_ids, pad_id, max_new_tokens, temperature, gen)
    finally:
        model.train(was_training)
    rows = []
    for p, ids in zip(prompts, new, strict=True):
        ids = ids or [stop_ids[0]]
        rows.append(Example(p + ids, [IGNORE_INDEX] * len(p) + ids))
    out = collate(rows, pad_id)
    dev = batch["input_ids"].device
    out = {k: v.to(dev) for k, v in out.items()}
    out["index"] = batch["index"]
    return out


class OnPolicyKD:
    """λ of the batches: student-sampled answers scored by the live teacher; else ``off_policy``."""

    def __init__(
        self,
        online: OnlineKD,
        off_policy,
        *,
        lmbda: float,
        max_new_tokens: int,
        temperature: float,
        seed: int,
        stop_ids: list[int],
        pad_id: int,
    ):
        self.online = online
        self.off_policy = off_policy
        self.lmbda = lmbda
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.seed = seed
        self.stop_ids = stop_ids
        self.pad_id = pad_id

    def __call__(self, net: nn.Module, batch: dict, step: int):
        if not is_on_policy(self.seed, step, batch["index"], self.lmbda):
            loss, metrics = self.off_policy(net, batch, step)
            return loss, {**metrics, "on_policy": 0.0}
        s = _seed(self.seed + 1, step, batch["index"])
        sampled = sampled_batch(
            unwrap(net), batch, self.stop_ids, self.pad_id, self.max_new_tokens, self.temperature, s
        )
        # Pure KD on the sampled answers only: the prompt positions are the off-policy batches' job.
        loss, metrics = self.online.loss(net, sampled, alpha=0.0, positions="answer")
        return loss, {**metrics, "on_policy": 1.0}
