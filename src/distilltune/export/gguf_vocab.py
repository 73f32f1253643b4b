"""The tokenizer and chat template as GGUF metadata, and the Ollama Modelfile that points at the file.

llama.cpp rebuilds the tokenizer from these keys alone: the token strings in id order (byte-level
spelling, as the Hugging Face BPE model stores them), their types, the merges, the special ids, and
a *pre-tokenizer* name that selects the regex splitting text before BPE. That name is not in a
Hugging Face tokenizer; llama.cpp's own converter recognises vocabularies by fingerprint, and so do
we, for the vocabularies this project ships (SmolLM2, the bundled teacher's, and every student pruned
from it). An unknown byte-level vocabulary gets the plain GPT-2 split, with a warning in the report.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from distilltune.errors import UserError

# token types as llama.cpp numbers them
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5

# sha256 of the token strings in id order, joined by NUL → llama.cpp pre-tokenizer name
KNOWN_PRE_TOKENIZERS = {
    "0e0d60eaa849a6265d6376432d4e79de04a0b21c91918017d99781f9785245d6": "smollm",
}


@dataclass
class GGUFVocab:
    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    pad_id: int | None
    add_bos: bool
    chat_template: str | None
    warnings: list[str] = field(default_factory=list)


def vocab_fingerprint(tokens: list[str]) -> str:
    return hashlib.sha256("\x00".join(tokens).encode("utf-8")).hexdigest()


def _merges(model_json: dict) -> list[str]:
    """Merges as llama.cpp stores them ("a b"); tokenizers writes pairs or strings depending on version."""
    out = []
    for m in model_json.get("merges") or []:
        out.append(" ".join(m) if isinstance(m, list | tuple) else str(m))
    return out


def _byte_level(spec: dict | None) -> tuple[bool, bool]:
    """(uses byte-level BPE, is exactly GPT-2's ByteLevel split) for a tokenizer.json pre_tokenizer."""
    if not spec:
        return False, False
    if spec.get("type") == "ByteLevel":
        return True, bool(spec.get("use_regex", True))
    parts = spec.get("pretokenizers") or []
    return any(p.get("type") == "ByteLevel" for p in parts), False


def build_vocab(tokenizer, n_vocab: int) -> GGUFVocab:
    """Read ``tokenizer`` (a fast Hugging Face tokenizer) into llama.cpp's tokenizer keys.

    ``n_vocab`` is the embedding's row count: llama.cpp needs exactly one token string per row, so a
    model with spare rows gets ``[PAD<i>]`` entries marked unused."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UserError("GGUF export needs a fast (tokenizers-backed) tokenizer; this model has a slow one")
    spec = json.loads(backend.to_str())
    model_json = spec.get("model") or {}
    byte_level, gpt2_split = _byte_level(spec.get("pre_tokenizer"))
    if model_json.get("type") != "BPE" or not byte_level:
        raise UserError(
            f"GGUF export supports byte-level BPE tokenizers (GPT-2 / SmolLM / Llama-3 style); this one is "
            f"{model_json.get('type')} with pre-tokenizer {(spec.get('pre_tokenizer') or {}).get('type')}"
        )
    n_tok = len(tokenizer)
    if n_tok > n_vocab:
        raise UserError(f"the tokenizer has {n_tok} tokens but the model's embedding only {n_vocab} rows")
    tokens = list(tokenizer.convert_ids_to_tokens(list(range(n_tok))))
    if any(t is None for t in tokens):
        raise UserError("the tokenizer's ids are not contiguous; cannot write a GGUF vocabulary")
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    types = [(CONTROL if added[i].special else USER_DEFINED) if i in added else NORMAL for i in range(n_tok)]
    tokens += [f"[PAD{i}]" for i in range(n_tok, n_vocab)]
    types += [UNUSED] * (n_vocab - n_tok)
    warnings = []
    pre = KNOWN_PRE_TOKENIZERS.get(vocab_fingerprint(tokens[:n_tok]))
    if pre is None:
        pre = "gpt2" if gpt2_split else "default"
        warnings.append(
            f"unknown vocabulary: llama.cpp pre-tokenizer {pre!r} written; check that llama.cpp tokenizes "
            "like the source tokenizer before shipping"
        )
    probe = tokenizer("x", add_special_tokens=True)["input_ids"]
    bos = tokenizer.bos_token_id
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str):
        template = None
        warnings.append("the tokenizer has no chat template: llama.cpp and Ollama will use their default")
    return GGUFVocab(
        tokens=tokens,
        types=types,
        merges=_merges(model_json),
        pre=pre,
        bos_id=bos,
        eos_id=tokenizer.eos_token_id,
        unk_id=tokenizer.unk_token_id,
        pad_id=tokenizer.pad_token_id,
        add_bos=bos is not None and bool(probe) and probe[0] == bos,
        chat_template=template,
        warnings=warnings,
    )


def write_vocab(writer, vocab: GGUFVocab) -> None:
    """Add the tokenizer keys to a ``gguf.GGUFWriter``."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    for value, add in (
        (vocab.bos_id, writer.add_bos_token_id),
        (vocab.eos_id, writer.add_eos_token_id),
        (vocab.unk_id, writer.add_unk_token_id),
        (vocab.pad_id, writer.add_pad_token_id),
    ):
        if value is not None:
            add(int(value))
    writer.add_add_bos_token(vocab.add_bos)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)


def _triple_quoted(text: str, what: str) -> str:
    if '"""' in text:
        raise UserError(f'the {what} contains """, which an Ollama Modelfile cannot quote; remove it')
    return f'"""{text}"""'


def modelfile(gguf_name: str, vocab: GGUFVocab, system_prompt: str | None) -> str:
    """An Ollama Modelfile: the file, the prompt format, the stop tokens and (with a task) its system prompt.

    Ollama reads GGUF chat templates only when it recognises them, so a ChatML template (the bundled
    family's) is also spelled out in Ollama's own template language."""
    lines = [f"FROM ./{gguf_name}", ""]
    template = vocab.chat_template or ""
    if "<|im_start|>" in template:
        go = (
            "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
            '{{ range .Messages }}{{ if ne .Role "system" }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n'
            "{{ end }}{{ end }}"
            "<|im_start|>assistant\n"
        )
        lines += [f"TEMPLATE {_triple_quoted(go, 'template')}", ""]
    if system_prompt:
        lines += [f"SYSTEM {_triple_quoted(system_prompt.strip(), 'system prompt')}", ""]
    stops = []
    for tid in (vocab.eos_id,):
        if tid is not None:
            stops.append(vocab.tokens[tid])
    if "<|im_start|>" in template:
        stops += [t for t in ("<|im_end|>", "<|im_start|>") if t not in stops]
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    lines += ["PARAMETER temperature 0", ""]
    return "\n".join(lines)
