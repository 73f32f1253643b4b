"""The server under fuzzed bodies, concurrent load with dropped clients, and SIGKILL: the figures.

The same drivers as ``tests/test_serve_faults.py`` (``tests/fault_drivers.py``), at a larger size,
against ``distilltune serve`` in a child process on 127.0.0.1 (the real CLI: guard, retrieval,
request log, metrics, continuous batching):

1. fuzz: ``--fuzz`` hypothesis-generated bodies (schema-shaped with wrong types, huge numbers, lone
   surrogates; any JSON; deep nesting; non-JSON bytes), one at a time. Statuses, 5xx count;
2. load: ``--clients`` concurrent clients sending ``--requests`` in all; every 4th drops its stream
   after the first event, every 7th gives up waiting. Statuses, p50/p95 of completed answers, rows
   logged vs requests sent (warm-up, fuzz and load together), the server's RSS cold, after one
   warm-up burst at full concurrency (``start``: the baseline a leak would move) and after the load;
3. crash: load again, SIGKILL once ``--kill-after`` answers were acknowledged; the log's integrity
   check, rows logged vs sent, incomplete rows, acknowledged answers missing from the log; then a
   restart on the same log file answers and logs one more request.

Writes ``results/serve_faults.json``. Model: ``--model`` (default the bundled teacher pruned to 6
layers, the student's size; ``tiny`` builds a 2-layer random model in-process for a quick check).

    python benchmarks/serve_faults.py                     # full run
    python benchmarks/serve_faults.py --model tiny --requests 10 --fuzz 10 --clients 4   # harness check
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests"))

import httpx  # noqa: E402

from common import write_result  # noqa: E402
from fault_drivers import (  # noqa: E402
    chat,
    integrity,
    kill_during_load,
    log_rows,
    post_raw,
    request_bodies,
    run_load,
    start_server,
    summary,
    wait_for_rows,
    wait_healthy,
)

DEFAULT_MODEL = "smollm2-135m-instruct:n_layers=6"
TASK = REPO / "examples" / "acme-support"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def fuzz(url: str, n: int) -> dict:
    from hypothesis import HealthCheck, given, settings

    outcomes = []
    with httpx.Client(timeout=120) as client:

        @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(body=request_bodies())
        def probe(body: bytes) -> None:
            outcomes.append(post_raw(client, url, body))

        probe()
    s = summary(outcomes)
    s["5xx"] = sum(1 for o in outcomes if o.status is not None and o.status >= 500)
    return s


def healthy(url: str) -> bool:
    try:
        r = httpx.get(f"{url}/health", timeout=10)
    except httpx.TransportError:
        return False
    return r.status_code == 200 and r.json().get("status") == "ok"


def model_ref(arg: str, workdir: Path) -> str:
    if arg != "tiny":
        return arg
    from distilltune.models.bundled import bundled_tokenizer_dir
    from tiny_models import build_tiny_llama

    return str(build_tiny_llama(bundled_tokenizer_dir(), workdir / "tiny-model", initializer_range=0.5))


def phase_fuzz_and_load(args, model: str, db: Path, overrides: list[str]) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(model, str(args.task), db, port, overrides)
    try:
        wait_healthy(url, proc, timeout_s=600)
        rss_cold = rss_mb(proc.pid)
        # One full-concurrency burst first: the first batch of 32 sequences grows the allocator's
        # arenas and KV buffers once; RSS measured after it is the baseline a leak would move.
        warm = summary(run_load(url, args.clients, 1, args.max_tokens, disconnect_every=0))
        time.sleep(2)
        rss_start = rss_mb(proc.pid)
        fz = fuzz(url, args.fuzz)
        fz["healthy_after"] = healthy(url)
        per_client = max(1, -(-args.requests // args.clients))  # at least --requests in all
        t0 = time.perf_counter()
        outcomes = run_load(
            url, args.clients, per_client, args.max_tokens, disconnect_every=4, timeout_every=7
        )
        load = summary(outcomes)
        load["wall_s"] = round(time.perf_counter() - t0, 2)
        load["healthy_after"] = healthy(url)
        sent = warm["sent"] + fz["sent"] + load["sent"]
        logged = wait_for_rows(db, sent, timeout_s=120)
        time.sleep(2)  # let the allocator settle before reading RSS again
        return {
            "fuzz": fz,
            "load": {**load, "clients": args.clients, "per_client": per_client},
            "log": {"requests_sent": sent, "rows_logged": logged},
            "warmup": warm,
            "rss_mb": {"cold": rss_cold, "start": rss_start, "after_load": rss_mb(proc.pid)},
        }
    finally:
        proc.terminate()
        proc.wait(60)


def phase_crash(args, model: str, db: Path, overrides: list[str]) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(model, str(args.task), db, port, overrides)
    try:
        wait_healthy(url, proc, timeout_s=600)
        load = {
            "clients": args.clients,
            "per_client": max(2, 4 * args.requests // args.clients),
            "max_tokens": args.max_tokens,
            "disconnect_every": 5,
        }
        figures = kill_during_load(url, proc, db, load, kill_after=args.kill_after)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    # Restart on the same log: it opens (WAL recovery) and logs on.
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(model, str(args.task), db, port, overrides)
    try:
        wait_healthy(url, proc, timeout_s=600)
        n = len(log_rows(db))
        r = httpx.post(f"{url}/v1/chat/completions", json=chat("When do you open?", 4), timeout=120)
        figures["restart"] = {
            "status": r.status_code,
            "logged": wait_for_rows(db, n + 1, timeout_s=30) == n + 1,
            "integrity_check": integrity(db),
        }
    finally:
        proc.terminate()
        proc.wait(60)
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL, help="model reference, or 'tiny'")
    ap.add_argument("--task", type=Path, default=TASK)
    ap.add_argument("--requests", type=int, default=320, help="load requests in all")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--fuzz", type=int, default=300, help="fuzzed bodies")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--kill-after", type=int, default=40, help="acknowledged answers before SIGKILL")
    ap.add_argument("--out", default="serve_faults", help="results/<out>.json")
    ap.add_argument("--results-dir", type=Path, default=HERE / "results")
    args = ap.parse_args()
    overrides = [
        "--",
        "served_name=student",
        f"limits.max_tokens={max(args.max_tokens, 16)}",
        "generation.default_max_tokens=16",
    ]
    with tempfile.TemporaryDirectory(prefix="serve-faults-") as tmp:
        workdir = Path(tmp)
        model = model_ref(args.model, workdir)
        t0 = time.perf_counter()
        result = phase_fuzz_and_load(args, model, workdir / "requests.db", overrides)
        result["crash"] = phase_crash(args, model, workdir / "crash.db", overrides)
    result["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    path = write_result(args.out, result, args.results_dir)
    print(path)
    print(result)


if __name__ == "__main__":
    main()
