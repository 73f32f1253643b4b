"""Build everything the server holds from a ``ServeConfig``: task, guard, prompter, engines, log.

Model ids in the API follow vLLM's convention: MODEL is served under ``served_name``; each
``--adapter name=DIR`` is a LoRA adapter loaded onto the same base weights (PEFT ``load_adapter``)
and served as ``name`` with MODEL's base as its parent. One engine (one worker, one copy of the
weights) serves them all, batching requests per adapter. The ``--fallback`` model gets an engine of
its own, and so does a ``--candidate`` (A/B or shadow serving, ``serve/ab.py``): the two arms are two
engines behind the one request path.

Every problem an operator can fix (missing files, a bad adapter, an unset API-key variable) is a
``UserError`` raised before the server binds its port.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from distilltune.errors import UserError
from distilltune.inference.engine import Engine, open_engine
from distilltune.serve.config import ServeConfig
from distilltune.serve.metrics import ServerMetrics
from distilltune.serve.requestlog import RequestLog

# PEFT methods that live in the weights' forward pass, so several can share one base and a KV cache.
STACKABLE_PEFT = ("LORA", "IA3", "LOHA", "LOKR", "ADALORA")


@dataclass
class ModelSlot:
    """One engine and what talks to it: the tokenizer (guarded by a lock; HF tokenizers are not
    safe to call from several threads at once) and the stop tokens."""

    role: str  # "student" | "fallback" | "candidate"
    ref: str
    engine: Engine
    tokenizer: object
    tok_lock: threading.Lock
    max_positions: int | None
    backend: str = "torch"  # inference.backends name; only torch batches continuously


@dataclass
class ServedModel:
    id: str
    slot: ModelSlot
    adapter: str | None  # PEFT adapter name inside the slot's model, None = the plain model
    parent: str | None
    created: int = field(default_factory=lambda: int(time.time()))


@dataclass
class ServerState:
    config: ServeConfig
    task: object
    guard: object
    prompter: object
    student: ModelSlot
    fallback: ModelSlot | None
    models: dict[str, ServedModel]
    metrics: ServerMetrics
    log: RequestLog
    api_key: str | None = None
    candidate: ServedModel | None = None  # answers MODEL's id for the candidate arm

    def slots(self) -> dict[str, ModelSlot]:
        """Every engine's slot by role (``/health`` reports each)."""
        out = {"student": self.student}
        if self.fallback is not None:
            out["fallback"] = self.fallback
        if self.candidate is not None:
            out["candidate"] = self.candidate.slot
        return out

    def start(self) -> None:
        for slot in self.slots().values():
            slot.engine.start()

    def stop(self) -> None:
        for slot in self.slots().values():
            slot.engine.stop()
        self.log.close()


def default_served_name(ref: str) -> str:
    p = Path(ref).expanduser()
    if p.exists():
        p = p.resolve()
        if p.name in ("model", "adapter") and (p.parent / "config.yaml").exists():
            p = p.parent  # a run dir's artifact: name it after the run
        return p.stem if p.suffix == ".gguf" else p.name
    return ref


def _max_positions(model) -> int | None:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(getattr(base, "config", None), "max_position_embeddings", None)


def _adapter_dir(name: str, raw: str) -> tuple[Path, dict]:
    from distilltune.models.resolve import run_artifact_dir

    p = Path(raw).expanduser()
    if not p.is_dir():
        raise UserError(f"--adapter {name}={raw}: directory not found")
    d = run_artifact_dir(p)
    cfg_file = d / "adapter_config.json"
    if not cfg_file.is_file():
        raise UserError(
            f"--adapter {name}={raw}: no adapter_config.json (expected a PEFT adapter or a run dir)"
        )
    cfg = json.loads(cfg_file.read_text())
    ptype = str(cfg.get("peft_type", "")).upper()
    if ptype not in STACKABLE_PEFT:
        raise UserError(
            f"--adapter {name}={raw}: peft_type {ptype or '?'} cannot share a base with other adapters "
            f"(supported: {', '.join(STACKABLE_PEFT)}); serve it alone as MODEL instead"
        )
    return d, cfg


def _attach_adapters(model, adapters: dict[str, str], primary: str | None):
    """Load each adapter onto ``model`` (wrapping it in a PeftModel if needed); returns the model."""
    from peft import PeftModel

    for name, raw in adapters.items():
        d, _ = _adapter_dir(name, raw)
        try:
            if isinstance(model, PeftModel):
                model.load_adapter(str(d), adapter_name=name)
            else:
                model = PeftModel.from_pretrained(model, str(d), adapter_name=name)
        except (ValueError, RuntimeError, KeyError) as e:
            raise UserError(
                f"--adapter {name}={raw}: does not fit the base model ({type(e).__name__}: {str(e)[:300]})"
            ) from None
    if primary is not None:
        model.set_adapter(primary)
    return model.eval()


def load_slot(
    role: str,
    ref: str,
    cfg: ServeConfig,
    metrics: ServerMetrics,
    adapters: dict[str, str] | None = None,
) -> tuple[ModelSlot, dict[str, str | None]]:
    """Load ``ref`` (+ adapters) into an engine; returns the slot and {served id → adapter name}."""
    if cfg.backend != "torch":
        return _load_exported_slot(role, ref, cfg, metrics)
    from peft import PeftModel

    from distilltune.models import load_model

    # merged for speed when served alone; extra adapters were trained on the bare base, so then not
    loaded = load_model(ref, teacher=cfg.teacher, merge=not adapters)
    model = loaded.model
    ids: dict[str, str | None] = {}
    name = (cfg.served_name if role == "student" else None) or default_served_name(ref)
    engine_adapters: list[str] = []
    if isinstance(model, PeftModel):
        primary = model.active_adapter if isinstance(model.active_adapter, str) else "default"
        ids[name] = primary
        engine_adapters.append(primary)
    else:
        primary = None
        ids[name] = None
    if adapters:
        if name in adapters:
            raise UserError(
                f"--adapter {name}: that name is already MODEL's id; pick another (or set served_name)"
            )
        if not isinstance(model, PeftModel) and not hasattr(model, "load_adapter"):
            raise UserError(f"{ref}: this model type cannot take extra adapters")
        if loaded.kind == "adapter" and not isinstance(model, PeftModel):
            raise UserError(f"{ref}: a distilltune bottleneck adapter cannot share its base with --adapter")
        model = _attach_adapters(model, adapters, primary)
        for a in adapters:
            ids[a] = a
            engine_adapters.append(a)
    tok = loaded.tokenizer
    engine = open_engine(
        model,
        tok,
        name=role,
        max_batch=cfg.batching.max_batch,
        max_queue=cfg.limits.max_queue,
        adapters=tuple(engine_adapters),
        on_batch=metrics.batch_size.labels(role).observe,
    )
    metrics.track_engine(role, lambda: engine.queue_depth, lambda: engine.active)
    slot = ModelSlot(role, ref, engine, tok, threading.Lock(), _max_positions(model))
    return slot, ids


def _load_exported_slot(
    role: str, ref: str, cfg: ServeConfig, metrics: ServerMetrics
) -> tuple[ModelSlot, dict[str, str | None]]:
    """A slot whose engine is an ONNX Runtime / llama.cpp backend: ``ref`` as given if it already is
    that format, else exported on the fly into the export cache (``export.deployed``)."""
    import sys

    from distilltune.export.deployed import deployed_artifact
    from distilltune.inference.backends import open_model

    def note(msg: str) -> None:
        print(f"[distilltune] {msg}", file=sys.stderr, flush=True)

    dep = deployed_artifact(ref, cfg.backend, cfg.quant, cfg.teacher, log=note)
    opened = open_model(
        cfg.backend,
        str(dep.path),
        name=role,
        max_queue=cfg.limits.max_queue,
        on_batch=metrics.batch_size.labels(role).observe,
    )
    engine = opened.engine
    metrics.track_engine(role, lambda: engine.queue_depth, lambda: engine.active)
    name = (cfg.served_name if role == "student" else None) or default_served_name(ref)
    slot = ModelSlot(role, ref, engine, opened.tokenizer, threading.Lock(), opened.max_positions, cfg.backend)
    return slot, {name: None}


def _base_parent(ref: str) -> str | None:
    """For an adapter MODEL: its base model reference (the parent in /v1/models)."""
    from distilltune.models.resolve import adapter_base_ref, resolve_path

    try:
        kind, path = resolve_path(ref)
        return adapter_base_ref(path) if kind == "adapter" and path is not None else None
    except UserError:
        return None


def build_state(cfg: ServeConfig) -> ServerState:
    """Load the task, guard, prompter, models and log; nothing is started yet."""
    from distilltune.inference import build_path
    from distilltune.task import load_task

    api_key = None
    if cfg.api_key_env:
        api_key = os.environ.get(cfg.api_key_env, "")
        if not api_key.strip():
            raise UserError(
                f"--api-key-env {cfg.api_key_env}: that environment variable is not set or empty "
                "(export it, or leave --api-key-env out to serve without authentication)"
            )
    task = load_task(cfg.task)
    metrics = ServerMetrics(task.spec.monitoring.unanswered_patterns)
    log = RequestLog(cfg.log_db, cfg.log_retention_days)
    student, student_ids = load_slot("student", cfg.model, cfg, metrics, cfg.adapters)
    # The fallback answers escalations only; it is not a model id clients may pick.
    fallback = load_slot("fallback", cfg.fallback, cfg, metrics)[0] if cfg.fallback else None
    # Context yields first when a long conversation would overflow the prompt limit.
    path = build_path(
        task, student.tokenizer, cfg.retrieval, cfg.guard, cfg.limits.max_prompt_tokens, cfg.cascade
    )
    served_name, *adapter_names = student_ids
    if served_name in adapter_names:
        raise UserError(
            f"--adapter {served_name}: that name is already MODEL's id; pick another (or set served_name)"
        )
    parent_of_primary = _base_parent(cfg.model)
    models = {served_name: ServedModel(served_name, student, student_ids[served_name], parent_of_primary)}
    for a in adapter_names:
        models[a] = ServedModel(a, student, a, parent_of_primary or served_name)
    candidate = None
    if cfg.candidate:
        # Not a model id of its own: it answers requests for MODEL's id in the candidate arm.
        slot, cand_ids = load_slot("candidate", cfg.candidate, cfg, metrics)
        candidate = ServedModel(served_name, slot, next(iter(cand_ids.values())), parent_of_primary)
    return ServerState(
        cfg, task, path.guard, path.prompter, student, fallback, models, metrics, log, api_key, candidate
    )
