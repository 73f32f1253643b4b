"""``distilltune index build|search|eval``: the task's knowledge index, from the command line."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.table import Table

from distilltune.cli.common import CONFIG_OPT, OVERRIDES_ARG, PRINT_CONFIG_OPT, build_config, console, out
from distilltune.config import StrictModel
from distilltune.errors import UserError
from distilltune.retrieval.config import RetrievalConfig


class IndexConfig(StrictModel):
    task: str
    retrieval: RetrievalConfig = RetrievalConfig()
    json_output: bool = False


def _open(cfg: IndexConfig, rebuild: bool = False):
    from distilltune.retrieval import KnowledgeIndex
    from distilltune.task import load_task

    task = load_task(cfg.task)
    t0 = time.perf_counter()
    index = KnowledgeIndex.open(task, cfg.retrieval, rebuild=rebuild)
    return task, index, time.perf_counter() - t0


def _config(task: Path, json_output, mode, config, overrides, print_config) -> IndexConfig:
    retrieval = {"mode": mode} if mode else {}
    return build_config(
        IndexConfig,
        config,
        {"task": str(task), "json_output": json_output, "retrieval": retrieval},
        overrides,
        print_config,
    )


def build(
    task: Path = typer.Argument(..., help="Task directory."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Rebuild even if the index is current."),
    config: Path = CONFIG_OPT,
    print_config: bool = PRINT_CONFIG_OPT,
    overrides: list[str] = OVERRIDES_ARG,
) -> None:
    """Chunk and embed knowledge/ into LanceDB (reused when the documents are unchanged)."""
    cfg = _config(task, None, None, config, overrides, print_config)
    t, index, secs = _open(cfg, rebuild)
    files = len({name for name in t.knowledge})
    out.print(
        f"index {index.status}: {index.n_chunks} chunks from {files} documents in {secs:.1f} s\n"
        f"  location: {index.uri}",
        markup=False,
    )


def search(
    task: Path = typer.Argument(..., help="Task directory."),
    query: str = typer.Argument(..., help="What to search for."),
    k: int = typer.Option(5, "--k", min=1, help="Number of chunks to show."),
    mode: str = typer.Option(None, "--mode", help="dense | lexical | hybrid (default: hybrid)."),
    json_output: bool = typer.Option(None, "--json", help="Print JSON instead of a table."),
    config: Path = CONFIG_OPT,
    print_config: bool = PRINT_CONFIG_OPT,
    overrides: list[str] = OVERRIDES_ARG,
) -> None:
    """Ranked chunks for a query, with file, heading and score."""
    cfg = _config(task, json_output, mode, config, overrides, print_config)
    if not query.strip():
        raise UserError("search query is empty")
    _, index, _ = _open(cfg)
    note = None if cfg.retrieval.mode == "lexical" else index.check_query(query)
    hits = index.search(query, k=k, mode=cfg.retrieval.mode)
    if cfg.json_output:
        payload = {"mode": cfg.retrieval.mode, "hits": [h.to_dict() for h in hits]}
        if note:
            payload["note"] = note
        out.print(json.dumps(payload, indent=2, ensure_ascii=False), markup=False)
        return
    if note:
        console.print(f"[yellow]note:[/] {note}")
    if not hits:
        out.print("no matching chunks", markup=False)
        return
    table = Table(title=f"{cfg.retrieval.mode} search, top {k}")
    for col, just in (("#", "right"), ("score", "right"), ("file", "left"), ("heading", "left")):
        table.add_column(col, justify=just)
    table.add_column("text", overflow="fold")
    for i, h in enumerate(hits, start=1):
        snippet = h.text if len(h.text) <= 160 else h.text[:157] + "..."
        table.add_row(str(i), f"{h.score:.4f}", h.file, h.heading, snippet)
    out.print(table)


def evaluate(
    task: Path = typer.Argument(..., help="Task directory."),
    json_output: bool = typer.Option(None, "--json", help="Print JSON instead of a table."),
    config: Path = CONFIG_OPT,
    print_config: bool = PRINT_CONFIG_OPT,
    overrides: list[str] = OVERRIDES_ARG,
) -> None:
    """Recall@1/3/5 and MRR of the eval items' cited sources, for each search mode."""
    from distilltune.retrieval.evaluate import evaluate_retrieval

    cfg = _config(task, json_output, None, config, overrides, print_config)
    t, index, _ = _open(cfg)
    result = evaluate_retrieval(index, t.eval, previous_turn=cfg.retrieval.previous_turn)
    if result["items"] == 0:
        raise UserError(f"{t.root / t.spec.data.eval}: no eval item lists sources; nothing to measure")
    if cfg.json_output:
        out.print(json.dumps(result, indent=2), markup=False)
        return
    table = Table(
        title=f"retrieval on {result['items']} eval items with sources ({result['skipped']} without)"
    )
    keys = list(next(iter(result["modes"].values())))
    table.add_column("mode")
    for key in keys:
        table.add_column(key, justify="right")
    for mode, scores in result["modes"].items():
        table.add_row(mode, *(f"{scores[key]:.3f}" for key in keys))
    out.print(table)


def register(app: typer.Typer) -> None:
    index_app = typer.Typer(help="Build, search and evaluate the knowledge index.", no_args_is_help=True)
    app.add_typer(index_app, name="index")
    index_app.command("build")(build)
    index_app.command("search")(search)
    index_app.command("eval")(evaluate)
