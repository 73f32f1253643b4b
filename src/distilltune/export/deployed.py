"""The deployed file a backend loads, for any model reference: given as-is, or exported on the fly.

``serve --backend onnx runs/student-kd`` and ``evaluate --backend llama.cpp ...`` accept either the
backend's own format (an ONNX export directory, a ``.gguf``) or anything ``load_model`` accepts; the
latter is exported once into ``$DISTILLTUNE_HOME/exports/<name>-<key>`` and reused while the source
is unchanged. The key hashes the source (its resolved path with every file's size and modification
time, or the built-in name / student spec / hub id), the format, the quantization and the distilltune
version (a new exporter writes a new file). The export is ``export_model``'s, atomic: an interrupted
one leaves nothing that looks complete.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from distilltune.errors import UserError
from distilltune.inference.backends import find_artifact, get_backend


@dataclass
class Deployed:
    path: Path  # what the backend loads (ONNX dir or .gguf)
    exported: bool  # exported (or reused from the cache) rather than given
    export_s: float | None  # seconds the export took (None when given as-is)
    report: dict | None  # export.json


def _source_key(ref: str, teacher: str | None) -> str:
    from distilltune.models.resolve import adapter_base_ref, is_student_spec, resolve_path

    parts = [ref]
    if is_student_spec(ref):
        parts.append(_source_key(teacher, None) if teacher else "")
        return "|".join(parts)
    kind, path = resolve_path(ref)
    if path is not None:
        root = path.resolve()
        parts.append(str(root))
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            st = f.stat()
            parts.append(f"{f.relative_to(root) if f != root else f.name}:{st.st_size}:{st.st_mtime_ns}")
        if kind == "adapter":  # the base as loaded: its portable reference when the recorded path is gone
            parts.append(_source_key(adapter_base_ref(root), None))
    return "|".join(parts)


def cache_dir(ref: str, fmt: str, quant: str, teacher: str | None = None) -> Path:
    from distilltune import __version__
    from distilltune.models.bundled import distilltune_home

    key = hashlib.sha256(
        "\n".join([_source_key(ref, teacher), fmt, quant, __version__]).encode()
    ).hexdigest()[:16]
    name = Path(ref.rstrip("/")).name.replace(":", "_").replace("=", "") or "model"
    return distilltune_home() / "exports" / f"{name[:40]}-{fmt}-{quant}-{key}"


def _model_file(directory: Path, report: dict) -> Path:
    return directory if report["format"] == "onnx" else directory / report["model_file"]


def deployed_artifact(
    ref: str, backend: str, quant: str = "none", teacher: str | None = None, log=None
) -> Deployed:
    """``ref`` in ``backend``'s format with ``quant``: as given, from the cache, or exported now."""
    b = get_backend(backend)
    if b.export_format is None:
        raise UserError(f"--backend {backend} loads models directly; there is nothing to export")
    if quant not in b.quants:
        raise UserError(
            f"--quant {quant} does not apply to --backend {backend}; choose one of {', '.join(b.quants)}"
        )
    if b.name == "llama.cpp":
        from distilltune.inference.backends.llamacpp import require_llama_cpp

        require_llama_cpp()  # before minutes of exporting for a runtime that is not there
    given = find_artifact(b.name, ref)
    if given is not None:
        if quant != "none":
            raise UserError(
                f"{ref} is already a {b.export_format} export; --quant applies only when exporting "
                "(export the source model with --quant, or leave --quant out)"
            )
        return Deployed(given, False, None, None)
    out = cache_dir(ref, b.export_format, quant, teacher)
    report_file = out / "export.json"
    if report_file.is_file():
        report = json.loads(report_file.read_text())
        if log:
            log(f"using the cached {b.export_format} ({quant}) export of {ref}: {out}")
        return Deployed(_model_file(out, report), True, report.get("export_s"), report)
    from distilltune.export.config import ExportConfig
    from distilltune.export.run import export_model

    if log:
        log(f"exporting {ref} to {b.export_format} ({quant}) for --backend {backend} into {out}")
    report = export_model(
        ExportConfig(
            model=ref, output=str(out), format=b.export_format, quant=quant, teacher=teacher, check=0
        )
    )
    return Deployed(_model_file(out, report), True, report.get("export_s"), report)
