"""Imports follow the pipeline: no module imports a stage above its own (docs/architecture.md).

Walks every module's import statements (top-level and inside functions) with ``ast``: a lazy import
inside a function is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import distilltune

# Lowest first. Modules at the package root (config, errors, io, runtime, text) are the base layer.
LAYERS = [
    {"config", "errors", "io", "runtime", "text"},
    {"task"},
    {"data"},
    {"models"},
    {"retrieval"},
    {"policy"},
    {"inference"},
    {"train"},
    {"distill"},
    {"evaluation"},
    {"export"},
    {"compare"},
    {"serve"},
    {"monitor"},
    {"flywheel"},
    {"cli", "__main__", "__init__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}
ROOT = Path(distilltune.__file__).parent


def _stage(rel: Path) -> str:
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [n.name for n in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "distilltune" and len(parts) > 1:
                out.add(parts[1])
    return out


def test_every_stage_is_ranked():
    stages = {_stage(p.relative_to(ROOT)) for p in ROOT.rglob("*.py")}
    assert stages <= set(RANK), f"unranked stages: {sorted(stages - set(RANK))}"


def test_no_module_imports_a_stage_above_its_own():
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        stage = _stage(rel)
        for dep in _imports(path):
            if dep in RANK and RANK[dep] > RANK[stage]:
                bad.append(f"{rel} ({stage}) imports {dep}")
    assert not bad, "imports up the stack:\n" + "\n".join(bad)
