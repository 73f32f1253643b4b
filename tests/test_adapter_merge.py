"""A LoRA adapter loaded for inference is merged into its base: same logits as PEFT's unmerged forward.

Unmerged, LoRA decodes a third slower (teacher-lora 11.2 vs 17.4 tok/s in the full reference run),
which charged LoRA strategies a latency they would not have once deployed.
"""

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from distilltune.models import load_model


def _adapter(base_dir, out):
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(base_dir))
    cfg = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False
    )
    peft = get_peft_model(base, cfg)
    peft.save_pretrained(str(out))
    (out / "adapter_config.json").write_text(
        (out / "adapter_config.json")
        .read_text()
        .replace('"base_model_name_or_path": null', f'"base_model_name_or_path": "{base_dir}"')
    )
    return out


def test_inference_load_merges_lora_and_keeps_the_outputs(tiny_model_dir, tmp_path):
    adapter = _adapter(tiny_model_dir, tmp_path / "adapter")
    ids = torch.tensor([[1, 5, 9, 13, 2, 7]])
    reference = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), str(adapter)
    ).eval()
    merged = load_model(str(adapter))
    assert not hasattr(merged.model, "peft_config")  # a plain transformers model
    with torch.no_grad():
        want, got = reference(ids).logits, merged.model(ids).logits
    assert torch.allclose(want, got, atol=1e-5)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    with torch.no_grad():
        assert not torch.allclose(base(ids).logits, got, atol=1e-3)  # the adapter did change the model


def test_training_and_merge_false_keep_the_peft_model(tiny_model_dir, tmp_path):
    adapter = _adapter(tiny_model_dir, tmp_path / "adapter")
    assert isinstance(load_model(str(adapter), merge=False).model, PeftModel)
    assert isinstance(load_model(str(adapter), trainable=True).model, PeftModel)
