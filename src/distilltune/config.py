"""Typed configuration: pydantic models are the single source of truth.

A command's settings come, in increasing precedence, from the model's defaults, a YAML file
(``--config FILE.yaml``), the command's own options, and dotted overrides (``train.lr=1e-4``).
All problems (unknown keys, wrong types, bad override syntax) are collected and reported at once,
naming the key and where it came from. The resolved config is what gets written to a run dir,
and that file can be passed back with ``--config`` to re-run exactly.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from distilltune.errors import Problem, UserError

T = TypeVar("T", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config and task model: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-4"`` → (["train", "lr"], 1e-4). Values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip().lstrip("-")
    if not key or any(not part for part in key.split(".")):
        raise ValueError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # YAML reads "1e-4" as a string; numbers with exponents are common for learning rates.
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value) if any(c in value for c in "eE.") else value
    return key.split("."), value


def deep_set(d: dict, keys: list[str], value: Any) -> None:
    for k in keys[:-1]:
        nxt = d.get(k)
        if not isinstance(nxt, dict):
            nxt = {}
            d[k] = nxt
        d = nxt
    d[keys[-1]] = value


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml(path: str | Path, what: str = "config") -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: {what} file not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{p}: not UTF-8 text") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise UserError(f"{p}{line}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(
            f"{p}: expected a mapping of keys to values at the top level, found {type(data).__name__}"
        )
    return data


class FieldProblems(ValueError):
    """Raised by a model validator that found several problems, each at its own field (dotted path)."""

    def __init__(self, items: list[tuple[str, str]]):
        super().__init__("; ".join(f"{f}: {m}" if f else m for f, m in items))
        self.items = items


def validation_problems(
    err: ValidationError, source: str, moved: dict[str, str] | None = None
) -> list[Problem]:
    """One ``Problem`` per pydantic error (a ``FieldProblems`` validator error: one per its field);
    ``moved`` (a model's ``MOVED_KEYS``: old dotted key → new) turns "unknown key" into where a
    renamed setting lives now."""
    problems = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        msg = e["msg"]
        found_many = e.get("ctx", {}).get("error")
        if isinstance(found_many, FieldProblems):  # a model validator's findings, each with its field
            problems += [
                Problem(source, m, field=".".join(x for x in (loc, f) if x) or None)
                for f, m in found_many.items
            ]
            continue
        if e["type"] == "extra_forbidden" and moved and loc in moved:
            new = moved[loc]
            section, _, key = new.rpartition(".")
            msg = f"moved to {new} (write it under {section}: as {key})" if section else f"renamed to {new}"
        elif e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif "input" in e and e["type"] not in ("missing",):
            found = e["input"]
            found_s = repr(found) if not isinstance(found, dict) else "a mapping"
            msg = f"{msg} (found {found_s[:80]})"
        problems.append(Problem(source, msg, field=loc or None))
    return problems


def resolve_config(
    cls: type[T],
    config_file: str | Path | None = None,
    cli_values: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> T:
    """Build a ``cls`` from defaults < YAML file < CLI options < dotted overrides; report all problems."""
    data: dict = {}
    problems: list[Problem] = []
    if config_file:
        data = read_yaml(config_file)
    if cli_values:
        data = deep_merge(data, {k: v for k, v in cli_values.items() if v is not None})
    for text in overrides or []:
        try:
            keys, value = parse_override(text)
        except ValueError as e:
            problems.append(Problem("<command line>", str(e)))
            continue
        deep_set(data, keys, value)
    if problems:
        raise UserError("invalid overrides", problems)
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        source = str(config_file) if config_file else "<config>"
        moved = getattr(cls, "MOVED_KEYS", None)
        raise UserError("invalid configuration", validation_problems(e, source, moved)) from None


def to_yaml(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
