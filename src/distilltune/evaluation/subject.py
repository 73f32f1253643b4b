"""The model ``evaluate`` judges, behind the backend it is deployed with.

``torch``: a transformers model answering in batches (``answer_requests``), NLL from its forward pass.
``onnx`` / ``llama.cpp``: the deployed file (``EvaluateConfig.artifact``, or MODEL itself when it
already is one) in its runtime's engine, answering one request at a time through the same request
path (``answer_with_engine``), NLL from that runtime's logits: a quantized export is scored as it
will run, not as the float model it came from. Exporting a trained model on the fly is the CLI's /
``compare``'s job (``export`` sits above ``evaluation``).
"""

from __future__ import annotations

import time
from pathlib import Path

from distilltune.errors import UserError
from distilltune.evaluation.answer import answer_requests, answer_with_engine
from distilltune.evaluation.config import EvaluateConfig
from distilltune.evaluation.likelihood import reference_nll, reference_nll_engine


class TorchSubject:
    backend = "torch"

    def __init__(self, cfg: EvaluateConfig):
        from distilltune.models import load_model, model_info

        t0 = time.perf_counter()
        self.loaded = load_model(cfg.model, teacher=cfg.teacher, dtype=cfg.dtype)
        self.tokenizer = self.loaded.tokenizer
        info = model_info(self.loaded.model)
        self.params = info.params
        self.line = f"{info.line()} in {time.perf_counter() - t0:.1f} s"

    def answer(self, pipe, convs: list[list[dict]], cfg: EvaluateConfig):
        return answer_requests(
            self.loaded.model,
            self.tokenizer,
            pipe.guard,
            pipe.prompter,
            convs,
            max_new_tokens=cfg.max_new_tokens,
            batch_size=cfg.batch_size,
        )

    def nll(self, prompts, references):
        return reference_nll(self.loaded.model, self.tokenizer, prompts, references)

    def size(self, cfg: EvaluateConfig) -> tuple[int, str]:
        from distilltune.evaluation.efficiency import serving_size

        return serving_size(cfg.model, self.loaded.model)

    def close(self) -> None:
        self.loaded = None


def artifact_of(cfg: EvaluateConfig) -> Path:
    """The deployed file/dir a non-torch evaluation loads (a clear error when there is none)."""
    from distilltune.inference.backends import find_artifact, get_backend

    ref = cfg.artifact or cfg.model
    path = find_artifact(cfg.backend, ref)
    if path is None:
        b = get_backend(cfg.backend)
        raise UserError(
            f"--backend {cfg.backend} evaluates {b.artifact}; {ref!r} is not one (the evaluate command "
            f"exports it on the fly; from Python, export it with distilltune.export and set artifact=)"
        )
    return path


class BackendSubject:
    def __init__(self, cfg: EvaluateConfig):
        from distilltune.inference.backends import open_model

        t0 = time.perf_counter()
        self.artifact = artifact_of(cfg)
        self.opened = open_model(cfg.backend, str(self.artifact), name="evaluate")
        self.engine = self.opened.engine.start()
        self.backend = cfg.backend
        self.tokenizer = self.opened.tokenizer
        self.params = self.opened.params
        self.line = f"{cfg.backend} {self.artifact.name} in {time.perf_counter() - t0:.1f} s"

    def answer(self, pipe, convs: list[list[dict]], cfg: EvaluateConfig):
        return answer_with_engine(
            self.engine, self.tokenizer, pipe.guard, pipe.prompter, convs, max_new_tokens=cfg.max_new_tokens
        )

    def nll(self, prompts, references):
        return reference_nll_engine(self.engine, self.tokenizer, prompts, references)

    def size(self, cfg: EvaluateConfig) -> tuple[int, str]:
        return self.opened.size_bytes, "disk"

    def close(self) -> None:
        self.engine.stop()
        self.opened = self.engine = None


def open_subject(cfg: EvaluateConfig):
    return TorchSubject(cfg) if cfg.backend == "torch" else BackendSubject(cfg)
