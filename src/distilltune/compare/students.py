"""The comparison's student: which of the teacher's layers it keeps, measured on the task's own prompts.

``teacher:n_layers=N`` alone keeps the first and last layers. A comparison measures instead: it runs
the teacher once over a sample of the task's training prompts (assembled with retrieved context, as
training assembles them), scores every layer by block influence (``models.importance``) and keeps the
N most influential ones. The choice is written to ``OUT/student_layers.json`` with the scores, reused
when the comparison resumes, and every run's config names the layers explicitly (``layers=...``), so
the runs stay re-runnable on their own. An explicit ``layers=`` spec is used as given.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from distilltune.errors import UserError
from distilltune.io import atomic_write_text

LAYERS_FILE = "student_layers.json"
SAMPLE_PROMPTS = 32


def _sample_texts(cfg, view: Path, tokenizer) -> list[str]:
    from distilltune.retrieval import GroundedPrompter, KnowledgeIndex
    from distilltune.task import load_task

    task = load_task(view)
    convs = [[m.model_dump() for m in c.messages] for c in task.train[:SAMPLE_PROMPTS]]
    index = KnowledgeIndex.open(task, cfg.retrieval) if cfg.retrieval.enabled and task.knowledge else None
    prompter = GroundedPrompter.from_config(task.system_prompt, tokenizer, index, cfg.retrieval)
    return [tokenizer.apply_chat_template(m, tokenize=False) for m, _ in prompter.messages_many(convs)]


def resolve_student(cfg, view: Path, out: Path, log: Callable[[str], None]) -> str:
    """The student spec every run uses: ``cfg.student_spec()``, with measured layers for ``n_layers=N``."""
    from distilltune.models.resolve import STUDENT_RE

    spec = cfg.student_spec()
    m = STUDENT_RE.match(spec)
    if m is None or m["key"] != "n_layers" or cfg.student_layers != "influence":
        return spec
    n_keep = int(m["value"])
    path = out / LAYERS_FILE
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("spec") == spec:
            return saved["resolved"]
    from distilltune.models import load_model
    from distilltune.models.importance import select_layers, task_block_influence

    base = load_model(m["base"])
    texts = _sample_texts(cfg, view, base.tokenizer)
    scores = task_block_influence(base.model, base.tokenizer, texts, max_length=cfg.max_length)
    if n_keep > len(scores):
        raise UserError(f"student {spec!r}: the teacher has only {len(scores)} layers")
    layers = select_layers(scores, n_keep)
    resolved = f"{m['base']}:layers={','.join(map(str, layers))}"
    atomic_write_text(
        path,
        json.dumps(
            {"spec": spec, "resolved": resolved, "layers": layers, "block_influence": scores,
             "sample_prompts": len(texts)},
            indent=2,
        ) + "\n",
    )  # fmt: skip
    top = ", ".join(f"{i} ({scores[i]:.2f})" for i in sorted(layers, key=lambda i: -scores[i])[:4])
    log(
        f"student: keeping the {n_keep} most influential of {len(scores)} layers on this task: {layers} (top: {top})"
    )
    return resolved
