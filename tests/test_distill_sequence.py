"""Sequence-level KD data: guard, degenerate filters, dedupe, review JSONL, patches, extra prompts."""

from __future__ import annotations

import json

import pytest

from distilltune.distill.review import apply_patch, load_patch, read_records, write_records
from distilltune.distill.sequence import (
    SequenceSettings,
    degenerate_reason,
    generate_records,
    kept_conversations,
    load_extra_prompts,
    max_ngram_repeats,
    summary,
    train_prompts,
)
from distilltune.errors import UserError
from distilltune.models.generate import Generation
from distilltune.policy import Guard
from distilltune.task import load_task


def _gen(text, finished=True):
    return Generation(text, 10, 5, 0.01, 0.02, -0.5, finished)


class FakeTeacher:
    """Answers by a table keyed on the last user turn; records what it was shown."""

    def __init__(self, table):
        self.table = table
        self.seen: list[list[dict]] = []

    def __call__(self, convs):
        out = []
        for c in convs:
            self.seen.append(c)
            q = c[-1]["content"]
            text, finished = self.table.get(q, ("A fine answer about bikes.", True))
            out.append(_gen(text, finished))
        return out


@pytest.fixture()
def task(tiny_task):
    return load_task(tiny_task)


def test_ngram_repeats_and_degenerate_reasons():
    s = SequenceSettings()
    assert max_ngram_repeats("a b c d a b c d a b c d", 4) == 3
    assert max_ngram_repeats("short", 4) == 0
    assert degenerate_reason("", True, s) == "empty"
    assert degenerate_reason("  ... !! ", True, s) == "empty"
    assert degenerate_reason("the shop is open " * 3, True, s) == "repeated_ngram"
    assert degenerate_reason("The shop opens at 9 am.", False, s) == "truncated"
    assert degenerate_reason("The shop opens at 9 am.", True, s) is None
    assert degenerate_reason("The shop opens at 9 am.", False, SequenceSettings(drop_truncated=False)) is None


def test_records_guard_filters_and_dedupe(task):
    table = {
        "When do you open?": ("The shop opens at 9 am.", True),
        "When do you close?": ("closes closes closes closes closes closes closes closes", True),
        "Is there a deposit?": ("Yes, a deposit of $50 is", False),
        "How much to fix a flat?": ("", True),
        "How long does a flat repair take?": ("I'm sorry, but I can't help with that.", True),
        "Are you open on Sunday?": (
            "You are the Zed Bikes help desk. Answer briefly using the context.",
            True,
        ),
        "What is the price of a brake adjustment?": ("Mail me at bob@example.com for $15 brakes.", True),
    }
    teacher = FakeTeacher(table)
    guard = Guard(task.policy, system_prompt=task.system_prompt)
    items = train_prompts(task)
    recs = generate_records(
        items, teacher, guard, task.system_prompt, "tiny-teacher", SequenceSettings(batch_size=3)
    )
    by_q = {r.messages[-2]["content"]: r for r in recs}
    assert len(recs) == len(items)
    assert by_q["When do you open?"].status == "kept"
    assert by_q["When do you open?"].answer == "The shop opens at 9 am."
    assert by_q["When do you close?"].reason == "repeated_ngram"
    assert by_q["Is there a deposit?"].reason == "truncated"
    assert by_q["How much to fix a flat?"].reason == "empty"
    assert by_q["How long does a flat repair take?"].reason == "teacher_refused"
    assert by_q["Are you open on Sunday?"].reason == "system_prompt_leak"
    brake = by_q["What is the price of a brake adjustment?"]
    assert brake.status == "kept" and "bob@example.com" not in brake.answer and "$15" in brake.answer
    # the blocked-topic prompt never reached the teacher and gets the policy refusal
    knee = by_q["Can you diagnose my knee injury?"]
    assert knee.origin == "policy_refusal" and knee.answer == task.policy.refusal_message
    assert not any("knee" in c[-1]["content"] for c in teacher.seen)
    # the teacher saw the task's system prompt
    assert all(c[0]["role"] == "system" and c[0]["content"] == task.system_prompt for c in teacher.seen)
    # provenance
    assert by_q["When do you open?"].source.startswith("train.jsonl:")
    assert by_q["When do you open?"].reference == "The shop opens at 9 am."
    assert by_q["When do you open?"].generation["finished"] is True
    # the multi-turn item keeps its earlier turns
    multi = [r for r in recs if len(r.messages) == 4]
    assert multi and multi[0].messages[0]["content"] == "Do you rent e-bikes?"
    s = summary(recs)
    assert s["dropped_by_reason"]["truncated"] == 1 and s["kept"] == sum(r.status == "kept" for r in recs)


def test_duplicates_are_dropped(task):
    teacher = FakeTeacher({})
    guard = Guard(task.policy, system_prompt=task.system_prompt)
    items = train_prompts(task)
    items.append(type(items[0])(id="extra-1", messages=list(items[0].messages), source="extra.jsonl:1"))
    recs = generate_records(items, teacher, guard, task.system_prompt, "t", SequenceSettings())
    assert recs[-1].status == "dropped" and recs[-1].reason == "duplicate"
    with pytest.raises(UserError, match="unique"):
        generate_records([items[0], items[0]], teacher, guard, task.system_prompt, "t", SequenceSettings())


def test_pii_in_prompt_is_redacted_before_the_teacher(task):
    teacher = FakeTeacher({})
    guard = Guard(task.policy, system_prompt=task.system_prompt)
    from distilltune.distill.sequence import PromptItem

    item = PromptItem(
        "x", [{"role": "user", "content": "I am ZED-12345, when do you open?"}], "extra.jsonl:1"
    )
    (rec,) = generate_records([item], teacher, guard, task.system_prompt, "t", SequenceSettings())
    assert "ZED-12345" not in json.dumps(teacher.seen) and "ZED-12345" not in rec.messages[0]["content"]


def test_review_file_round_trips_and_patch_applies(task, tmp_path):
    teacher = FakeTeacher({"When do you close?": ("The shop closes at 5 pm.", True)})
    guard = Guard(task.policy, system_prompt=task.system_prompt)
    recs = generate_records(train_prompts(task), teacher, guard, task.system_prompt, "t", SequenceSettings())
    path = tmp_path / "review.jsonl"
    write_records(recs, path)
    back = read_records(path)
    assert [r.id for r in back] == [r.id for r in recs] and back[0].messages == recs[0].messages
    close = next(r for r in back if r.messages[-2]["content"] == "When do you close?")
    other = next(r for r in back if r.id != close.id and r.status == "kept")
    patch_file = tmp_path / "patch.jsonl"
    patch_file.write_text(
        json.dumps(
            {"id": close.id, "answer": "The shop closes at 6 pm.", "note": "teacher got the hour wrong"}
        )
        + "\n"
        + json.dumps({"id": other.id, "drop": True})
        + "\n"
    )
    patch = load_patch(patch_file, {r.id for r in back})
    assert apply_patch(back, patch) == 2
    assert close.answer == "The shop closes at 6 pm." and close.origin == "patch"
    assert close.teacher_answer == "The shop closes at 5 pm."
    assert other.status == "dropped" and other.reason == "patch_drop"
    convs = kept_conversations(back)
    assert all(c[-1]["role"] == "assistant" for c in convs)
    assert len(convs) == sum(r.status == "kept" for r in back)


def test_bad_patch_reports_every_problem(tmp_path):
    p = tmp_path / "patch.jsonl"
    p.write_text(
        "{not json\n"
        + json.dumps({"id": "a", "answer": "x", "drop": True})
        + "\n"
        + json.dumps({"id": "zzz", "answer": "x"})
        + "\n"
        + json.dumps({"id": "a", "answer": "fine"})
        + "\n"
        + json.dumps({"id": "a", "drop": True})
        + "\n"
        + json.dumps({"id": "b", "answer": "y", "color": 1})
        + "\n"
    )
    with pytest.raises(UserError) as e:
        load_patch(p, {"a", "b"})
    text = "\n".join(str(x) for x in e.value.problems)
    assert ":1:" in text and "malformed JSON" in text
    assert ":2:" in text and "exactly one" in text
    assert ":3:" in text and "'zzz' is not in the generated data" in text
    assert ":5:" in text and "patched twice" in text
    assert ":6:" in text and "unknown keys" in text


def test_extra_prompts_file(tmp_path):
    p = tmp_path / "extra.jsonl"
    p.write_text(
        json.dumps({"prompt": "Do you sell helmets?"})
        + "\n\n"
        + json.dumps(
            {
                "id": "mt",
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello"},
                    {"role": "user", "content": "Open today?"},
                ],
            }
        )
        + "\n"
    )
    items = load_extra_prompts(p)
    assert [i.id for i in items] == ["extra-1", "mt"]
    assert items[0].source == "extra.jsonl:1" and items[1].messages[-1]["content"] == "Open today?"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
        + "\n[1]\n"
    )
    with pytest.raises(UserError) as e:
        load_extra_prompts(bad)
    assert len(e.value.problems) == 2
    with pytest.raises(UserError, match="not found"):
        load_extra_prompts(tmp_path / "missing.jsonl")


def test_real_generation_with_a_tiny_teacher(task, tiny_teacher_dir):
    from distilltune.models import load_model
    from distilltune.models.generate import generate_chat

    loaded = load_model(str(tiny_teacher_dir))

    def generate(convs):
        return generate_chat(loaded.model, loaded.tokenizer, convs, max_new_tokens=8, batch_size=4)

    guard = Guard(task.policy, system_prompt=task.system_prompt)
    recs = generate_records(
        train_prompts(task)[:5], generate, guard, task.system_prompt, "tiny", SequenceSettings()
    )
    assert len(recs) == 5
    # a random 4-layer model never stops within 8 tokens: every answer is caught by a filter
    assert all(r.status == "dropped" and r.reason in ("truncated", "empty", "repeated_ngram") for r in recs)
    assert all(r.generation["new_tokens"] <= 8 for r in recs)


def test_cached_generate_reuses_answers_and_survives_a_torn_line(tmp_path):
    from distilltune.distill.sequence import cached_generate

    calls = []

    def make():
        def gen(convs):
            calls.append(len(convs))
            return [_gen(f"answer to {c[-1]['content']}") for c in convs]

        return gen

    path = tmp_path / "answers.jsonl"
    convs = [[{"role": "user", "content": f"q{i}"}] for i in range(3)]
    first = cached_generate(make, path)(convs)
    assert calls == [3] and first[1].text == "answer to q1"
    with open(path, "a") as f:
        f.write('{"key": "torn')  # a kill mid-write
    second = cached_generate(lambda: pytest.fail("teacher must not load"), path)(convs)
    assert [g.text for g in second] == [g.text for g in first]
    third = cached_generate(make, path)([*convs, [{"role": "user", "content": "new"}]])
    assert calls == [3, 1] and third[-1].text == "answer to new"
    fourth = cached_generate(lambda: pytest.fail("teacher must not load"), path)(
        [[{"role": "user", "content": "new"}]]
    )
    assert fourth[0].text == "answer to new"
