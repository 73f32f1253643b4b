"""``export_model``: source → deployable file(s) + ``export.json``, written atomically into one directory.

Output layout (``--output OUT``):

- gguf: ``OUT/model-<quant>.gguf`` (tokenizer and chat template inside) and ``OUT/Modelfile`` (Ollama);
- onnx: ``OUT/model.onnx``, ``OUT/onnx_io.json`` (input/output names), the tokenizer files, ``config.json``;
- safetensors: a plain transformers directory (adapters merged).

``export.json`` holds the format, quantization, file sizes against the float32 safetensors size and,
with a task, the round trip on its eval prompts. Everything is written to a temporary directory that
replaces ``OUT`` only when complete.
"""

from __future__ import annotations

import time
from pathlib import Path

from distilltune.errors import UserError
from distilltune.export.config import ExportConfig
from distilltune.export.source import Source, fp32_bytes, load_source
from distilltune.io import atomic_dir, atomic_write_json


def _log(msg: str) -> None:
    import sys

    print(f"[distilltune] {msg}", file=sys.stderr, flush=True)


def _check_output(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not an empty directory; choose another --output")


def _write_gguf(src: Source, cfg: ExportConfig, tmp: Path, system_prompt: str | None) -> dict:
    from distilltune.export.gguf_export import llama_hparams, write_gguf
    from distilltune.export.gguf_vocab import build_vocab, modelfile

    llama_hparams(src.model.config)  # a clear error for other architectures before anything else
    n_vocab = src.model.get_input_embeddings().weight.shape[0]
    vocab = build_vocab(src.tokenizer, n_vocab)
    name = f"model-{'f32' if cfg.quant == 'none' else cfg.quant}.gguf"
    res = write_gguf(src.model, vocab, tmp / name, cfg.quant, cfg.name or Path(cfg.output).name)
    (tmp / "Modelfile").write_text(modelfile(name, vocab, system_prompt))
    return {
        "model_file": name,
        "tensor_types": res.tensor_types,
        "pre_tokenizer": vocab.pre,
        "chat_template": vocab.chat_template is not None,
        "warnings": vocab.warnings + res.warnings,
    }


def _write_onnx(src: Source, cfg: ExportConfig, tmp: Path) -> dict:
    from distilltune.export.onnx_export import ONNX_FILE, export_onnx

    res = export_onnx(src.model, tmp, cfg.quant)
    src.tokenizer.save_pretrained(tmp)
    src.model.config.save_pretrained(tmp)
    return {"model_file": ONNX_FILE, "warnings": res.warnings}


def _write_safetensors(src: Source, tmp: Path) -> dict:
    src.model.save_pretrained(tmp, safe_serialization=True)
    src.tokenizer.save_pretrained(tmp)
    return {"model_file": "model.safetensors", "warnings": []}


def _exported_lm(cfg: ExportConfig, tmp: Path, model_file: str):
    """Reload the export the way its users will: GGUF through transformers' GGUF loader, ONNX in ORT."""
    from distilltune.export.lm import OnnxLM, TorchLM

    if cfg.format == "onnx":
        from transformers import AutoTokenizer

        lm = OnnxLM(tmp)
        lm.tokenizer = AutoTokenizer.from_pretrained(str(tmp))
        return lm
    from distilltune.models import load_model

    loaded = load_model(str(tmp / model_file) if cfg.format == "gguf" else str(tmp))
    return TorchLM(loaded.model, loaded.tokenizer)


def _roundtrip(src: Source, cfg: ExportConfig, task, tmp: Path, model_file: str) -> dict:
    from distilltune.data.chat import with_system
    from distilltune.export.lm import TorchLM
    from distilltune.export.roundtrip import compare

    items = task.eval[: cfg.check]
    prompts = [with_system(task.system_prompt, [m.model_dump() for m in c.prompt_messages]) for c in items]
    facts = [list(c.facts) for c in items]
    exported = _exported_lm(cfg, tmp, model_file)
    return compare(TorchLM(src.model, src.tokenizer), exported, prompts, facts, cfg.max_new_tokens)


def export_model(cfg: ExportConfig) -> dict:
    """Export ``cfg.model``; returns the report also written to ``OUT/export.json``."""
    out = Path(cfg.output)
    _check_output(out)
    task = None
    if cfg.task:
        from distilltune.task import load_task

        task = load_task(cfg.task)  # validate before the slow part
    if cfg.format == "onnx":
        from distilltune.export.onnx_export import require_onnx

        require_onnx()
    t0 = time.perf_counter()
    src = load_source(cfg.model, cfg.teacher)
    _log(
        f"exporting {cfg.model} as {cfg.format} ({cfg.quant})"
        + (f", merged a {src.merged} adapter" if src.merged else "")
    )
    with atomic_dir(out) as tmp:
        if cfg.format == "gguf":
            info = _write_gguf(src, cfg, tmp, task.system_prompt if task else None)
        elif cfg.format == "onnx":
            info = _write_onnx(src, cfg, tmp)
        else:
            info = _write_safetensors(src, tmp)
        export_s = time.perf_counter() - t0
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        weights = sum(
            v for k, v in files.items() if k.endswith((".gguf", ".onnx", ".onnx.data", ".safetensors"))
        )
        full = fp32_bytes(src.model)
        report = {
            "format": cfg.format,
            "quant": cfg.quant,
            "source": cfg.model,
            "source_kind": src.kind,
            "merged_adapter": src.merged,
            **info,
            "files": files,
            "size_bytes": weights,
            "fp32_safetensors_bytes": full,
            "params": sum(p.numel() for p in src.model.parameters()),
            "size_ratio": weights / full if full else None,
            "export_s": round(export_s, 2),
            "roundtrip": None,
        }
        if task is not None and cfg.check > 0:
            _log(f"round trip on {min(cfg.check, len(task.eval))} eval prompts of {task.name}")
            report["roundtrip"] = _roundtrip(src, cfg, task, tmp, info["model_file"])
        atomic_write_json(tmp / "export.json", report)
    return report
