"""``run_distill(cfg)``: distillation as a recipe of the one run setup (``train.run``).

The shared sequence (check without weights, data, model and method, loop, artifacts) is
``train.run.run_training``; distillation adds:

- checks: the teacher's tokenizer (a vocabulary mismatch is an error for the logit modes, before any
  training), a hidden-state layer map that fits both models, the files ``sequence:`` names;
- the training conversations: the task's, or in ``sequence`` mode the teacher's filtered, reviewable,
  patched answers (``sequence.generate_only`` stops after writing them for review);
- the teacher signal, before the student loads: ``cached``: the top-k cache (built once per key; the
  teacher is loaded only to build it, then freed); ``online`` / ``on-policy``: the teacher in memory
  (eval mode, no grad, an adapter merged into its base);
- the objective, by mode from the objective registry (``MODE_OBJECTIVE``), bound once to the config's
  ``kd:`` section;
- the card (``distill.card``) and the summary's teacher-signal fields.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from distilltune.config import read_yaml
from distilltune.distill.config import DistillConfig
from distilltune.errors import Problem, UserError
from distilltune.io import atomic_write_json
from distilltune.train.config import FinetuneConfig
from distilltune.train.objectives import register_objective
from distilltune.train.progress import Reporter
from distilltune.train.run import load_run_config, run_training

SEQUENCE_DIR = "sequence"

# The registered objective each mode trains with; sequence-level KD is supervised training on the
# teacher's answers.
MODE_OBJECTIVE = {
    "cached": "kd-cached",
    "online": "kd-online",
    "on-policy": "kd-on-policy",
    "sequence": "causal-lm",
}


@dataclass
class TeacherSignal:
    """What the student learns from, set up before it loads (``RunContext.signal``)."""

    teacher: nn.Module | None = None  # online / on-policy
    cache: Any = None  # teacher_cache.TeacherCache: cached / on-policy with cached off-policy batches
    sequence: dict | None = None  # sequence mode: the curated data's summary
    hidden: Any = None  # objectives.HiddenTerm, when a hidden-state term trains


def student_finetune_config(cfg: DistillConfig) -> FinetuneConfig:
    """The fine-tuner's view of the student (method checks, PEFT wrapping, prompt assembly)."""
    return FinetuneConfig(
        task=cfg.task,
        model=cfg.student,
        method=cfg.method,
        output=cfg.output,
        teacher=cfg.teacher,
        rag=cfg.rag,
        retrieval=cfg.retrieval,
        train=cfg.train,
        lora=cfg.lora,
    )


def _is_review_stage(out: Path) -> bool:
    """A dir left by ``sequence.generate_only``: answers to review, no training yet (config may change)."""
    from distilltune.train.checkpoint import list_checkpoints

    if list_checkpoints(out) or not (out / "config.yaml").is_file():
        return False
    old = read_yaml(out / "config.yaml")
    return bool((old.get("sequence") or {}).get("generate_only"))


def _check(cfg: DistillConfig, skeleton: nn.Module | None, s_tok) -> list[Problem]:
    """The teacher's tokenizer and vocabulary, the hidden-state layer map, the sequence files."""
    from distilltune.models import check_same_vocab, load_tokenizer
    from distilltune.train.methods import meta_model

    problems: list[Problem] = []
    try:
        t_tok = load_tokenizer(cfg.teacher)
        if cfg.uses_logits and s_tok is not None:
            check_same_vocab(t_tok, s_tok, cfg.teacher, cfg.student)
    except UserError as e:
        field = "student" if "vocabular" in e.message else "teacher"
        problems += [Problem("<config>", e.message, field=field), *e.problems]
    except (OSError, ValueError) as e:
        problems.append(Problem("<config>", f"cannot read a tokenizer: {e}", field="teacher"))
    if skeleton is not None and cfg.hidden.weight > 0 and cfg.hidden.layers:
        from distilltune.distill.hidden import check_layer_map

        try:
            t_skel, _ = meta_model(cfg.teacher)
            check_layer_map(
                cfg.hidden.layers, skeleton.config.num_hidden_layers, t_skel.config.num_hidden_layers
            )
        except UserError as e:
            problems.append(Problem("<config>", e.message, field="hidden.layers"))
        except (OSError, ValueError, KeyError) as e:
            problems.append(Problem("<config>", f"cannot read the teacher's config: {e}", field="teacher"))
    if cfg.mode == "sequence":
        for key in ("extra_prompts", "patch"):
            p = getattr(cfg.sequence, key)
            if p and not Path(p).is_file():
                problems.append(Problem("<config>", f"{p}: file not found", field=f"sequence.{key}"))
    return problems


def load_teacher(cfg: DistillConfig, device):
    """The teacher for scoring or generation: eval mode, frozen, a LoRA/IA3 adapter merged in."""
    from distilltune.models import load_model
    from distilltune.train.methods import merge_if_adapter

    loaded = load_model(cfg.teacher, dtype=cfg.teacher_dtype)
    model = merge_if_adapter(loaded.model).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, loaded.tokenizer


def _render(system_prompt: str, prompter):
    from distilltune.data.chat import with_system

    if prompter is None:
        return lambda msgs: with_system(system_prompt, msgs)
    return lambda msgs: prompter.messages(msgs)[0]


def sequence_data(cfg: DistillConfig, task, out: Path, prompter, device, reporter: Reporter):
    """Teacher answers → guard and filters → review file → patch. Returns (conversations, summary)."""
    from distilltune.distill import review
    from distilltune.distill import sequence as seq
    from distilltune.distill.teacher_cache import (
        default_cache_root,
        teacher_fingerprint,
        tokenizer_fingerprint,
    )
    from distilltune.models import load_tokenizer
    from distilltune.models.generate import generate_chat
    from distilltune.policy import Guard

    s = cfg.sequence
    items = seq.train_prompts(task)
    if s.extra_prompts:
        items += seq.load_extra_prompts(s.extra_prompts)
    if s.max_prompts:
        items = items[: s.max_prompts]
    root = Path(cfg.cache.dir) if cfg.cache.dir else default_cache_root()
    key = seq.generation_key(
        teacher_fingerprint(cfg.teacher, root / ".file-hashes.json"),
        tokenizer_fingerprint(load_tokenizer(cfg.teacher)),
        items,
        task.system_prompt + f"|rag={cfg.rag}|{cfg.retrieval.model_dump_json()}",
        s,
    )

    def make_generate():
        reporter.message(f"loading the teacher {cfg.teacher} to answer {len(items)} prompts")
        model, tok = load_teacher(cfg, device)
        return lambda convs: generate_chat(
            model,
            tok,
            convs,
            max_new_tokens=s.max_new_tokens,
            batch_size=s.batch_size,
            temperature=s.temperature,
        )

    generate = seq.cached_generate(make_generate, root / f"sequence-{key}.jsonl")
    guard = Guard.for_task(task)
    records = seq.generate_records(
        items,
        generate,
        guard,
        task.system_prompt,
        cfg.teacher,
        s,
        render=_render(task.system_prompt, prompter),
    )
    review.write_records(records, out / SEQUENCE_DIR / "teacher_answers.jsonl")
    patched = 0
    if s.patch:
        patched = review.apply_patch(records, review.load_patch(s.patch, {r.id for r in records}))
    review.write_records(records, out / SEQUENCE_DIR / "train_data.jsonl")
    info = {
        **seq.summary(records),
        "patched": patched,
        "generation_cache": str(root / f"sequence-{key}.jsonl"),
    }
    info["kept_share"] = info["kept"] / info["prompts"] if info["prompts"] else None
    atomic_write_json(out / SEQUENCE_DIR / "summary.json", info)
    reporter.message(
        f"sequence-level data: {info['kept']} of {info['prompts']} prompts kept, dropped {info['dropped_by_reason']}, "
        f"{patched} patched; review {out / SEQUENCE_DIR / 'teacher_answers.jsonl'}"
    )
    seq.check_kept_share(info, s, str(out / SEQUENCE_DIR / "teacher_answers.jsonl"))
    return seq.kept_conversations(records), info


class DistillRecipe:
    """Distillation in ``train.run``'s terms (see ``train.run.Recipe``)."""

    kind = "distill"
    verb = "distill"
    model_field = "student"

    def method_config(self, cfg: DistillConfig) -> FinetuneConfig:
        return student_finetune_config(cfg)

    def check(self, cfg: DistillConfig, skeleton, tokenizer) -> list[Problem]:
        return _check(cfg, skeleton, tokenizer)

    def reusable(self, out: Path) -> bool:
        return _is_review_stage(out)

    def conversations(self, ctx):
        cfg = ctx.cfg
        ctx.signal = TeacherSignal()
        if cfg.mode != "sequence":
            return ctx.task.train
        with ctx.acc.main_process_first():
            convs, ctx.signal.sequence = sequence_data(
                cfg, ctx.task, ctx.out, ctx.prompter, ctx.acc.device, ctx.reporter
            )
        if cfg.sequence.generate_only:
            ctx.reporter.message(
                "sequence.generate_only: review the answers, then re-run without it (and --resume)"
            )
            return None
        if not convs:
            raise UserError(
                "no teacher answer survived the filters; see the review file and sequence.* settings"
            )
        return convs

    def prepare(self, ctx) -> None:
        """The live teacher (online, on-policy) and the top-k cache (built once per key)."""
        cfg, sig = ctx.cfg, ctx.signal
        if cfg.mode in ("online", "on-policy"):
            sig.teacher, _ = load_teacher(cfg, ctx.acc.device)
        if not cfg.uses_cache:
            return
        from distilltune.distill.teacher_cache import ensure_teacher_cache

        with ctx.acc.main_process_first():
            sig.cache = ensure_teacher_cache(
                teacher_ref=cfg.teacher,
                tokenizer=ctx.tokenizer,
                examples=ctx.examples,
                k=cfg.kd.top_k,
                load_teacher=lambda: (
                    sig.teacher if sig.teacher is not None else load_teacher(cfg, ctx.acc.device)[0]
                ),
                root=Path(cfg.cache.dir) if cfg.cache.dir else None,
                dtype=cfg.teacher_dtype,
                batch_size=cfg.cache.batch_size,
                log=ctx.reporter.message if ctx.main else None,
                positions=cfg.kd.positions,
            )
        gc.collect()

    def objective(self, cfg: DistillConfig) -> str:
        return MODE_OBJECTIVE[cfg.mode]

    def finish(self, ctx, result) -> None:
        if ctx.signal.hidden is not None:
            from distilltune.distill.hidden import detach_projection

            detach_projection(result.model)
        ctx.signal.teacher = None  # free it before saving

    def summary(self, ctx) -> dict:
        cfg, cache = ctx.cfg, ctx.signal.cache
        return {
            "mode": cfg.mode,
            "loss": cfg.kd.loss,
            "teacher": cfg.teacher,
            "student": cfg.student,
            "method": cfg.method,
            "teacher_cache": (
                {k: v for k, v in cache.manifest.items() if k != "shards"} | {"path": str(cache.path)}
                if cache is not None
                else None
            ),
            "sequence": ctx.signal.sequence,
        }

    def card(self, cfg: DistillConfig, summary: dict, task) -> str:
        from distilltune.distill.card import distill_card

        return distill_card(cfg, summary, task)


def _hidden_term(ctx):
    """The hidden-state matching term (online teacher only), its projection attached to the student."""
    cfg, teacher, model = ctx.cfg, ctx.signal.teacher, ctx.model
    if teacher is None or cfg.hidden.weight <= 0:
        return None
    from distilltune.distill.hidden import attach_projection, check_layer_map, default_layer_map
    from distilltune.distill.objectives import HiddenTerm

    base_model = model.get_base_model() if hasattr(model, "get_base_model") else model
    pairs = (
        [tuple(p) for p in cfg.hidden.layers] if cfg.hidden.layers else default_layer_map(base_model, teacher)
    )
    check_layer_map(pairs, base_model.config.num_hidden_layers, teacher.config.num_hidden_layers)
    ctx.signal.hidden = HiddenTerm(
        cfg.hidden.weight, cfg.hidden.loss, pairs, attach_projection(model, teacher, pairs)
    )
    return ctx.signal.hidden


def _cached_kd(ctx):
    from distilltune.distill.objectives import CachedKD

    return CachedKD(ctx.signal.cache, ctx.cfg.kd)


def _online_kd(ctx):
    from distilltune.distill.objectives import OnlineKD

    return OnlineKD(ctx.signal.teacher, ctx.cfg.kd, _hidden_term(ctx))


def _on_policy_kd(ctx):
    """GKD-style: a share of batches answered by the student and scored by the live teacher."""
    from distilltune.distill.onpolicy import OnPolicyKD
    from distilltune.models.generate import stop_token_ids

    cfg, o = ctx.cfg, ctx.cfg.onpolicy
    online = _online_kd(ctx)
    return OnPolicyKD(
        online,
        _cached_kd(ctx) if o.off_policy == "cached" else online,
        lmbda=o.lmbda,
        max_new_tokens=o.max_new_tokens,
        temperature=o.temperature,
        seed=cfg.train.seed,
        stop_ids=stop_token_ids(ctx.tokenizer),
        pad_id=ctx.tokenizer.pad_token_id,
    )


register_objective("kd-cached", _cached_kd)
register_objective("kd-online", _online_kd)
register_objective("kd-on-policy", _on_policy_kd)


def run_distill(cfg: DistillConfig, resume: bool = False, reporter: Reporter | None = None) -> Path:
    """Distill ``cfg.teacher`` into ``cfg.student`` on ``cfg.task``; returns the run directory."""
    return run_training(cfg, DistillRecipe(), resume, reporter)


def load_distill_config(config_file, cli_values: dict, overrides: list[str] | None, resume: bool = False):
    """The CLI's config: type errors and task/model problems reported together (``train.run``)."""
    return load_run_config(DistillConfig, DistillRecipe(), config_file, cli_values, overrides, resume)
