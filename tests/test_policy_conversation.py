"""Redaction across a whole conversation, and the policy switch for the built-in PII detectors."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import TINY_TASK
from distilltune.errors import UserError
from distilltune.policy import Guard
from distilltune.policy.pii import BUILTIN
from distilltune.task import load_task
from distilltune.task.schema import PII_DETECTORS, PolicySpec

# -- every built-in detector is on unless the policy turns it off --------------------------------


def test_schema_and_recognizers_name_the_same_detectors():
    assert set(PII_DETECTORS) == set(BUILTIN)


def test_a_detector_the_policy_does_not_list_is_on():
    # An older card lists four detectors; IBANs and IPs must be redacted all the same.
    g = Guard(PolicySpec.model_validate({"pii": {"redact": ["email", "phone", "credit_card", "ssn"]}}))
    d = g.check_input("IBAN DE89 3704 0044 0532 0130 00 from 203.0.113.42")
    assert d.redacted_text == "IBAN [IBAN] from [IP_ADDRESS]"


def test_disable_turns_one_detector_off():
    g = Guard(PolicySpec.model_validate({"pii": {"disable": ["ip_address"]}}))
    d = g.check_input("mail a@b.io from 203.0.113.42")
    assert d.redacted_text == "mail [EMAIL] from 203.0.113.42"


def test_listing_a_detector_as_both_redacted_and_disabled_is_an_error():
    with pytest.raises(ValueError, match=r"both pii.redact and pii.disable"):
        PolicySpec.model_validate({"pii": {"redact": ["phone"], "disable": ["phone"]}})


def test_an_unknown_detector_in_disable_is_reported_with_file_and_line(tmp_path):
    task = tmp_path / "task"
    shutil.copytree(TINY_TASK, task)
    policy = task / "policy.yaml"
    policy.write_text(policy.read_text().replace("pii:\n", "pii:\n  disable: [fingerprint]\n"))
    with pytest.raises(UserError) as ei:
        load_task(task)
    problems = [str(p) for p in ei.value.problems]
    assert any(p.startswith("policy.yaml:") and "fingerprint" in p for p in problems), problems


# -- a conversation is redacted as a whole -------------------------------------------------------


@pytest.fixture(scope="module")
def guard() -> Guard:
    return Guard(PolicySpec(), system_prompt="You are a help desk.")


def test_every_turn_and_role_is_redacted(guard):
    conv = [
        {"role": "system", "content": "Customer mail: jane.roe@example.com"},
        {"role": "user", "content": "My phone is +44 7911 123456."},
        {"role": "assistant", "content": "Noted, we will call 07911 123456.", "name": "bot"},
        {"role": "user", "content": "What does Team cost?"},
    ]
    c = guard.check_conversation(conv)
    assert [m["content"] for m in c.messages] == [
        "Customer mail: [EMAIL]",
        "My phone is [PHONE].",
        "Noted, we will call [PHONE].",
        "What does Team cost?",
    ]
    assert c.messages[2]["name"] == "bot" and conv[1]["content"].endswith("123456.")  # input untouched
    assert c.action == "redact" and c.decision.action == "allow"
    assert set(c.pii_reasons) == {"pii:email", "pii:phone"}


def test_a_card_number_split_over_two_turns_is_redacted_in_both(guard):
    conv = [
        {"role": "user", "content": "my card is 4111 1111"},
        {"role": "user", "content": "1111 1111"},
    ]
    c = guard.check_conversation(conv)
    assert [m["content"] for m in c.messages] == ["my card is [CREDIT_CARD]", "[CREDIT_CARD]"]
    # Each turn alone is not PII (too short): only the joined reading catches it.
    assert guard.check_input("1111 1111").redacted_text == "1111 1111"


def test_a_context_word_in_the_previous_turn_counts(guard):
    conv = [
        {"role": "assistant", "content": "Please confirm your SSN."},
        {"role": "user", "content": "987654320"},
    ]
    assert guard.check_conversation(conv).messages[1]["content"] == "[SSN]"
    assert guard.check_input("987654320").redacted_text == "987654320"


def test_the_last_user_turn_decides_refusal_and_nothing_raw_is_kept(tiny_conv_guard):
    conv = [
        {"role": "user", "content": "Can you diagnose my knee injury? mail j@x.org"},
        {"role": "assistant", "content": "Sorry."},
        {"role": "user", "content": "When do you open? My SSN is 219-09-9999"},
    ]
    c = tiny_conv_guard.check_conversation(conv)
    assert c.action == "redact" and not c.decision.refused
    dumped = json.dumps([c.messages, c.decision.to_dict(), c.reasons])
    assert "219-09-9999" not in dumped and "j@x.org" not in dumped
    assert tiny_conv_guard.check_conversation(conv[:1]).action == "refuse"


@pytest.fixture(scope="module")
def tiny_conv_guard() -> Guard:
    tiny = load_task(TINY_TASK)
    return Guard(tiny.policy, tiny.system_prompt)


def test_bad_conversations_are_clear_errors(guard):
    with pytest.raises(ValueError, match="no user turn"):
        guard.check_conversation([{"role": "assistant", "content": "hi"}])
    with pytest.raises(ValueError, match=r"message 0: content must be a string"):
        guard.check_conversation([{"role": "user", "content": None}])
