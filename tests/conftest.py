"""Shared fixtures: tiny Llama models built in-process with the bundled tokenizer, the tiny task card.

No test downloads anything. ``DISTILLTUNE_HOME`` points at a per-session temporary directory so tests
never touch the user's cache (slow tests that need the real teacher use the user's cache instead).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tiny_models import build_tiny_llama

TESTS = Path(__file__).parent
TINY_TASK = TESTS / "data" / "tiny-task"
REPO = TESTS.parent
EXAMPLE_TASK = REPO / "examples" / "acme-support"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["DISTILLTUNE_NO_REEXEC"] = "1"  # CLI tests run in-process or as plain subprocesses
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    # `make test` runs two workers on the 2-core reference machine: one thread each, since two 2-thread
    # torch processes on two cores slow each other several-fold (docs/design.md, "the machine").
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("DISTILLTUNE_THREADS", "1")
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory):
    if os.environ.get("DISTILLTUNE_TEST_USE_HOME") == "1":
        yield
        return
    home = tmp_path_factory.mktemp("distilltune-home")
    old = os.environ.get("DISTILLTUNE_HOME")
    os.environ["DISTILLTUNE_HOME"] = str(home)
    yield
    if old is None:
        os.environ.pop("DISTILLTUNE_HOME", None)
    else:
        os.environ["DISTILLTUNE_HOME"] = old


@pytest.fixture(scope="session")
def tokenizer_dir(_isolated_home) -> Path:
    from distilltune.models.bundled import bundled_tokenizer_dir

    return bundled_tokenizer_dir()


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    tok.pad_token = tok.pad_token or tok.eos_token
    return tok


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """2 layers, width 32: the stand-in for a student or a small base model."""
    return build_tiny_llama(tokenizer_dir, tmp_path_factory.mktemp("tiny-model"), layers=2, hidden=32)


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """4 layers, width 64: the stand-in for a teacher (prunable to 2 layers)."""
    return build_tiny_llama(
        tokenizer_dir, tmp_path_factory.mktemp("tiny-teacher"), layers=4, hidden=64, seed=1
    )


@pytest.fixture()
def tiny_task(tmp_path) -> Path:
    """A writable copy of the tiny task card."""
    dst = tmp_path / "tiny-task"
    shutil.copytree(TINY_TASK, dst)
    return dst
