"""Kill a training run with SIGKILL at an arbitrary step, resume it, and get bit-identical weights.

The worker runs ``run_finetune`` in a subprocess (LoRA with dropout, so the RNG state matters, and
periodic evaluation in between) with a short sleep per micro-batch, so the kill lands mid-run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import torch
from safetensors.torch import load_file

from distilltune.train.checkpoint import list_checkpoints

WORKER = textwrap.dedent(
    """
    import sys, time
    import torch
    torch.set_num_threads(1)
    import distilltune.train.objectives as obj
    from distilltune.train.config import FinetuneConfig
    from distilltune.train.finetune import run_finetune
    from distilltune.train.progress import SilentReporter

    plain = obj.causal_lm_objective

    def slow(model, batch, step):
        time.sleep(float(sys.argv[5]))
        return plain(model, batch, step)

    obj.causal_lm_objective = slow
    cfg = FinetuneConfig(
        task=sys.argv[1], model=sys.argv[2], method="lora", output=sys.argv[3],
        lora={"r": 4, "dropout": 0.2, "target_modules": ["q_proj", "v_proj", "down_proj"]},
        train={"max_steps": 14, "batch_size": 4, "lr": 5e-3, "warmup_steps": 2, "save_every": 2,
               "keep_last": 2, "eval_every": 4, "eval_samples": 2, "eval_max_new_tokens": 4,
               "eval_loss_items": 3, "seed": 7},
    )
    run_finetune(cfg, resume=sys.argv[4] == "resume", reporter=SilentReporter())
    """
)


def _start(tmp_path, task, model, out, mode, sleep):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, DISTILLTUNE_THREADS="1", OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, str(script), str(task), str(model), str(out), mode, str(sleep)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(p) -> None:
    _out, err = p.communicate(timeout=240)
    assert p.returncode == 0, err[-3000:]


def test_sigkill_then_resume_is_bit_exact(tmp_path, tiny_task, tiny_model_dir):
    straight = tmp_path / "straight"
    _finish(_start(tmp_path, tiny_task, tiny_model_dir, straight, "fresh", 0.0))

    killed = tmp_path / "killed"
    p = _start(tmp_path, tiny_task, tiny_model_dir, killed, "fresh", 0.12)
    deadline = time.time() + 180
    while time.time() < deadline and not any(s >= 6 for s, _ in list_checkpoints(killed)):
        assert p.poll() is None, p.communicate()[1][-3000:]
        time.sleep(0.02)
    time.sleep(0.17)  # land somewhere inside a later step
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    assert not (killed / ".complete").exists(), "the run finished before the kill; slow the worker down"
    steps = [s for s, _ in list_checkpoints(killed)]
    assert steps and max(steps) < 14

    # resuming without --resume is refused; with it, the run continues from the latest checkpoint
    _finish(_start(tmp_path, tiny_task, tiny_model_dir, killed, "resume", 0.0))
    summary = json.loads((killed / "train_summary.json").read_text())
    assert summary["resumed_from"] == max(steps) and summary["final_step"] == 14

    a = load_file(str(straight / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(killed / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the metrics log has each step once, as if the run had never stopped
    rows = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in rows if r["type"] == "train"]
    assert train_steps == list(range(1, 15))
    ref = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows if r["type"] == "train"] == [
        r["loss"] for r in ref if r["type"] == "train"
    ]
