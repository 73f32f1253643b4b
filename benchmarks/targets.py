"""Issue targets read off a committed comparison report: no model runs, only arithmetic on measured numbers.

The full-preset target (issue 12): a student at ≥ 3× the teacher's decode speed keeps ≥ 80 % of the
fine-tuned teacher's primary quality. Every student's ratios are listed whether or not one meets it,
with what limits it (model-answered quality, fact recall, answer NLL next to the fine-tuned teacher's),
because a reader who sees "not met" wants to know which side of the trade-off fell short.

    python benchmarks/targets.py                               # results/full/report.json → results/full_targets.json
    python benchmarks/targets.py --report DIR/report.json --name demo_targets

The source report's git commit is carried over from its results file (``<name>.json`` next to the report
directory) when there is one, so the numbers trace back to the run that measured them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_result

SPEED_TARGET = 3.0
QUALITY_TARGET = 0.8


def _by_name(report: dict) -> dict[str, dict]:
    return {s["name"]: s for s in report["strategies"] if not s.get("error")}


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


def student_targets(report: dict, teacher: str = "teacher", tuned: str = "teacher-lora") -> dict:
    """Speed and quality of every student relative to the base and the fine-tuned teacher."""
    s = _by_name(report)
    if teacher not in s or tuned not in s:
        raise SystemExit(f"the report needs both {teacher!r} and {tuned!r} (it has {sorted(s)})")
    base_speed = s[teacher]["efficiency"]["decode_tok_s"]
    ref_q = s[tuned]["quality"]
    rows = []
    for name, st in s.items():
        if st.get("kind") != "student" and not name.startswith("student"):
            continue
        q, e = st["quality"], st["efficiency"]
        speed = _ratio(e.get("decode_tok_s"), base_speed)
        kept = _ratio(q.get("primary"), ref_q.get("primary"))
        rows.append(
            {
                "strategy": name,
                "decode_speed_vs_teacher": speed,
                "primary": q.get("primary"),
                "primary_kept_vs_tuned_teacher": kept,
                "model_primary": q.get("model_primary"),
                "model_primary_kept": _ratio(q.get("model_primary"), ref_q.get("model_primary")),
                "fact_recall": q.get("fact_recall"),
                "fact_recall_graded": q.get("fact_recall_graded"),
                "answer_nll": q.get("answer_nll"),
                "meets": bool(speed and kept and speed >= SPEED_TARGET and kept >= QUALITY_TARGET),
            }
        )
    return {
        "target": f"a student at >= {SPEED_TARGET}x the teacher's decode speed keeps >= "
        f"{QUALITY_TARGET:.0%} of the fine-tuned teacher's primary quality",
        "teacher_decode_tok_s": base_speed,
        "tuned_teacher": {
            k: ref_q.get(k)
            for k in ("primary", "model_primary", "fact_recall", "fact_recall_graded", "answer_nll")
        },
        "students": rows,
        "met_by": [r["strategy"] for r in rows if r["meets"]],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", type=Path, default=RESULTS / "full" / "report.json")
    ap.add_argument("--name", default="full_targets", help="results/<name>.json")
    a = ap.parse_args()
    if not a.report.is_file():
        raise SystemExit(f"{a.report}: no such report (run benchmarks/demo.py --preset full first)")
    res = student_targets(json.loads(a.report.read_text()))
    source = a.report.parent.with_suffix(".json")
    if source.is_file():
        res["source_run"] = {"file": source.name, "git": json.loads(source.read_text())["environment"]["git"]}
    print(json.dumps(res, indent=2))
    print(f"[bench] wrote {write_result(a.name, res)}")


if __name__ == "__main__":
    main()
