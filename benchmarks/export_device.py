"""On-device numbers per deployed format: one model exported to every format, each timed in its runtime.

For ``--model`` (default the demo's distilled student, ``demo-output/runs/student-kd`` after ``make
demo``) this exports (``distilltune.export``) and measures, per format / backend:

- ``torch-fp32``: the model itself in the torch engine (``inference.engine.open_engine``);
- ``onnx-fp32``, ``onnx-int8``: ONNX Runtime with the exported KV cache;
- ``gguf-f16``, ``gguf-q8_0``, ``gguf-q4_k_m``: llama.cpp (only when ``llama-cpp-python``, the ``gguf``
  extra, is installed; listed under ``skipped`` otherwise).

Each measurement is ``evaluation.efficiency.measure``: a *fresh subprocess* that loads the file in its
runtime and answers the task's eval prompts at batch 1 through the request path (guard, retrieval,
prompt, output guard), exactly as ``evaluate`` / ``compare`` time a strategy. Reported: time to first
token (``prefill_ms_p50``: prompt in, first token out), decode tok/s (pooled), p50/p95 latency of the
task's answers, peak RSS of that process, the file size and the export time; at ``--threads`` (default
2 and 1: the "smallest device" proxy; ``DISTILLTUNE_THREADS`` in the subprocess). Then the p95 at
``--concurrency`` (default 8) closed-loop clients through the engine, torch against the backend with
the fastest 2-thread decode (HTTP not included; ``benchmarks/served_latency.py`` measures that gap).

    python benchmarks/export_device.py                        # writes results/export.json
    python benchmarks/export_device.py --model /tmp/tiny --prompts 2 --threads 1 --output-name export-smoke

Numbers depend on the machine and its load (``loadavg_1m`` is recorded with every measurement).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import write_result

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = str(REPO / "demo-output" / "runs" / "student-kd")  # written by `make demo`
DEFAULT_TASK = REPO / "examples" / "acme-support"
# name → (backend, export format or None, quant)
VARIANTS = {
    "torch-fp32": ("torch", None, "none"),
    "onnx-fp32": ("onnx", "onnx", "none"),
    "onnx-int8": ("onnx", "onnx", "int8"),
    "gguf-f16": ("llama.cpp", "gguf", "f16"),
    "gguf-q8_0": ("llama.cpp", "gguf", "q8_0"),
    "gguf-q4_k_m": ("llama.cpp", "gguf", "q4_k_m"),
}


def _log(msg: str) -> None:
    print(f"[export_device] {msg}", file=sys.stderr, flush=True)


def export_all(model: str, work: Path, names: list[str]) -> dict[str, dict]:
    """Export ``model`` once per format/quant; name → {artifact, export_s, size_bytes, size_ratio}."""
    from distilltune.export import ExportConfig, export_model

    out: dict[str, dict] = {}
    for name in names:
        _, fmt, quant = VARIANTS[name]
        if fmt is None:
            continue
        target = work / name
        _log(f"exporting {model} as {fmt} {quant}")
        report = export_model(ExportConfig(model=model, output=str(target), format=fmt, quant=quant, check=0))
        artifact = target if fmt == "onnx" else target / report["model_file"]
        out[name] = {
            "artifact": str(artifact),
            "export_s": report["export_s"],
            "size_bytes": report["size_bytes"],
            "size_ratio": report["size_ratio"],
        }
    return out


def measure(model: str, task_dir: Path, name: str, artifact: str | None, threads: int, args) -> dict:
    """One fresh-process measurement of ``name`` at ``threads`` intra-op threads."""
    from distilltune.evaluation import efficiency
    from distilltune.evaluation.config import EfficiencySettings, EvaluateConfig
    from distilltune.evaluation.evaluate import efficiency_spec
    from distilltune.task import load_task

    backend, _, quant = VARIANTS[name]
    cfg = EvaluateConfig(
        model=model,
        task=str(task_dir),
        output=str(Path(tempfile.gettempdir()) / "export_device-unused"),
        max_new_tokens=args.max_new_tokens,
        backend=backend,
        quant=quant,
        artifact=artifact,
        retrieval={"k": 2, "max_context_tokens": 192},  # the compare presets' retrieval
        efficiency=EfficiencySettings(
            prompts=args.prompts,
            warmup=args.warmup,
            max_new_tokens=args.max_new_tokens,
            concurrency=args.concurrency if args.with_concurrency else None,
        ),
    )
    spec = efficiency_spec(cfg, load_task(task_dir))
    spec["concurrency"] = args.concurrency if args.with_concurrency else None
    old = os.environ.get("DISTILLTUNE_THREADS")
    os.environ["DISTILLTUNE_THREADS"] = str(threads)  # the subprocess's torch / ORT / llama.cpp threads
    try:
        t0 = time.perf_counter()
        probe = efficiency.measure(spec, timeout_s=args.timeout_s)
    finally:
        if old is None:
            os.environ.pop("DISTILLTUNE_THREADS", None)
        else:
            os.environ["DISTILLTUNE_THREADS"] = old
    lat = probe["latency_ms"]
    row = {
        "variant": name,
        "backend": backend,
        "quant": quant,
        "threads": threads,
        "ttft_ms_p50": probe.get("prefill_ms_p50"),
        "decode_tok_s": probe.get("decode_tok_s"),
        "prefill_tok_s": probe.get("prefill_tok_s"),
        "latency_ms_p50": lat["p50"],
        "latency_ms_p95": lat["p95"],
        "latency_samples_ms": lat["samples"],
        "mean_new_tokens": probe.get("mean_new_tokens"),
        "peak_rss_mb": probe.get("peak_rss_batch1_mb") or probe.get("peak_rss_mb"),
        "load_s": probe.get("load_s"),
        "size_bytes": probe.get("size_bytes"),
        "params": probe.get("params"),
        "timed_requests": probe.get("timed_requests"),
        "loadavg_1m": probe["settings"].get("loadavg_1m"),
        "wall_s": time.perf_counter() - t0,
    }
    if probe.get("concurrent"):
        c = probe["concurrent"]
        row["concurrent"] = {
            "concurrency": c["concurrency"],
            "latency_ms_p95": c["latency_ms"]["p95"],
            "latency_ms_p50": c["latency_ms"]["p50"],
            "requests_per_s": c["requests_per_s"],
            "tokens_per_s": c["tokens_per_s"],
            "mean_batch": c["mean_batch"],
        }
    return row


def run_all(model: str, names: list[str], threads: list[int], work: Path, args):
    """Export every variant, time each at every thread count, then torch and the fastest at concurrency."""
    exports = export_all(model, work, names)
    rows = []
    args.with_concurrency = False
    for t in threads:
        for n in names:
            _log(f"measuring {n} at {t} thread(s)")
            rows.append(measure(model, Path(args.task), n, exports.get(n, {}).get("artifact"), t, args))
    top = [r for r in rows if r["threads"] == max(threads) and r["decode_tok_s"] and r["backend"] != "torch"]
    fastest = max(top, key=lambda r: r["decode_tok_s"], default=None)
    served = []
    args.with_concurrency = True
    for n in ["torch-fp32", *([fastest["variant"]] if fastest else [])]:
        if n in names:
            _log(f"measuring {n} at concurrency {args.concurrency}")
            artifact = exports.get(n, {}).get("artifact")
            served.append(measure(model, Path(args.task), n, artifact, max(threads), args))
    return exports, rows, served, fastest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL, help="a run dir or model reference (read only)")
    ap.add_argument("--task", default=str(DEFAULT_TASK))
    ap.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated subset of: " + ", ".join(VARIANTS)
    )
    ap.add_argument("--threads", default="2,1", help="intra-op thread counts to measure at")
    ap.add_argument("--prompts", type=int, default=20, help="timed batch-1 requests per measurement")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=48, help="the quick preset's answer cap")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--timeout-s", type=float, default=1800)
    ap.add_argument("--work", default=None, help="where the exports go (default: a temporary directory)")
    ap.add_argument("--output-name", default="export")
    args = ap.parse_args()

    model = args.model
    if Path(model).expanduser().exists():
        model = str(Path(model).expanduser().resolve())
    elif "/" in model:
        sys.exit(f"{model}: not found (run `make demo` first, or pass --model)")
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    skipped = {}
    if importlib.util.find_spec("llama_cpp") is None:
        for n in [n for n in names if VARIANTS[n][0] == "llama.cpp"]:
            skipped[n] = "llama-cpp-python is not installed (pip install 'distilltune[gguf]')"
            names.remove(n)
    threads = [int(t) for t in args.threads.split(",")]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="export_device-"))
    started = time.perf_counter()
    try:
        exports, rows, served, fastest = run_all(model, names, threads, work, args)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    torch_rows = {r["threads"]: r for r in rows if r["variant"] == "torch-fp32"}
    for r in rows:  # decode speed against torch fp32 at the same thread count
        base = torch_rows.get(r["threads"])
        if base and base["decode_tok_s"] and r["decode_tok_s"]:
            r["decode_speedup_vs_torch"] = r["decode_tok_s"] / base["decode_tok_s"]
    path = write_result(
        args.output_name,
        {
            "model": args.model,
            "task": args.task,
            "settings": {
                "prompts": args.prompts,
                "warmup": args.warmup,
                "max_new_tokens": args.max_new_tokens,
                "threads": threads,
                "concurrency": args.concurrency,
                "measurement": "evaluation.efficiency.measure (fresh process, request path, batch 1)",
            },
            "exports": exports,
            "batch1": rows,
            "served_concurrency": served,
            "fastest_backend_2t": fastest["variant"] if fastest else None,
            "skipped": skipped,
            "wall_s": time.perf_counter() - started,
        },
    )
    _log(f"wrote {path}")


if __name__ == "__main__":
    main()
