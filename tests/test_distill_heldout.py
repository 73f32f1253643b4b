"""Held-out cross-entropy on every eval answer equals a direct full-forward computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distilltune.data.chat import collate
from distilltune.distill.heldout import heldout_ce
from distilltune.task import load_task
from distilltune.train.data import build_examples


def test_heldout_ce_matches_direct_computation(tiny_task, tiny_model_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    task = load_task(tiny_task)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    got = heldout_ce(model, tokenizer, task.eval, task.system_prompt, batch_size=2)
    examples, _ = build_examples(task.eval, tokenizer, task.system_prompt, 512)
    b = collate(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
    labels = b["labels"][:, 1:]
    ref = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
    assert got["items"] == len(task.eval) == 5
    assert got["tokens"] == int((labels != -100).sum())
    assert got["ce"] == pytest.approx(float(ref), rel=1e-4)
    assert model.training is False
