"""Blend pipelines: a YAML list of fine-tune / distill steps whose named outputs feed later steps.

```yaml
name: finetune-then-distill
output: runs/finetune-then-distill      # default runs/<name>; step outputs go to <output>/<step name>
vars: {task: examples/acme-support}     # ${task} anywhere below
steps:
  - name: teacher
    finetune: {task: "${task}", model: smollm2-135m-instruct, method: lora}
  - name: student
    distill: {task: "${task}", teacher: "${teacher}", student: "teacher:n_layers=6"}
```

``${name}`` is a variable from ``vars`` or the output directory of an *earlier* step. Each step's
body is exactly the config of ``distilltune finetune`` / ``distilltune distill`` (validated by the
same typed models, every problem of every step reported at once, before anything runs). Relative
paths are relative to the working directory, as on the command line.

``run_pipeline`` runs the steps with the orchestrator ``compare`` uses too (``distill.orchestrate``):
a step whose output is complete is skipped, one that was interrupted (its run dir has a config or
checkpoints) is resumed, the rest start fresh; the first failure stops the pipeline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from distilltune.config import deep_set, parse_override, read_yaml, validation_problems
from distilltune.errors import Problem, UserError

_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_\-]*)\}")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
KINDS = ("finetune", "distill")


@dataclass
class Step:
    name: str
    kind: str  # "finetune" | "distill"
    config: BaseModel  # FinetuneConfig | DistillConfig
    output: Path


@dataclass
class Pipeline:
    name: str
    output: Path
    steps: list[Step]
    source: str


def _config_class(kind: str) -> type[BaseModel]:
    if kind == "finetune":
        from distilltune.train.config import FinetuneConfig

        return FinetuneConfig
    from distilltune.distill.config import DistillConfig

    return DistillConfig


def _substitute(value: Any, env: dict[str, str], where: str, problems: list[Problem], source: str) -> Any:
    if isinstance(value, str):

        def repl(m: re.Match) -> str:
            if m[1] not in env:
                problems.append(
                    Problem(
                        source,
                        f"${{{m[1]}}} is neither a variable nor the output of an earlier step",
                        field=where,
                    )
                )
                return m[0]
            return env[m[1]]

        return _REF.sub(repl, value)
    if isinstance(value, dict):
        return {k: _substitute(v, env, f"{where}.{k}", problems, source) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, env, f"{where}.{i}", problems, source) for i, v in enumerate(value)]
    return value


def _apply_overrides(data: dict, overrides: list[str], problems: list[Problem]) -> None:
    """``vars.task=DIR``, ``output=DIR``, ``name=N`` or ``STEP.train.max_steps=5``, into ``data``."""
    for text in overrides:
        try:
            keys, value = parse_override(text)
        except ValueError as e:
            problems.append(Problem("<command line>", str(e)))
            continue
        if keys[0] == "vars":
            deep_set(data.setdefault("vars", {}), keys[1:], value)
            continue
        if keys[0] in ("output", "name") and len(keys) == 1:
            data[keys[0]] = value
            continue
        step = next(
            (s for s in data.get("steps") or [] if isinstance(s, dict) and s.get("name") == keys[0]), None
        )
        kind = next((k for k in KINDS if step is not None and isinstance(step.get(k), dict)), None)
        if kind is None:
            problems.append(Problem("<command line>", f"override {text!r}: no step named {keys[0]!r}"))
            continue
        deep_set(step[kind], keys[1:], value)


def _parse_step(
    i: int, raw: Any, env: dict[str, str], output: Path, src: str, problems: list[Problem]
) -> Step | None:
    """Step ``i``, substituted and validated; its output joins ``env`` (None when it has problems)."""
    where = f"steps.{i}"
    if not isinstance(raw, dict):
        problems.append(Problem(src, "a step is a mapping with name and finetune: or distill:", field=where))
        return None
    sname = raw.get("name")
    if not isinstance(sname, str) or not _NAME.match(sname):
        problems.append(Problem(src, "step name must be letters, digits, _ or -", field=f"{where}.name"))
        return None
    if sname in env:
        problems.append(Problem(src, f"step name {sname!r} is already used", field=f"{where}.name"))
        return None
    kinds = [k for k in KINDS if k in raw]
    if len(kinds) != 1 or set(raw) - {"name", *KINDS}:
        problems.append(
            Problem(src, "a step has a name and exactly one of finetune: or distill:", field=where)
        )
        return None
    kind = kinds[0]
    body = raw[kind]
    if not isinstance(body, dict):
        problems.append(Problem(src, "expected a mapping (the command's config)", field=f"{where}.{kind}"))
        return None
    body = _substitute(body, env, f"{where}.{kind}", problems, src)
    body.setdefault("output", str(output / sname))
    try:
        cls = _config_class(kind)
        cfg = cls.model_validate(body)
    except ValidationError as e:
        for p in validation_problems(e, src, getattr(cls, "MOVED_KEYS", None)):
            problems.append(
                Problem(p.file, p.message, field=f"{where}.{kind}.{p.field}" if p.field else where)
            )
        env[sname] = str(body["output"])  # later steps still resolve ${name}: one problem, not many
        return None
    env[sname] = cfg.output
    return Step(sname, kind, cfg, Path(cfg.output))


def load_pipeline(path: str | Path, overrides: list[str] | None = None) -> Pipeline:
    """Parse, substitute and validate a pipeline file (see module docstring)."""
    src = str(path)
    data = read_yaml(path, "pipeline")
    problems: list[Problem] = []
    _apply_overrides(data, overrides or [], problems)
    unknown = set(data) - {"name", "output", "vars", "steps", "description"}
    for k in sorted(unknown):
        problems.append(
            Problem(src, "unknown key (expected name, description, output, vars, steps)", field=k)
        )
    name = data.get("name") or Path(path).stem
    output = Path(str(data.get("output") or f"runs/{name}"))
    env = {str(k): str(v) for k, v in (data.get("vars") or {}).items()}
    raw_steps = data.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        problems.append(Problem(src, "expected a non-empty list of steps", field="steps"))
        raw_steps = []
    parsed = [_parse_step(i, raw, env, output, src, problems) for i, raw in enumerate(raw_steps)]
    steps = [s for s in parsed if s is not None]
    outs = [s.output.resolve() for s in steps]
    for o in {o for o in outs if outs.count(o) > 1}:
        problems.append(Problem(src, f"two steps write to the same output {o}", field="steps"))
    if problems:
        raise UserError(f"{src}: invalid pipeline", problems)
    return Pipeline(name, output, steps, src)


def step_state(step: Step) -> str:
    """ "complete" | "interrupted" | "new"."""
    from distilltune.distill.orchestrate import training_state

    return training_state(step.output)


def run_pipeline(pipe: Pipeline, reporter=None) -> dict[str, Path]:
    """Run every step in order (skip complete, resume interrupted); returns step name → run dir."""
    from distilltune.distill.orchestrate import Hooks, Job, run_jobs
    from distilltune.train.progress import LineReporter

    reporter = reporter or LineReporter()
    n = len(pipe.steps)
    kinds = {s.name: s.kind for s in pipe.steps}

    def begin(i: int, job: Job, state: str) -> None:
        head = f"[{pipe.name} {i}/{n}] {job.name} ({kinds[job.name]})"
        if state == "complete":
            reporter.message(f"{head}: complete in {job.output}, skipped")
        else:
            reporter.message(
                f"{head}: {'resuming' if state == 'interrupted' else 'starting'} -> {job.output}"
            )

    jobs = [
        Job(
            s.name,
            s.kind,
            s.config,
            s.output,
            stop_after=f"[{pipe.name} {i}/{n}] {s.name} ({s.kind}): sequence.generate_only is set; "
            "stopping the pipeline for review"
            if s.kind == "distill" and s.config.mode == "sequence" and s.config.sequence.generate_only
            else None,
        )
        for i, s in enumerate(pipe.steps, start=1)
    ]
    outcomes = run_jobs(jobs, Hooks(begin=begin, message=reporter.message), reporter=reporter)
    return {name: o.output for name, o in outcomes.items() if o.output is not None}
