"""Tiny random Llama models with the bundled tokenizer's vocabulary, for tests and tools/device_check.py.

Kept apart from conftest so a script can build the same models without pytest's fixtures.
"""

from __future__ import annotations

from pathlib import Path


def build_tiny_llama(
    tokenizer_dir: Path,
    out: Path,
    layers: int = 2,
    hidden: int = 32,
    seed: int = 0,
    initializer_range: float = 0.02,
    heads: int = 4,
    kv_heads: int = 2,
) -> Path:
    """A random Llama with the bundled tokenizer's vocabulary, saved as a normal HF directory.

    The default initialisation gives a model that emits mostly newlines; a large ``initializer_range``
    (0.5) gives one that writes varied text with confident-enough greedy choices (serving tests)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        initializer_range=initializer_range,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        use_cache=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out
