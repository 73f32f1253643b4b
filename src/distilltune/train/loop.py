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

import json
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch import nn

from distilltune.data.chat import Example, collate
from distilltune.errors import UserError
from distilltune.io import append_jsonl, atomic_write_text, read_jsonl
from distilltune.train.accel import _all_finite, _full_params, make_accelerator
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
from distilltune.train.schedule import (
    batches_per_epoch,
    micro_batch_indices,
    score,
    total_updates,
    warmup_cosine,
)

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
    run = _Run(
        examples=examples,
        objective=objective,
        settings=settings,
        run_dir=Path(run_dir),
        pad_id=pad_id,
        evaluator=evaluator,
        reporter=reporter or SilentReporter(),
        acc=accelerator or make_accelerator(settings.precision),
    )
    run.prepare(model, lr)
    run.restore(resume)
    run.announce(header)
    while run.step < run.total:
        run.update()
        if run.evaluate_and_checkpoint():
            break
    return run.finish()


class _Run:
    """One training run's state between updates; each method is one phase of ``train_loop``."""

    def __init__(self, *, examples, objective, settings, run_dir, pad_id, evaluator, reporter, acc):
        self.examples, self.objective, self.settings = examples, objective, settings
        self.run_dir, self.pad_id, self.evaluator, self.reporter, self.acc = (
            run_dir,
            pad_id,
            evaluator,
            reporter,
            acc,
        )
        self.main = acc.is_main_process
        self.world, self.rank = acc.num_processes, acc.process_index
        self.n = len(examples)
        self.per_epoch = batches_per_epoch(self.n, settings.batch_size, self.world)
        self.total = total_updates(settings, self.n, self.world)
        self.metrics_path = run_dir / METRICS
        self.step = 0
        self.resumed_from: int | None = None
        self.stopped = "max_steps"
        self.history: list[dict] = []
        self.last_eval: dict | None = None
        self.state = {
            "micro_step": 0,
            "best_step": None,
            "best_eval": None,
            "bad_evals": 0,
            "train_seconds": 0.0,
        }
        self.tb = (
            TensorBoardLogger(run_dir / "tensorboard", reporter)
            if settings.tensorboard and self.main
            else None
        )
        # The throughput window since the last train row: (seconds inside updates, tokens, updates).
        # Only update time counts: evaluation and checkpoints are not training throughput.
        self._window = (0.0, 0, 0)

    # --- setup: seed, optimizer, schedule, Accelerate, resume -------------------------------------
    def prepare(self, model: nn.Module, lr: float) -> None:
        s, acc = self.settings, self.acc
        torch.manual_seed(s.seed + self.rank)  # dropout; replaced by the checkpoint's RNG on resume
        if s.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if hasattr(model, "enable_input_require_grads"):
                model.enable_input_require_grads()
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise UserError("the model has no trainable parameters")
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=s.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            partial(warmup_cosine, warmup=s.warmup_steps, total=self.total, min_ratio=s.min_lr_ratio),
        )
        self.net, self.optimizer = acc.prepare(AnswerLogitsModel(model), optimizer)
        self.raw = unwrap_model(self.net)
        self.params = [p for p in self.net.parameters() if p.requires_grad]  # FSDP2 replaces them
        self.sharded = str(acc.distributed_type).rsplit(".", 1)[-1] in ("FSDP", "DEEPSPEED")

    def restore(self, resume: bool) -> None:
        ckpt = latest_checkpoint(self.run_dir) if resume else None
        if ckpt is not None:
            self.state = load_checkpoint(
                ckpt, self.raw, self.optimizer, self.scheduler, self.acc, self.sharded
            )
            self.step = self.resumed_from = self.state["step"]
            if self.main:  # forget log rows of the steps we are about to redo
                kept = [r for r in read_jsonl(self.metrics_path) if r.get("step", 0) <= self.step]
                atomic_write_text(self.metrics_path, "".join(_json_line(r) for r in kept))
        elif self.main:
            self.metrics_path.unlink(missing_ok=True)
        if self.main:
            remove_stale_staging(self.run_dir)
        self.acc.wait_for_everyone()

    def announce(self, header: str) -> None:
        if not self.main:
            return
        acc = self.acc
        where = f"resuming from step {self.step}" if self.resumed_from is not None else "starting"
        precision = (
            "bf16 autocast"
            if acc.mixed_precision == "bf16"
            else str(acc.mixed_precision).replace("no", "fp32")
        )
        self.reporter.start(
            self.total,
            self.step,
            f"{header}{where}: {self.total} updates, {self.n} examples, {self.per_epoch} batches/epoch, "
            f"{self.world} process{'es' if self.world > 1 else ''} on {acc.device} ({precision})",
        )

    def log(self, row: dict) -> None:
        self.history.append(row)
        if self.main:
            append_jsonl(self.metrics_path, row)
            self.reporter.log(row)
            if self.tb is not None:
                self.tb.log(row)

    def diverged(self, what: str) -> TrainingDiverged:
        good = latest_checkpoint(self.run_dir)
        keep = f"the last good checkpoint {good} is kept" if good else "no checkpoint was written yet"
        if self.main:
            append_jsonl(
                self.metrics_path, {"type": "error", "step": self.step, "error": f"non-finite {what}"}
            )
        return TrainingDiverged(
            f"training diverged: the {what} became NaN/inf at update {self.step + 1} "
            f"(lr {self.scheduler.get_last_lr()[0]:.2e}); "
            f"{keep}. Lower train.lr, keep train.max_grad_norm on, or check the data"
        )

    # --- one update -------------------------------------------------------------------------------
    def _micro_batches(self) -> list[dict]:
        s, batches = self.settings, []
        for _ in range(s.grad_accum):
            idx = micro_batch_indices(
                self.n, s.batch_size, s.seed, self.state["micro_step"], self.rank, self.world
            )
            self.state["micro_step"] += 1
            b = collate([self.examples[i] for i in idx], self.pad_id)
            b["index"] = torch.tensor(idx, dtype=torch.long)
            batches.append({k: v.to(self.acc.device) for k, v in b.items()})
        return batches

    def _forward_backward(self, batches: list[dict]) -> tuple[float, dict[str, float]]:
        """Micro-batches weighted by their loss-token counts: grad_accum 2 × batch 4 == batch 8."""
        counts = [int(loss_mask(b["labels"]).sum()) for b in batches]
        denom = sum(counts)
        step_loss, step_metrics = 0.0, {}
        for k, b in enumerate(batches):
            weight = counts[k] / denom if denom else 1.0 / len(batches)
            last = k == len(batches) - 1
            with nullcontext() if last else self.acc.no_sync(self.net):
                loss, metrics = self.objective(self.net, b, self.step)
                if not _all_finite(loss, self.acc):
                    raise self.diverged("loss")
                self.acc.backward(loss * weight)
            step_loss += float(loss.detach()) * weight
            for name, v in metrics.items():
                step_metrics[name] = step_metrics.get(name, 0.0) + float(v) * weight
        return step_loss, step_metrics

    def update(self) -> None:
        s, acc = self.settings, self.acc
        t0 = time.perf_counter()
        batches = self._micro_batches()
        step_loss, step_metrics = self._forward_backward(batches)
        grad_norm = None
        if s.max_grad_norm:
            grad_norm = acc.clip_grad_norm_(self.params, s.max_grad_norm)
            if not _all_finite(torch.as_tensor(grad_norm), acc):
                raise self.diverged("gradient norm")
        lr_now = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        dt = time.perf_counter() - t0
        self.state["train_seconds"] += dt
        seconds, tokens, updates = self._window
        tokens += sum(int(b["attention_mask"].sum()) for b in batches) * self.world
        self._window = (seconds + dt, tokens, updates + 1)
        if self.step % s.log_every == 0 or self.step == self.total:
            self._log_train(step_loss, step_metrics, grad_norm, lr_now)

    def _log_train(self, step_loss: float, step_metrics: dict, grad_norm, lr_now: float) -> None:
        elapsed, tokens, updates = self._window
        self.log(
            {
                "type": "train",
                "step": self.step,
                "total_steps": self.total,
                "epoch": round(self.state["micro_step"] / self.per_epoch, 4),
                "loss": step_loss,
                "lr": lr_now,
                **({"grad_norm": float(grad_norm)} if grad_norm is not None else {}),
                "tokens_per_s": tokens / elapsed if elapsed > 0 else 0.0,
                "step_s": elapsed / updates,
                "eta_s": (self.total - self.step) * elapsed / updates,
                **{k: v for k, v in step_metrics.items() if k != "loss"},
            }
        )
        self._window = (0.0, 0, 0)

    # --- evaluate, select, stop early, checkpoint -------------------------------------------------
    def _evaluate(self) -> bool:
        """Run the evaluator when due; True when this evaluation is the best so far."""
        s, step = self.settings, self.step
        if self.evaluator is None or not (step == self.total or (s.eval_every and step % s.eval_every == 0)):
            return False
        t_eval = time.perf_counter()
        with _full_params(self.net, self.sharded):
            self.last_eval = dict(self.evaluator(self.raw))
        self.log(
            {"type": "eval", "step": step, **self.last_eval, "eval_s": round(time.perf_counter() - t_eval, 2)}
        )
        best, improved = self.state["best_eval"], False
        if best is None or score(self.last_eval, s.select_metric) > score(best, s.select_metric):
            self.state["best_eval"], self.state["best_step"], self.state["bad_evals"] = (
                self.last_eval,
                step,
                0,
            )
            improved = True
        else:
            self.state["bad_evals"] += 1
        if s.early_stopping_patience and self.state["bad_evals"] >= s.early_stopping_patience:
            self.stopped = "early_stopping"
        return improved

    def evaluate_and_checkpoint(self) -> bool:
        """After an update: evaluate, save; True when training should stop early."""
        s, step = self.settings, self.step
        improved = self._evaluate()
        if improved or (s.save_every and step % s.save_every == 0):
            save_checkpoint(
                self.run_dir,
                step,
                self.raw,
                self.optimizer,
                self.scheduler,
                self.state,
                self.acc,
                self.sharded,
            )
            if self.main:
                prune_checkpoints(self.run_dir, s.keep_last, self.state["best_step"])
            self.acc.wait_for_everyone()
        if self.stopped != "early_stopping":
            return False
        if self.main:
            self.reporter.message(
                f"early stopping at step {step}: {s.select_metric} did not improve for "
                f"{self.state['bad_evals']} evaluations (best at step {self.state['best_step']})"
            )
        return True

    # --- finish: best weights, gathered state ----------------------------------------------------
    def finish(self) -> LoopResult:
        acc, best_step = self.acc, self.state["best_step"]
        if self.settings.load_best and best_step is not None and best_step != self.step:
            best_dir = dict(list_checkpoints(self.run_dir)).get(best_step)
            if best_dir is None:
                raise UserError(
                    f"the best checkpoint (step {best_step}) is missing from {self.run_dir}/checkpoints"
                )
            if self.sharded:
                acc.load_state(str(best_dir / "accelerate"))
            else:
                load_trainable_weights(self.raw, best_dir)
            if self.main:
                self.reporter.message(
                    f"loaded the best weights (step {best_step}, {self.state['best_eval']})"
                )
        state_dict = None  # sharded weights are gathered to the main process for saving (collective)
        if self.sharded:
            full = acc.get_state_dict(self.net)
            state_dict = {k.removeprefix("model."): v for k, v in full.items()} if self.main else None
        if self.tb is not None:
            self.tb.close()
        if self.main:
            self.reporter.close()
        acc.wait_for_everyone()
        self.raw.eval()
        return LoopResult(
            model=self.raw,
            final_step=self.step,
            total_steps=self.total,
            best_step=best_step,
            best_eval=self.state["best_eval"],
            last_eval=self.last_eval,
            stopped=self.stopped,
            resumed_from=self.resumed_from,
            train_seconds=self.state["train_seconds"],
            history=self.history,
            state_dict=state_dict,
        )


def _json_line(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False, default=str) + "\n"
