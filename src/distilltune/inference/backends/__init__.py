"""Generation backends behind one engine interface: name → how to open an engine for a model.

- ``torch``: the continuous-batching ``inference.engine.Engine`` over a transformers model (any
  reference ``load_model`` accepts), built by ``inference.engine.open_engine`` like every torch engine;
- ``onnx``: ONNX Runtime over the directory ``distilltune export --format onnx`` writes
  (``backends.onnx``; the ``onnx`` extra);
- ``llama.cpp``: llama.cpp over a ``.gguf`` (``backends.llamacpp``; the ``gguf`` extra).

The non-torch backends decode one request at a time (``continuous_batching`` false: the server
reports it in ``/v1/models``). Every engine has the same methods, so ``RequestPath`` drivers (the
server, evaluation, the efficiency probe) do not care which one generates. Opening a backend needs
its deployed file; turning a trained model into one is ``export``'s job (``export.deployed`` exports
on the fly into a cache), which sits above this stage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from distilltune.errors import UserError


@dataclass(frozen=True)
class Backend:
    name: str
    continuous_batching: bool
    export_format: str | None  # what ``distilltune export --format`` writes for it (None: no export)
    quants: tuple[str, ...]  # the ``--quant`` values of that format
    artifact: str  # what it loads, for messages


BACKENDS: dict[str, Backend] = {
    "torch": Backend(
        "torch", True, None, ("none",), "a model reference (run dir, model dir, built-in, spec)"
    ),
    "onnx": Backend("onnx", False, "onnx", ("none", "int8"), "an ONNX export directory"),
    "llama.cpp": Backend("llama.cpp", False, "gguf", ("none", "f16", "q8_0", "q4_k_m"), "a .gguf file"),
}
BACKEND_NAMES = tuple(BACKENDS)


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return BACKENDS[name]


def find_artifact(backend: str, ref: str) -> Path | None:
    """``ref`` itself when it already is ``backend``'s deployed format (an ONNX export dir, a ``.gguf``,
    or an export dir holding exactly one ``.gguf``); None otherwise (it must be exported first)."""
    from distilltune.inference.backends.onnx import is_onnx_dir

    p = Path(ref).expanduser()
    if backend == "onnx" and is_onnx_dir(p):
        return p
    if backend == "llama.cpp":
        if p.suffix == ".gguf" and p.is_file():
            return p
        if p.is_dir():
            found = sorted(p.glob("*.gguf"))
            if len(found) == 1:
                return found[0]
    return None


def artifact_size(backend: str, path: Path) -> int:
    """Bytes of the weights a backend loads: the ``.gguf``, or ``model.onnx`` plus external data."""
    if backend == "llama.cpp":
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file() and f.name.startswith("model.onnx"))


def artifact_params(backend: str, path: Path) -> int | None:
    """Parameter count recorded by the export (``export.json``), else counted from the GGUF tensors."""
    report = (path.parent if path.is_file() else path) / "export.json"
    if report.is_file():
        params = json.loads(report.read_text()).get("params")
        if params:
            return int(params)
    if backend == "llama.cpp":
        from gguf import GGUFReader

        return int(sum(t.n_elements for t in GGUFReader(str(path)).tensors))
    return None


@dataclass
class Opened:
    """An engine ready to ``start()``, with what a request path needs around it."""

    engine: object
    tokenizer: object
    stop_ids: list[int]
    backend: Backend
    ref: str
    artifact: Path | None  # the deployed file/dir (None for torch)
    max_positions: int | None
    params: int | None
    size_bytes: int | None
    model: object = None  # the torch model (torch backend only)


def _tokenizer_for(backend: str, path: Path):
    from distilltune.models import load_tokenizer

    tok = load_tokenizer(str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _open_torch(b: Backend, ref: str, kw: dict, teacher: str | None, dtype: str) -> Opened:
    from distilltune.inference.engine import open_engine
    from distilltune.models import load_model

    loaded = load_model(ref, teacher=teacher, dtype=dtype)
    kw = {k: v for k, v in kw.items() if k != "threads"}  # torch threads are the process's (set_threads)
    engine = open_engine(loaded.model, loaded.tokenizer, **kw)
    positions = getattr(loaded.model.config, "max_position_embeddings", None)
    params = sum(p.numel() for p in loaded.model.parameters())
    return Opened(
        engine, loaded.tokenizer, engine.stop_ids, b, ref, None, positions, params, None, loaded.model
    )


def _open_runtime(b: Backend, ref: str, kw: dict) -> Opened:
    from distilltune.data.chat import stop_token_ids

    path = find_artifact(b.name, ref)
    if path is None:
        raise UserError(
            f"--backend {b.name} loads {b.artifact}; {ref!r} is not one. Export it first: "
            f"distilltune export {ref} --format {b.export_format} --output DIR (or let serve/evaluate "
            "export it on the fly)"
        )
    if b.name == "llama.cpp":
        from distilltune.inference.backends.llamacpp import LlamaCppEngine as EngineClass
        from distilltune.inference.backends.llamacpp import require_llama_cpp

        require_llama_cpp()  # before the tokenizer: the missing extra is the first thing to say
    else:
        from distilltune.inference.backends.onnx import OnnxEngine as EngineClass
    tok = _tokenizer_for(b.name, path)
    stops = stop_token_ids(tok)
    kw = {k: v for k, v in kw.items() if k != "max_batch"}  # one request at a time
    engine = EngineClass(path, stops, **kw)
    return Opened(
        engine,
        tok,
        stops,
        b,
        ref,
        path,
        engine.max_context,
        artifact_params(b.name, path),
        artifact_size(b.name, path),
    )


def open_model(
    backend: str,
    ref: str,
    *,
    name: str = "model",
    max_batch: int | None = None,
    max_queue: int | None = None,
    on_batch=None,
    threads: int | None = None,
    teacher: str | None = None,
    dtype: str = "float32",
) -> Opened:
    """Load ``ref`` for ``backend`` and build its engine (not started). Non-torch backends need their
    deployed format (``find_artifact``); a clear error says how to export it otherwise."""
    from distilltune.inference.engine import DEFAULT_MAX_BATCH, DEFAULT_MAX_QUEUE

    b = get_backend(backend)
    kw = {
        "name": name,
        "max_batch": max_batch or DEFAULT_MAX_BATCH,
        "max_queue": max_queue or DEFAULT_MAX_QUEUE,
        "on_batch": on_batch,
        "threads": threads,
    }
    if b.name == "torch":
        return _open_torch(b, ref, kw, teacher, dtype)
    return _open_runtime(b, ref, kw)


__all__ = [
    "BACKENDS",
    "BACKEND_NAMES",
    "Backend",
    "Opened",
    "artifact_params",
    "artifact_size",
    "find_artifact",
    "get_backend",
    "open_model",
]
