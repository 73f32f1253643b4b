"""Is the p95 in compare's report the p95 a client of ``distilltune serve`` gets? One model, both ways.

(a) **compare's efficiency measurement, exactly as compare runs it**: the task view compare builds for
the preset (``compare.run.prepare_view``), the evaluation config compare gives a strategy
(``compare.recipes.evaluate_config``), its efficiency spec (``evaluation.evaluate.efficiency_spec``) and
``evaluation.efficiency.measure``: a fresh process timing requests through the serving engine and the
request path, one at a time, HTTP not included.

(b) **the live server**: ``distilltune serve MODEL`` on 127.0.0.1 (a subprocess; the real CLI: guard,
retrieval, request log, metrics, continuous batching) with the evaluation's retrieval, guard and prompt
limit, driven by one client (concurrency 1) over HTTP with the same conversations
(``efficiency.serving_prompts`` on the same view), the same warm-up, ``max_tokens`` = the measurement's
``max_new_tokens``, greedy, and the same time-budget rule. Latency is the client's wall time.

The order is a, b, a: the second efficiency run shows how much the machine drifted meanwhile. Each p50
and p95 gets the report's bootstrap interval (``compare.stats.quantile_ci``); the p95 ratio server / (a)
(both (a) runs pooled) gets a bootstrap interval from resampling both sides' samples, and the two agree
"within noise" when that interval contains 1.

Model: ``--model`` (default the demo's distilled student, ``demo-output/runs/student-kd`` after ``make demo``); task
``--task`` (default examples/acme-support); ``--preset`` the compare preset whose settings are used.

    python benchmarks/served_latency.py                      # writes results/served_latency.json
    python benchmarks/served_latency.py --prompts 2 --output-name served_latency-smoke
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import write_result

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = str(REPO / "demo-output" / "runs" / "student-kd")  # written by `make demo`
DEFAULT_TASK = REPO / "examples" / "acme-support"
RESAMPLES = 2000
API_KEY_ENV = "DISTILLTUNE_BENCH_KEY"


def compare_setup(args, work: Path):
    """The view, evaluation config and efficiency spec compare would use for this model."""
    from distilltune.compare.config import CompareConfig
    from distilltune.compare.recipes import evaluate_config
    from distilltune.compare.run import prepare_view
    from distilltune.evaluation.evaluate import efficiency_spec
    from distilltune.task import load_task

    updates = {}
    if args.prompts is not None:
        updates["efficiency_prompts"] = args.prompts
    if args.time_budget_s is not None:
        updates["efficiency_time_budget_s"] = args.time_budget_s or None
    cfg = CompareConfig(task=str(args.task), output=str(work), preset=args.preset, **updates)
    view = prepare_view(cfg, work)
    ev = evaluate_config(cfg, view, work, "measured", refs=lambda _name: args.model)
    task = load_task(view)
    return ev, task, efficiency_spec(ev, task)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(ev, task, port: int, work: Path) -> subprocess.Popen:
    """``distilltune serve`` with the evaluation's retrieval, guard and prompt limit; waits for /health."""
    import httpx
    import yaml

    config = work / "serve.yaml"
    max_tokens = max(512, ev.efficiency.max_new_tokens)
    serve_cfg = {
        "retrieval": ev.retrieval.model_dump(mode="json"),
        "guard": ev.guard.model_dump(mode="json"),
        "limits": {"max_prompt_tokens": ev.max_prompt_tokens, "max_tokens": max_tokens, "timeout_s": 600},
    }
    config.write_text(yaml.safe_dump(serve_cfg))
    env = {**os.environ, "DISTILLTUNE_NO_REEXEC": "1", API_KEY_ENV: "bench-key"}
    cmd = [
        sys.executable, "-m", "distilltune", "serve", ev.model, "--task", str(task.root),
        "--port", str(port), "--log-db", str(work / "requests.db"), "--api-key-env", API_KEY_ENV,
        "--config", str(config),
    ]  # fmt: skip
    log = open(work / "server.log", "w")  # noqa: SIM115 - the server outlives this function
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(
                f"server exited ({proc.returncode}):\n{(work / 'server.log').read_text()[-3000:]}"
            )
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("server did not become healthy in 600 s")


def time_server(port: int, spec: dict, prompts: list) -> dict:
    """One client, one request at a time: the efficiency measurement's warm-up, prompts and budget."""
    import httpx

    from distilltune.evaluation.served import time_sequential

    client = httpx.Client(
        base_url=f"http://127.0.0.1:{port}", headers={"Authorization": "Bearer bench-key"}, timeout=900
    )
    model_id = client.get("/v1/models").json()["data"][0]["id"]

    def answer(conv):
        body = {"model": model_id, "messages": conv, "max_tokens": spec["max_new_tokens"], "temperature": 0}
        r = client.post("/v1/chat/completions", json=body)
        if r.status_code != 200:
            raise SystemExit(f"server answered {r.status_code}: {r.text[:300]}")
        return r.json()

    try:
        answers, latencies = time_sequential(answer, prompts, spec["warmup"], spec.get("time_budget_s"))
    finally:
        client.close()
    ms = [s * 1000 for s in latencies]
    timing = [(a.get("distilltune") or {}).get("timing") or {} for a in answers]
    return {
        "latency_ms": {"samples": [round(x, 3) for x in ms]},
        "timed_requests": len(ms),
        "mean_new_tokens": float(np.mean([a["usage"]["completion_tokens"] for a in answers])),
        "mean_engine_ms": float(
            np.mean([t.get("prefill_ms", 0) + t.get("decode_ms", 0) + t.get("queue_ms", 0) for t in timing])
        ),
        "routes": sorted({(a.get("distilltune") or {}).get("route") for a in answers} - {None}),
    }


def quantiles(samples: list[float], seed: int) -> dict:
    """p50/p95 (linear interpolation, as the report) with the report's bootstrap intervals."""
    from distilltune.compare import stats

    out = {}
    for q in (50, 95):
        iv = stats.quantile_ci(samples, q, RESAMPLES, stats.CONFIDENCE, seed)
        out[f"p{q}"] = float(np.percentile(samples, q))
        out[f"p{q}_ci95"] = [iv.low, iv.high]
    return out


def ratio_ci(num: list[float], den: list[float], q: float, seed: int) -> list[float]:
    """Bootstrap interval of percentile(num, q) / percentile(den, q), resampling each side."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(num), np.asarray(den)
    ra = np.percentile(rng.choice(a, (RESAMPLES, len(a))), q, axis=1)
    rb = np.percentile(rng.choice(b, (RESAMPLES, len(b))), q, axis=1)
    lo, hi = np.percentile(ra / rb, [2.5, 97.5])
    return [float(lo), float(hi)]


def summary(name: str, samples: list[float], seed: int, extra: dict) -> dict:
    s = {**quantiles(samples, seed), "n": len(samples), **extra, "samples": samples}
    print(
        f"{name}: p50 {s['p50']:.0f} ms, p95 {s['p95']:.0f} ms "
        f"(CI {s['p95_ci95'][0]:.0f}..{s['p95_ci95'][1]:.0f}), n={s['n']}",
        flush=True,
    )
    return s


def _guard(ev, task):
    from distilltune.policy import Guard

    return Guard.for_task(task, ev.guard)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--task", type=Path, default=DEFAULT_TASK)
    ap.add_argument("--preset", default="quick", choices=["quick", "full"])
    ap.add_argument("--prompts", type=int, default=None, help="timed requests (default: the preset's)")
    ap.add_argument("--time-budget-s", type=float, default=None, help="0: none (default: the preset's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output-name", default="served_latency")
    args = ap.parse_args()
    if not Path(args.model).exists():
        raise SystemExit(
            f"--model {args.model}: not found (a run dir, e.g. demo-output/runs/student-kd after make demo)"
        )
    from distilltune.evaluation import efficiency

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ev, task, spec = compare_setup(args, work)
        # the conversations the measurement times, in its order
        prompts = efficiency.serving_prompts(task, _guard(ev, task), spec["warmup"] + spec["prompts"])
        print(
            f"model {args.model}: {spec['prompts']} timed requests, max_new_tokens {spec['max_new_tokens']}"
        )
        runs = [efficiency.measure(spec, timeout_s=ev.efficiency.timeout_s)]
        port = free_port()
        server = start_server(ev, task, port, work)
        try:
            served = time_server(port, spec, prompts)
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
        runs.append(efficiency.measure(spec, timeout_s=ev.efficiency.timeout_s))
    report(args, spec, runs, served)


def report(args, spec: dict, runs: list[dict], served: dict) -> None:
    eff = [
        summary(
            f"efficiency ({label})",
            r["latency_ms"]["samples"],
            args.seed,
            {"mean_new_tokens": r["mean_new_tokens"], "loadavg_1m": r["settings"]["loadavg_1m"]},
        )
        for label, r in zip(("before", "after"), runs, strict=True)
    ]
    srv = summary("server, concurrency 1", served["latency_ms"]["samples"], args.seed, served)
    srv.pop("latency_ms")
    # The two efficiency runs bracket the server run in time: pooled, a drift of the machine's load
    # between them biases the ratio less than either run alone.
    pooled = runs[0]["latency_ms"]["samples"] + runs[1]["latency_ms"]["samples"]
    ratio = srv["p95"] / float(np.percentile(pooled, 95))
    ci = ratio_ci(srv["samples"], pooled, 95, args.seed)
    drift = abs(eff[1]["p95"] - eff[0]["p95"]) / eff[0]["p95"]
    within = ci[0] <= 1.0 <= ci[1]
    print(f"p95 server / efficiency: {ratio:.3f} (CI {ci[0]:.3f}..{ci[1]:.3f}); within noise: {within}")
    data = {
        "model": args.model,
        "task": str(args.task),
        "preset": args.preset,
        "settings": {k: spec[k] for k in ("prompts", "warmup", "max_new_tokens", "time_budget_s")},
        "efficiency_before": eff[0],
        "server_concurrency_1": srv,
        "efficiency_after": eff[1],
        "efficiency_pooled": quantiles(pooled, args.seed),
        "p95_ratio_server_over_efficiency": ratio,  # against both efficiency runs pooled
        "p95_ratio_ci95": ci,
        "p50_ratio_server_over_efficiency": srv["p50"] / float(np.percentile(pooled, 50)),
        "efficiency_p95_drift": drift,  # relative change between the two efficiency runs
        "targets": {"p95_ratio_ci95_contains_1": True},
        "met": {"p95_ratio_ci95_contains_1": within},
    }
    print(json.dumps({"written": str(write_result(args.output_name, data))}))


if __name__ == "__main__":
    main()
