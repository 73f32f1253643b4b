"""Reference-answer NLL per item equals the per-example loss transformers computes itself."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from distilltune.data.chat import encode_chat
from distilltune.evaluation.likelihood import reference_nll
from distilltune.retrieval import GroundedPrompter


def test_reference_nll_matches_transformers_loss(tiny_teacher_dir):
    model = AutoModelForCausalLM.from_pretrained(str(tiny_teacher_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_teacher_dir))
    prompter = GroundedPrompter("You are a support assistant.", tok)
    convs = [
        [{"role": "user", "content": "How much is a domestic wire?"}],
        None,  # skipped (answered by the guard)
        [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "Refund window?"},
        ],
    ]
    refs = ["A domestic wire costs $25.", "unused", "Refunds are accepted within 21 days."]
    prompts = [None if c is None else prompter.messages(c)[0] for c in convs]
    got = reference_nll(model, tok, prompts, refs, batch_size=2)
    assert got[1] is None
    for i in (0, 2):
        messages, _ = prompter.messages(convs[i])
        ex = encode_chat(tok, [*messages, {"role": "assistant", "content": refs[i]}], 2048)
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([ex.input_ids]), labels=torch.tensor([ex.labels])).loss
        assert got[i] == pytest.approx(float(loss), rel=1e-4)
