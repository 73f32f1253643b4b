"""``distilltune serve MODEL --task DIR``: the OpenAI-compatible server; ``distilltune logs DB``: its log.

``serve`` loads everything (task, guard, knowledge index, models, adapters) before binding the port,
so a mistake in any of them is a clean error, not a half-started server. ``logs`` summarises the
request log the server writes (SQLite, readable while the server runs).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from distilltune.cli.common import (
    CONFIG_OPT,
    OVERRIDES_ARG,
    PRINT_CONFIG_OPT,
    build_config,
    console,
    nested,
    out,
)
from distilltune.errors import UserError


def parse_adapters(items: list[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    adapters: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise UserError(
                f"--adapter {item!r}: expected NAME=DIR, e.g. --adapter billing=runs/lora-billing"
            )
        if name in adapters:
            raise UserError(f"--adapter {name}: given twice")
        adapters[name.strip()] = path.strip()
    return adapters


def _row(t: Table, *cells: str) -> None:
    """Cells as literal text: guard labels like ``pii:email`` are not emoji codes or markup."""
    t.add_row(*(Text(c) for c in cells))


def _ms(x) -> str:
    return "n/a" if x is None else f"{x:.0f}"


def print_summary(s: dict) -> None:
    out.print(f"{s['db']}: {s['requests']} requests ({s['streamed']} streamed)")
    if not s["requests"]:
        return
    t = Table(show_header=True)
    t.add_column("")
    t.add_column("value", justify="right")
    _row(t, "status", ", ".join(f"{k}: {v}" for k, v in sorted(s["by_status"].items())))
    _row(t, "route", ", ".join(f"{k}: {v}" for k, v in sorted(s["by_route"].items())))
    _row(t, "models", ", ".join(f"{k or '?'}: {v}" for k, v in sorted(s["by_model"].items())))
    _row(t, "refused (input / output)", f"{s['refused_input']} / {s['refused_output']}")
    _row(t, "PII redacted (input / output)", f"{s['redacted_input']} / {s['redacted_output']}")
    rate = s["escalation_rate"]
    _row(t, "escalated to fallback", "n/a" if rate is None else f"{rate:.1%} of answered")
    for route, lat in s["latency_ms"].items():
        _row(t, f"latency {route} p50 / p95 (n)", f"{_ms(lat['p50'])} / {_ms(lat['p95'])} ms ({lat['n']})")
    if s["ttft_ms"]:
        _row(
            t, "time to first token p50 / p95", f"{_ms(s['ttft_ms']['p50'])} / {_ms(s['ttft_ms']['p95'])} ms"
        )
    if s["confidence"]:
        c = s["confidence"]
        _row(
            t,
            "student mean log-prob (mean / p10 / p50)",
            f"{c['mean']:.2f} / {c['p10']:.2f} / {c['p50']:.2f}",
        )
    _row(t, "tokens (prompt / completion)", f"{s['tokens']['prompt']} / {s['tokens']['completion']}")
    top = list(s["guard_reasons"].items())[:8]
    if top:
        _row(t, "guard reasons", ", ".join(f"{k}: {v}" for k, v in top))
    out.print(t)


def _announce(cfg, state, threads: int) -> None:
    """What was loaded and where it listens, printed before the port is bound."""
    console.print(state.task.summary_line())
    ids = ", ".join(
        f"{m.id}" + (f" (adapter of {m.parent})" if m.adapter and m.parent else "")
        for m in state.models.values()
    )
    if state.candidate is not None:
        mode = "shadow copies of" if cfg.ab.shadow else "answers"
        console.print(f"candidate {cfg.candidate}: {mode} {cfg.ab.share:.0%} of users (hashed)")
    if cfg.backend == "torch":
        how = f"batching up to {cfg.batching.max_batch} sequences"
    else:
        how = f"backend {cfg.backend}, one request at a time (no continuous batching)"
    console.print(f"models: {ids}; {how}, {threads} threads")
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and state.api_key is None:
        console.print(
            f"[yellow]warning: listening on {cfg.host} without an API key (--api-key-env)[/]", markup=True
        )
    console.print(
        f"request log: {cfg.log_db}; metrics: http://{cfg.host}:{cfg.port}/metrics; "
        f"API: http://{cfg.host}:{cfg.port}/v1"
    )


def serve(
    model: str = typer.Argument(
        ..., help="Student/base model: run dir, model or adapter dir, built-in name, or student spec."
    ),
    task: Path = typer.Option(..., "--task", help="Task directory (system prompt, knowledge, policy)."),
    fallback: str = typer.Option(None, "--fallback", help="Model that answers when the student is unsure."),
    host: str = typer.Option(None, "--host", help="Interface to bind (default 127.0.0.1)."),
    port: int = typer.Option(None, "--port", help="Port (default 8000)."),
    api_key_env: str = typer.Option(
        None, "--api-key-env", help="Name of the environment variable holding the API key."
    ),
    adapter: list[str] = typer.Option(
        None, "--adapter", help="Extra LoRA adapter on MODEL's base, NAME=DIR (repeatable)."
    ),
    teacher: str = typer.Option(None, "--teacher", help="Resolves 'teacher' in student specs."),
    candidate: str = typer.Option(
        None, "--candidate", help="A second model tested on live traffic (A/B, or --shadow)."
    ),
    split: float = typer.Option(
        None,
        "--split",
        help="Share of users (hashed) the candidate answers (default 0.1); with --shadow, the share "
        "mirrored to it (default 1).",
    ),
    shadow: bool = typer.Option(
        False, "--shadow", help="Run the candidate on a copy of the traffic; only MODEL answers."
    ),
    backend: str = typer.Option(
        None,
        "--backend",
        help="torch (default; continuous batching), onnx (ONNX Runtime) or llama.cpp (needs the gguf "
        "extra). MODEL may be that backend's export, or any model (exported on the fly, cached).",
    ),
    quant: str = typer.Option(
        None,
        "--quant",
        help="Quantization of the on-the-fly export: onnx none|int8; llama.cpp none|f16|q8_0|q4_k_m.",
    ),
    log_db: Path = typer.Option(None, "--log-db", help="Request log (default distilltune-requests.db)."),
    log_retention_days: float = typer.Option(
        None,
        "--log-retention-days",
        help="Delete request-log rows older than this many days, at start-up and hourly (default: keep all).",
    ),
    config: Path = CONFIG_OPT,
    print_config: bool = PRINT_CONFIG_OPT,
    overrides: list[str] = OVERRIDES_ARG,
) -> None:
    """Serve MODEL behind the task's guard and retrieval with an OpenAI-compatible API."""
    from distilltune.serve.config import ServeConfig

    cfg = build_config(
        ServeConfig,
        config,
        {
            "model": model,
            "task": str(task),
            "fallback": fallback,
            "host": host,
            "port": port,
            "api_key_env": api_key_env,
            "adapters": parse_adapters(adapter),
            "teacher": teacher,
            "candidate": candidate,
            **nested("ab", split=split, shadow=shadow or None),  # unset: a config file's value stands
            "log_db": str(log_db) if log_db else None,
            "log_retention_days": log_retention_days,
            "backend": backend,
            "quant": quant,
        },
        overrides,
        print_config,
    )
    from distilltune.runtime import set_threads
    from distilltune.serve.app import serve_forever
    from distilltune.serve.loading import build_state

    threads = set_threads()
    console.print(f"loading {cfg.model}" + (f" (fallback {cfg.fallback})" if cfg.fallback else "") + " ...")
    state = build_state(cfg)
    _announce(cfg, state, threads)
    serve_forever(state)


def logs(
    db: Path = typer.Argument(..., help="Request log written by distilltune serve."),
    tail: int = typer.Option(0, "--tail", help="Also print the last N requests (redacted)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Summarise a server's request log: routes, refusals, redactions, escalations, latency."""
    from distilltune.serve.requestlog import summarize
    from distilltune.serve.requestlog import tail as tail_rows

    summary = summarize(db)
    rows = tail_rows(db, tail) if tail > 0 else []
    if as_json:
        if rows:
            summary["tail"] = rows
        out.print(json.dumps(summary, indent=2, ensure_ascii=False), markup=False)
        return
    print_summary(summary)
    for r in rows:
        prompt = json.loads(r["prompt"] or "[]")
        question = prompt[-1]["content"] if prompt else ""
        out.print(
            f"{r['id']} {r['status']} {r['route']} {_ms(r['latency_ms'])} ms | {question[:80]!r} -> "
            f"{(r['answer'] or '')[:80]!r}",
            markup=False,
        )


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("logs")(logs)
