"""``distilltune finetune`` and ``distilltune merge`` end to end on a tiny model (subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
import yaml

from cli_run import run_cli

FAST = [
    "train.max_steps=3",
    "train.batch_size=4",
    "train.lr=5e-3",
    "train.warmup_steps=0",
    "train.eval_every=2",
    "train.eval_samples=2",
    "train.eval_loss_items=2",
    "train.eval_max_new_tokens=4",
    "train.save_every=1",
    "train.keep_last=1",
]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "distilltune", *args], capture_output=True, text=True, timeout=240
    )


def _main(capsys, *args: str) -> tuple[int, str, str]:
    return run_cli(capsys, *args)


def _logits(model, tokenizer):
    msgs = [{"role": "user", "content": "Is there a deposit?"}]
    ids = tokenizer.apply_chat_template(
        msgs, add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        return model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).logits


def test_full_finetune_cli_artifacts(tiny_task, tiny_model_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "full"
    r = _cli(
        "finetune",
        "--task",
        str(tiny_task),
        "--model",
        str(tiny_model_dir),
        "--method",
        "full",
        "--output",
        str(out),
        "--quiet",
        *FAST,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out)
    assert "trainable parameters" in r.stderr and "step 3/3" in r.stderr and "eval @ step 2" in r.stderr
    # model/ loads with plain transformers and differs from the base; the chat template travels with it
    model = AutoModelForCausalLM.from_pretrained(str(out / "model"))
    tok = AutoTokenizer.from_pretrained(str(out / "model"))
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    assert model.config.use_cache is True
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    assert not torch.allclose(_logits(model, tok), _logits(base, tok))
    assert not list((out / "model").glob("*.bin")) and list((out / "model").glob("*.safetensors"))
    # metrics, summary, card, checkpoints (keep_last 1 + best)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["type"] == "train"] == [1, 2, 3]
    assert {"loss", "lr", "tokens_per_s", "grad_norm"} <= set(rows[0])
    evals = [r for r in rows if r["type"] == "eval"]
    assert [e["step"] for e in evals] == [2, 3] and all(
        "fact_recall" in e and "eval_loss" in e for e in evals
    )
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["final_step"] == 3 and summary["trainable_params"] == summary["total_params"]
    card = (out / "README.md").read_text()
    for needle in (
        "## Base model",
        "`full`",
        "## Hyperparameters",
        "## Metrics",
        "fact recall on held-out eval answers: ",
        "AutoModelForCausalLM",
        "tiny-task",
    ):
        assert needle in card
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert "step-3" in ckpts and len(ckpts) <= 2
    # config.yaml is fully resolved and re-runnable as is
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["train"]["lr"] == 5e-3 and cfg["method"] == "full" and cfg["lora"]["r"] == 8
    code, stdout, _ = _main(capsys, "finetune", "--config", str(out / "config.yaml"), "--print-config")
    assert code == 0 and yaml.safe_load(stdout) == cfg
    # a finished run is not redone
    code, _, stderr = _main(capsys, "finetune", "--config", str(out / "config.yaml"), "--quiet")
    assert code == 0 and "already complete" in stderr


def test_lora_cli_peft_loading_and_merge(tiny_task, tiny_model_dir, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "lora"
    r = _cli(
        "finetune",
        "--task",
        str(tiny_task),
        "--model",
        str(tiny_model_dir),
        "--method",
        "lora",
        "--output",
        str(out),
        "--quiet",
        *FAST,
        "lora.r=4",
        "lora.target_modules=[q_proj,v_proj,up_proj]",
    )
    assert r.returncode == 0, r.stderr
    acfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert acfg["peft_type"] == "LORA" and acfg["r"] == 4
    assert acfg["base_model_name_or_path"] == str(tiny_model_dir.resolve())
    base = AutoModelForCausalLM.from_pretrained(acfg["base_model_name_or_path"])
    tok = AutoTokenizer.from_pretrained(str(out / "adapter"))
    base_logits = _logits(base, tok)
    peft = PeftModel.from_pretrained(base, str(out / "adapter")).eval()
    tuned = _logits(peft, tok)
    assert not torch.allclose(tuned, base_logits)

    merged_dir = tmp_path / "merged"
    code, _, stderr = _main(capsys, "merge", str(out), "--output", str(merged_dir))
    assert code == 0, stderr
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir))
    torch.testing.assert_close(_logits(merged, tok), tuned, rtol=1e-4, atol=1e-4)
    assert not (merged_dir / "adapter_config.json").exists()

    # merging something that is not a LoRA is a clean error
    code, _, stderr = _main(capsys, "merge", str(tiny_model_dir), "--output", str(tmp_path / "m2"))
    assert code == 2 and "not an adapter directory" in stderr


def test_bad_config_reports_every_problem_before_loading(tiny_task, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "bad"
    code, _, stderr = _main(
        capsys,
        "finetune",
        "--task",
        str(tiny_task),
        "--model",
        str(tiny_model_dir),
        "--method",
        "lora",
        "--output",
        str(out),
        "train.bogus=1",
        "train.batch_size=many",
        "lora.target_modules=[q_proj,qkv]",
        "rag=maybe",
    )
    assert code == 2, stderr
    err = stderr.replace("\n", " ")
    for needle in ("train.bogus: unknown key", "train.batch_size", "'qkv' matches no module", "rag:"):
        assert needle in err, needle
    assert not out.exists(), "nothing may be written for a bad config"
    # a prefix method on a model reference that does not exist, plus a wrong method name
    r = _cli(
        "finetune",
        "--task",
        str(tiny_task),
        "--model",
        str(tmp_path / "nope"),
        "--method",
        "qlora",
        "--output",
        str(out),
    )
    assert r.returncode == 2 and "method" in r.stderr and "nope" in r.stderr and "Traceback" not in r.stderr


def test_unfinished_output_needs_resume_and_same_config(tiny_task, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    base = [
        "finetune",
        "--task",
        str(tiny_task),
        "--model",
        str(tiny_model_dir),
        "--method",
        "ia3",
        "--output",
        str(out),
        "--quiet",
    ]
    (out / "config.yaml").write_text("{}\n")
    code, _, stderr = _main(capsys, *base, *FAST)
    assert code == 2 and "--resume" in stderr
    code, _, stderr = _main(capsys, *base, *FAST, "--resume")
    assert code == 2 and "changed:" in stderr
