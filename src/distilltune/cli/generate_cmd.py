"""``distilltune generate MODEL --prompt TEXT``: answer one prompt (with a task's system prompt)."""

from __future__ import annotations

from pathlib import Path

import typer

from distilltune.cli.common import CONFIG_OPT, OVERRIDES_ARG, PRINT_CONFIG_OPT, build_config, console, out
from distilltune.config import StrictModel


class GenerateConfig(StrictModel):
    model: str
    prompt: str
    task: str | None = None
    teacher: str | None = None  # for student specs like teacher:n_layers=6
    max_new_tokens: int = 128
    temperature: float = 0.0
    system_prompt: str | None = None


def register(app: typer.Typer) -> None:
    @app.command("generate")
    def generate(
        model: str = typer.Argument(
            ..., help="Model reference: built-in name, directory, .gguf, run dir, or student spec."
        ),
        prompt: str = typer.Option(..., "--prompt", "-p", help="The user message."),
        task: Path = typer.Option(None, help="Task directory: its system prompt is used."),
        max_new_tokens: int = typer.Option(None, help="Cap on generated tokens (default 128)."),
        config: Path = CONFIG_OPT,
        print_config: bool = PRINT_CONFIG_OPT,
        overrides: list[str] = OVERRIDES_ARG,
    ) -> None:
        """Answer one prompt with a model."""
        cfg = build_config(
            GenerateConfig,
            config,
            {
                "model": model,
                "prompt": prompt,
                "task": str(task) if task else None,
                "max_new_tokens": max_new_tokens,
            },
            overrides,
            print_config,
        )
        from distilltune.data.chat import with_system
        from distilltune.models import load_model
        from distilltune.models.generate import generate_chat
        from distilltune.runtime import set_threads

        set_threads()
        system = cfg.system_prompt
        if cfg.task:
            from distilltune.task import load_task

            system = system or load_task(cfg.task).system_prompt
        loaded = load_model(cfg.model, teacher=cfg.teacher)
        msgs = with_system(system, [{"role": "user", "content": cfg.prompt}])
        g = generate_chat(
            loaded.model,
            loaded.tokenizer,
            [msgs],
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
        )[0]
        out.print(g.text, markup=False)
        tps = (g.new_tokens - 1) / g.decode_s if g.decode_s > 0 and g.new_tokens > 1 else 0.0
        console.print(
            f"[dim]{g.new_tokens} tokens, prefill {g.prefill_s * 1000:.0f} ms, decode {tps:.1f} tok/s"
            f"{'' if g.finished else ', stopped at max_new_tokens'}[/]"
        )
