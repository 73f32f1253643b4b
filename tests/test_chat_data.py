"""Chat encoding: labels only on assistant tokens, multi-turn, system turn, truncation, packing."""

from __future__ import annotations

import torch

from distilltune.data.chat import (
    IGNORE_INDEX,
    collate,
    collate_packed,
    encode_chat,
    epoch_order,
    pack,
    with_system,
)


def _labelled_text(tok, ex):
    return tok.decode([t for t, lab in zip(ex.input_ids, ex.labels, strict=True) if lab != IGNORE_INDEX])


def test_only_assistant_tokens_are_labelled(tokenizer):
    msgs = with_system(
        "SYS PROMPT",
        [{"role": "user", "content": "Question one?"}, {"role": "assistant", "content": "Answer one."}],
    )
    ex = encode_chat(tokenizer, msgs, max_length=256)
    assert _labelled_text(tokenizer, ex) == "Answer one.<|im_end|>"
    assert ex.labels[0] == IGNORE_INDEX and not ex.truncated
    assert "SYS PROMPT" in tokenizer.decode(ex.input_ids)


def test_multi_turn_labels_every_assistant_turn(tokenizer):
    msgs = with_system(
        "S",
        [
            {"role": "user", "content": "u1"},
            {"role": "assistant", "content": "first reply"},
            {"role": "user", "content": "u2"},
            {"role": "assistant", "content": "second reply"},
        ],
    )
    ex = encode_chat(tokenizer, msgs, max_length=256)
    assert _labelled_text(tokenizer, ex) == "first reply<|im_end|>second reply<|im_end|>"
    last_only = encode_chat(tokenizer, msgs, max_length=256, label_all_assistant=False)
    assert _labelled_text(tokenizer, last_only) == "second reply<|im_end|>"


def test_conversation_system_turn_wins_over_task_prompt(tokenizer):
    msgs = with_system(
        "TASK",
        [
            {"role": "system", "content": "OWN"},
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": "a"},
        ],
    )
    assert msgs[0]["content"] == "OWN" and sum(m["role"] == "system" for m in msgs) == 1


def test_truncation_keeps_the_answer(tokenizer):
    long_user = "word " * 400
    msgs = with_system(
        "S",
        [
            {"role": "user", "content": "old"},
            {"role": "assistant", "content": "old reply"},
            {"role": "user", "content": long_user},
            {"role": "assistant", "content": "The answer is 42."},
        ],
    )
    ex = encode_chat(tokenizer, msgs, max_length=64)
    assert len(ex.input_ids) <= 64 and ex.truncated and not ex.answer_truncated
    assert _labelled_text(tokenizer, ex) == "The answer is 42.<|im_end|>"


def test_answer_longer_than_limit_is_flagged(tokenizer):
    msgs = with_system("S", [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x " * 200}])
    ex = encode_chat(tokenizer, msgs, max_length=32)
    assert len(ex.input_ids) == 32 and ex.answer_truncated


def test_epoch_order_is_deterministic():
    assert epoch_order(10, 3, 0) == epoch_order(10, 3, 0)
    assert epoch_order(10, 3, 0) != epoch_order(10, 3, 1)
    assert sorted(epoch_order(10, 3, 0)) == list(range(10))


def test_collate_pads_labels_with_ignore(tokenizer):
    a = encode_chat(
        tokenizer,
        with_system("S", [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]),
        64,
    )
    b = encode_chat(
        tokenizer,
        with_system(
            "S",
            [
                {"role": "user", "content": "longer question"},
                {"role": "assistant", "content": "longer answer here"},
            ],
        ),
        64,
    )
    batch = collate([a, b], pad_id=tokenizer.pad_token_id)
    assert batch["input_ids"].shape == batch["labels"].shape
    assert (batch["labels"][0, len(a.input_ids) :] == IGNORE_INDEX).all()
    assert batch["attention_mask"][0].sum() == len(a.input_ids)


def test_packing_gives_the_same_loss_as_padding(tokenizer, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    exs = [
        encode_chat(
            tokenizer,
            with_system(
                "S",
                [
                    {"role": "user", "content": f"question {i} " * (i + 1)},
                    {"role": "assistant", "content": f"answer {i}"},
                ],
            ),
            128,
        )
        for i in range(4)
    ]
    rows = pack(exs, max_length=128)
    assert len(rows) < len(exs)

    def loss_sum(batch):
        labels = batch.pop("labels")
        logits = model(**batch).logits[:, :-1].float()
        return torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)),
            labels[:, 1:].reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )

    with torch.no_grad():
        padded = loss_sum(collate(exs, tokenizer.pad_token_id))
        packed = loss_sum(collate_packed(rows, tokenizer.pad_token_id))
    torch.testing.assert_close(packed, padded, rtol=1e-4, atol=1e-3)
