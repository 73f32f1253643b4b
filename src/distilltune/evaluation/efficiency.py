"""Efficiency of a model as served: parameters, size on disk, load time, peak memory, latency, tokens/s.

Memory and latency are measured in a *fresh subprocess* (``python -m distilltune.evaluation.efficiency
SPEC_JSON``) that does what ``distilltune serve`` does and nothing else: import, load the model, build
the guard and the retrieval index, build the serving engine (``inference.engine.open_engine``, the
server's defaults), then answer fixed prompts through the request path over that engine
(``evaluation.served``). Its peak resident memory (``VmHWM``, see ``peak_rss_mb``) is therefore the
serving process's, not polluted by the evaluation process (which may hold a teacher and every answer).

Settings are fixed so numbers compare across models: greedy decoding, a fixed ``max_new_tokens``, the
same prompts (the task's first eval items that expect an answer and that the input guard lets
through, so every timed request reaches the model), ``warmup`` untimed answers first (the first
forward pays one-off costs: allocator growth, kernel selection, lazy imports).

- ``latency_ms``: wall time of one full request at batch 1 (one request in flight: guard, retrieval,
  prompt tokenization, the engine's prefill and decode, output guard); p50 and p95 by linear
  interpolation, and every sample (``compare`` bootstraps their intervals). ``prompts`` requests are
  timed, or fewer (never under ``MIN_TIMED``) once ``time_budget_s`` is spent, so a slow teacher does
  not eat the demo's budget;
- ``concurrent``: the same at ``concurrency`` requests in flight (closed-loop clients, the engine
  batching them), with requests/s and tokens/s, when the spec asks for it (the task card's
  ``budgets.concurrency``); null otherwise;
- ``prefill_tok_s``: prompt tokens ÷ time to the first new token, pooled over the timed requests;
- ``decode_tok_s``: new tokens after the first ÷ the time spent producing them, pooled;
- ``size_bytes``: bytes on disk of what must be loaded to serve (model dir; adapter + its base); a
  model built in memory (student spec, hub id) reports its parameter bytes (``size_kind``).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

from distilltune.errors import UserError
from distilltune.evaluation.served import MIN_TIMED, ServedAnswerer, time_concurrent, time_sequential

__all__ = ["MIN_TIMED", "measure", "peak_rss_mb", "percentile", "probe", "serving_size", "summarize_timings"]


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), ``q`` in 0..100."""
    if not values:
        raise ValueError("percentile of no values")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _proc_status_mb(key: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident memory of this process (MiB).

    Linux: ``VmHWM`` of /proc/self/status. Not ``ru_maxrss``: the kernel carries the pre-exec
    high-water mark across ``exec``, and Python's subprocess uses vfork, so a fresh child would report
    its *parent's* peak (measured here: a 2.3 GB evaluation process made a 0.5 GB probe read 2.3 GB).
    Elsewhere ``ru_maxrss`` (kB on Linux/BSD, bytes on macOS) is the best available.
    """
    hwm = _proc_status_mb("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def current_rss_mb() -> float | None:
    return _proc_status_mb("VmRSS")


def summarize_timings(answers: list, latencies_s: list[float]) -> dict:
    """Latency percentiles and pooled prefill / decode throughput of timed answers."""
    gen = [a for a in answers if a.new_tokens > 0]
    prefill_s = sum(a.prefill_s for a in gen)
    decode = [a for a in gen if a.new_tokens > 1]
    decode_s = sum(a.decode_s for a in decode)
    ms = [s * 1000 for s in latencies_s]
    return {
        "latency_ms": {
            "p50": percentile(ms, 50),
            "p95": percentile(ms, 95),
            "mean": sum(ms) / len(ms),
            "max": max(ms),
            # every timed request, so the comparison can put a bootstrap interval on p50/p95
            "samples": [round(x, 3) for x in ms],
        },
        "prefill_tok_s": sum(a.prompt_tokens for a in gen) / prefill_s if prefill_s > 0 else None,
        "decode_tok_s": sum(a.new_tokens - 1 for a in decode) / decode_s if decode_s > 0 else None,
        "prefill_ms_p50": percentile([a.prefill_s * 1000 for a in gen], 50) if gen else None,
        "mean_prompt_tokens": sum(a.prompt_tokens for a in gen) / len(gen) if gen else None,
        "mean_new_tokens": sum(a.new_tokens for a in gen) / len(gen) if gen else None,
        "finished_share": sum(bool(a.finished) for a in gen) / len(gen) if gen else None,
        "timed_requests": len(latencies_s),
        "generated_requests": len(gen),
    }


def _param_bytes(model) -> int:
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return total


def serving_size(ref: str, model) -> tuple[int, str]:
    """(bytes, kind): on-disk bytes needed to serve ``ref``, or the in-memory parameter bytes."""

    from distilltune.models.bundled import bundled_model_dir
    from distilltune.models.info import dir_size_bytes
    from distilltune.models.resolve import adapter_base_ref, is_student_spec, resolve_path

    if is_student_spec(ref):
        return _param_bytes(model), "param_bytes"
    kind, path = resolve_path(ref)
    if kind == "builtin":
        return dir_size_bytes(bundled_model_dir(ref)), "disk"
    if kind in ("dir", "gguf"):
        return dir_size_bytes(path), "disk"
    if kind == "adapter":
        base = adapter_base_ref(path)
        base_bytes, base_kind = serving_size(base, model)
        return dir_size_bytes(path) + base_bytes, base_kind
    return _param_bytes(model), "param_bytes"


def serving_prompts(task, guard, n: int) -> list[list[dict]]:
    """The first ``n`` eval conversations that expect an answer and pass the input guard (cycled if few)."""
    pool = []
    for conv in task.eval:
        if task.is_refusal(conv):
            continue
        if guard is not None and guard.check_input(conv.question).action == "refuse":
            continue
        pool.append([m.model_dump() for m in conv.prompt_messages])
    if not pool:
        raise UserError(
            f"{task.root}: no eval item expects an answer that the input guard allows; cannot time"
        )
    return [pool[i % len(pool)] for i in range(n)]


def _concurrent(answer: ServedAnswerer, task, spec: dict) -> dict | None:
    """Latency and throughput with ``spec['concurrency']`` requests in flight (None when not declared)."""
    k = spec.get("concurrency") or 1
    if k <= 1:
        return None
    n = max(spec["prompts"], 2 * k)
    prompts = serving_prompts(task, answer.path.guard, k + n)
    time_concurrent(answer, prompts[:k], k)  # warm-up: one untimed request per client
    answer.batches.clear()
    answers, latencies, wall = time_concurrent(answer, prompts[k:], k, spec.get("time_budget_s"))
    timings = summarize_timings(answers, latencies)
    return {
        "concurrency": k,
        "latency_ms": timings["latency_ms"],
        "timed_requests": timings["timed_requests"],
        "mean_new_tokens": timings["mean_new_tokens"],
        "wall_s": wall,
        "requests_per_s": len(latencies) / wall,
        "tokens_per_s": sum(a.new_tokens for a in answers) / wall,
        "mean_batch": sum(answer.batches) / len(answer.batches) if answer.batches else None,
        "max_batch": max(answer.batches, default=None),
    }


def _open(spec: dict, threads: int):
    """The engine ``distilltune serve --backend`` builds: torch's continuous batching (open_engine) or
    the deployed file in its runtime (ONNX Runtime, llama.cpp)."""
    from distilltune.inference.backends import open_model
    from distilltune.inference.engine import DEFAULT_MAX_BATCH, DEFAULT_MAX_QUEUE

    backend = spec.get("backend") or "torch"
    return open_model(
        backend,
        spec["model"] if backend == "torch" else spec["artifact"],
        teacher=spec.get("teacher"),
        dtype=spec.get("dtype", "float32"),
        max_batch=DEFAULT_MAX_BATCH,
        max_queue=max(DEFAULT_MAX_QUEUE, spec.get("concurrency") or 1),
        threads=threads,
    )


def _size_and_params(spec: dict, opened) -> tuple[int, str, int | None]:
    from distilltune.models import model_info

    if opened.model is not None:
        size, size_kind = serving_size(spec["model"], opened.model)
        return size, size_kind, model_info(opened.model).params
    return opened.size_bytes, "disk", opened.params  # the exported file(s) the runtime loaded


def probe(spec: dict) -> dict:
    """Run inside the fresh process: load, build the engine, warm up, time requests as served."""
    from distilltune.inference import build_path
    from distilltune.policy import GuardConfig
    from distilltune.retrieval import RetrievalConfig
    from distilltune.runtime import set_threads
    from distilltune.task import load_task

    threads = set_threads()
    task = load_task(spec["task"])
    k = spec.get("concurrency") or 1
    backend = spec.get("backend") or "torch"
    t0 = time.perf_counter()
    opened = _open(spec, threads)
    load_s = time.perf_counter() - t0
    rss_after_load = peak_rss_mb()
    t0 = time.perf_counter()
    retrieval = RetrievalConfig.model_validate(spec.get("retrieval") or {})
    path = build_path(
        task,
        opened.tokenizer,
        retrieval,
        GuardConfig.model_validate(spec.get("guard") or {}),
        spec.get("max_prompt_tokens"),
    )
    pipeline_s = time.perf_counter() - t0
    engine = opened.engine.start()
    try:
        answer = ServedAnswerer(path, engine, opened.tokenizer, spec["max_new_tokens"])
        prompts = serving_prompts(task, path.guard, spec["warmup"] + spec["prompts"])
        budget = spec.get("time_budget_s")
        answers, latencies = time_sequential(answer, prompts, spec["warmup"], budget)
        peak_batch1 = peak_rss_mb()
        concurrent = _concurrent(answer, task, spec)
    finally:
        engine.stop()
    size, size_kind, params = _size_and_params(spec, opened)
    # Other processes competing for the cores inflate every timing: record how busy the machine was.
    load_1m = os.getloadavg()[0]
    return {
        "params": params,
        "size_bytes": size,
        "size_kind": size_kind,
        "load_s": load_s,
        "pipeline_s": pipeline_s,
        "rss_after_load_mb": rss_after_load,
        **summarize_timings(answers, latencies),
        "concurrent": concurrent,
        "peak_rss_batch1_mb": peak_batch1,
        "peak_rss_mb": peak_rss_mb(),
        "rss_end_mb": current_rss_mb(),
        "settings": {
            "backend": "engine",
            "runtime": backend,  # torch (continuous batching), onnx or llama.cpp (one request at a time)
            "continuous_batching": opened.backend.continuous_batching,
            "batch_size": 1,
            "concurrency": k if concurrent else None,
            "engine_max_batch": engine.max_batch,
            "decoding": "greedy",
            "max_new_tokens": spec["max_new_tokens"],
            "warmup": spec["warmup"],
            "prompts": spec["prompts"],
            "time_budget_s": budget,
            "rag": retrieval.enabled,
            "threads": threads,
            "dtype": spec.get("dtype", "float32"),
            "cpu_count": os.cpu_count(),
            "loadavg_1m": round(load_1m, 2),
        },
    }


def measure(spec: dict, timeout_s: float = 1800.0) -> dict:
    """Run ``probe(spec)`` in a fresh Python process and return its result."""
    cmd = [sys.executable, "-m", "distilltune.evaluation.efficiency", json.dumps(spec)]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        raise UserError(
            f"efficiency measurement of {spec['model']!r} took longer than {timeout_s:.0f} s "
            "(raise efficiency.timeout_s or lower efficiency.prompts)"
        ) from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        raise UserError(
            f"efficiency measurement of {spec['model']!r} failed (exit {proc.returncode}):\n{tail}"
        )
    result = json.loads(lines[-1])
    if "error" in result:
        raise UserError(result["error"])
    return result


def _main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m distilltune.evaluation.efficiency SPEC_JSON", file=sys.stderr)
        return 2
    try:
        result = probe(json.loads(argv[0]))
    except UserError as e:
        result = {"error": e.message}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
