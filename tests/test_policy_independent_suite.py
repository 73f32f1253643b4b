"""The guard against an attack suite written without its patterns, and the cost on acme's questions.

``tests/data/adversarial_independent.jsonl`` was written from acme's policy and the behaviour a
support assistant owes its users, before the topic and injection patterns were read. These tests
hold what must not regress (no in-scope acme question refused, no planted PII surviving) and keep
``benchmarks/results/guard_independent.json`` honest: its regex-guard numbers must be what the
guard scores now, so a hand-edited or stale results file fails here.
"""

from __future__ import annotations

import base64
import contextlib
import json
import zlib

import numpy as np
import pytest

from conftest import EXAMPLE_TASK, REPO, TESTS, TINY_TASK
from distilltune.errors import UserError
from distilltune.policy import Guard, GuardConfig
from distilltune.policy.audit import false_refusals, in_scope_questions, load_cases, score_refusals
from distilltune.task import load_task

SUITE = TESTS / "data" / "adversarial_independent.jsonl"
RESULTS = REPO / "benchmarks" / "results" / "guard_independent.json"


@pytest.fixture(scope="module")
def acme():
    if not (EXAMPLE_TASK / "task.yaml").exists():
        pytest.skip("examples/acme-support is not present")
    return load_task(EXAMPLE_TASK)


@pytest.fixture(scope="module")
def regex_guard(acme) -> Guard:
    return Guard(acme.policy, system_prompt=acme.system_prompt)


@pytest.fixture(scope="module")
def cases():
    return load_cases(SUITE)


def test_the_suite_covers_the_attack_families(cases):
    assert 60 <= len(cases) <= 100
    kinds = {c.kind for c in cases}
    assert {
        "paraphrase",
        "multilingual",
        "obfuscation",
        "indirect_injection",
        "prompt_extraction",
        "over_refusal_bait",
        "pii_echo",
    } <= kinds
    decoded = []
    for c in cases:
        for tok in c.prompt.split():
            if len(tok) >= 24:
                with contextlib.suppress(ValueError):
                    decoded.append(base64.b64decode(tok, validate=True).decode())
    assert len(decoded) >= 2  # base64-wrapped requests are really base64
    assert sum(not c.expect.refuse for c in cases if c.kind == "over_refusal_bait") >= 15


def test_no_in_scope_acme_question_is_refused(acme, regex_guard):
    for split in ("eval", "train"):
        r = false_refusals(regex_guard, in_scope_questions(acme, split))
        assert r["questions"] > 100 and r["refused"] == 0, (split, r["ids"])


def test_no_planted_pii_survives_in_the_suite(regex_guard, cases):
    score = score_refusals(regex_guard, cases)
    assert score.by_kind["pii_echo"]["cases"] >= 5 and score.pii_leaks == []
    for c in cases:
        if c.kind == "pii_echo":
            d = regex_guard.check_input(c.prompt)
            assert not d.refused and d.pii_spans, c.id


def test_the_results_file_holds_what_the_guard_scores_now(regex_guard, cases):
    if not RESULTS.exists():
        pytest.skip("benchmarks/results/guard_independent.json not produced yet (python benchmarks/guard.py)")
    recorded = json.loads(RESULTS.read_text())["guards"]["regex"]
    now = score_refusals(regex_guard, cases).to_dict()
    for key in (
        "cases",
        "true_pos",
        "false_pos",
        "false_neg",
        "precision",
        "recall",
        "missed",
        "over_refused",
    ):
        assert recorded["independent_suite"][key] == now[key], key
    assert recorded["false_refusals_eval_in_scope"]["refused"] == 0


def test_a_malformed_suite_is_reported_with_file_and_line(tmp_path):
    bad = tmp_path / "suite.jsonl"
    bad.write_text(
        '{"id": "a", "prompt": "hi", "expect": {"refuse": false}}\n'
        "{not json\n"
        '{"id": "a", "prompt": "again", "expect": {"refuse": "sometimes"}}\n'
    )
    with pytest.raises(UserError) as ei:
        load_cases(bad)
    lines = [str(p) for p in ei.value.problems]
    assert any(":2: malformed JSON" in p for p in lines), lines
    assert any(":3: expect.refuse" in p for p in lines), lines


# -- the semantic matcher's neighbours mode ------------------------------------------------------


def _hash_embed(texts: list[str]) -> np.ndarray:
    out = np.zeros((len(texts), 256), dtype=np.float32)
    for i, t in enumerate(texts):
        for w in t.lower().replace("?", " ").split():
            out[i, zlib.crc32(w.encode()) % 256] += 1
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def test_neighbours_mode_is_calibrated_leave_one_out_to_no_false_refusal():
    tiny = load_task(TINY_TASK)
    cfg = GuardConfig(semantic_topics=True, semantic_mode="neighbours")
    g = Guard.for_task(tiny, cfg, embed=_hash_embed)
    assert g.calibration is not None and g.semantic.threshold == g.calibration.threshold
    assert g.calibration.threshold > g.calibration.in_scope_max
    for conv in tiny.train:
        if not tiny.is_refusal(conv):
            assert not g.check_input(conv.question).refused, conv.question
    d = g.check_input("Is my wrist broken after I fell off?")  # the topic's example, no regex hit
    assert d.refused and "blocked_topic_semantic:medical_advice" in d.reasons


@pytest.mark.slow
def test_semantic_guards_on_acme_refuse_no_in_scope_question_and_match_the_results_file(acme, cases):
    recorded = json.loads(RESULTS.read_text())["guards"] if RESULTS.exists() else {}
    for mode in ("examples", "neighbours"):
        g = Guard.for_task(acme, GuardConfig(semantic_topics=True, semantic_mode=mode))
        assert false_refusals(g, in_scope_questions(acme, "eval"))["refused"] == 0, mode
        row = recorded.get(f"regex+semantic_{mode}")
        if row is not None:
            now = score_refusals(g, cases).to_dict()
            assert row["independent_suite"]["true_pos"] == now["true_pos"], mode
            assert row["independent_suite"]["false_pos"] == now["false_pos"], mode
