"""The same CLI under a 2-process data-parallel launch on CPU (gloo): ranks train in step, only the
main process writes. ``torchrun`` stands in for ``accelerate launch`` (whose multi-CPU mode needs MPI);
both set the same environment that ``Accelerator`` reads. Fine-tuning and distillation share the run
setup (``train.run``), so both are launched: the cached-KD run also builds its teacher cache once
(main process first) and saves through the same multi-process path."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("command", ["finetune", "distill"])
def test_two_process_cpu_ddp(tiny_task, tiny_model_dir, tiny_teacher_dir, tmp_path, command):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", DISTILLTUNE_THREADS="1")
    what = (
        ["finetune", "--model", str(tiny_model_dir), "--method", "full"]
        if command == "finetune"
        else [
            "distill",
            "--teacher",
            str(tiny_teacher_dir),
            "--student",
            "teacher:n_layers=1",
            "kd.top_k=4",
            f"cache.dir={tmp_path / 'cache'}",
        ]
    )
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), "-m", "distilltune", *what, "--task", str(tiny_task),
        "--output", str(out), "--quiet",
        "train.max_steps=3", "train.batch_size=2", "train.warmup_steps=0", "train.lr=1e-3", "train.eval_every=2",
        "train.eval_samples=1", "train.eval_loss_items=2", "train.eval_max_new_tokens=2", "train.save_every=2",
    ]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=280)
    assert r.returncode == 0, r.stderr[-4000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["processes"] == 2 and summary["final_step"] == 3
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in rows if x["type"] == "train"] == [1, 2, 3], "only the main process logs"
    assert json.loads((out / "checkpoints" / "step-2" / "state.json").read_text())["world_size"] == 2
    assert {p.name for p in (out / "checkpoints" / "step-2").glob("rng-*.pt")} == {"rng-0.pt", "rng-1.pt"}
    assert summary["kind"] == command
    if command == "distill":
        assert summary["teacher_cache"]["k"] == 4 and all(r["kd"] > 0 for r in rows if r["type"] == "train")
    AutoModelForCausalLM.from_pretrained(str(out / "model"))
