"""Models: resolve references (built-in, local, GGUF, hub, student specs), build students, generate."""

from distilltune.models.info import ModelInfo, dir_size_bytes, model_info
from distilltune.models.resolve import Loaded, check_same_vocab, load_model, load_tokenizer

__all__ = [
    "Loaded",
    "ModelInfo",
    "check_same_vocab",
    "dir_size_bytes",
    "load_model",
    "load_tokenizer",
    "model_info",
]
