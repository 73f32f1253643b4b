"""``distilltune export RUN_OR_MODEL --format gguf|onnx|safetensors --quant ... --output OUT``."""

from __future__ import annotations

from pathlib import Path

import typer

from distilltune.cli.common import CONFIG_OPT, OVERRIDES_ARG, PRINT_CONFIG_OPT, build_config, console, out


def _summary(report: dict) -> str:
    ratio = report.get("size_ratio")
    lines = [
        f"{report['format']} ({report['quant']}): {report['size_bytes'] / 1e6:.1f} MB"
        + (f", {ratio:.2f}x the float32 safetensors" if ratio else "")
    ]
    rt = report.get("roundtrip")
    if rt:
        agree = rt["token_agreement"]
        diff = rt["fact_recall_diff"]
        lines.append(
            f"round trip on {rt['prompts']} eval prompts: exact answers {rt['exact_match']:.0%}, "
            + (f"token agreement {agree:.1%}" if agree is not None else "no answer tokens")
            + (f", fact recall {diff:+.3f} vs source" if diff is not None else "")
        )
    lines += [f"warning: {w}" for w in report.get("warnings", [])]
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export(
        model: str = typer.Argument(
            ..., help="Run directory, model directory, adapter, .gguf, built-in name or student spec."
        ),
        format: str = typer.Option(None, "--format", "-f", help="gguf | onnx | safetensors (default gguf)."),
        quant: str = typer.Option(
            None, "--quant", "-q", help="none | f16 | q8_0 | q4_k_m (gguf); none | int8 (onnx). Default none."
        ),
        output: Path = typer.Option(..., "--output", "-o", help="Directory to create for the export."),
        task: Path = typer.Option(
            None,
            help="Task directory: its system prompt goes into the Ollama Modelfile, its eval prompts "
            "into the round-trip check.",
        ),
        check: int = typer.Option(None, help="Eval prompts for the round-trip check (default 16; 0 skips)."),
        teacher: str = typer.Option(None, help="Teacher for student specs like teacher:n_layers=6."),
        config: Path = CONFIG_OPT,
        print_config: bool = PRINT_CONFIG_OPT,
        overrides: list[str] = OVERRIDES_ARG,
    ) -> None:
        """Export a model for llama.cpp / Ollama (GGUF), ONNX Runtime (ONNX) or transformers (safetensors)."""
        from distilltune.export import ExportConfig

        cfg = build_config(
            ExportConfig,
            config,
            {
                "model": model,
                "output": str(output),
                "format": format,
                "quant": quant,
                "task": str(task) if task else None,
                "check": check,
                "teacher": teacher,
            },
            overrides,
            print_config,
        )
        from distilltune.export import export_model
        from distilltune.runtime import set_threads

        set_threads()
        report = export_model(cfg)
        console.print(_summary(report), markup=False)
        out.print(str(Path(cfg.output) / "export.json"), markup=False)
