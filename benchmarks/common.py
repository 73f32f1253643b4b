"""Shared helpers for the benchmarks: environment facts, fp32 matmul peak, peak RSS, JSON results.

Every benchmark writes ``benchmarks/results/<name>.json`` holding its numbers plus ``environment()``:
package versions, the git SHA (and whether the tree was dirty), CPU facts, thread count and the
allocator settings, so a number can always be traced to the code and machine that produced it.
Speed targets live in the benchmark results (``targets``), never as timed assertions in tests.

Usage from a script in this directory::

    from common import environment, matmul_peak_gflops, peak_rss_mb, reexec_with_tuned_allocator, write_result
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
PACKAGES = ("torch", "transformers", "peft", "accelerate", "trl", "safetensors", "numpy", "distilltune")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for n in names:
        try:
            out[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            out[n] = None
    return out


def git_sha() -> dict:
    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    # results files are outputs: a run that rewrote one (a second seed in the same checkout) is still clean
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results")
    return {"sha": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}


def cpu_info() -> dict:
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model or platform.processor(),
        "cores_available": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "machine": platform.machine(),
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def environment() -> dict:
    import torch

    from distilltune.runtime import allocator_is_tuned

    env = {
        "python": platform.python_version(),
        "packages": package_versions(),
        "git": git_sha(),
        **cpu_info(),
        "torch_threads": torch.get_num_threads(),
        "tuned_allocator": allocator_is_tuned(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return env


def matmul_peak_gflops(n: int = 2048, repeats: int = 7, device: str = "cpu") -> float:
    """Best observed fp32 GEMM throughput (GFLOP/s) for n×n @ n×n: the denominator of MFU."""
    import torch

    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    c = torch.empty(n, n, device=device)
    torch.matmul(a, b, out=c)  # warm-up (thread pool, caches)
    best = float("inf")
    for _ in range(repeats):
        if device != "cpu":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.matmul(a, b, out=c)
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reexec_with_tuned_allocator() -> None:
    """Restart this script with the tuned malloc settings (the same ones the CLI uses for training)."""
    from distilltune.runtime import FAST_ALLOCATOR_ENV, allocator_is_tuned

    if (
        allocator_is_tuned()
        or os.environ.get("DISTILLTUNE_NO_REEXEC") == "1"
        or not sys.platform.startswith("linux")
    ):
        return
    env = dict(os.environ, **FAST_ALLOCATOR_ENV)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def write_result(name: str, data: dict, results_dir: Path = RESULTS) -> Path:
    """Write ``results/<name>.json`` atomically, with ``environment()`` added under "environment"."""
    from distilltune.io import atomic_write_text

    payload = {"benchmark": name, **data, "environment": environment()}
    path = Path(results_dir) / f"{name}.json"
    atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n")
    return path
