"""``distilltune evaluate MODEL --task DIR --output OUT``: quality, groundedness, behaviour, efficiency."""

from __future__ import annotations

import re
from pathlib import Path

import typer
from rich.table import Table

from distilltune.cli.common import CONFIG_OPT, OVERRIDES_ARG, PRINT_CONFIG_OPT, build_config, console, out
from distilltune.evaluation.config import EvaluateConfig

OVERRIDE_RE = re.compile(r"^[A-Za-z_][\w.]*=")


def _fmt(x, pct: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{x:.1%}" if pct else f"{x:.3f}"


def print_summary(res: dict, output: str) -> None:
    q, g, b, e = res["quality"], res["groundedness"], res["behaviour"], res["efficiency"]
    table = Table(title=f"{res['model']} on {res['task']} ({q['n_items']} eval items)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("primary quality (0..1)", _fmt(q["primary"]))
    table.add_row("pass rate (primary ≥ 0.5)", _fmt(q["pass_rate"], pct=True))
    table.add_row("fact recall", _fmt(q["fact_recall"]))
    table.add_row("token F1 / ROUGE-L", f"{_fmt(q['token_f1'])} / {_fmt(q['rouge_l'])}")
    table.add_row("refusal accuracy", _fmt(q["refusal_accuracy"], pct=True))
    if "teacher_agreement" in q:
        table.add_row("teacher agreement (token F1)", _fmt(q["teacher_agreement"]))
    table.add_row("grounded in context / supported by KB", f"{_fmt(g['grounded'])} / {_fmt(g['supported'])}")
    table.add_row("citation validity", f"{_fmt(g['citation_validity'])} ({g['citations']} citations)")
    table.add_row("retrieval recall", _fmt(g["retrieval_recall"]))
    for suite in ("scenarios", "adversarial"):
        if suite in b:
            s = b[suite]
            table.add_row(f"{suite} passed", f"{s['passed']}/{s['n']}")
    table.add_row("parameters", f"{e['params'] / 1e6:.1f}M")
    table.add_row("size", f"{e['size_bytes'] / 1e6:.1f} MB ({e['size_kind']})")
    if "latency_ms" in e:
        lat = e["latency_ms"]
        table.add_row("load time", f"{e['load_s']:.2f} s")
        table.add_row("peak RSS (serving process)", f"{e['peak_rss_mb']:.0f} MB")
        table.add_row("latency p50 / p95", f"{lat['p50']:.0f} / {lat['p95']:.0f} ms")
        table.add_row(
            "prefill / decode tok/s",
            f"{_fmt_rate(e['prefill_tok_s'])} / {_fmt_rate(e['decode_tok_s'])}",
        )
    out.print(table)
    for f in b["failures"][:20]:
        console.print(f"  [yellow]{f['suite']} {f['id']}: {'; '.join(f['reasons'])}[/]", markup=True)
    if len(b["failures"]) > 20:
        console.print(f"  ... {len(b['failures']) - 20} more failures in {output}/items.jsonl")
    out.print(f"wrote {output}/eval.json and {output}/items.jsonl ({res['wall_s']:.0f} s)")


def _fmt_rate(x) -> str:
    return "n/a" if x is None else f"{x:.0f}"


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate_cmd(
        model: str = typer.Argument(
            None,
            help="Model reference: built-in name, directory, run dir, adapter, .gguf, or student spec "
            "(may come from --config instead).",
        ),
        task: Path = typer.Option(None, "--task", help="Task directory."),
        output: Path = typer.Option(None, "--output", "-o", help="Directory for eval.json and items.jsonl."),
        rag: bool = typer.Option(
            None, "--rag/--no-rag", help="Retrieve context for each answer (default on)."
        ),
        teacher: str = typer.Option(
            None,
            help="Teacher model: its answers give teacher agreement (and it is the base of teacher:… specs).",
        ),
        limit: int = typer.Option(None, help="Evaluate only the first N items of each suite."),
        backend: str = typer.Option(
            None,
            "--backend",
            help="torch (default), onnx or llama.cpp: MODEL may be that backend's export, or any model "
            "(exported on the fly into a cache).",
        ),
        quant: str = typer.Option(
            None,
            "--quant",
            help="Quantization of the on-the-fly export (onnx: int8; llama.cpp: f16|q8_0|q4_k_m).",
        ),
        config: Path = CONFIG_OPT,
        print_config: bool = PRINT_CONFIG_OPT,
        overrides: list[str] = OVERRIDES_ARG,
    ) -> None:
        """Evaluate a model on a task: quality, groundedness, behaviour under the guard, efficiency."""
        overrides = list(overrides or [])
        if model and OVERRIDE_RE.match(model) and not Path(model).exists():
            # `evaluate --config OUT/config.yaml limit=5`: the first override lands in MODEL's slot.
            overrides.insert(0, model)
            model = None
        cfg = build_config(
            EvaluateConfig,
            config,
            {
                "model": model,
                "task": str(task) if task else None,
                "output": str(output) if output else None,
                "retrieval": {"enabled": rag} if rag is not None else None,
                "teacher": teacher,
                "limit": limit,
                "backend": backend,
                "quant": quant,
            },
            overrides,
            print_config,
        )
        from distilltune.evaluation.evaluate import evaluate

        if cfg.backend != "torch" and cfg.artifact is None:
            from distilltune.export.deployed import deployed_artifact

            dep = deployed_artifact(
                cfg.model, cfg.backend, cfg.quant, cfg.teacher, log=lambda m: console.print(f"[dim]{m}[/]")
            )
            cfg = cfg.model_copy(update={"artifact": str(dep.path)})

        res = evaluate(cfg, log=lambda msg: console.print(f"[dim]{msg}[/]", markup=True))
        print_summary(res, cfg.output)
