"""The one training loop, shared by fine-tuning and distillation (they differ only in the objective).

Read it top to bottom in ``train_loop``: build the optimizer and schedule, prepare with Accelerate,
restore the latest checkpoint if resuming, then per update: gather ``grad_accum`` micro-batches,
forward/backward each through the objective, clip, step, log, evaluate, checkpoint.

Usage (what ``run_finetune`` does; the distiller passes its own objective and example list)::

    from distilltune.train.loop import train_loop, make_accelerator
    from distilltune.train.objectives import causal_lm_objective, answer_logits, loss_positions
    from distilltune.train.data import build_examples
    from distilltune.train.evaluator import make_evaluator

    examples, stats = build_examples(task.train, tokenizer, task.system_prompt, max_length=512)
    result = train_loop(
        model=model,                      # HF or PEFT model; trainable params have requires_grad
        examples=examples,                # list[distilltune.data.chat.Example]
        objective=causal_lm_objective,    # objective(model, batch, step) -> (loss, {name: float})
        settings=cfg.train,               # TrainSettings (max_steps, lr schedule, eval/save cadence...)
        lr=cfg.lr(),
        run_dir=out_dir,                  # metrics.jsonl and checkpoints/ are written here
        pad_id=tokenizer.pad_token_id,
        evaluator=make_evaluator(...),    # raw model -> {"eval_loss": ..., "fact_recall": ...} or None
        reporter=make_reporter(quiet),    # progress output (train.progress)
        resume=True,                      # continue from the latest complete checkpoint, if any
    )
    # result.model is the trained (unwrapped) model, with the best evaluated weights if load_best.

Objective contract: ``batch`` holds ``input_ids``, ``attention_mask``, ``labels`` (IGNORE_INDEX off
the answer) and ``index`` (LongTensor: positions of the rows' examples in ``examples``, to join
precomputed per-example data such as cached teacher log-probs). ``model`` is the prepared
``AnswerLogitsModel``: ``model(input_ids, attention_mask, labels)`` returns the logits at the loss
positions only ([N, V], order of ``loss_positions(labels)``) and their targets; the raw model (for
generation, e.g. on-policy sampling) is ``unwrap_model(model)``. Return a scalar loss averaged over
the micro-batch's loss tokens: the loop weights micro-batches by their loss-token counts, so
``grad_accum`` 2 × batch 4 equals batch 8.

Data order is a function of (seed, epoch) alone and the data position is a micro-batch counter, so
resuming needs no iterator state; with the RNG, optimizer and scheduler restored, a resumed run ends
bit-identical to an uninterrupted one on CPU. Under ``accelerate launch`` each process takes its own
slice of every global batch and only the main process writes files.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch import nn

from distilltune.data.chat import Example, collate, epoch_order
from distilltune.errors import UserError
from distilltune.io import append_jsonl, atomic_write_text, read_jsonl
from distilltune.train.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_trainable_weights,
    prune_checkpoints,
    remove_stale_staging,
    save_checkpoint,
)
from distilltune.train.config import TrainSettings
from distilltune.train.objectives import AnswerLogitsModel, Objective, loss_mask
from distilltune.train.progress import Reporter, SilentReporter, TensorBoardLogger

METRICS = "metrics.jsonl"


class TrainingDiverged(UserError):
    """The loss or gradient became NaN/inf; the last good checkpoint is kept."""


@dataclass
class LoopResult:
    model: nn.Module  # the unwrapped trained model (best evaluated weights when load_best)
    final_step: int
    total_steps: int
    best_step: int | None
    best_eval: dict | None
    last_eval: dict | None
    stopped: str  # "max_steps" | "early_stopping"
    resumed_from: int | None
    train_seconds: float
    history: list[dict] = field(default_factory=list)
    state_dict: dict | None = None  # full weights gathered from shards (FSDP / DeepSpeed), main process


def make_accelerator(precision: str = "auto"):
    """fp32 on CPU; bf16 autocast on a GPU that supports it; ``accelerate launch`` settings win on auto."""
    import os

    from accelerate import Accelerator

    if precision == "fp32":
        mixed = "no"
    elif precision == "bf16":
        mixed = "bf16"
    elif os.environ.get("ACCELERATE_MIXED_PRECISION"):
        mixed = None  # chosen by the accelerate config / launcher
    else:
        mixed = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    # Accelerate keeps one process-wide state and refuses a second Accelerator with another precision
    # (an fp32 run, then a bf16 run, in one process: compare, notebooks). The precision part of that
    # state is per run here; the process group (PartialState) is kept.
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    # On a machine without a GPU, Accelerate only forms a multi-process (gloo) group when told cpu=True.
    acc = Accelerator(mixed_precision=mixed, cpu=not torch.cuda.is_available())
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != acc.num_processes:
        raise UserError(
            f"launched as {launched} processes but Accelerate formed a group of {acc.num_processes}; "
            "every process would write the same run directory"
        )
    return acc


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up from ~0 to 1 over ``warmup`` updates, cosine to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def batches_per_epoch(n: int, batch_size: int, world: int) -> int:
    return max(1, math.ceil(n / (batch_size * world)))


def micro_batch_indices(
    n: int, batch_size: int, seed: int, micro_step: int, rank: int, world: int
) -> list[int]:
    """The example positions of micro-batch ``micro_step`` for process ``rank``.

    One process: consecutive slices of the epoch's permutation (the last one may be smaller).
    Several: each global batch is split by rank; the last global batch wraps around the epoch so
    every process gets a full micro-batch (DDP needs every rank to step together).
    """
    per_epoch = batches_per_epoch(n, batch_size, world)
    epoch, i = divmod(micro_step, per_epoch)
    order = epoch_order(n, seed, epoch)
    start = (i * world + rank) * batch_size
    if world == 1:
        return order[start : start + batch_size]
    return [order[j % n] for j in range(start, start + batch_size)]


def total_updates(settings: TrainSettings, n_examples: int, world: int = 1) -> int:
    if settings.max_steps:
        return settings.max_steps
    per_epoch = batches_per_epoch(n_examples, settings.batch_size, world)
    return max(1, math.ceil(settings.epochs * per_epoch / settings.grad_accum))


def score(metrics: dict, select: str) -> tuple:
    """Bigger is better: fact recall (ties broken by lower eval loss), or negative eval loss."""
    loss = metrics.get("eval_loss")
    neg_loss = -loss if loss is not None else float("-inf")
    recall = metrics.get("fact_recall")
    if select == "fact_recall" and recall is not None:
        return (recall, neg_loss)
    return (neg_loss,)


def _all_finite(value: torch.Tensor, accelerator) -> bool:
    ok = torch.isfinite(value.detach().float()).all().reshape(1).to(accelerator.device)
    if accelerator.num_processes > 1:
        ok = accelerator.reduce(ok.float(), reduction="sum") == accelerator.num_processes
    return bool(ok.all())


@contextmanager
def _full_params(net: nn.Module, sharded: bool):
    """Evaluation calls the raw model, outside the prepared wrapper's forward; under FSDP2 the
    wrapper's own (root) parameters must be gathered first (decoder layers gather themselves)."""
    unshard = getattr(net, "unshard", None) if sharded else None
    if unshard is None:
        yield
        return
    unshard()
    try:
        yield
    finally:
        net.reshard()


def unwrap_model(net: nn.Module) -> nn.Module:
    """The raw (HF / PEFT) model inside a prepared ``AnswerLogitsModel``."""
    inner = getattr(net, "module", net)
    return inner.model if isinstance(inner, AnswerLogitsModel) else inner


def train_loop(
    *,
    model: nn.Module,
    examples: list[Example],
    objective: Objective,
    settings: TrainSettings,
    lr: float,
    run_dir: str | Path,
    pad_id: int,
    evaluator=None,
    reporter: Reporter | None = None,
    resume: bool = False,
    accelerator=None,
    header: str = "",
) -> LoopResult:
    if not examples:
        raise UserError("no training examples")
    run_dir = Path(run_dir)
    reporter = reporter or SilentReporter()
    acc = accelerator or make_accelerator(settings.precision)
    main = acc.is_main_process
    world, rank = acc.num_processes, acc.process_index
    n = len(examples)
    per_epoch = batches_per_epoch(n, settings.batch_size, world)
    total = total_updates(settings, n, world)
    metrics_path = run_dir / METRICS

    # --- setup: seed, optimizer, schedule, Accelerate -------------------------------------------
    torch.manual_seed(settings.seed + rank)  # dropout; replaced by the checkpoint's RNG on resume
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UserError("the model has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        partial(warmup_cosine, warmup=settings.warmup_steps, total=total, min_ratio=settings.min_lr_ratio),
    )
    net, optimizer = acc.prepare(AnswerLogitsModel(model), optimizer)
    raw = unwrap_model(net)
    params = [p for p in net.parameters() if p.requires_grad]  # FSDP2 replaces parameters in prepare
    sharded = str(acc.distributed_type).rsplit(".", 1)[-1] in ("FSDP", "DEEPSPEED")

    state = {"micro_step": 0, "best_step": None, "best_eval": None, "bad_evals": 0, "train_seconds": 0.0}
    step = 0
    resumed_from = None
    ckpt = latest_checkpoint(run_dir) if resume else None
    if ckpt is not None:
        state = load_checkpoint(ckpt, raw, optimizer, scheduler, acc, sharded)
        step = resumed_from = state["step"]
        if main:  # forget log rows of the steps we are about to redo
            kept = [r for r in read_jsonl(metrics_path) if r.get("step", 0) <= step]
            atomic_write_text(metrics_path, "".join(_json_line(r) for r in kept))
    elif main:
        metrics_path.unlink(missing_ok=True)
    if main:
        remove_stale_staging(run_dir)
    acc.wait_for_everyone()

    tb = TensorBoardLogger(run_dir / "tensorboard", reporter) if settings.tensorboard and main else None
    history: list[dict] = []
    last_eval: dict | None = None

    def log(row: dict) -> None:
        history.append(row)
        if main:
            append_jsonl(metrics_path, row)
            reporter.log(row)
            if tb is not None:
                tb.log(row)

    if main:
        where = f"resuming from step {step}" if resumed_from is not None else "starting"
        precision = (
            "bf16 autocast"
            if acc.mixed_precision == "bf16"
            else str(acc.mixed_precision).replace("no", "fp32")
        )
        reporter.start(
            total,
            step,
            f"{header}{where}: {total} updates, {n} examples, {per_epoch} batches/epoch, "
            f"{world} process{'es' if world > 1 else ''} on {acc.device} ({precision})",
        )

    def diverged(what: str) -> TrainingDiverged:
        good = latest_checkpoint(run_dir)
        keep = f"the last good checkpoint {good} is kept" if good else "no checkpoint was written yet"
        if main:
            append_jsonl(metrics_path, {"type": "error", "step": step, "error": f"non-finite {what}"})
        return TrainingDiverged(
            f"training diverged: the {what} became NaN/inf at update {step + 1} (lr {scheduler.get_last_lr()[0]:.2e}); "
            f"{keep}. Lower train.lr, keep train.max_grad_norm on, or check the data"
        )

    # --- the loop -------------------------------------------------------------------------------
    stopped = "max_steps"
    window_t0, window_tokens, window_steps = time.perf_counter(), 0, 0
    while step < total:
        t0 = time.perf_counter()
        batches = []
        for _ in range(settings.grad_accum):
            idx = micro_batch_indices(n, settings.batch_size, settings.seed, state["micro_step"], rank, world)
            state["micro_step"] += 1
            b = collate([examples[i] for i in idx], pad_id)
            b["index"] = torch.tensor(idx, dtype=torch.long)
            batches.append({k: v.to(acc.device) for k, v in b.items()})
        counts = [int(loss_mask(b["labels"]).sum()) for b in batches]
        denom = sum(counts)

        step_loss = 0.0
        step_metrics: dict[str, float] = {}
        for k, b in enumerate(batches):
            weight = counts[k] / denom if denom else 1.0 / len(batches)
            last = k == len(batches) - 1
            with nullcontext() if last else acc.no_sync(net):
                loss, metrics = objective(net, b, step)
                if not _all_finite(loss, acc):
                    raise diverged("loss")
                acc.backward(loss * weight)
            step_loss += float(loss.detach()) * weight
            for name, v in metrics.items():
                step_metrics[name] = step_metrics.get(name, 0.0) + float(v) * weight

        grad_norm = None
        if settings.max_grad_norm:
            grad_norm = acc.clip_grad_norm_(params, settings.max_grad_norm)
            if not _all_finite(torch.as_tensor(grad_norm), acc):
                raise diverged("gradient norm")
        lr_now = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        dt = time.perf_counter() - t0
        state["train_seconds"] += dt
        window_tokens += sum(int(b["attention_mask"].sum()) for b in batches) * world
        window_steps += 1
        if step % settings.log_every == 0 or step == total:
            elapsed = time.perf_counter() - window_t0
            row = {
                "type": "train",
                "step": step,
                "total_steps": total,
                "epoch": round(state["micro_step"] / per_epoch, 4),
                "loss": step_loss,
                "lr": lr_now,
                **({"grad_norm": float(grad_norm)} if grad_norm is not None else {}),
                "tokens_per_s": window_tokens / elapsed if elapsed > 0 else 0.0,
                "step_s": elapsed / window_steps,
                "eta_s": (total - step) * elapsed / window_steps,
                **{k: v for k, v in step_metrics.items() if k != "loss"},
            }
            log(row)
            window_t0, window_tokens, window_steps = time.perf_counter(), 0, 0

        # --- evaluate, select, stop early -------------------------------------------------------
        improved = False
        if evaluator is not None and (
            step == total or (settings.eval_every and step % settings.eval_every == 0)
        ):
            t_eval = time.perf_counter()
            with _full_params(net, sharded):
                last_eval = dict(evaluator(raw))
            log({"type": "eval", "step": step, **last_eval, "eval_s": round(time.perf_counter() - t_eval, 2)})
            best = state["best_eval"]
            if best is None or score(last_eval, settings.select_metric) > score(best, settings.select_metric):
                state["best_eval"], state["best_step"], state["bad_evals"] = last_eval, step, 0
                improved = True
            else:
                state["bad_evals"] += 1
            if settings.early_stopping_patience and state["bad_evals"] >= settings.early_stopping_patience:
                stopped = "early_stopping"
        window_t0 = time.perf_counter()  # evaluation time is not training throughput

        if improved or (settings.save_every and step % settings.save_every == 0):
            save_checkpoint(run_dir, step, raw, optimizer, scheduler, state, acc, sharded)
            if main:
                prune_checkpoints(run_dir, settings.keep_last, state["best_step"])
            acc.wait_for_everyone()
        if stopped == "early_stopping":
            if main:
                reporter.message(
                    f"early stopping at step {step}: {settings.select_metric} did not improve for "
                    f"{state['bad_evals']} evaluations (best at step {state['best_step']})"
                )
            break

    # --- finish: best weights ---------------------------------------------------------------------
    best_step = state["best_step"]
    if settings.load_best and best_step is not None and best_step != step:
        best_dir = dict(list_checkpoints(run_dir)).get(best_step)
        if best_dir is None:
            raise UserError(f"the best checkpoint (step {best_step}) is missing from {run_dir}/checkpoints")
        if sharded:
            acc.load_state(str(best_dir / "accelerate"))
        else:
            load_trainable_weights(raw, best_dir)
        if main:
            reporter.message(f"loaded the best weights (step {best_step}, {state['best_eval']})")
    # sharded weights are gathered to the main process for saving (a collective call)
    state_dict = None
    if sharded:
        full = acc.get_state_dict(net)
        state_dict = {k.removeprefix("model."): v for k, v in full.items()} if main else None
    if tb is not None:
        tb.close()
    if main:
        reporter.close()
    acc.wait_for_everyone()
    raw.eval()
    return LoopResult(
        model=raw,
        final_step=step,
        total_steps=total,
        best_step=best_step,
        best_eval=state["best_eval"],
        last_eval=last_eval,
        stopped=stopped,
        resumed_from=resumed_from,
        train_seconds=state["train_seconds"],
        history=history,
        state_dict=state_dict,
    )


def _json_line(row: dict) -> str:
    import json

    return json.dumps(row, ensure_ascii=False, default=str) + "\n"
