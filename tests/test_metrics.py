"""Answer-level metrics: fact recall, refusal detection, token F1, ROUGE-L, teacher agreement."""

from __future__ import annotations

import pytest

from distilltune.evaluation.metrics import (
    fact_recall,
    is_refusal,
    lcs_length,
    refusal_correct,
    rouge_l,
    teacher_agreement,
    token_f1,
    tokens,
)

REFUSAL = "Sorry, I can't help with that. I can answer questions about Zed Bikes."


def test_fact_recall_is_case_and_space_insensitive():
    assert fact_recall("A city bike costs  $12 per DAY.", ["$12", "per day"]) == 1.0
    assert fact_recall("It costs $12.", ["$12", "3 days"]) == 0.5
    assert fact_recall("anything", []) is None


def test_is_refusal_matches_message_or_its_first_sentence():
    assert is_refusal(REFUSAL, REFUSAL)
    assert is_refusal("sorry, I can't help with that.", REFUSAL)
    assert not is_refusal("A flat tyre repair costs $8.", REFUSAL)
    assert not is_refusal("anything", "")


def test_tokens_keep_numbers_whole():
    assert tokens("It costs $1,250.50 or 99.9%, see E1042.") == [
        "it",
        "costs",
        "1,250.50",
        "or",
        "99.9",
        "see",
        "e1042",
    ]


def test_token_f1_known_values():
    assert token_f1("the shop closes at 6 pm", "The shop closes at 6 pm.") == 1.0
    # answer 4 tokens, reference 6, overlap 3: P=3/4, R=3/6 → F1 = 0.6
    assert token_f1("shop closes at 7", "the shop closes at 6 pm") == pytest.approx(0.6)
    assert token_f1("nothing shared", "completely different") == 0.0
    assert token_f1("", "") == 1.0
    assert token_f1("", "something") == 0.0


def test_token_f1_counts_repeats_once_per_occurrence():
    # "a a a" vs "a b": overlap min(3,1)=1 → P=1/3, R=1/2 → F1=0.4
    assert token_f1("a a a", "a b") == pytest.approx(0.4)


def test_lcs_and_rouge_l_respect_order():
    assert lcs_length(list("abcde"), list("ace")) == 3
    assert lcs_length([], ["x"]) == 0
    # Same bag of words, reversed order: F1 is 1 but ROUGE-L is not.
    a, r = "deposit refunded within three days", "days three within refunded deposit"
    assert token_f1(a, r) == 1.0
    assert rouge_l(a, r) == pytest.approx(0.2)
    # LCS = "shop closes at" (3); P=3/4, R=3/6 → 0.6
    assert rouge_l("shop closes at 7", "the shop closes at 6 pm") == pytest.approx(0.6)
    assert rouge_l("The shop closes at 6 pm.", "the shop closes at 6 pm") == 1.0


def test_refusal_correct_and_teacher_agreement():
    assert refusal_correct(True, True) and refusal_correct(False, False)
    assert not refusal_correct(True, False) and not refusal_correct(False, True)
    assert teacher_agreement(REFUSAL, REFUSAL) == 1.0
    assert teacher_agreement("A flat tyre repair costs $8.", REFUSAL) < 0.2
