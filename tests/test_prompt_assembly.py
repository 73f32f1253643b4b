"""GroundedPrompter: layout of the grounded system turn, retrieval query, and the token budget."""

from __future__ import annotations

import pytest

from distilltune.data.chat import IGNORE_INDEX, encode_chat, with_system
from distilltune.retrieval import GroundedPrompter, Hit, format_context
from distilltune.task.schema import Message

SYSTEM = "You are the Zed Bikes help desk."


def hit(i: int, words: int = 10, heading: str = "Prices") -> Hit:
    text = " ".join(f"fact{i}-{j}" for j in range(words))
    return Hit(file=f"doc{i}.md", heading=heading, text=text, score=1.0 / i, chunk_id=f"doc{i}.md#0")


class FixedIndex:
    """An index double returning preset hits and recording the queries it was asked."""

    def __init__(self, hits: list[Hit]):
        self.hits = hits
        self.queries: list[tuple[str, int, str]] = []

    def search(self, query: str, k: int = 5, mode: str = "hybrid") -> list[Hit]:
        self.queries.append((query, k, mode))
        return self.hits[:k]


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def test_system_turn_holds_the_prompt_and_numbered_context(tokenizer):
    hits = [hit(1), hit(2, heading="")]
    p = GroundedPrompter(SYSTEM, tokenizer, index=FixedIndex(hits), k=2, max_context_tokens=1000)
    msgs, used = p.messages([user("How much is a rental?")])
    assert used == hits
    assert msgs[0]["role"] == "system"
    assert msgs[0]["content"] == (
        f"{SYSTEM}\n\nContext:\n[1] (doc1.md — Prices) {hits[0].text}\n[2] (doc2.md) {hits[1].text}"
    )
    assert msgs[1:] == [user("How much is a rental?")]


def test_without_an_index_it_is_with_system(tokenizer):
    conv = [user("Hi"), assistant("Hello"), user("Rates?")]
    msgs, used = GroundedPrompter(SYSTEM, tokenizer, index=None).messages(conv)
    assert msgs == with_system(SYSTEM, conv) and used == []


def test_empty_retrieval_gives_no_context_block(tokenizer):
    msgs, used = GroundedPrompter(SYSTEM, tokenizer, index=FixedIndex([])).messages([user("Rates?")])
    assert msgs[0] == {"role": "system", "content": SYSTEM} and used == []
    assert "Context:" not in msgs[0]["content"]


def test_budget_drops_whole_chunks_from_the_lowest_rank(tokenizer):
    hits = [hit(1), hit(2), hit(3)]
    p = GroundedPrompter(SYSTEM, tokenizer, index=FixedIndex(hits), k=3, max_context_tokens=0)
    two = p.count_tokens(format_context(hits[:2]))
    for budget, expected in ((two, 2), (two - 1, 1), (10_000, 3)):
        p.max_context_tokens = budget
        msgs, used = p.messages([user("q")])
        assert used == hits[:expected]
        block = msgs[0]["content"].split("\n\n", 1)[1]
        assert p.count_tokens(block) <= budget
        for h in hits[:expected]:
            assert h.text in block  # kept chunks are whole
        for h in hits[expected:]:
            assert h.text.split()[0] not in block  # dropped chunks leave nothing behind


def test_context_larger_than_the_budget_leaves_no_context(tokenizer):
    big = [hit(1, words=400), hit(2)]
    p = GroundedPrompter(SYSTEM, tokenizer, index=FixedIndex(big), k=2, max_context_tokens=50)
    msgs, used = p.messages([user("q")])
    # The top chunk does not fit and lower ranks never jump ahead of it.
    assert used == [] and msgs[0]["content"] == SYSTEM


def n_prompt_tokens(tokenizer, msgs: list[dict]) -> int:
    out = tokenizer.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True, return_dict=True)
    return len(out["input_ids"])


def test_total_prompt_budget_drops_context_before_conversation(tokenizer):
    hits = [hit(1, 40), hit(2, 40), hit(3, 40)]
    conv = [user("first " * 30), assistant("ok"), user("second question?")]
    p = GroundedPrompter(SYSTEM, tokenizer, index=FixedIndex(hits), k=3, max_context_tokens=10_000)
    full, _ = p.messages(conv)
    bare = with_system(SYSTEM, conv)
    bare_len, full_len = n_prompt_tokens(tokenizer, bare), n_prompt_tokens(tokenizer, full)
    p.max_prompt_tokens = (bare_len + full_len) // 2
    msgs, used = p.messages(conv)
    assert 0 < len(used) < 3 and used == hits[: len(used)]
    assert msgs[1:] == conv  # the conversation is untouched
    assert n_prompt_tokens(tokenizer, msgs) <= p.max_prompt_tokens
    p.max_prompt_tokens = bare_len - 5  # not even the bare conversation fits: all context goes, turns stay
    msgs, used = p.messages(conv)
    assert used == [] and msgs == bare


def test_training_conversation_keeps_assistant_turns_and_retrieves_on_the_last_user_turn(tokenizer):
    index = FixedIndex([hit(1)])
    p = GroundedPrompter(SYSTEM, tokenizer, index=index, k=1, max_context_tokens=500)
    conv = [
        user("Do you rent e-bikes to tourists without a booking?"),
        assistant("Yes."),
        user("What does a city bike cost per day in the summer season?"),
        assistant("$12 per day."),
    ]
    msgs, _ = p.messages(conv)
    assert index.queries == [("What does a city bike cost per day in the summer season?", 1, "hybrid")]
    assert msgs[1:] == conv and "[1] (doc1.md — Prices)" in msgs[0]["content"]
    ex = encode_chat(tokenizer, msgs, max_length=1024)
    labelled = tokenizer.decode(
        [t for t, lab in zip(ex.input_ids, ex.labels, strict=True) if lab != IGNORE_INDEX]
    )
    assert "$12 per day." in labelled and "fact1-0" not in labelled


def test_short_follow_up_adds_the_previous_user_turn(tokenizer):
    conv = [user("Do you rent e-bikes?"), assistant("Yes."), user("And the daily price?")]
    long_conv = [*conv[:2], user("What is the daily price of an e-bike rental in summer?")]
    for mode, conversation, expected in (
        ("short", conv, "Do you rent e-bikes?\nAnd the daily price?"),
        ("short", long_conv, long_conv[-1]["content"]),
        ("never", conv, "And the daily price?"),
        ("always", long_conv, "Do you rent e-bikes?\n" + long_conv[-1]["content"]),
    ):
        p = GroundedPrompter(SYSTEM, tokenizer, index=FixedIndex([]), previous_turn=mode)
        assert p.query(conversation) == expected


def test_own_system_turn_is_kept_and_gets_the_context(tokenizer):
    conv = [{"role": "system", "content": "Custom rules."}, user("Rates?")]
    p = GroundedPrompter(SYSTEM, tokenizer, index=FixedIndex([hit(1)]), k=1)
    msgs, _ = p.messages(conv)
    assert (
        msgs[0]["content"].startswith("Custom rules.\n\nContext:\n[1]") and SYSTEM not in msgs[0]["content"]
    )


def test_accepts_message_models_and_precomputed_hits(tokenizer):
    index = FixedIndex([hit(9)])
    p = GroundedPrompter(SYSTEM, tokenizer, index=index, k=1)
    msgs, used = p.messages([Message(role="user", content="Rates?")], hits=[hit(1)])
    assert index.queries == [] and used == [hit(1)] and msgs[1] == user("Rates?")


def test_bad_previous_turn_setting_is_rejected(tokenizer):
    with pytest.raises(ValueError, match="previous_turn"):
        GroundedPrompter(SYSTEM, tokenizer, previous_turn="sometimes")
