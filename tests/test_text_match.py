"""Graded fact matching: units, numbers, number words, order — and the strict match it stands beside."""

import pytest

from distilltune.evaluation.quality import aggregate, score_item
from distilltune.text import canonical_tokens, fact_hits, fact_match_graded, graded_fact_recall


@pytest.mark.parametrize(
    ("answer", "fact", "expected"),
    [
        # units written differently
        ("You get 1TB of storage.", "1 TB", 1.0),
        ("You get one terabyte of storage.", "1 TB", 1.0),
        ("It costs 25 dollars.", "$25", 1.0),
        ("It costs USD 25.", "$25", 1.0),
        ("Uptime is 99.9 percent.", "99.9%", 1.0),
        ("It takes 48hrs.", "48 hours", 1.0),
        # numbers written differently
        ("Refunds take twenty-one days.", "21 days", 1.0),
        ("Up to 10,000 requests per minute.", "10000 requests per minute", 1.0),
        ("Up to 10k requests per minute.", "10,000 requests per minute", 1.0),
        ("Refunds take ２１ days.", "21 days", 1.0),  # full-width digits
        # order of the fact's words does not matter
        ("Per month, it is $25.", "$25 per month", 1.0),
        # partial credit: three of four tokens
        ("It costs $25.", "$25 per month", 0.5),
        ("25 dollars a month", "$25 per month", 0.75),
        # a wrong number earns nothing, even when the unit matches
        ("The Team plan has 10 days.", "21 days", 0.0),
        ("5 GB", "1 TB", 0.0),
        # one of two numbers right: half the token share
        ("Between 9 and 6.", "9 to 5", pytest.approx(1 / 3 * 1 / 2)),
    ],
)
def test_graded_match(answer, fact, expected):
    assert fact_match_graded(answer, fact) == expected


def test_graded_is_never_below_strict_and_strict_is_unchanged():
    cases = [("It costs $25 per month.", "$25 per month"), ("Refunds take 21 days.", "21 days")]
    for answer, fact in cases:
        assert fact_hits(answer, [fact]) == [True]
        assert fact_match_graded(answer, fact) == 1.0
    # strict stays strict: "1TB" does not contain "1 tb"
    assert fact_hits("You get 1TB.", ["1 TB"]) == [False]


def test_canonical_tokens_and_empty_inputs():
    assert canonical_tokens("Refunds take 21 days") == ["refund", "take", "21", "day"]
    assert canonical_tokens("$1,500") == ["usd", "1500"]
    assert graded_fact_recall("anything", []) is None
    assert fact_match_graded("anything", "") == 1.0
    assert graded_fact_recall("21 days and 1 TB", ["21 days", "5 GB"]) == 0.5


def test_score_and_aggregate_carry_the_graded_recall_and_the_model_answered_view():
    refusal = "I'm sorry, but I can't help with that."
    a = score_item("It takes twenty-one days.", "Refunds take 21 days.", ["21 days"], refusal)
    assert a["fact_recall"] == 0.0 and a["fact_recall_graded"] == 1.0
    b = score_item(refusal, refusal, [], refusal)
    rows = [{**a, "id": "1", "route": "model", "answer_nll": 2.0}, {**b, "id": "2", "route": "refused_input"}]
    agg = aggregate(rows)
    assert agg["fact_recall_graded"] == 1.0
    assert agg["answer_nll"] == 2.0 and agg["n_nll_items"] == 1
    assert agg["guard_answered_share"] == 0.5
    assert agg["n_model_items"] == 1
    assert agg["model_primary"] == 0.0  # the model's only item scored 0 strictly
    assert agg["primary"] == 0.5  # the guard's refusal item lifts the documented score
