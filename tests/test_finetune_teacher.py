"""The real bundled teacher (135M): a short LoRA fine-tune on the bundled task loads with plain PEFT on
the teacher's cached safetensors directory. Slow: deselected by default (``make test-slow``)."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.slow


def test_teacher_lora_on_bundled_task(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from conftest import EXAMPLE_TASK
    from distilltune.models.bundled import bundled_model_dir
    from distilltune.train.config import FinetuneConfig
    from distilltune.train.finetune import run_finetune
    from distilltune.train.progress import SilentReporter

    cfg = FinetuneConfig(
        task=str(EXAMPLE_TASK),
        model="smollm2-135m-instruct",
        method="lora",
        output=str(tmp_path / "run"),
        train={"max_steps": 2, "batch_size": 2, "max_length": 256, "eval_every": 0, "eval_samples": 2,
               "eval_loss_items": 4, "eval_max_new_tokens": 16, "save_every": 1, "lr": 1e-3},
    )  # fmt: skip
    run = run_finetune(cfg, reporter=SilentReporter())
    acfg = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert acfg["base_model_name_or_path"] == str(bundled_model_dir("smollm2-135m-instruct").resolve())
    base = AutoModelForCausalLM.from_pretrained(acfg["base_model_name_or_path"])
    tok = AutoTokenizer.from_pretrained(str(run / "adapter"))
    model = PeftModel.from_pretrained(base, str(run / "adapter")).eval()
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["final_step"] == 2 and summary["last_eval"]["eval_samples"] == 2
