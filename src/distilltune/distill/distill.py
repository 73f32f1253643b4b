"""``run_distill(cfg)``: validate, prepare the teacher signal, train the student in the shared loop.

Order of work, chosen so mistakes cost seconds, not hours:

1. validation without weights — task card, tokenizers (a vocabulary mismatch is an error for the
   logit modes, before any training), the student's method on a meta-device skeleton, files named by
   the config, an unfinished output dir (needs ``--resume``, with an unchanged config);
2. the teacher signal — ``cached``: the top-k cache (built once per key; the teacher is loaded only to
   build it, then freed); ``online`` / ``on-policy``: the teacher in memory (eval mode, no grad, an
   adapter merged into its base); ``sequence``: the teacher's filtered, reviewable, patched answers;
3. the student (a depth-pruned copy of the teacher or any same-tokenizer model), its method applied;
4. ``train.loop.train_loop`` with the mode's objective; checkpoints and resume are the loop's;
5. the artifact (loadable with plain transformers / PEFT), model card, summary, ``.complete`` last.

A finished run dir is returned as is (``compare`` and pipelines call this idempotently).
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import torch

from distilltune.config import read_yaml, to_yaml
from distilltune.distill.config import DistillConfig
from distilltune.errors import Problem, UserError
from distilltune.io import atomic_write_json, atomic_write_text
from distilltune.train.artifacts import is_complete, mark_complete
from distilltune.train.config import FinetuneConfig
from distilltune.train.progress import LineReporter, Reporter

SEQUENCE_DIR = "sequence"


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


def _diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


def _is_review_stage(out: Path) -> bool:
    """A dir left by ``sequence.generate_only``: answers to review, no training yet (config may change)."""
    from distilltune.train.checkpoint import list_checkpoints

    if list_checkpoints(out) or not (out / "config.yaml").is_file():
        return False
    old = read_yaml(out / "config.yaml")
    return bool((old.get("sequence") or {}).get("generate_only"))


def validate(cfg: DistillConfig, resume: bool = False):
    """Every problem that can be found without loading weights, reported at once; returns the task."""
    from distilltune.models import check_same_vocab, load_tokenizer
    from distilltune.task import load_task
    from distilltune.train.checkpoint import list_checkpoints
    from distilltune.train.methods import check_method, meta_model

    problems: list[Problem] = []
    task = s_tok = None
    try:
        task = load_task(cfg.task)
    except UserError as e:
        problems += e.problems or [Problem(cfg.task, e.message, field="task")]
    try:
        t_tok = load_tokenizer(cfg.teacher)
        s_tok = (
            t_tok if cfg.student.startswith("teacher:") else load_tokenizer(cfg.student, teacher=cfg.teacher)
        )
        if cfg.uses_logits:
            check_same_vocab(t_tok, s_tok, cfg.teacher, cfg.student)
    except UserError as e:
        field = "student" if "vocabular" in e.message else "teacher"
        problems += [Problem("<config>", e.message, field=field), *e.problems]
    except (OSError, ValueError) as e:
        problems.append(Problem("<config>", f"cannot read a tokenizer: {e}", field="teacher"))
    try:
        skeleton, base_peft = meta_model(cfg.student, cfg.teacher)
        problems += check_method(student_finetune_config(cfg), skeleton, base_peft)
        if cfg.hidden.weight > 0 and cfg.hidden.layers:
            from distilltune.distill.hidden import check_layer_map

            t_skel, _ = meta_model(cfg.teacher)
            check_layer_map(
                cfg.hidden.layers, skeleton.config.num_hidden_layers, t_skel.config.num_hidden_layers
            )
        del skeleton
    except UserError as e:
        problems += [Problem("<config>", e.message, field="student"), *e.problems]
    except (OSError, ValueError, KeyError) as e:
        problems.append(Problem("<config>", f"cannot read the student's config: {e}", field="student"))
    if cfg.mode == "sequence":
        for key in ("extra_prompts", "patch"):
            p = getattr(cfg.sequence, key)
            if p and not Path(p).is_file():
                problems.append(Problem("<config>", f"{p}: file not found", field=f"sequence.{key}"))
    if task is not None:
        if not task.train:
            problems.append(Problem(cfg.task, "the task has no training conversations", field="data.train"))
        if cfg.rag and not task.knowledge:
            problems.append(Problem(cfg.task, "rag: true needs knowledge documents", field="rag"))
    out = Path(cfg.output)
    if out.exists() and not out.is_dir():
        problems.append(Problem("<config>", f"{out} exists and is not a directory", field="output"))
    elif out.is_dir() and not is_complete(out) and not _is_review_stage(out):
        has_run = (out / "config.yaml").exists() or bool(list_checkpoints(out))
        if has_run and not resume:
            problems.append(
                Problem(
                    "<config>",
                    f"{out} holds an unfinished run; pass --resume to continue it or choose another --output",
                    field="output",
                )
            )
        if resume and (out / "config.yaml").exists():
            changed = _diff_keys(read_yaml(out / "config.yaml"), cfg.resolved().model_dump(mode="json"))
            if changed:
                problems.append(
                    Problem(
                        str(out / "config.yaml"),
                        f"--resume needs the same config as the interrupted run; changed: {', '.join(changed)}",
                    )
                )
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise UserError(f"cannot distill: {len(errors)} problem{'s' if len(errors) != 1 else ''}", problems)
    return task, s_tok


def load_teacher(cfg: DistillConfig, device):
    """The teacher for scoring or generation: eval mode, frozen, a LoRA/IA3 adapter merged in."""
    from distilltune.models import load_model
    from distilltune.train.methods import merge_if_adapter

    loaded = load_model(cfg.teacher, dtype=cfg.teacher_dtype)
    model = merge_if_adapter(loaded.model).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, loaded.tokenizer


def load_student(cfg: DistillConfig):
    """The student, trainable. ``teacher:...`` specs over an adapter teacher (a LoRA fine-tuned teacher
    from a blend) prune the teacher *with its adapter merged*, which ``load_model`` cannot do itself."""
    from distilltune.models import Loaded, load_model
    from distilltune.models.resolve import resolve_path
    from distilltune.models.spec import parse_student_spec
    from distilltune.models.student import build_student

    spec = parse_student_spec(cfg.student)
    if spec and spec.base == "teacher" and resolve_path(cfg.teacher)[0] == "adapter":
        teacher, tok = load_teacher(cfg, "cpu")
        student = build_student(teacher, spec)
        del teacher
        for p in student.parameters():
            p.requires_grad_(True)
        student.train(True)
        return Loaded(student, tok, cfg.student, cfg.teacher, "student")
    return load_model(cfg.student, teacher=cfg.teacher, trainable=True)


def _render(system_prompt: str, prompter):
    from distilltune.data.chat import with_system

    if prompter is None:
        return lambda msgs: with_system(system_prompt, msgs)
    return lambda msgs: prompter.messages(msgs)[0]


def sequence_data(cfg: DistillConfig, task, out: Path, prompter, device, reporter: Reporter):
    """Teacher answers → guard and filters → review file → patch. Returns (conversations, summary)."""
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
    seq.write_records(records, out / SEQUENCE_DIR / "teacher_answers.jsonl")
    patched = 0
    if s.patch:
        patched = seq.apply_patch(records, seq.load_patch(s.patch, {r.id for r in records}))
    seq.write_records(records, out / SEQUENCE_DIR / "train_data.jsonl")
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


def _params(model: torch.nn.Module) -> tuple[int, int]:
    seen: set[int] = set()
    total = trainable = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
            trainable += p.numel() if p.requires_grad else 0
    return total, trainable


def run_distill(cfg: DistillConfig, resume: bool = False, reporter: Reporter | None = None) -> Path:
    """Distill ``cfg.teacher`` into ``cfg.student`` on ``cfg.task``; returns the run directory."""
    from distilltune.distill.card import distill_card
    from distilltune.distill.objectives import CachedKD, KDParams, OnlineKD
    from distilltune.models.generate import stop_token_ids
    from distilltune.train.artifacts import (
        base_reference,
        loop_summary,
        save_base_model,
        save_trained,
        write_card_and_summary,
    )
    from distilltune.train.data import build_examples
    from distilltune.train.evaluator import make_evaluator
    from distilltune.train.finetune import make_prompter
    from distilltune.train.loop import make_accelerator, train_loop
    from distilltune.train.methods import apply_method, merge_if_adapter, trainable_line
    from distilltune.train.objectives import causal_lm_objective

    out = Path(cfg.output)
    reporter = reporter or LineReporter(sys.stderr)
    if is_complete(out):
        reporter.message(f"{out} is already complete; nothing to do")
        return out
    task, tokenizer = validate(cfg, resume)
    cfg = cfg.resolved()
    ft_cfg = student_finetune_config(cfg)
    acc = make_accelerator(cfg.train.precision)
    main = acc.is_main_process
    if main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", to_yaml(cfg))
    acc.wait_for_everyone()

    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    prompter = make_prompter(ft_cfg, task, tokenizer)

    # --- the teacher signal ------------------------------------------------------------------------
    seq_info = None
    cache = None
    teacher = None
    if cfg.mode == "sequence":
        with acc.main_process_first():
            convs, seq_info = sequence_data(cfg, task, out, prompter, acc.device, reporter)
        if cfg.sequence.generate_only:
            reporter.message(
                "sequence.generate_only: review the answers, then re-run without it (and --resume)"
            )
            return out
        if not convs:
            raise UserError(
                "no teacher answer survived the filters; see the review file and sequence.* settings"
            )
        examples, stats = build_examples(convs, tokenizer, task.system_prompt, cfg.train.max_length, prompter)
    else:
        examples, stats = build_examples(
            task.train, tokenizer, task.system_prompt, cfg.train.max_length, prompter
        )
    if main:
        reporter.message(f"training data: {stats.line()}" + (" (with retrieved context)" if cfg.rag else ""))
    if cfg.mode in ("online", "on-policy"):
        teacher, _ = load_teacher(cfg, acc.device)
    if cfg.uses_cache:
        from distilltune.distill.teacher_cache import ensure_teacher_cache

        with acc.main_process_first():
            cache = ensure_teacher_cache(
                teacher_ref=cfg.teacher,
                tokenizer=tokenizer,
                examples=examples,
                k=cfg.cache.k,
                load_teacher=lambda: teacher if teacher is not None else load_teacher(cfg, acc.device)[0],
                root=Path(cfg.cache.dir) if cfg.cache.dir else None,
                dtype=cfg.teacher_dtype,
                batch_size=cfg.cache.batch_size,
                log=reporter.message if main else None,
                positions=cfg.positions,
            )
        gc.collect()

    # --- the student -------------------------------------------------------------------------------
    torch.manual_seed(cfg.train.seed)
    loaded = load_student(cfg)
    base_path = base_reference(cfg.student, loaded.kind, loaded.source)
    if cfg.method != "full" and (base_path is None or loaded.kind == "adapter"):
        base = merge_if_adapter(loaded.model)
        if main:
            save_base_model(base, tokenizer, out / "base-model")
        acc.wait_for_everyone()
        base_path = str((out / "base-model").resolve())
        loaded.model = base
    model = apply_method(loaded.model, ft_cfg).to(acc.device)
    total_params, trainable_params = _params(model)
    if main:
        reporter.message(f"student {cfg.student} ({cfg.method}): {trainable_line(model)}")

    params = KDParams(cfg.loss, cfg.temperature, cfg.beta, cfg.skew, cfg.alpha, cfg.chunk_size, cfg.positions)
    hidden = None
    if teacher is not None and cfg.hidden.weight > 0:
        from distilltune.distill.hidden import attach_projection, check_layer_map, default_layer_map
        from distilltune.distill.objectives import HiddenTerm

        base_model = model.get_base_model() if hasattr(model, "get_base_model") else model
        pairs = (
            [tuple(p) for p in cfg.hidden.layers]
            if cfg.hidden.layers
            else default_layer_map(base_model, teacher)
        )
        check_layer_map(pairs, base_model.config.num_hidden_layers, teacher.config.num_hidden_layers)
        hidden = HiddenTerm(
            cfg.hidden.weight, cfg.hidden.loss, pairs, attach_projection(model, teacher, pairs)
        )
    if cfg.mode == "cached":
        objective = CachedKD(cache, params)
    elif cfg.mode == "online":
        objective = OnlineKD(teacher, params, hidden)
    elif cfg.mode == "on-policy":
        from distilltune.distill.onpolicy import OnPolicyKD

        online = OnlineKD(teacher, params, hidden)
        o = cfg.onpolicy
        objective = OnPolicyKD(
            online,
            CachedKD(cache, params) if o.off_policy == "cached" else online,
            lmbda=o.lmbda,
            max_new_tokens=o.max_new_tokens,
            temperature=o.temperature,
            seed=cfg.train.seed,
            stop_ids=stop_token_ids(tokenizer),
            pad_id=tokenizer.pad_token_id,
        )
    else:
        objective = causal_lm_objective

    evaluator = make_evaluator(task.eval, tokenizer, cfg.train, task.system_prompt, prompter)
    result = train_loop(
        model=model,
        examples=examples,
        objective=objective,
        settings=cfg.train,
        lr=cfg.lr(),
        run_dir=out,
        pad_id=tokenizer.pad_token_id,
        evaluator=evaluator,
        reporter=reporter,
        resume=resume,
        accelerator=acc,
        header=f"distill ({cfg.mode}, {cfg.loss}) ",
    )
    if hidden is not None:
        from distilltune.distill.hidden import detach_projection

        detach_projection(result.model)
    teacher = None  # free it before saving
    if main:
        summary = {
            "kind": "distill",
            "mode": cfg.mode,
            "loss": cfg.loss,
            "teacher": cfg.teacher,
            "student": cfg.student,
            "method": cfg.method,
            **loop_summary(
                result,
                acc,
                task_name=task.name,
                base_path=base_path,
                total_params=total_params,
                trainable_params=trainable_params,
                n_examples=len(examples),
                loss_tokens=stats.loss_tokens,
            ),
            "teacher_cache": (
                {k: v for k, v in cache.manifest.items() if k != "shards"} | {"path": str(cache.path)}
                if cache is not None
                else None
            ),
            "sequence": seq_info,
        }
        artifact = save_trained(result.model, tokenizer, cfg.method, out, base_path)
        write_card_and_summary(out, artifact, distill_card(cfg, summary, task), summary)
        mark_complete(out)
        reporter.message(f"done: {artifact}")
    acc.wait_for_everyone()
    return out
