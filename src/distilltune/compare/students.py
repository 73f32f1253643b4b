"""The comparison's student: which of the teacher's layers (and channels, heads) it keeps, measured on
the task's own prompts.

``teacher:n_layers=N`` alone keeps the first and last layers. A comparison measures instead: it runs
the teacher once over a sample of the task's training prompts (assembled with retrieved context, as
training assembles them), scores every layer by block influence (``models.importance``) and keeps the
N most influential ones. The choice is written to ``OUT/student_layers.json`` with the scores, reused
when the comparison resumes, and every run's config names the layers explicitly (``layers=...``), so
the runs stay re-runnable on their own. An explicit ``layers=`` spec is used as given.

Width keys (``mlp=F``, ``heads=F``) are measured on the same prompts: each MLP channel's and head's
contribution to the residual stream (``models.importance.task_width_importance``), saved to
``OUT/student_importance.safetensors`` and named in the resolved spec (``importance=PATH``), so every
run slices the same channels. The widths kept, and the heads each layer keeps, go into the same
``student_layers.json`` under ``width``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from distilltune.errors import UserError
from distilltune.io import atomic_write_text

LAYERS_FILE = "student_layers.json"
IMPORTANCE_FILE = "student_importance.safetensors"
SAMPLE_PROMPTS = 32


def _sample_texts(cfg, view: Path, tokenizer) -> list[str]:
    from distilltune.retrieval import GroundedPrompter, KnowledgeIndex
    from distilltune.task import load_task

    task = load_task(view)
    convs = [[m.model_dump() for m in c.messages] for c in task.train[:SAMPLE_PROMPTS]]
    index = KnowledgeIndex.open(task, cfg.retrieval) if cfg.retrieval.enabled and task.knowledge else None
    prompter = GroundedPrompter.from_config(task.system_prompt, tokenizer, index, cfg.retrieval)
    return [tokenizer.apply_chat_template(m, tokenize=False) for m, _ in prompter.messages_many(convs)]


def _width_record(spec, base_config, head_scores, layers: list[int], path: Path) -> dict:
    """The widths the student gets (counts, and the heads each kept layer keeps), for the record."""
    from distilltune.models.width import head_dims, select_heads, width_config

    cfg = width_config(base_config, spec.mlp, spec.heads)
    n_heads, n_kv, _ = head_dims(base_config)
    rec = {
        "mlp": spec.mlp,
        "heads": spec.heads,
        "intermediate_size": [int(cfg.intermediate_size), int(base_config.intermediate_size)],
        "num_attention_heads": [int(cfg.num_attention_heads), n_heads],
        "num_key_value_heads": [int(cfg.num_key_value_heads), n_kv],
        "importance": str(path),
    }
    if spec.heads is not None:
        kept = (cfg.num_attention_heads, cfg.num_key_value_heads)
        rec["heads_kept"] = {i: select_heads(head_scores[i], n_heads, n_kv, *kept)[0] for i in layers}
    return rec


def resolve_student(cfg, view: Path, out: Path, log: Callable[[str], None]) -> str:
    """The student spec every run uses: ``cfg.student_spec()``, with measured layers for ``n_layers=N``
    and, for ``mlp=``/``heads=``, the activation scores measured on the task (``importance=``)."""
    from distilltune.models.spec import parse_student_spec

    text = cfg.student_spec()
    spec = parse_student_spec(text)
    measure_layers = spec is not None and spec.n_layers is not None and cfg.student_layers == "influence"
    measure_width = spec is not None and spec.prunes_width and spec.importance is None
    if not (measure_layers or measure_width):
        return text
    path = out / LAYERS_FILE
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("spec") == text and (not measure_width or Path(saved["width"]["importance"]).is_file()):
            return saved["resolved"]
    from distilltune.models import load_model
    from distilltune.models.importance import select_layers, task_block_influence, task_width_importance
    from distilltune.models.student import _decoder_layers
    from distilltune.models.width import save_scores, width_config

    base = load_model(spec.base)
    n_total = len(_decoder_layers(base.model))
    if measure_width:
        width_config(base.model.config, spec.mlp, spec.heads)  # a bad heads= fails before measuring
    texts = _sample_texts(cfg, view, base.tokenizer)
    record: dict = {"spec": text, "sample_prompts": len(texts)}
    if measure_layers:
        scores = task_block_influence(base.model, base.tokenizer, texts, max_length=cfg.max_length)
        if spec.n_layers > len(scores):
            raise UserError(f"student {text!r}: the teacher has only {len(scores)} layers")
        layers = select_layers(scores, spec.n_layers)
        spec = spec.replace(n_layers=None, layers=",".join(map(str, layers)))
        record.update(layers=layers, block_influence=scores)
        top = ", ".join(f"{i} ({scores[i]:.2f})" for i in sorted(layers, key=lambda i: -scores[i])[:4])
        log(
            f"student: keeping the {len(layers)} most influential of {len(scores)} layers on this task: "
            f"{layers} (top: {top})"
        )
    else:
        record["layers"] = spec.layer_choice(n_total)
    if measure_width:
        mlp_s, head_s = task_width_importance(base.model, base.tokenizer, texts, max_length=cfg.max_length)
        scores_path = (out / IMPORTANCE_FILE).resolve()
        save_scores(scores_path, mlp_s, head_s, {"spec": text, "sample_prompts": str(len(texts))})
        spec = spec.replace(importance=str(scores_path))
        record["width"] = _width_record(spec, base.model.config, head_s, record["layers"], scores_path)
        w = record["width"]
        log(
            f"student: keeping {w['intermediate_size'][0]} of {w['intermediate_size'][1]} MLP channels and "
            f"{w['num_attention_heads'][0]} of {w['num_attention_heads'][1]} attention heads per layer, "
            "ranked by their activations on this task"
        )
    record["resolved"] = spec.text()
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return record["resolved"]
