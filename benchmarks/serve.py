"""Serving throughput: requests/s and p50/p95 latency at concurrency 1, 4 and 8 vs sequential and static batching.

Two baselines, both in-process (no HTTP, no guard, no retrieval: that overhead is counted against the
server only), on prompts built exactly as the server builds them (input guard redaction, retrieval and
prompt assembly, chat template), so every side decodes the same prompts:

- ``sequential`` — what a server without a request queue does: one ``generate_chat`` call per request,
  one request at a time;
- ``static batching`` — fixed batches of ``--max-batch`` requests generated together with left padding
  (``generate_chat(batch_size=N)``), the next batch starting only when the whole batch is done: no
  continuous batching, a finished answer's slot stays idle until the longest answer of its batch ends.
  All N requests of a batch are taken to arrive together at its start, so a request's latency is its
  batch's wall time (no queueing counted: this flatters static batching).

Each baseline runs twice, before and after the server levels (the server process idles meanwhile); the
speedups use the mean, and ``drift`` reports how much the two runs differ (a busy machine shows up there).

Server: ``distilltune serve`` in a subprocess on 127.0.0.1 (the real CLI: guard, retrieval, request
log, metrics, continuous batching), driven by K closed-loop clients (the official openai client, one
thread each) for K in 1, 4, 8. Greedy decoding with the same ``max_tokens`` on every side. At
concurrency 1 the server's answers are compared with the sequential baseline's (same greedy tokens
expected).

Model: ``--model``, by default a *trained* student (``DEFAULT_MODEL``, the distilled student of a demo
run: ``demo-output/runs/student-kd`` after ``make demo``; ``$DISTILLTUNE_BENCH_STUDENT`` overrides it): its answers end at its end token with varied
lengths, as served answers do. An untrained model rarely emits its end token, so every answer runs to
``max_tokens`` and batching looks better than it is (no early finishers, no ragged batches). The
answer-length distribution (new tokens, share ended by the end token, histogram) is reported for every
side. ``--model smollm2-135m-instruct:n_layers=6`` measures the untrained stand-in. No ``--fallback``:
this measures the student path.

Target (issue #7): at concurrency 8, ≥ 3× the sequential throughput.

    python benchmarks/distill.py ...      # or benchmarks/demo.py: produce a trained student run dir first
    python benchmarks/serve.py --model RUN_DIR            # full run, writes results/serve.json
    python benchmarks/serve.py --model RUN_DIR --quick    # a few requests per level (checks the harness)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import peak_rss_mb, write_result

REPO = Path(__file__).resolve().parent.parent
TASK = REPO / "examples" / "acme-support"
# `make demo` writes demo-output/ at the repository root.
DEFAULT_MODEL = os.environ.get(
    "DISTILLTUNE_BENCH_STUDENT", str(Path(__file__).resolve().parent.parent / "demo-output/runs/student-kd")
)
STAND_IN = "smollm2-135m-instruct:n_layers=6"
LENGTH_BUCKETS = (8, 16, 32, 64, 128, 256, 512)


def check_model(ref: str) -> None:
    """A model given as a path must exist (and hold a model): say so clearly instead of a traceback."""
    looks_like_path = ref.startswith(("/", ".", "~")) or os.sep in ref.split(":", 1)[0]
    if not looks_like_path:
        return
    path = Path(ref).expanduser()
    if not path.exists():
        raise SystemExit(
            f"no trained student at {path}: pass --model RUN_DIR (a distilled or fine-tuned run directory, "
            "e.g. demo-output/runs/student-kd after `make demo`, or set DISTILLTUNE_BENCH_STUDENT), or "
            f"--model {STAND_IN} for the untrained stand-in (its answers rarely end before max_tokens)"
        )
    if path.is_dir() and not any((path / n).exists() for n in ("model", "adapter", "config.json")):
        raise SystemExit(f"{path} holds no model (expected model/, adapter/ or config.json)")


def lengths(tokens: list[int], finished: list[bool]) -> dict:
    """The answer-length distribution: new tokens per answer and how many ended at the end token."""
    if not tokens:
        return {"answers": 0}
    edges = [b for b in LENGTH_BUCKETS if b < max(tokens)] + [max(tokens)]
    hist, lo = {}, 0
    for hi in edges:
        hist[f"{lo + 1}-{hi}"] = sum(lo < t <= hi for t in tokens)
        lo = hi
    return {
        "answers": len(tokens),
        "min": min(tokens),
        "p50": pct(tokens, 0.5),
        "p95": pct(tokens, 0.95),
        "max": max(tokens),
        "mean": round(statistics.mean(tokens), 2),
        "ended_by_end_token": round(sum(finished) / len(finished), 4),
        "histogram": hist,
    }


def questions(n: int) -> list[str]:
    from distilltune.task import load_task

    task = load_task(TASK)
    qs = [c.question for c in task.eval + task.train if not task.is_refusal(c) and c.question]
    if len(qs) < n:
        qs = (qs * (n // len(qs) + 1))[:n]
    return qs[:n]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


class Baseline:
    """Sequential generate_chat calls, one request at a time, on prompts built as the server builds them."""

    def __init__(self, model_ref: str, qs: list[str], max_tokens: int):
        from distilltune.models import load_model
        from distilltune.policy import Guard
        from distilltune.retrieval import GroundedPrompter, KnowledgeIndex, RetrievalConfig
        from distilltune.runtime import set_threads
        from distilltune.task import load_task

        self.threads = set_threads()
        task = load_task(TASK)
        self.loaded = load_model(model_ref)
        guard = Guard.for_task(task)
        cfg = RetrievalConfig()
        prompter = GroundedPrompter.from_config(
            task.system_prompt,
            self.loaded.tokenizer,
            KnowledgeIndex.open(task, cfg),
            cfg,
            max_prompt_tokens=2048,
        )
        self.convs = []
        for q in qs:
            red = guard.check_input(q).redacted_text
            self.convs.append(prompter.messages([{"role": "user", "content": red}])[0])
        self.max_tokens = max_tokens
        warm = threading.Thread(target=self._generate, args=(self.convs[:1],))
        warm.start()
        warm.join()

    def _generate(self, convs, batch_size: int = 1):
        from distilltune.models.generate import generate_chat

        return generate_chat(
            self.loaded.model,
            self.loaded.tokenizer,
            convs,
            max_new_tokens=self.max_tokens,
            batch_size=batch_size,
        )

    def run(self, batch: int = 1) -> dict:
        """Time the calls on a worker thread, as the server's engine and a naive server's threadpool run
        them. (On this 2-core machine under load, the same torch ops measured 3-5x slower on the
        process's main thread than on any other thread; timing there would flatter the server.)

        ``batch`` 1: sequential; N > 1: static batches of N (every request's latency = its batch's wall)."""
        box: list[dict] = []
        t = threading.Thread(target=lambda: box.append(self._run(batch)))
        t.start()
        t.join()
        return box[0]

    def _run(self, batch: int) -> dict:
        lat, gens = [], []
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        for start in range(0, len(self.convs), batch):
            chunk = self.convs[start : start + batch]
            s = time.perf_counter()
            out = self._generate(chunk, batch_size=len(chunk))
            lat += [time.perf_counter() - s] * len(chunk)
            gens += out
        wall = time.perf_counter() - t0
        tokens = sum(g.new_tokens for g in gens)
        return {
            "mode": "sequential" if batch == 1 else f"static batches of {batch}",
            "batch": batch,
            "requests": len(self.convs),
            "wall_s": wall,
            "requests_per_s": len(self.convs) / wall,
            "p50_ms": pct(lat, 0.5) * 1000,
            "p95_ms": pct(lat, 0.95) * 1000,
            "completion_tokens": tokens,
            "tokens_per_s": tokens / wall,
            "answer_lengths": lengths([g.new_tokens for g in gens], [g.finished for g in gens]),
            "threads": self.threads,
            "load_avg_1m_before": load_before,
            "texts": [g.text for g in gens],
        }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    model_ref: str, port: int, log_db: Path, max_batch: int, max_tokens: int
) -> subprocess.Popen:
    env = {**os.environ, "DISTILLTUNE_NO_REEXEC": "1", "DISTILLTUNE_BENCH_KEY": "bench-key"}
    cmd = [
        sys.executable, "-m", "distilltune", "serve", model_ref, "--task", str(TASK),
        "--port", str(port), "--log-db", str(log_db), "--api-key-env", "DISTILLTUNE_BENCH_KEY",
        f"batching.max_batch={max_batch}", f"limits.max_tokens={max(512, max_tokens)}",
        "limits.max_queue=256", "limits.timeout_s=600",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    import httpx

    deadline = time.time() + 600
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited ({proc.returncode}):\n{proc.stderr.read()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("server did not become healthy in 600 s")


def load(port: int, model_id: str, qs: list[str], max_tokens: int, concurrency: int) -> dict:
    """K closed-loop clients share the request list; each records its requests' latencies."""
    import openai

    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="bench-key", max_retries=0, timeout=900
    )
    todo = list(enumerate(qs))
    lock = threading.Lock()
    lat: list[float] = []
    texts: dict[int, str] = {}
    batches: list[int] = []
    tokens = [0]
    per_answer: list[int] = []
    ended: list[bool] = []
    errors: list[str] = []

    def worker() -> None:
        while True:
            with lock:
                if not todo:
                    return
                i, q = todo.pop(0)
            s = time.perf_counter()
            try:
                r = client.chat.completions.create(
                    model=model_id,
                    messages=[{"role": "user", "content": q}],
                    max_tokens=max_tokens,
                    temperature=0,
                )
            except openai.APIError as e:
                with lock:
                    errors.append(repr(e)[:200])
                continue
            dt = time.perf_counter() - s
            with lock:
                lat.append(dt)
                texts[i] = r.choices[0].message.content
                tokens[0] += r.usage.completion_tokens
                per_answer.append(r.usage.completion_tokens)
                ended.append(r.choices[0].finish_reason == "stop")
                timing = (r.model_extra or {}).get("distilltune", {}).get("timing")
                if timing:
                    batches.append(timing["batch"])

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    n = len(lat)
    return {
        "concurrency": concurrency,
        "requests": n,
        "errors": errors,
        "wall_s": wall,
        "requests_per_s": n / wall if wall else None,
        "p50_ms": pct(lat, 0.5) * 1000 if lat else None,
        "p95_ms": pct(lat, 0.95) * 1000 if lat else None,
        "completion_tokens": tokens[0],
        "tokens_per_s": tokens[0] / wall if wall else None,
        "mean_batch": statistics.mean(batches) if batches else None,
        "max_batch": max(batches) if batches else None,
        "answer_lengths": lengths(per_answer, ended),
        "texts": [texts.get(i) for i in range(len(qs))],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"a trained student whose answers end at its end token (default {DEFAULT_MODEL}; "
        f"$DISTILLTUNE_BENCH_STUDENT); {STAND_IN} for the untrained stand-in",
    )
    ap.add_argument("--quick", action="store_true", help="8 requests of at most 32 tokens per level")
    ap.add_argument("--requests", type=int, default=None, help="requests per level (default 48; quick 8)")
    ap.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="cap per answer (default 128, above a trained acme student's answers; quick 32)",
    )
    ap.add_argument("--levels", default="1,4,8")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument(
        "--output-name", default=None, help="results/<name>.json (default serve, quick: serve-quick)"
    )
    args = ap.parse_args()
    check_model(args.model)
    n = args.requests or (8 if args.quick else 48)
    max_tokens = args.max_tokens or (32 if args.quick else 128)
    levels = [int(x) for x in args.levels.split(",")]
    qs = questions(n)

    # The baseline runs twice, before and after the server levels, while the server process sits idle,
    # so a change in machine load during the run shows up as drift instead of a silent bias.
    print(f"model {args.model}: {n} requests per level, at most {max_tokens} tokens each", flush=True)
    base = Baseline(args.model, qs, max_tokens)

    def show(name: str, r: dict, speedup: float | None = None) -> None:
        x = f" ({speedup:.2f}x)" if speedup else ""
        print(
            f"{name}: {r['requests_per_s']:.3f} req/s{x}, p50 {r['p50_ms']:.0f} ms, p95 {r['p95_ms']:.0f} ms, "
            f"{r['tokens_per_s']:.1f} tok/s"
            + (f", mean batch {r['mean_batch']}" if "mean_batch" in r else ""),
            flush=True,
        )

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(args.model, port, Path(tmp) / "requests.db", args.max_batch, max_tokens)
        try:
            import openai

            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="bench-key", max_retries=0)
            model_id = client.models.list().data[0].id
            load(port, model_id, qs[:2], max_tokens, 2)  # warm-up: first-call allocations, index cache
            base_runs = [base.run()]
            show("sequential generate (before)", base_runs[0])
            static_runs = [base.run(args.max_batch)]
            show(f"static batches of {args.max_batch} (before)", static_runs[0])
            results = []
            for k in levels:
                r = load(port, model_id, qs, max_tokens, k)
                results.append(r)
                show(f"server, concurrency {k}", r)
            static_runs.append(base.run(args.max_batch))
            show(f"static batches of {args.max_batch} (after)", static_runs[1])
            base_runs.append(base.run())
            show("sequential generate (after)", base_runs[1])
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
    base_rps = statistics.mean(b["requests_per_s"] for b in base_runs)
    drift = abs(base_runs[0]["requests_per_s"] - base_runs[1]["requests_per_s"]) / base_rps
    static_rps = statistics.mean(b["requests_per_s"] for b in static_runs)
    static_drift = abs(static_runs[0]["requests_per_s"] - static_runs[1]["requests_per_s"]) / static_rps
    for r in results:
        r["speedup_vs_sequential"] = r["requests_per_s"] / base_rps if r["requests_per_s"] else None
        r["speedup_vs_static_batching"] = r["requests_per_s"] / static_rps if r["requests_per_s"] else None
        print(
            f"concurrency {r['concurrency']}: {r['speedup_vs_sequential']:.2f}x sequential, "
            f"{r['speedup_vs_static_batching']:.2f}x static batching",
            flush=True,
        )
    c1 = next((r for r in results if r["concurrency"] == 1), None)
    same = None
    if c1 is not None:
        same = sum(a == b for a, b in zip(c1["texts"], base_runs[0]["texts"], strict=True)) / len(qs)
    for r in results + base_runs + static_runs:
        r.pop("texts")
    c8 = next((r for r in results if r["concurrency"] == 8), None)
    speedup8 = c8["speedup_vs_sequential"] if c8 else None
    data = {
        "peak_rss_mb_benchmark_process": peak_rss_mb(),
        "model": args.model,
        "model_note": (
            "untrained depth-pruned stand-in: answers rarely end before max_tokens"
            if args.model == STAND_IN
            else "as given (a trained student: answers end at its end token; see answer_lengths)"
        ),
        "quick": args.quick,
        "requests_per_level": n,
        "max_tokens": max_tokens,
        "max_batch": args.max_batch,
        "baseline_sequential_generate": {
            "requests_per_s": base_rps,
            "runs": base_runs,
            "drift": drift,  # relative difference between the two runs: > 0.2 means a noisy machine
        },
        "baseline_static_batching": {
            "batch": args.max_batch,
            "requests_per_s": static_rps,
            "runs": static_runs,
            "drift": static_drift,
        },
        "server": results,
        "c1_answers_identical_to_baseline": same,
        "targets": {"speedup_at_concurrency_8": 3.0},
        "met": {"speedup_at_concurrency_8": speedup8 is not None and speedup8 >= 3.0},
    }
    path = write_result(args.output_name or ("serve-quick" if args.quick else "serve"), data)
    print(
        json.dumps(
            {"speedup_at_8": speedup8, "c1_identical": same, "baseline_drift": drift, "written": str(path)}
        )
    )


if __name__ == "__main__":
    main()
