"""Block influence picks the layers that matter: a layer made an identity by construction is dropped first."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from distilltune.models.importance import block_influence, select_layers, task_block_influence


@pytest.fixture()
def model_with_identity_layer(tiny_teacher_dir):
    """The 4-layer tiny teacher with layer 2 turned into the identity: zero attention and MLP outputs
    leave the residual stream untouched, so its input equals its output (influence exactly 0)."""
    model = AutoModelForCausalLM.from_pretrained(str(tiny_teacher_dir)).eval()
    layer = model.model.layers[2]
    with torch.no_grad():
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
    return model


def test_identity_layer_scores_zero_and_is_dropped(model_with_identity_layer, tiny_teacher_dir):
    model = model_with_identity_layer
    tok = AutoTokenizer.from_pretrained(str(tiny_teacher_dir))
    texts = ["How much is a domestic wire transfer?", "Refunds take 21 days after the request is filed."]
    scores = task_block_influence(model, tok, texts)
    assert len(scores) == 4
    assert scores[2] == pytest.approx(0.0, abs=1e-6)
    assert all(s > 1e-4 for i, s in enumerate(scores) if i != 2)
    kept = select_layers(scores, 3)
    assert kept == [0, 1, 3]


def test_block_influence_matches_hidden_states_computed_independently(tiny_teacher_dir):
    """Second implementation: the model's own hidden_states output (inputs of layers 1..n-1)."""
    model = AutoModelForCausalLM.from_pretrained(str(tiny_teacher_dir)).eval()
    ids = torch.tensor([[5, 17, 300, 42, 9, 77], [8, 1000, 3, 4, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    got = block_influence(model, ids, mask)
    with torch.no_grad():
        hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    real = mask.bool()
    # hidden_states[i] is the input of layer i; the last entry is normed, so compare layers 0..n-2
    for i in range(len(got) - 1):
        cos = F.cosine_similarity(hs[i][real], hs[i + 1][real], dim=-1)
        assert got[i] == pytest.approx(float((1 - cos).mean()), rel=1e-5)


def test_select_layers_orders_and_validates():
    assert select_layers([0.9, 0.1, 0.5, 0.8], 2) == [0, 3]
    assert select_layers([0.2, 0.2, 0.2], 2) == [0, 1]  # ties: the earlier layer
    from distilltune.errors import UserError

    with pytest.raises(UserError, match="between 1 and"):
        select_layers([0.1, 0.2], 3)
