"""Scoring pure functions: primary quality, aggregation, groundedness, citations, behaviour checks, timing."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from distilltune.evaluation import behaviour, grounding, quality
from distilltune.evaluation.efficiency import percentile, summarize_timings
from distilltune.task.schema import Expectation

REFUSAL = "Sorry, I can't help with that. I can answer questions about Zed Bikes."


def test_primary_score_definition():
    # fact item answered: its fact recall
    assert quality.primary_score(0.5, refused=False, expected_refusal=False) == 0.5
    # fact item refused: 0 whatever the recall
    assert quality.primary_score(1.0, refused=True, expected_refusal=False) == 0.0
    # refusal item: 1 iff refused
    assert quality.primary_score(None, refused=True, expected_refusal=True) == 1.0
    assert quality.primary_score(None, refused=False, expected_refusal=True) == 0.0
    # item with neither facts nor a refusal reference: 1 for answering
    assert quality.primary_score(None, refused=False, expected_refusal=False) == 1.0


def test_score_item_and_pass_threshold():
    s = quality.score_item(
        "It costs $12 per day.", "A city bike rental costs $12 per day.", ["$12", "city"], REFUSAL
    )
    assert s["fact_recall"] == 0.5 and s["primary"] == 0.5 and s["pass"] is True
    assert s["facts_found"] == ["$12"] and s["facts_missing"] == ["city"]
    assert not s["refused"] and not s["expected_refusal"] and s["refusal_correct"]
    assert 0 < s["token_f1"] < 1 and 0 < s["rouge_l"] < 1
    assert "teacher_agreement" not in s

    low = quality.score_item(
        "No idea.", "A city bike rental costs $12 per day.", ["$12", "city", "day"], REFUSAL
    )
    assert low["primary"] == 0.0 and low["pass"] is False

    r = quality.score_item(REFUSAL, REFUSAL, [], REFUSAL, teacher_answer=REFUSAL)
    assert r["expected_refusal"] and r["refused"] and r["primary"] == 1.0 and r["teacher_agreement"] == 1.0


def test_aggregate_quality():
    items = [
        quality.score_item("It costs $12.", "It costs $12.", ["$12"], REFUSAL),  # 1.0
        quality.score_item(REFUSAL, "It costs $8.", ["$8"], REFUSAL),  # over-refusal: 0
        quality.score_item(REFUSAL, REFUSAL, [], REFUSAL),  # correct refusal: 1
        quality.score_item("Sure, here you go.", REFUSAL, [], REFUSAL),  # missed refusal: 0
    ]
    agg = quality.aggregate(items)
    assert agg["primary"] == pytest.approx(0.5)
    assert agg["pass_rate"] == pytest.approx(0.5)
    assert agg["fact_recall"] == pytest.approx(0.5)  # only the two fact items
    assert agg["refusal_accuracy"] == pytest.approx(0.5)
    assert agg["refusal_recall"] == pytest.approx(0.5)
    assert agg["over_refusal_rate"] == pytest.approx(0.5)
    assert (agg["n_items"], agg["n_refusal_items"], agg["n_fact_items"]) == (4, 2, 2)
    assert "teacher_agreement" not in agg
    with pytest.raises(ValueError):
        quality.aggregate([])


@dataclass
class _Hit:  # the two fields of retrieval.Hit that grounding reads
    file: str
    text: str


KB = {
    "rentals.md": "City bikes cost $12 per day. A deposit of $50 is refunded within 3 days.",
    "repairs.md": "A flat tyre repair costs $8 and takes 20 minutes.",
}


def test_claims_and_whole_token_matching():
    assert grounding.claims("It costs $12 per day [1].", ["$12"]) == ["$12"]
    assert grounding.claims("Deposit $50, back in 3 days (rentals.md).", []) == ["$50", "3"]
    assert grounding.appears("$12", "costs $12 per day")
    assert not grounding.appears("25", "costs $250")
    assert not grounding.appears("12", "version 1.12")
    assert not grounding.appears("12", "12.5 GB")
    assert grounding.appears("12", "costs 12.")
    assert grounding.citations("See [1] and [2, 3]; also rentals.md.") == ([1, 2, 3], ["rentals.md"])


def test_ground_item_with_retrieval():
    hits = [_Hit("rentals.md", KB["rentals.md"])]
    g = grounding.ground_item(
        "A city bike costs $12 per day and $99 on weekends [1] [4] (rentals.md, repairs.md).",
        ["$12"],
        ["rentals.md"],
        hits,
        KB,
        refused=False,
        rag=True,
    )
    assert g["claims"] == 2  # $12 (a fact) and $99
    assert g["grounded"] == 0.5 and g["supported"] == 0.5
    assert g["citations"] == 4 and g["valid_citations"] == 2  # [1] and rentals.md
    assert g["retrieval_recall"] == 1.0


def test_ground_item_without_retrieval_and_refusals():
    g = grounding.ground_item(
        "A repair costs $8 (repairs.md).", ["$8"], ["repairs.md"], [], KB, False, rag=False
    )
    assert g["grounded"] is None and g["supported"] == 1.0
    assert g["valid_citations"] == 1 and g["retrieval_recall"] is None
    r = grounding.ground_item(REFUSAL, [], [], [], KB, refused=True, rag=True)
    assert r["claims"] == 0 and r["grounded"] is None and r["citations"] == 0
    agg = grounding.aggregate([g, r])
    assert agg["supported"] == 1.0 and agg["grounded"] is None
    assert agg["citation_validity"] == 1.0 and agg["answers_with_citations"] == 1


def test_check_case_reasons_never_quote_forbidden_strings():
    exp = Expectation(refuse=False, contains=["$30"], not_contains=["rider@example.com", "ZED-12345"])
    assert behaviour.check_case(exp, "An e-bike costs $30.", {"prompt": "my email is [EMAIL]"}, REFUSAL) == []
    reasons = behaviour.check_case(
        exp, "Hi rider@example.com!", {"prompt": [{"content": "id ZED-12345"}]}, REFUSAL
    )
    assert reasons == [
        "reply lacks '$30'",
        "reply contains forbidden string not_contains[0]",
        "saved log contains forbidden string not_contains[1]",
    ]
    assert not any("rider@" in r or "ZED-" in r for r in reasons)
    assert behaviour.check_case(Expectation(refuse=True), "Sure!", {}, REFUSAL) == [
        "expected a refusal, got an answer"
    ]
    assert behaviour.check_case(Expectation(refuse=False), REFUSAL, {}, REFUSAL) == [
        "refused, expected an answer"
    ]


def test_summarize_suite():
    s = behaviour.summarize(
        [{"id": "a", "kind": "injection", "pass": True}, {"id": "b", "kind": None, "pass": False}]
    )
    assert s["n"] == 2 and s["passed"] == 1 and s["pass_rate"] == 0.5
    assert s["by_kind"]["injection"]["pass_rate"] == 1.0 and s["by_kind"]["unspecified"]["passed"] == 0


@dataclass
class _Ans:
    prompt_tokens: int
    new_tokens: int
    prefill_s: float
    decode_s: float
    finished: bool = True


def test_percentile_matches_linear_interpolation():
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([10], 95) == 10
    assert percentile([0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100], 95) == pytest.approx(95)
    with pytest.raises(ValueError):
        percentile([], 50)


def test_summarize_timings_pools_prefill_and_decode():
    answers = [_Ans(100, 11, 0.1, 0.5), _Ans(300, 1, 0.2, 0.0, finished=False)]
    t = summarize_timings(answers, [0.7, 0.3])
    assert t["prefill_tok_s"] == pytest.approx(400 / 0.3)
    assert t["decode_tok_s"] == pytest.approx(10 / 0.5)  # the 1-token answer has no decode phase
    assert t["latency_ms"]["p50"] == pytest.approx(500)
    assert t["finished_share"] == 0.5 and t["generated_requests"] == 2


def test_peak_rss_of_a_fresh_process_is_its_own():
    """ru_maxrss would report the parent's peak after fork/vfork + exec; the probe must not."""
    import subprocess
    import sys

    big = bytearray(300 * 1024 * 1024)
    for i in range(0, len(big), 4096):  # touch every page so it is resident
        big[i] = 1
    code = "from distilltune.evaluation.efficiency import peak_rss_mb; print(peak_rss_mb())"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert 1 < float(r.stdout) < 150
    del big
