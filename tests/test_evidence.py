"""The "differences beyond the noise" table reads winner − loser whichever side of the pair won.

Pairwise entries hold strategy − reference; the full-preset reference run's first table printed
"teacher-lora better than teacher, Δ −0.24" because the sign was not turned when the reference won.
"""

from distilltune.compare.evidence import evidence_view


def _entry(strategy, reference, score, diff, ci, verdict, lower=False):
    return {
        "strategy": strategy, "reference": reference, "score": score, "diff": diff,
        "diff_ci95": ci, "verdict": verdict, "lower_is_better": lower, "mcnemar": None,
    }  # fmt: skip


def _rows(*entries):
    report = {"recommendation": {}, "pairwise": list(entries)}
    return {(r["winner"], r["loser"], r["score"]): r for r in evidence_view(report)["real"]}


def test_reference_winning_turns_the_sign():
    rows = _rows(
        _entry("teacher", "teacher-lora", "primary", -0.24, [-0.32, -0.17], "worse"),
        _entry("teacher-lora", "student-ft", "primary", 0.19, [0.11, 0.26], "better"),
    )
    won = rows[("teacher-lora", "teacher", "primary score")]
    assert won["diff"] == "0.24"
    assert won["ci"].replace("−", "-") == "0.17..0.32"
    kept = rows[("teacher-lora", "student-ft", "primary score")]
    assert kept["diff"] == "0.19" and kept["ci"] == "0.11..0.26"


def test_lower_is_better_reads_as_a_negative_difference():
    # teacher's NLL is 0.79 above teacher-lora's: teacher-lora wins, and winner − loser is −0.79
    rows = _rows(_entry("teacher", "teacher-lora", "answer_nll", 0.79, [0.74, 0.85], "better", lower=True))
    won = rows[("teacher-lora", "teacher", "answer NLL (lower is better)")]
    assert won["diff"] == "−0.79"
    lo, hi = won["ci"].replace("−", "-").split("..")
    assert float(lo) == -0.85 and float(hi) == -0.74
