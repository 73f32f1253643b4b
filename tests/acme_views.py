"""Small task views cut from the bundled acme example: real questions, knowledge and policy, with the
training and eval conversations a test chooses (monitor and flywheel tests replay acme traffic)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

ACME = Path(__file__).parent.parent / "examples" / "acme-support"


def acme_conversations() -> list[dict]:
    """Every acme conversation, train then eval, in file order."""
    rows = []
    for name in ("train", "eval"):
        rows += [json.loads(ln) for ln in (ACME / f"{name}.jsonl").read_text().splitlines() if ln.strip()]
    return rows


def write_acme_view(root: Path, train: list[dict], eval_: list[dict]) -> Path:
    """A task directory at ``root`` with acme's knowledge, policy and spec, and these conversations
    (no behavioural suites)."""
    root.mkdir(parents=True)
    shutil.copytree(ACME / "knowledge", root / "knowledge")
    shutil.copy(ACME / "policy.yaml", root / "policy.yaml")
    spec = yaml.safe_load((ACME / "task.yaml").read_text())
    spec["data"] = {"train": "train.jsonl", "eval": "eval.jsonl", "scenarios": None, "adversarial": None}
    (root / "task.yaml").write_text(yaml.safe_dump(spec))
    (root / "train.jsonl").write_text("".join(json.dumps(c) + "\n" for c in train))
    (root / "eval.jsonl").write_text("".join(json.dumps(c) + "\n" for c in eval_))
    return root
