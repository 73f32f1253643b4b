"""``SOURCE@QUANT`` candidates in ``compare``: an export stage of the source (no training), evaluated
through the backend the format ships with, on every axis of the report.

The references are the export's own report (size of the written file, export time) and the source's
training time: the candidate's size is the exported file, its training cost the source's plus the
export.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from distilltune.compare.config import CompareConfig
from distilltune.compare.strategies import DEPLOY, split_deployed

HAVE_ORT = all(importlib.util.find_spec(m) for m in ("onnxruntime", "onnx", "onnxscript"))
HAVE_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None


def _cfg(task, teacher, out, strategies) -> CompareConfig:
    return CompareConfig.model_validate(
        {
            "task": str(task),
            "output": str(out),
            "teacher": str(teacher),
            "student": "teacher:n_layers=2",
            "strategies": strategies,
            "steps": {"student_ft": 2},
            "batch_size": 4,
            "max_new_tokens": 8,
            "efficiency_prompts": 2,
            "budgets": {"latency_p95_ms": 600000},
        }
    )


def test_deployed_names_become_candidates_of_their_source(tmp_path):
    cfg = _cfg(tmp_path, tmp_path, tmp_path / "o", ["teacher", "student-ft@int8"])
    table = cfg.table()
    s = table["student-ft@int8"]
    assert (s.kind, s.model, s.deploy, s.trained) == ("base", "student-ft", "int8", False)
    assert split_deployed("student-kd@q8_0") == ("student-kd", "q8_0") and split_deployed("teacher") is None
    from distilltune.compare.recipes import Refs, evaluate_config, export_config
    from distilltune.compare.strategies import training_order

    assert training_order(table, cfg.strategies) == ["student-ft"]  # the source is trained for it
    refs = Refs(cfg, table, tmp_path / "o" / "runs")
    xc = export_config(cfg, tmp_path / "o", "student-ft@int8", refs)
    assert (xc.model, xc.format, xc.quant) == (str(tmp_path / "o" / "runs" / "student-ft"), "onnx", "int8")
    ec = evaluate_config(cfg, tmp_path / "view", tmp_path / "o", "student-ft@int8", refs)
    assert (ec.backend, ec.quant, ec.artifact) == ("onnx", "int8", xc.output)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("teacher@q3", "unknown quantization 'q3'"),
        ("nobody@int8", "no strategy named 'nobody'"),
    ],
)
def test_bad_deployed_names_are_clear_errors(tmp_path, name, message):
    from distilltune.errors import UserError

    with pytest.raises((UserError, ValueError), match=message):
        _cfg(tmp_path, tmp_path, tmp_path / "o", ["teacher", name])


def test_a_missing_runtime_is_named_with_its_install_line(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llama_cpp" else real(n, *a))
    with pytest.raises(ValueError, match=r"distilltune\[gguf\].*make install-gguf"):
        _cfg(tmp_path, tmp_path, tmp_path / "o", ["teacher", "teacher@q8_0"])
    assert DEPLOY["int8"][0] == "onnx"


@pytest.mark.skipif(
    not HAVE_ORT, reason="int8 candidates run in ONNX Runtime: pip install 'distilltune[onnx]'"
)
def test_compare_evaluates_deployed_candidates_on_every_axis(tiny_task, tiny_teacher_dir, tmp_path):
    from distilltune.compare.run import run_compare
    from distilltune.compare.schema import validate_report

    out = tmp_path / "cmp"
    # student-ft is trained for its export but not evaluated itself (only what is asked for)
    names = ["student-ft@int8"] + (["teacher@q8_0"] if HAVE_LLAMA_CPP else [])
    logs: list[str] = []
    report = run_compare(_cfg(tiny_task, tiny_teacher_dir, out, names), log=logs.append)
    assert validate_report(report) == []
    by = {s["name"]: s for s in report["strategies"]}
    assert list(by) == names
    times = json.loads((out / "stage_times.json").read_text())
    assert (out / "runs" / "student-ft").is_dir() and not (out / "evals" / "student-ft").exists()
    for name in names:
        s = by[name]
        assert s["error"] is None, s["error"]
        assert s["kind"] == "deployed" and s["quality"]["n_items"] == 5
        exported = json.loads((out / "exports" / name / "export.json").read_text())
        ev = json.loads((out / "evals" / name / "eval.json").read_text())
        backend = DEPLOY[split_deployed(name)[1]][0]
        assert ev["efficiency"]["backend"] == backend and ev["efficiency"]["settings"]["runtime"] == backend
        assert s["efficiency"]["size_bytes"] == exported["size_bytes"]  # the exported file, not the source
        # int8 weights ~0.27x; q8_0 ~0.27x plus f32 norms, which weigh a lot in a tiny model
        assert exported["size_bytes"] < 0.45 * exported["fp32_safetensors_bytes"]
        assert s["efficiency"]["latency_p95_ms"] > 0 and s["efficiency"]["peak_rss_mb"] > 0
        source = split_deployed(name)[0]
        own = times[f"export {name}"]
        want = own + (times[f"train {source}"] if source != "teacher" else 0.0)
        assert s["training"]["total_wall_s"] == pytest.approx(want)
        assert f"--backend {backend}" in s["commands"]["serve"]
    md = (out / "report.md").read_text()
    assert "deployed" in md
    # the table shows the export's own time and, beside it, the total with the source's training
    assert "with its sources)" in md
    run_compare(_cfg(tiny_task, tiny_teacher_dir, out, names), log=logs.append)  # everything is skipped
    assert json.loads((out / "stage_times.json").read_text()) == times  # no stage ran again
