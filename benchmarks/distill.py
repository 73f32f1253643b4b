"""Distillation speed and memory: cached top-k KD vs online KD vs TRL's GKDTrainer; cache size and accuracy.

Setup (issue #5): teacher = the bundled SmolLM2-135M-Instruct, student = its 6-layer depth-pruned copy
(layers 0,1,2,27,28,29), batch 8 × 128 tokens (acme-support training conversations whose prompts are
cut from the left to exactly 128 tokens), fp32, forward KL (β=0), λ=0 (no on-policy sampling), the
same tuned allocator for every side. Each part runs in its own subprocess so peak RSS is per part:

- ``cache``    builds the teacher top-k cache (k=32): build time, bytes per answer token, top-k mass;
- ``cached``   our loop (``distilltune.train.loop.train_loop``) with ``CachedKD``: the teacher is not
               loaded at all; s/step, tokens/s, time per epoch, peak RSS; saves the trained student;
- ``cached_all`` the same with ``positions=all`` (the distill default: every token, 127 per example
               here, instead of the ~29 answer tokens), alpha 0.5: its cache build, size and step time;
- ``online``   the same loop with ``OnlineKD`` (teacher in memory, full-vocabulary loss);
- ``trl``      ``trl.experimental.gkd.GKDTrainer`` with lmbda=0, beta=0, bf16 off, gradient checkpointing
               off, the same teacher, student, examples (our collator: identical token tensors) and batch;
- ``error``    the loss error of top-k + tail bucket vs the full-vocabulary loss, for the untrained
               student and for the student trained by ``cached``, for fkl, rkl and jsd;
- ``first_epoch`` time to a first trained epoch from a cold start, in one process as a user's run
               pays it: Python start-up and imports, examples, a teacher cache built from nothing
               (teacher load, teacher passes, write; its own empty cache directory), the teacher
               freed, the student loaded, one epoch of cached KD. Reported beside the steady-state
               rate (``time_to_first_epoch``); ``online``'s cold-start time to its first epoch
               (teacher and student load + the epoch) is reported beside it.

One invocation, one allocator: every part runs as a subprocess of this one invocation, back to back,
with the environment of the parent after ``reexec_with_tuned_allocator`` (the tuned malloc settings
the CLI uses for training). Each part records the allocator settings and thread count it ran with,
and the parent refuses to write results whose parts differ. So every ratio in ``ratios`` (ours vs
TRL's ``GKDTrainer`` included) is between parts of one invocation (``ratios_scope``). A ratio between
two results files (e.g. ``distill.json`` vs ``distill-rerun.json``) is across separate runs and must be
quoted as such.

``--quality`` runs the issue's acceptance comparison instead: from the CLI on the bundled task, a
cached-KD student and the same student fine-tuned on the labels only, for the same number of steps
(same starting student, seed, batch, learning rate); both are scored by cross-entropy on *every* eval
answer (``distilltune.distill.heldout``) and their fact recall is read from their model cards / summaries.
``--quality-rag`` puts retrieved context in training and scoring prompts (as compare and serve do) and
``--quality-teacher-lora-steps N`` adapts the teacher with LoRA first (the blend compare runs).
Writes results/distill_quality.json (``--name`` changes the prefix).

Tokens/s counts every non-padding token of a batch (8 × 128 here) on every side. Time per epoch is
measured over a full epoch in the full run; ``--quick`` extrapolates it from the timed steps.

Targets: issue #5 — cached epoch ≤ 0.6× online; ≤ 128 bytes/token at k=32 (payload); top-k loss within
2 % of the full-vocabulary loss; cached ≥ 1.8× TRL tokens/s at ≤ 0.7× its peak RSS. docs/design.md (stricter) —
cached ≥ 3× TRL tokens/s at ≤ 0.55× its peak RSS.

    python benchmarks/distill.py            # full run (tens of minutes), writes results/distill.json
    python benchmarks/distill.py --quick    # 1 warm-up + 3 timed steps per part (checks the harness)
    # distilled vs label-only student, as results/distill_quality*.json were measured: retrieved context,
    # teacher LoRA-adapted for 16 steps first, 40 updates of batch 4 each, seeds 0, 1, 2
    # (--quality-positions answer: distil at the answer tokens only, the results/sweep-rag-tl16-* runs)
    python benchmarks/distill.py --quality --quality-rag --quality-teacher-lora-steps 16 \
        --quality-steps 40 --batch 4 --quality-eval-samples 32 [--quality-seed 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import peak_rss_mb, reexec_with_tuned_allocator, write_result

PROCESS_T0 = time.perf_counter()  # before torch & co. are imported: a part's cold start counts from here

TEACHER = "smollm2-135m-instruct"
STUDENT_LAYERS = "0,1,2,27,28,29"
STUDENT = f"{TEACHER}:layers={STUDENT_LAYERS}"
TASK = Path(__file__).resolve().parent.parent / "examples" / "acme-support"
K = 32
K_ERROR = 128  # the error part stores more and derives every smaller k from it


def _examples(seq: int):
    from distilltune.models import load_tokenizer
    from distilltune.task import load_task
    from distilltune.train.data import build_examples

    task = load_task(TASK)
    tok = load_tokenizer(TEACHER)
    examples, _ = build_examples(task.train, tok, task.system_prompt, max_length=seq)
    examples = [e for e in examples if len(e.input_ids) == seq]
    return examples, tok


def _settings(steps: int, batch: int):
    from distilltune.train.config import TrainSettings

    return TrainSettings(
        max_steps=steps,
        batch_size=batch,
        warmup_steps=0,
        eval_every=0,
        save_every=0,
        precision="fp32",
        lr=1e-4,
    )


def _student(seed: int = 0):
    import torch

    from distilltune.models import load_model

    torch.manual_seed(seed)
    loaded = load_model(STUDENT, trainable=True)
    for p in loaded.model.parameters():
        p.requires_grad_(True)
    return loaded.model


def _teacher():
    from distilltune.models import load_model

    t = load_model(TEACHER).model.eval()
    for p in t.parameters():
        p.requires_grad_(False)
    return t


def _cache(a, examples, tok, load_teacher=_teacher, positions: str = "answer", root: Path | None = None):
    """The benchmark's top-K cache of ``examples`` (built by ``load_teacher`` when missing)."""
    from distilltune.distill.teacher_cache import ensure_teacher_cache

    return ensure_teacher_cache(
        teacher_ref=TEACHER,
        tokenizer=tok,
        examples=examples,
        k=K,
        load_teacher=load_teacher,
        root=root or Path(a.workdir) / "cache",
        batch_size=a.batch,
        positions=positions,
    )


def part_cache(a) -> dict:
    examples, tok = _examples(a.seq)
    t0 = time.perf_counter()
    cache = _cache(a, examples, tok)
    m = cache.manifest
    return {
        "examples": len(examples),
        "answer_tokens": m["n_positions"],
        "k": K,
        "build_s": round(time.perf_counter() - t0, 2),
        "payload_bytes_per_token": m["payload_bytes_per_token"],
        "file_bytes_per_token": m["file_bytes_per_token"],
        "file_bytes": m["file_bytes"],
        "topk_mass": m["topk_mass"],
        "teacher_answer_ce": m["teacher_answer_ce"],
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def _loop(a, objective, model, examples, tok, steps: int) -> dict:
    """Train ``steps`` steps; step times, the first epoch (measured or extrapolated) and wall clocks:
    ``setup_s`` from this process's start to the loop, ``loop_wall_s`` around the loop."""
    from distilltune.train.loop import batches_per_epoch, train_loop

    t_loop = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = train_loop(
            model=model,
            examples=examples,
            objective=objective,
            settings=_settings(steps, a.batch),
            lr=1e-4,
            run_dir=tmp,
            pad_id=tok.pad_token_id,
        )
    loop_wall_s = time.perf_counter() - t_loop
    rows = [r for r in result.history if r["type"] == "train"]
    timed = [r["step_s"] for r in rows][a.warmup :]
    step_s = statistics.median(timed)
    per_epoch = batches_per_epoch(len(examples), a.batch, 1)
    epoch_measured = len(rows) >= per_epoch
    return {
        "steps": len(rows),
        "timed_steps": len(timed),
        "step_s": round(step_s, 4),
        "step_s_all": [round(x, 4) for x in timed],
        "tokens_per_s": round(a.batch * a.seq / step_s, 1),
        "batches_per_epoch": per_epoch,
        "epoch_s": round(sum(r["step_s"] for r in rows[:per_epoch]), 2)
        if epoch_measured
        else round(step_s * per_epoch, 2),
        "epoch_s_measured": epoch_measured,
        "setup_s": round(t_loop - PROCESS_T0, 2),
        "loop_wall_s": round(loop_wall_s, 2),
        # the loop ran exactly one epoch: its wall clock is the epoch's (data, optimizer and all)
        "first_epoch_wall_s": round(loop_wall_s, 2) if len(rows) == per_epoch else None,
        "final_loss": rows[-1]["loss"],
        "final_kd": rows[-1].get("kd"),
        "model": result.model,
    }


def part_cached(a) -> dict:
    from distilltune.distill.config import KDSettings
    from distilltune.distill.objectives import CachedKD

    examples, tok = _examples(a.seq)

    def no_teacher():
        raise SystemExit("cache missing: run the cache part first")

    cache = _cache(a, examples, tok, no_teacher)
    params = KDSettings(loss="fkl", alpha=0.0, chunk_size=512, positions="answer")
    out = _loop(a, CachedKD(cache, params), _student(), examples, tok, a.steps_for_epoch)
    model = out.pop("model")
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    model.save_pretrained(Path(a.workdir) / "trained-student", safe_serialization=True)
    return out


def part_cached_all(a) -> dict:
    """The default ``positions=all``: the cache holds every position, the student is projected at all."""
    from distilltune.distill.config import KDSettings
    from distilltune.distill.objectives import CachedKD

    examples, tok = _examples(a.seq)
    t0 = time.perf_counter()
    cache = _cache(a, examples, tok, positions="all")
    build_s = time.perf_counter() - t0
    params = KDSettings(loss="fkl", alpha=0.5, chunk_size=512, positions="all")
    out = _loop(a, CachedKD(cache, params), _student(), examples, tok, a.steps_for_epoch)
    out.pop("model")
    m = cache.manifest
    out["cache"] = {
        "positions": m["n_positions"],
        "build_s": round(build_s, 2),
        "payload_bytes_per_token": m["payload_bytes_per_token"],
        "file_bytes": m["file_bytes"],
    }
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return out


def part_online(a) -> dict:
    from distilltune.distill.config import KDSettings
    from distilltune.distill.objectives import OnlineKD

    examples, tok = _examples(a.seq)
    params = KDSettings(loss="fkl", alpha=0.0, chunk_size=512, positions="answer")
    out = _loop(a, OnlineKD(_teacher(), params), _student(), examples, tok, a.steps_for_epoch)
    out.pop("model")
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return out


def part_trl(a) -> dict:
    import datasets
    from transformers import TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from distilltune.data.chat import collate

    examples, tok = _examples(a.seq)
    steps = a.warmup + a.steps
    times: list[float] = []
    tokens: list[int] = []

    def collator(rows):
        b = collate([examples[r["idx"]] for r in rows], tok.pad_token_id)
        tokens.append(int(b["attention_mask"].sum()))
        return b

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

    with tempfile.TemporaryDirectory() as tmp:
        cfg = GKDConfig(
            output_dir=tmp,
            per_device_train_batch_size=a.batch,
            max_steps=steps,
            learning_rate=1e-4,
            lmbda=0.0,
            beta=0.0,
            max_length=a.seq,
            bf16=False,
            fp16=False,
            gradient_checkpointing=False,
            logging_steps=1000,
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            dataloader_num_workers=0,
            lr_scheduler_type="constant",
            warmup_steps=0,
        )
        t_setup = time.perf_counter()
        trainer = GKDTrainer(
            model=_student(),
            teacher_model=_teacher(),
            args=cfg,
            data_collator=collator,
            train_dataset=datasets.Dataset.from_dict({"idx": list(range(len(examples)))}),
            processing_class=tok,
            callbacks=[Timer()],
        )
        t_train = time.perf_counter()
        trainer.train()
        train_wall_s = time.perf_counter() - t_train
    timed = times[a.warmup :]
    step_s = statistics.median(timed)
    from distilltune.train.loop import batches_per_epoch

    per_epoch = batches_per_epoch(len(examples), a.batch, 1)
    setup_s = t_train - PROCESS_T0
    return {
        "setup_s": round(setup_s, 2),
        "setup_trainer_s": round(t_train - t_setup, 2),
        "train_wall_s": round(train_wall_s, 2),
        "batches_per_epoch": per_epoch,
        "epoch_s_extrapolated": round(step_s * per_epoch, 2),
        "time_to_first_epoch_s_extrapolated": round(setup_s + step_s * per_epoch, 2),
        "steps": len(times),
        "timed_steps": len(timed),
        "step_s": round(step_s, 4),
        "step_s_all": [round(x, 4) for x in timed],
        "tokens_per_step": statistics.mean(tokens),
        "tokens_per_s": round(statistics.mean(tokens) / step_s, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "trl_settings": {"lmbda": 0.0, "beta": 0.0, "bf16": False, "gradient_checkpointing": False},
    }


def topk_error(student, teacher, cache, examples, batch: int, ks=(8, 16, 32, 64, 128)) -> dict:
    """Full-vocabulary vs top-k + tail loss (fkl, rkl, jsd β=0.5) over the examples' answer tokens.

    ``cache`` holds k ≥ max(ks); a smaller k is derived exactly from it (the entries past k join the
    tail bucket), so one teacher pass gives the error for every k.
    """
    import torch

    from distilltune.data.chat import collate
    from distilltune.distill.losses import kd_loss, topk_kd_loss
    from distilltune.train.forward import answer_states

    ks = [k for k in ks if k <= cache.k]
    losses = ("fkl", "rkl", "jsd")
    full = dict.fromkeys(losses, 0.0)
    approx = {k: dict.fromkeys(losses, 0.0) for k in ks}
    n_tokens = 0
    with torch.no_grad():
        for s in range(0, len(examples), batch):
            chunk = list(range(s, min(s + batch, len(examples))))
            b = collate([examples[i] for i in chunk], 0)  # padding positions are masked, never scored
            st = answer_states(student, b["input_ids"], b["attention_mask"], b["labels"])
            tt = answer_states(teacher, b["input_ids"], b["attention_mask"], b["labels"])
            sl, tl = st.logits_chunk(0, st.n), tt.logits_chunk(0, tt.n)
            c = cache.get(chunk)
            n_tokens += st.n
            for loss in losses:
                full[loss] += float(kd_loss(sl, tl, loss=loss, reduction="sum"))
                for k in ks:
                    tail = torch.logaddexp(c.tail, c.logp[:, k:].logsumexp(-1)) if k < cache.k else c.tail
                    approx[k][loss] += float(
                        topk_kd_loss(sl, c.logp[:, :k], c.ids[:, :k], tail, loss=loss, reduction="sum")
                    )
    out: dict = {"tokens": n_tokens}
    for loss in losses:
        out[loss] = {"full_per_token": round(full[loss] / n_tokens, 4)}
        for k in ks:
            out[loss][f"k{k}"] = {
                "topk_per_token": round(approx[k][loss] / n_tokens, 4),
                "relative_error": round(abs(approx[k][loss] - full[loss]) / full[loss], 4),
            }
    return out


def part_error(a) -> dict:
    from distilltune.distill.teacher_cache import ensure_teacher_cache

    examples, tok = _examples(a.seq)
    examples = examples[: a.error_examples]  # a cache of just these (its own key): cheap to build here
    teacher = _teacher()
    cache = ensure_teacher_cache(
        teacher_ref=TEACHER,
        tokenizer=tok,
        examples=examples,
        k=K_ERROR,
        load_teacher=lambda: teacher,
        root=Path(a.workdir) / "cache",
        batch_size=a.batch,
    )
    from transformers import AutoModelForCausalLM

    students = {"untrained": _student().eval()}
    trained_dir = Path(a.workdir) / "trained-student"
    if trained_dir.is_dir():
        students["after_cached_kd"] = AutoModelForCausalLM.from_pretrained(str(trained_dir)).eval()
    out: dict = {"examples": len(examples)}
    for name, student in students.items():
        out[name] = topk_error(student, teacher, cache, examples, a.batch)
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return out


def part_first_epoch(a) -> dict:
    """Cold start to one trained epoch in this process (see the module docstring)."""
    from distilltune.distill.config import KDSettings
    from distilltune.distill.objectives import CachedKD
    from distilltune.train.loop import batches_per_epoch

    examples, tok = _examples(a.seq)
    t_examples = time.perf_counter()
    root = Path(a.workdir) / "first-epoch-cache"
    shutil.rmtree(root, ignore_errors=True)  # built from nothing, whatever ran before
    cache = _cache(a, examples, tok, root=root)
    t_cache = time.perf_counter()
    per_epoch = batches_per_epoch(len(examples), a.batch, 1)
    steps = a.warmup + a.steps if a.quick else per_epoch
    params = KDSettings(loss="fkl", alpha=0.0, chunk_size=512, positions="answer")
    out = _loop(a, CachedKD(cache, params), _student(), examples, tok, steps)
    out.pop("model")
    epoch = out["first_epoch_wall_s"]
    measured = epoch is not None
    if not measured:  # --quick: the epoch is extrapolated from the median step
        epoch = out["step_s"] * per_epoch
    out |= {
        "startup_and_examples_s": round(t_examples - PROCESS_T0, 2),
        "cache_build_s": round(t_cache - t_examples, 2),
        "student_setup_s": round(out["setup_s"] - (t_cache - PROCESS_T0), 2),
        "time_to_first_epoch_s": round(out["setup_s"] + epoch, 2),
        "time_to_first_epoch_measured": measured,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    return out


PARTS = {
    "cache": part_cache,
    "cached": part_cached,
    "cached_all": part_cached_all,
    "online": part_online,
    "trl": part_trl,
    "error": part_error,
    "first_epoch": part_first_epoch,
}


def run_part(name: str, a) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--part",
        name,
        "--workdir",
        a.workdir,
        "--batch",
        str(a.batch),
        "--seq",
        str(a.seq),
    ]
    cmd += ["--warmup", str(a.warmup), "--steps", str(a.steps), "--error-examples", str(a.error_examples)]
    cmd += ["--teacher", a.teacher]
    if a.quick:
        cmd.append("--quick")
    print(f"[bench] {name} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    # The parent's own environment (tuned allocator after the re-exec) for every part, explicitly.
    p = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    lines = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        raise SystemExit(f"part {name} failed:\n{p.stderr[-4000:]}")
    r = json.loads(lines[-1][len("RESULT ") :])
    r["process_wall_s"] = round(time.perf_counter() - t0, 2)
    brief = {k: r[k] for k in ("step_s", "tokens_per_s", "epoch_s", "peak_rss_mb", "build_s") if k in r}
    print(f"[bench]   {brief}", file=sys.stderr, flush=True)
    return r


def allocator_settings() -> dict:
    """The malloc settings and torch thread count this process runs with."""
    import torch

    from distilltune.runtime import FAST_ALLOCATOR_ENV, allocator_is_tuned

    env = {k: os.environ.get(k) for k in FAST_ALLOCATOR_ENV}
    return {"tuned": allocator_is_tuned(), "env": env, "torch_threads": torch.get_num_threads()}


def _same_allocator(parts: dict) -> dict:
    """The one allocator setting every part ran with; refuses to go on when they differ."""
    seen = {json.dumps(r["allocator"], sort_keys=True): name for name, r in parts.items()}
    if len(seen) > 1:
        raise SystemExit(f"parts ran under different allocator settings: {sorted(seen)}")
    return next(iter(parts.values()))["allocator"] if parts else {}


def _first_epoch_report(parts: dict) -> dict:
    """Cold-start time to a first epoch beside the steady-state rate (all from this invocation)."""
    fe, cached, online, trl = (parts.get(n) for n in ("first_epoch", "cached", "online", "trl"))
    out: dict = {}
    if fe:
        out["cached_kd"] = {
            k: fe[k]
            for k in (
                "time_to_first_epoch_s",
                "time_to_first_epoch_measured",
                "startup_and_examples_s",
                "cache_build_s",
                "student_setup_s",
                "first_epoch_wall_s",
                "batches_per_epoch",
            )
        } | {"steady_state_step_s": fe["step_s"], "steady_state_tokens_per_s": fe["tokens_per_s"]}
    if cached:
        out["cached_kd_steady_state"] = {"step_s": cached["step_s"], "tokens_per_s": cached["tokens_per_s"]}
    if online:
        epoch = online["first_epoch_wall_s"]
        out["online_kd"] = {
            "time_to_first_epoch_s": round(online["setup_s"] + (epoch or online["epoch_s"]), 2),
            "time_to_first_epoch_measured": epoch is not None,
            "setup_s": online["setup_s"],
            "steady_state_step_s": online["step_s"],
            "steady_state_tokens_per_s": online["tokens_per_s"],
        }
    if trl:
        out["trl_gkd"] = {
            "time_to_first_epoch_s_extrapolated": trl["time_to_first_epoch_s_extrapolated"],
            "setup_s": trl["setup_s"],
            "steady_state_step_s": trl["step_s"],
            "steady_state_tokens_per_s": trl["tokens_per_s"],
        }
    return out


def _target(name: str, value: float, ok: bool) -> dict:
    return {"name": name, "value": round(value, 4), "met": bool(ok)}


def _cli(args: list[str]) -> None:
    cmd = [sys.executable, "-m", "distilltune", *args]
    print("[bench] $ distilltune " + " ".join(args), file=sys.stderr, flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"command failed ({p.returncode}):\n{p.stderr[-4000:]}")


def quality(a) -> dict:
    """Distilled (cached KD, CE mixed in with alpha) vs label-only fine-tuned student, same steps."""
    from distilltune.distill.heldout import heldout_ce
    from distilltune.models import load_model
    from distilltune.runtime import set_threads
    from distilltune.task import load_task

    set_threads()
    work = Path(a.workdir)
    train = [
        f"train.max_steps={a.quality_steps}",
        f"train.batch_size={a.batch}",
        f"train.lr={a.quality_lr}",
        "train.warmup_steps=10",
        "train.eval_every=0",
        f"train.eval_samples={a.quality_eval_samples}",
        "train.save_every=50",
        f"train.seed={a.quality_seed}",
    ]
    if a.quality_rag:
        train.append("rag=true")  # retrieved context in every prompt, as compare and serve do
    teacher_ref = a.quality_teacher
    if a.quality_teacher_lora_steps:
        # The blend compare runs: adapt the teacher with LoRA first, then distill from it.
        teacher_ref = str(work / "teacher-lora")
        lora_train = [t for t in train if not t.startswith(("train.max_steps", "train.lr"))]
        _cli(
            [
                "finetune",
                "--task",
                str(TASK),
                "--model",
                a.quality_teacher,
                "--method",
                "lora",
                "--output",
                teacher_ref,
                "-q",
                *lora_train,
                f"train.max_steps={a.quality_teacher_lora_steps}",
                "train.eval_samples=0",
            ]
        )
    kd_dir, ft_dir = work / "student-kd", work / "student-ft"
    _cli(
        [
            "distill",
            "--task",
            str(TASK),
            "--teacher",
            teacher_ref,
            "--student",
            a.quality_student,
            "--output",
            str(kd_dir),
            "--loss",
            a.quality_loss,
            "--mode",
            "cached",
            "-q",
            *train,
            f"alpha={a.quality_alpha}",
            f"positions={a.quality_positions}",
            *([f"cache.dir={a.quality_cache_dir}"] if a.quality_cache_dir else []),
        ]
    )
    _cli(
        [
            "finetune",
            "--task",
            str(TASK),
            "--model",
            a.quality_student,
            "--method",
            "full",
            "--output",
            str(ft_dir),
            "-q",
            *train,
        ]
    )
    task = load_task(TASK)
    out: dict = {"steps": a.quality_steps, "batch": a.batch, "lr": a.quality_lr, "alpha": a.quality_alpha}
    out["student"] = a.quality_student
    out["seed"] = a.quality_seed
    out["teacher"] = teacher_ref
    out["teacher_lora_steps"] = a.quality_teacher_lora_steps
    out["rag"] = a.quality_rag
    out["loss"] = a.quality_loss
    out["positions"] = a.quality_positions
    refs = {"distilled": str(kd_dir), "label_only": str(ft_dir), "untrained_student": a.quality_student}
    refs["teacher"] = teacher_ref
    index = None
    if a.quality_rag:
        from distilltune.retrieval import GroundedPrompter, KnowledgeIndex
        from distilltune.retrieval.config import RetrievalConfig

        rc = RetrievalConfig()  # the training runs' default retrieval settings
        index = KnowledgeIndex.open(task, rc)  # once: every model is scored on the same retrieval
    for name, ref in refs.items():
        loaded = load_model(ref)
        prompter = None
        if index is not None:
            prompter = GroundedPrompter.from_config(task.system_prompt, loaded.tokenizer, index, rc)
        r = heldout_ce(loaded.model, loaded.tokenizer, task.eval, task.system_prompt, prompter=prompter)
        out[name] = {
            "ref": ref,
            "heldout_ce": round(r["ce"], 4),
            "eval_items": r["items"],
            "eval_tokens": r["tokens"],
        }
        summary = Path(ref) / "train_summary.json"
        if summary.is_file():
            sm = json.loads(summary.read_text())
            ev = sm.get("last_eval") or {}
            out[name] |= {"fact_recall": ev.get("fact_recall"), "eval_samples": ev.get("eval_samples")}
            out[name]["train_seconds"] = round(sm["train_seconds"], 1)
            out[name]["card_reports_fact_recall"] = (
                "fact recall" in (Path(ref) / "README.md").read_text().lower()
            )
        del loaded
    out["distilled_beats_label_only"] = out["distilled"]["heldout_ce"] < out["label_only"]["heldout_ce"]
    # top-k + tail vs full-vocabulary loss for the distilled student (first 64 training examples)
    from distilltune.distill.teacher_cache import ensure_teacher_cache
    from distilltune.train.data import build_examples

    teacher = load_model(teacher_ref)
    from distilltune.train.methods import merge_if_adapter

    teacher_model = merge_if_adapter(teacher.model).eval()
    examples, _ = build_examples(task.train, teacher.tokenizer, task.system_prompt, 512)
    examples = examples[:64]
    cache = ensure_teacher_cache(
        teacher_ref=teacher_ref,
        tokenizer=teacher.tokenizer,
        examples=examples,
        k=K_ERROR,
        load_teacher=lambda: teacher_model,
        root=Path(a.quality_cache_dir) if a.quality_cache_dir else None,
    )
    student = load_model(str(kd_dir)).model
    out["topk_error_distilled_student"] = {"examples": len(examples)} | topk_error(
        student, teacher_model, cache, examples, a.batch
    )
    return out


def main() -> None:
    global TEACHER, STUDENT
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 warm-up + 3 timed steps per part")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument(
        "--steps", type=int, default=20, help="timed steps of the TRL part (ours run a full epoch)"
    )
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--error-examples", type=int, default=64)
    ap.add_argument(
        "--teacher",
        default=TEACHER,
        help="teacher of the speed parts (default: the bundled model; a directory with the same "
        "architecture and random weights measures the same speed, e.g. to check the harness)",
    )
    ap.add_argument(
        "--workdir", default=None, help="where the cache and the trained student go (default: temp)"
    )
    ap.add_argument("--name", default="distill", help="results/<name>.json")
    ap.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of " + ",".join(PARTS))
    ap.add_argument("--part", choices=sorted(PARTS), help=argparse.SUPPRESS)
    ap.add_argument("--quality", action="store_true", help="distilled vs label-only student (held-out CE)")
    ap.add_argument("--quality-steps", type=int, default=150)
    ap.add_argument("--quality-lr", type=float, default=1e-3)
    ap.add_argument("--quality-alpha", type=float, default=0.5)
    ap.add_argument("--quality-loss", default="fkl")
    ap.add_argument(
        "--quality-positions",
        default="all",
        choices=["all", "answer"],
        help="distill at every token the teacher reads (the default) or at the answer tokens only",
    )
    ap.add_argument("--quality-teacher", default=TEACHER)
    ap.add_argument("--quality-seed", type=int, default=0, help="data order and initialisation seed")
    ap.add_argument(
        "--quality-rag", action="store_true", help="retrieved context in training and held-out prompts"
    )
    ap.add_argument(
        "--quality-teacher-lora-steps",
        type=int,
        default=0,
        help="LoRA-fine-tune the teacher this many steps first and distill from it (0: the teacher as is)",
    )
    ap.add_argument(
        "--quality-student",
        default=f"{TEACHER}:n_layers=6",
        help="the same starting student for both sides (default: the base teacher cut to 6 layers)",
    )
    ap.add_argument("--quality-eval-samples", type=int, default=32)
    ap.add_argument(
        "--quality-cache-dir",
        default=None,
        help="teacher cache root (default: the shared one, keyed by content)",
    )
    a = ap.parse_args()
    if a.quick:
        a.warmup, a.steps, a.error_examples = 1, 3, 16

    reexec_with_tuned_allocator()
    TEACHER, STUDENT = a.teacher, f"{a.teacher}:layers={STUDENT_LAYERS}"
    if a.quality:
        with tempfile.TemporaryDirectory() as tmp:
            a.workdir = a.workdir or tmp
            res = quality(a)
        path = write_result(f"{a.name}_quality", res)
        print(json.dumps({k: v for k, v in res.items()}, indent=1), file=sys.stderr)
        print(path)
        return
    if a.part:
        from distilltune.runtime import set_threads

        set_threads()
        if a.part in ("cached", "cached_all", "online", "first_epoch"):
            from distilltune.train.loop import batches_per_epoch

            n = len(_examples(a.seq)[0])
            a.steps_for_epoch = (
                a.warmup + a.steps if a.quick else max(batches_per_epoch(n, a.batch, 1), a.warmup + a.steps)
            )
        res = PARTS[a.part](a)
        res["allocator"] = allocator_settings()
        print("RESULT " + json.dumps(res, default=str), flush=True)
        return

    wanted = [p for p in a.parts.split(",") if p]
    unknown = set(wanted) - set(PARTS)
    if unknown:
        raise SystemExit(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    with tempfile.TemporaryDirectory() as tmp:
        a.workdir = a.workdir or tmp
        parts = {name: run_part(name, a) for name in PARTS if name in wanted}
    allocator = _same_allocator(parts)
    targets = []
    cache, cached, online, trl, err = (parts.get(n) for n in ("cache", "cached", "online", "trl", "error"))
    ratios: dict = {}
    if cached and online:
        r = ratios["cached_epoch_over_online"] = round(cached["epoch_s"] / online["epoch_s"], 4)
        targets.append(_target("cached epoch <= 0.6 x online epoch", r, r <= 0.6))
    if cache:
        b = cache["payload_bytes_per_token"]
        targets.append(_target("cache payload <= 128 bytes/token at k=32", b, b <= 128))
    if err:
        student = "after_cached_kd" if "after_cached_kd" in err else "untrained"
        fkl = err[student]["fkl"][f"k{K}"]["relative_error"]
        worst = max(err[student][loss][f"k{K}"]["relative_error"] for loss in ("fkl", "rkl", "jsd"))
        targets.append(
            _target(f"top-{K} fkl within 2% of full-vocabulary fkl ({student} student)", fkl, fkl <= 0.02)
        )
        targets.append(
            _target(f"top-{K} loss within 2% of full, worst of fkl/rkl/jsd ({student})", worst, worst <= 0.02)
        )
    if cached and trl:
        speed = ratios["cached_tokens_per_s_over_trl"] = round(
            cached["tokens_per_s"] / trl["tokens_per_s"], 4
        )
        rss = ratios["cached_peak_rss_over_trl"] = round(cached["peak_rss_mb"] / trl["peak_rss_mb"], 4)
        targets += [
            _target("cached tokens/s >= 1.8 x TRL GKDTrainer", speed, speed >= 1.8),
            _target("cached peak RSS <= 0.7 x TRL GKDTrainer", rss, rss <= 0.7),
            _target("docs/design.md: cached tokens/s >= 3 x TRL", speed, speed >= 3.0),
            _target("docs/design.md: cached peak RSS <= 0.55 x TRL", rss, rss <= 0.55),
        ]
    if cached and parts.get("cached_all"):
        ratios["cached_all_step_over_cached"] = round(parts["cached_all"]["step_s"] / cached["step_s"], 4)
    if online and trl:
        ratios["online_tokens_per_s_over_trl"] = round(online["tokens_per_s"] / trl["tokens_per_s"], 4)
    first = _first_epoch_report(parts)
    if "cached_kd" in first and "online_kd" in first:
        ratios["cached_first_epoch_incl_cache_build_over_online_first_epoch"] = round(
            first["cached_kd"]["time_to_first_epoch_s"] / first["online_kd"]["time_to_first_epoch_s"], 4
        )
    data = {
        "quick": a.quick,
        "setup": {
            "teacher": TEACHER,
            "student": STUDENT,
            "batch": a.batch,
            "seq": a.seq,
            "k": K,
            "loss": "fkl",
        },
        "allocator": allocator,
        "same_invocation": True,
        "ratios_scope": "every ratio here is between parts of this one invocation (subprocesses run back to "
        "back under the same allocator settings and thread count); ratios between results files are across "
        "separate runs",
        "time_to_first_epoch": first,
        **parts,
        "ratios": ratios,
        "targets": targets,
    }
    path = write_result(a.name, data)
    for t in targets:
        print(f"[bench] {'MET ' if t['met'] else 'MISS'} {t['name']}: {t['value']}", file=sys.stderr)
    print(path)


if __name__ == "__main__":
    main()
