"""An adapter still loads when the absolute path of its base is gone (temporary home, copied run dir).

The adapter records the base's absolute path (so plain PEFT loads it) and, next to it, a portable
reference: the built-in's name or the base's path relative to the adapter. The reference outputs come
from PEFT loading the adapter onto the original base before anything moved.
"""

import json
import shutil

import pytest
import torch
from peft import AutoPeftModelForCausalLM, LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from distilltune.errors import UserError
from distilltune.models import load_model
from distilltune.models.bundled import COMPLETE_MARKER
from distilltune.models.resolve import BASE_SIDECAR, adapter_base_ref
from distilltune.train.artifacts import save_trained

BUILTIN = "smollm2-135m-instruct"
IDS = torch.tensor([[1, 5, 9, 13, 2, 7]])


def _train_and_save(base_dir, tokenizer, out_dir):
    """A LoRA adapter with non-zero weights saved the way a training run saves it; PEFT's logits."""
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(base_dir))
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    adapter = save_trained(get_peft_model(base, cfg), tokenizer, "lora", out_dir, str(base_dir.resolve()))
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base_dir)), str(adapter))
    with torch.no_grad():
        return adapter, ref.eval()(IDS).logits


def _fake_builtin_home(home, tiny_model_dir):
    """A DISTILLTUNE_HOME whose built-in cache holds the tiny model (no 135M weights in tests)."""
    d = home / "models" / BUILTIN
    shutil.copytree(tiny_model_dir, d)
    (d / COMPLETE_MARKER).write_text("ok\n")
    return d


def _logits(ref):
    with torch.no_grad():
        return load_model(str(ref)).model(IDS).logits


def test_builtin_base_in_a_deleted_home_loads_by_name(tiny_model_dir, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLTUNE_HOME", str(tmp_path / "home1"))
    base = _fake_builtin_home(tmp_path / "home1", tiny_model_dir)
    adapter, want = _train_and_save(base, tokenizer, tmp_path / "run")
    assert json.loads((adapter / BASE_SIDECAR).read_text()) == {"ref": BUILTIN}
    # PEFT alone still finds the base through the recorded absolute path.
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
    peft_alone = AutoPeftModelForCausalLM.from_pretrained(str(adapter)).eval()
    with torch.no_grad():
        assert torch.allclose(peft_alone(IDS).logits, want, atol=1e-5)

    # The temporary home disappears; the built-in is materialized in another one.
    monkeypatch.setenv("DISTILLTUNE_HOME", str(tmp_path / "home2"))
    _fake_builtin_home(tmp_path / "home2", tiny_model_dir)
    shutil.rmtree(tmp_path / "home1")
    assert adapter_base_ref(adapter) == BUILTIN
    assert torch.allclose(_logits(adapter), want, atol=1e-5)


def test_copied_run_dir_finds_its_own_base_model(tiny_model_dir, tokenizer, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_model_dir, run / "base-model")  # as train.run saves an in-memory base
    adapter, want = _train_and_save(run / "base-model", tokenizer, run)
    assert json.loads((adapter / BASE_SIDECAR).read_text()) == {"ref": "../base-model"}
    moved = tmp_path / "elsewhere" / "run"
    shutil.move(str(run), str(moved))
    assert adapter_base_ref(moved / "adapter") == str((moved / "base-model").resolve())
    assert torch.allclose(_logits(moved), want, atol=1e-5)


def test_adapter_written_before_the_sidecar_recognises_a_builtin_cache(
    tiny_model_dir, tokenizer, tmp_path, monkeypatch
):
    monkeypatch.setenv("DISTILLTUNE_HOME", str(tmp_path / "home"))
    _fake_builtin_home(tmp_path / "home", tiny_model_dir)
    adapter, want = _train_and_save(tiny_model_dir, tokenizer, tmp_path / "run")
    assert not (adapter / BASE_SIDECAR).exists()  # a user's own directory has no portable reference
    cfg_file = adapter / "adapter_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["base_model_name_or_path"] = f"/tmp/dt-demo-gone/home/models/{BUILTIN}"  # demo.py's layout
    cfg_file.write_text(json.dumps(cfg))
    assert adapter_base_ref(adapter) == BUILTIN
    assert torch.allclose(_logits(adapter), want, atol=1e-5)


def test_missing_base_without_portable_reference_is_a_clear_error(tiny_model_dir, tokenizer, tmp_path):
    base = tmp_path / "my-base"
    shutil.copytree(tiny_model_dir, base)
    adapter, _ = _train_and_save(base, tokenizer, tmp_path / "run")
    assert not (adapter / BASE_SIDECAR).exists()
    shutil.rmtree(base)
    with pytest.raises(UserError) as e:
        load_model(str(adapter))
    msg = str(e.value)
    assert str(adapter / "adapter_config.json") in msg and str(base.resolve()) in msg
    assert "no portable reference" in msg


def test_unusable_portable_reference_names_both(tiny_model_dir, tokenizer, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_model_dir, run / "base-model")
    adapter, _ = _train_and_save(run / "base-model", tokenizer, run)
    shutil.rmtree(run / "base-model")
    with pytest.raises(UserError) as e:
        load_model(str(run))
    msg = str(e.value)
    assert str((run / "base-model").resolve()) in msg and "'../base-model'" in msg
    assert str(adapter / BASE_SIDECAR) in msg
    (adapter / BASE_SIDECAR).write_text("[1, 2]")
    with pytest.raises(UserError, match=BASE_SIDECAR):
        load_model(str(run))


def test_teacher_fingerprint_ignores_the_sidecar(tiny_model_dir, tokenizer, tmp_path):
    from distilltune.distill.cache_key import teacher_fingerprint

    run = tmp_path / "run"
    shutil.copytree(tiny_model_dir, run / "base-model")
    adapter, _ = _train_and_save(run / "base-model", tokenizer, run)
    with_sidecar = teacher_fingerprint(str(adapter))
    (adapter / BASE_SIDECAR).unlink()
    assert teacher_fingerprint(str(adapter)) == with_sidecar  # keys written before the fix stay valid
