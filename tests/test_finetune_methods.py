"""Every method trains on a tiny model and leaves an artifact that loads back with the same behaviour:
prefix tuning (its prefix changes generation), IA3, bottleneck adapters (Houlsby, Pfeiffer), LoRA with
DoRA/rsLoRA, LoRA on a depth-pruned student (base saved next to the adapter)."""

from __future__ import annotations

import json

import pytest
import torch

from distilltune.models import load_model
from distilltune.models.bottleneck import (
    add_bottleneck_adapters,
    load_bottleneck_adapter,
    save_bottleneck_adapter,
)
from distilltune.models.generate import generate_chat
from distilltune.train.config import FinetuneConfig
from distilltune.train.finetune import run_finetune
from distilltune.train.progress import SilentReporter

FAST = {
    "batch_size": 4,
    "warmup_steps": 0,
    "eval_every": 0,
    "save_every": 0,
    "eval_samples": 0,
    "eval_loss_items": 0,
}
PROMPT = [
    {"role": "system", "content": "Zed Bikes help desk."},
    {"role": "user", "content": "Price of a city bike?"},
]


def _run(tiny_task, model, out, method, steps=4, lr=5e-2, **extra):
    cfg = FinetuneConfig(
        task=str(tiny_task),
        model=str(model),
        method=method,
        output=str(out),
        train={**FAST, "max_steps": steps, "lr": lr},
        **extra,
    )
    return run_finetune(cfg, reporter=SilentReporter())


def _logits(model, tokenizer):
    ids = tokenizer.apply_chat_template(
        PROMPT, add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        return model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).logits


def _greedy_no_cache(model, tokenizer, n: int) -> list[int]:
    """Reference decoding: full recomputation each step, so a PEFT prefix is always applied."""
    ids = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_dict=True)["input_ids"]
    seq = torch.tensor([ids])
    out = []
    with torch.no_grad():
        for _ in range(n):
            nxt = (
                model(input_ids=seq, attention_mask=torch.ones_like(seq), use_cache=False)
                .logits[0, -1]
                .argmax()
            )
            out.append(int(nxt))
            seq = torch.cat([seq, nxt.view(1, 1)], dim=1)
    return out


@pytest.fixture(scope="module")
def prefix_run(tmp_path_factory, tiny_model_dir):
    from conftest import TINY_TASK

    out = tmp_path_factory.mktemp("prefix") / "run"
    return _run(TINY_TASK, tiny_model_dir, out, "prefix", steps=6, lr=0.3, prefix={"num_virtual_tokens": 4})


def test_prefix_tuning_trains_and_changes_output(prefix_run, tiny_model_dir):
    acfg = json.loads((prefix_run / "adapter" / "adapter_config.json").read_text())
    assert acfg["peft_type"] == "PREFIX_TUNING"
    assert acfg["base_model_name_or_path"] == str(tiny_model_dir.resolve())
    tuned = load_model(str(prefix_run))
    base = load_model(str(tiny_model_dir))
    assert _greedy_no_cache(tuned.model, tuned.tokenizer, 6) != _greedy_no_cache(
        base.model, base.tokenizer, 6
    )


def test_generate_chat_uses_the_prefix(prefix_run):
    tuned = load_model(str(prefix_run))
    g = generate_chat(tuned.model, tuned.tokenizer, [PROMPT], max_new_tokens=6)[0]
    ref = _greedy_no_cache(tuned.model, tuned.tokenizer, 6)
    stops = set(tuned.tokenizer.convert_tokens_to_ids(["<|im_end|>"]))
    ref = ref[: next((i for i, t in enumerate(ref) if t in stops), len(ref))]
    assert g.text == tuned.tokenizer.decode(ref, skip_special_tokens=True).strip()


def test_ia3_trains_and_loads_with_plain_peft(tiny_task, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = _run(tiny_task, tiny_model_dir, tmp_path / "ia3", "ia3", lr=0.5)
    plain_base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    base_logits = _logits(plain_base, load_model(str(tiny_model_dir)).tokenizer)
    peft = PeftModel.from_pretrained(plain_base, str(run / "adapter")).eval()
    tok = load_model(str(tiny_model_dir)).tokenizer
    assert not torch.allclose(_logits(peft, tok), base_logits)
    via_distilltune = load_model(str(run))
    torch.testing.assert_close(_logits(via_distilltune.model, tok), _logits(peft, tok))


@pytest.mark.parametrize("kind", ["houlsby", "pfeiffer"])
def test_bottleneck_adapter_trains_saves_loads(tiny_task, tiny_model_dir, tmp_path, kind):
    run = _run(
        tiny_task,
        tiny_model_dir,
        tmp_path / kind,
        "adapter",
        lr=1e-2,
        adapter={"kind": kind, "reduction_factor": 8},
    )
    acfg = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert acfg["peft_type"] == "DISTILLTUNE_BOTTLENECK" and acfg["kind"] == kind
    from safetensors.torch import load_file

    weights = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    per_layer = 2 if kind == "houlsby" else 1
    assert len(weights) == 2 * 4 * per_layer  # 2 layers × (down, up) × (weight, bias) × sites
    assert any(float(v.abs().max()) > 0 for k, v in weights.items() if ".up." in k), "up must have trained"
    tuned = load_model(str(run))
    base = load_model(str(tiny_model_dir))
    assert not torch.allclose(_logits(tuned.model, tuned.tokenizer), _logits(base.model, base.tokenizer))
    g = generate_chat(tuned.model, tuned.tokenizer, [PROMPT], max_new_tokens=4)[0]
    assert g.new_tokens >= 1


def test_bottleneck_starts_as_identity_and_round_trips(tiny_model_dir, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    ref = _logits(base, tokenizer)
    model = add_bottleneck_adapters(
        AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), "houlsby", 4
    ).eval()
    torch.testing.assert_close(_logits(model, tokenizer), ref)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".adapter." in n for n in trainable)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".adapter.up." in n:
                p.normal_()
    changed = _logits(model, tokenizer)
    save_bottleneck_adapter(model, tmp_path / "a", str(tiny_model_dir))
    again = load_bottleneck_adapter(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), tmp_path / "a")
    torch.testing.assert_close(_logits(again, tokenizer), changed)


def test_lora_dora_rslora_on_a_student_saves_its_base(tiny_task, tiny_teacher_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = _run(
        tiny_task,
        "teacher:n_layers=2",
        tmp_path / "student-lora",
        "lora",
        lr=1e-2,
        teacher=str(tiny_teacher_dir),
        lora={"r": 4, "use_dora": True, "use_rslora": True, "target_modules": ["q_proj", "up_proj"]},
    )
    acfg = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert acfg["use_dora"] and acfg["use_rslora"]
    assert acfg["base_model_name_or_path"] == str((run / "base-model").resolve())
    base = AutoModelForCausalLM.from_pretrained(acfg["base_model_name_or_path"])
    assert base.config.num_hidden_layers == 2
    peft = PeftModel.from_pretrained(base, str(run / "adapter")).eval()
    tok = load_model(str(run)).tokenizer
    torch.testing.assert_close(_logits(peft, tok), _logits(load_model(str(run)).model, tok))
