"""Export: a trained model to the formats people deploy (GGUF for llama.cpp / Ollama, ONNX, safetensors).

``export_model(ExportConfig(model=..., output=..., format="gguf", quant="q8_0", task=...))`` writes the
file(s) and ``export.json`` (sizes and the round-trip check) into ``output``. See docs/export.md.
"""

from distilltune.export.config import ExportConfig
from distilltune.export.run import export_model

__all__ = ["ExportConfig", "export_model"]
