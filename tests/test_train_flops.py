"""The MFU's FLOP count equals what torch counts in a real training step of the loop's objective.

``distilltune.train.flops.training_flops`` (PaLM's accounting, corrected for the loop: non-embedding
weights, the vocabulary head at the loss positions only, attention's T² terms, 4 FLOPs per frozen
weight) is compared with ``torch.utils.flop_counter.FlopCounterMode`` around the forward and backward
of ``causal_lm_objective`` through ``AnswerLogitsModel`` (the loop's path). Eager attention, so the
counter sees the attention matmuls as ``bmm``. The old formula (6 × all parameters × every token)
is checked to be off, which is why it was replaced.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from distilltune.train.flops import training_flops
from distilltune.train.objectives import AnswerLogitsModel, causal_lm_objective
from tiny_models import build_tiny_llama

B, T, PROMPT = 2, 48, 30


@pytest.fixture(scope="module")
def model_dir(tokenizer_dir, tmp_path_factory):
    return build_tiny_llama(tokenizer_dir, tmp_path_factory.mktemp("flops"), layers=3, hidden=64)


def _model(model_dir, lora: bool):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager")
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    return model


def _counted(model) -> tuple[int, int]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1000, (B, T), generator=g)
    labels = ids.clone()
    labels[:, :PROMPT] = -100
    labels[1, -5:] = -100  # rows with different loss lengths
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    with FlopCounterMode(display=False) as fc:
        loss, _ = causal_lm_objective(AnswerLogitsModel(model), batch, 0)
        loss.backward()
    return fc.get_total_flops(), int((labels[:, 1:] != -100).sum())


def test_full_fine_tuning_flops_equal_torchs_count(model_dir):
    model = _model(model_dir, lora=False)
    counted, positions = _counted(model)
    f = training_flops(model, B, T, positions)
    assert f["total"] == counted
    assert f["attention"] > 0 and f["non_embedding_params_frozen"] == 0
    every_param_every_token = 6 * sum(p.numel() for p in model.parameters()) * B * T
    assert abs(every_param_every_token - counted) / counted > 0.5  # the old formula was far off


def test_lora_flops_are_within_one_percent_of_torchs_count(model_dir):
    model = _model(model_dir, lora=True)
    counted, positions = _counted(model)
    f = training_flops(model, B, T, positions)
    assert f["non_embedding_params_trained"] > 0 and f["non_embedding_params_frozen"] > 0
    # autograd skips the first layer's frozen input gradients, which the formula counts
    assert counted <= f["total"] <= 1.01 * counted
