"""Typed settings of ``distilltune export`` (the single source of truth for the CLI and Python callers)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from distilltune.config import StrictModel

Format = Literal["gguf", "onnx", "safetensors"]
Quant = Literal["none", "f16", "q8_0", "q4_k_m", "int8"]

# Which quantizations each format can write. GGUF block quantization is what llama.cpp runs; ONNX
# Runtime's dynamic quantization stores int8 weights and quantizes activations on the fly.
FORMAT_QUANTS: dict[str, tuple[str, ...]] = {
    "gguf": ("none", "f16", "q8_0", "q4_k_m"),
    "onnx": ("none", "int8"),
    "safetensors": ("none",),
}


class ExportConfig(StrictModel):
    model: (
        str  # any model reference load_model accepts: run dir, HF dir, adapter, .gguf, built-in, student spec
    )
    output: str  # a directory: the model file(s), export.json and (GGUF) an Ollama Modelfile go inside
    format: Format = "gguf"
    quant: Quant = "none"
    teacher: str | None = None  # for student specs like teacher:n_layers=6
    task: str | None = None  # system prompt for the Modelfile; eval prompts for the round-trip check
    check: int = Field(default=16, ge=0)  # eval prompts for the round-trip check (needs task; 0 = skip)
    max_new_tokens: int = Field(default=48, ge=1)
    name: str | None = None  # model name written into the metadata (default: the output dir's name)

    @model_validator(mode="after")
    def _quant_fits_format(self) -> ExportConfig:
        allowed = FORMAT_QUANTS[self.format]
        if self.quant not in allowed:
            raise ValueError(
                f"--quant {self.quant} does not apply to --format {self.format}; choose one of {', '.join(allowed)}"
            )
        return self
