"""Student specs: ``BASE:key=value,...``, parsed once into a typed ``StudentSpec``.

Keys (combinable, e.g. ``teacher:n_layers=12,mlp=0.5,heads=0.67``):

- ``n_layers=N`` or ``layers=0,1,5``: depth, which decoder layers the student keeps (``models.student``);
- ``mlp=F``: the fraction of each kept layer's MLP intermediate channels to keep (``models.width``);
- ``heads=F``: the fraction of attention (query) heads to keep, in whole key/value groups or the same
  number per group (``models.width`` says which and why);
- ``importance=PATH``: the per-channel and per-head activation scores that rank what ``mlp``/``heads``
  keep, measured on a task's prompts (``compare`` writes it). Without it the ranking falls back to
  weight magnitude, which needs no data.

Every consumer (loading, the meta-device config of training checks, the teacher-cache fingerprint)
reads the same parse, so a key cannot mean two things in two places. ``layers`` is the only key whose
value has commas: a comma-separated item without ``=`` continues the previous ``layers=``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from distilltune.errors import UserError

KEYS = ("n_layers", "layers", "mlp", "heads", "importance")
# BASE, a colon, then something shaped like key=value: anything else is not a student spec at all
# (an unknown key is still caught, with a clear error, by parse_student_spec).
STUDENT_RE = re.compile(r"^(?P<base>.+?):(?P<body>[a-z_]+=.*)$")


@dataclass(frozen=True)
class StudentSpec:
    base: str
    n_layers: int | None = None
    layers: str | None = None  # as written; validated against the base's depth by parse_layers
    mlp: float | None = None
    heads: float | None = None
    importance: str | None = None

    @property
    def prunes_width(self) -> bool:
        return self.mlp is not None or self.heads is not None

    def body(self) -> str:
        """The canonical ``key=value,...`` text (stable order), for resolved specs and cache keys."""
        parts = []
        if self.n_layers is not None:
            parts.append(f"n_layers={self.n_layers}")
        if self.layers is not None:
            parts.append(f"layers={self.layers}")
        if self.mlp is not None:
            parts.append(f"mlp={self.mlp:g}")
        if self.heads is not None:
            parts.append(f"heads={self.heads:g}")
        if self.importance is not None:
            parts.append(f"importance={self.importance}")
        return ",".join(parts)

    def text(self) -> str:
        return f"{self.base}:{self.body()}"

    def replace(self, **changes) -> StudentSpec:
        return dataclasses.replace(self, **changes)

    def bound(self, teacher: str | None) -> StudentSpec:
        """This spec with a ``teacher`` base replaced by the command's teacher (loading weights,
        tokenizers and meta-device configs all need the real model); an error if none was given."""
        if self.base != "teacher":
            return self
        if not teacher:
            raise UserError(f"student spec {self.text()!r} names 'teacher' but no teacher model was given")
        return self.replace(base=teacher)

    def layer_choice(self, n_total: int) -> list[int]:
        """The base's layers this student keeps: explicit, first+last for ``n_layers``, else all."""
        from distilltune.models.student import default_layers, parse_layers

        if self.layers is not None:
            return parse_layers(self.layers, n_total)
        if self.n_layers is not None:
            return default_layers(n_total, self.n_layers)
        return list(range(n_total))


def is_student_spec(ref: str) -> bool:
    return bool(STUDENT_RE.match(ref))


def _fraction(ref: str, key: str, value: str, what: str) -> float:
    try:
        f = float(value)
    except ValueError:
        f = float("nan")
    if not 0.0 < f <= 1.0:  # also false for nan
        raise UserError(
            f"student spec {ref!r}: {key}={value}: expected the fraction of {what} to keep, "
            f"above 0 and at most 1 (e.g. {key}=0.5)"
        )
    return f


def _items(ref: str, body: str) -> dict[str, str]:
    items: dict[str, str] = {}
    key = None
    for token in body.split(","):
        k, eq, v = token.partition("=")
        k = k.strip()
        if eq and re.fullmatch(r"[a-z_]+", k):
            if k not in KEYS:
                raise UserError(f"student spec {ref!r}: unknown key {k!r}; expected one of {', '.join(KEYS)}")
            if k in items:
                raise UserError(f"student spec {ref!r}: {k}= is given twice")
            key = k
            items[k] = v.strip()
        elif key == "layers" and not eq:
            items["layers"] += "," + token.strip()
        else:
            raise UserError(
                f"student spec {ref!r}: {token.strip()!r} is not key=value "
                f"(keys: {', '.join(KEYS)}; e.g. teacher:n_layers=12,mlp=0.5)"
            )
    return items


def parse_student_spec(ref: str) -> StudentSpec | None:
    """The parsed spec, ``None`` when ``ref`` is not a student spec; malformed values are a UserError."""
    m = STUDENT_RE.match(ref)
    if m is None:
        return None
    items = _items(ref, m["body"])
    if "n_layers" in items and "layers" in items:
        raise UserError(f"student spec {ref!r}: give n_layers= or layers=, not both")
    n_layers = None
    if "n_layers" in items:
        v = items["n_layers"]
        if not v.isdigit() or int(v) < 1:
            raise UserError(
                f"student spec {ref!r}: n_layers={v}: expected a whole number of layers, at least 1"
            )
        n_layers = int(v)
    mlp = _fraction(ref, "mlp", items["mlp"], "each layer's MLP channels") if "mlp" in items else None
    heads = _fraction(ref, "heads", items["heads"], "attention heads") if "heads" in items else None
    importance = items.get("importance")
    if importance is not None and (mlp is None and heads is None):
        raise UserError(f"student spec {ref!r}: importance= ranks channels and heads; add mlp= or heads=")
    if importance == "":
        raise UserError(f"student spec {ref!r}: importance= needs the path of a scores file")
    return StudentSpec(m["base"], n_layers, items.get("layers"), mlp, heads, importance)
