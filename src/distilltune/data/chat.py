"""Turn chat conversations into training tensors: template applied, loss only on assistant tokens.

Masking works for any chat template that renders prefixes consistently (ChatML, Llama 3, ...):
the assistant span of turn *i* is the tokens between ``template(messages[:i], generation prompt)``
and ``template(messages[:i+1])``, up to and including the end-of-turn token.

Truncation never silently drops the answer: when a conversation is too long, the oldest turns
after the system prompt go first, then the prompt is cut from the left; the final answer is kept
whole whenever it fits on its own. Every truncation is counted and reported.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

IGNORE_INDEX = -100


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False  # earlier turns or prompt tokens were dropped
    answer_truncated: bool = False  # the final answer itself had to be cut

    @property
    def n_loss_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


@dataclass
class EncodeStats:
    total: int = 0
    truncated: int = 0
    answer_truncated: int = 0
    loss_tokens: int = 0
    lengths: list[int] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"{self.total} examples, {self.loss_tokens} answer tokens, "
            f"{self.truncated} truncated (prompt/earlier turns), {self.answer_truncated} with the answer cut"
        )


def with_system(system_prompt: str | None, messages: Sequence[dict]) -> list[dict]:
    """Prepend the task's system prompt unless the conversation brings its own."""
    msgs = [dict(m) for m in messages]
    if system_prompt and (not msgs or msgs[0]["role"] != "system"):
        msgs.insert(0, {"role": "system", "content": system_prompt})
    return msgs


def _render_text(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def stop_token_ids(tokenizer) -> list[int]:
    """End-of-turn ids: the tokenizer's EOS plus the common chat end tokens it knows (memoized)."""
    cached = getattr(tokenizer, "_distilltune_stop_ids", None)
    if cached is not None:
        return cached
    ids = {tokenizer.eos_token_id}
    unk = tokenizer.unk_token_id
    for t in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(t)
        if isinstance(tid, int) and tid != unk:
            ids.add(tid)
    out = sorted(i for i in ids if i is not None)
    with contextlib.suppress(AttributeError):
        tokenizer._distilltune_stop_ids = out
    return out


def _end_ids(tokenizer) -> set[int]:

    return set(stop_token_ids(tokenizer))


def _encode_full(tokenizer, messages: list[dict], label_all: bool) -> tuple[list[int], list[int]]:
    # Render text (fast) and tokenize once with character offsets; tokenizing inside
    # apply_chat_template is ~500x slower per call, and masking needs one render per turn.
    text = _render_text(tokenizer, messages, generation_prompt=False)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    labels = [IGNORE_INDEX] * len(ids)
    ends = _end_ids(tokenizer)
    last_assistant = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or (not label_all and i != last_assistant):
            continue
        a = len(_render_text(tokenizer, messages[:i], generation_prompt=True))
        b = len(_render_text(tokenizer, messages[: i + 1], generation_prompt=False))
        # Label the content and the end-of-turn token, not the template's trailing newline.
        for j, (s, _) in enumerate(offsets):
            if a <= s < b:
                labels[j] = ids[j]
                if ids[j] in ends:
                    break
    return ids, labels


def encode_chat(
    tokenizer, messages: list[dict], max_length: int, label_all_assistant: bool = True
) -> Example:
    """Encode one conversation (system turn included, ending with an assistant turn)."""
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("a training conversation must end with an assistant turn")
    msgs = list(messages)
    truncated = False
    ids, labels = _encode_full(tokenizer, msgs, label_all_assistant)
    # 1) drop the oldest turns after the system prompt, a user/assistant pair at a time
    while len(ids) > max_length:
        first = 1 if msgs[0]["role"] == "system" else 0
        turns = msgs[first:]
        if len(turns) <= 2:
            break
        cut = 2 if turns[0]["role"] == "user" and turns[1]["role"] == "assistant" else 1
        msgs = msgs[:first] + turns[cut:]
        if msgs[first]["role"] == "assistant":  # never start with an orphan assistant turn
            msgs = msgs[:first] + msgs[first + 1 :]
        truncated = True
        ids, labels = _encode_full(tokenizer, msgs, label_all_assistant)
    answer_truncated = False
    if len(ids) > max_length:
        truncated = True
        first_label = next((i for i, x in enumerate(labels) if x != IGNORE_INDEX), len(ids))
        answer_len = len(ids) - first_label
        if answer_len < max_length:
            # 2) cut the prompt from the left, keeping the answer whole
            drop = len(ids) - max_length
            ids, labels = ids[drop:], labels[drop:]
        else:
            # 3) the answer alone does not fit: keep a little prompt and the start of the answer
            keep_prompt = min(first_label, max_length // 4)
            ids = ids[first_label - keep_prompt : first_label - keep_prompt + max_length]
            labels = labels[first_label - keep_prompt : first_label - keep_prompt + max_length]
            answer_truncated = True
    return Example(ids, labels, truncated, answer_truncated)


def encode_many(
    tokenizer, conversations: list[list[dict]], max_length: int
) -> tuple[list[Example], EncodeStats]:
    stats = EncodeStats()
    out = []
    for msgs in conversations:
        ex = encode_chat(tokenizer, msgs, max_length)
        stats.total += 1
        stats.truncated += ex.truncated
        stats.answer_truncated += ex.answer_truncated
        stats.loss_tokens += ex.n_loss_tokens
        stats.lengths.append(len(ex.input_ids))
        out.append(ex)
    return out, stats


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The example order for one epoch: a permutation determined by (seed, epoch) alone."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def pack(examples: list[Example], max_length: int) -> list[list[Example]]:
    """Greedy first-fit packing of whole examples into rows of at most ``max_length`` tokens."""
    rows: list[list[Example]] = []
    room: list[int] = []
    for ex in sorted(examples, key=lambda e: -len(e.input_ids)):
        n = len(ex.input_ids)
        for i, r in enumerate(room):
            if n <= r:
                rows[i].append(ex)
                room[i] -= n
                break
        else:
            rows.append([ex])
            room.append(max_length - n)
    return rows


def collate(batch: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: input_ids, attention_mask, labels (IGNORE_INDEX on padding)."""
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def collate_packed(
    rows: list[list[Example]], pad_id: int, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Packed rows with per-example position ids and a block-diagonal causal mask (no cross-attention)."""
    width = max(sum(len(e.input_ids) for e in r) for r in rows)
    b = len(rows)
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    labels = torch.full((b, width), IGNORE_INDEX, dtype=torch.long)
    pos = torch.zeros((b, width), dtype=torch.long)
    seg = torch.full((b, width), -1, dtype=torch.long)
    for i, row in enumerate(rows):
        at = 0
        for s, e in enumerate(row):
            n = len(e.input_ids)
            ids[i, at : at + n] = torch.tensor(e.input_ids)
            labels[i, at : at + n] = torch.tensor(e.labels)
            pos[i, at : at + n] = torch.arange(n)
            seg[i, at : at + n] = s
            at += n
    causal = torch.tril(torch.ones(width, width, dtype=torch.bool))
    same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] >= 0)
    allowed = same & causal
    # padding rows attend to themselves only, so softmax never sees an all-masked row
    allowed |= torch.eye(width, dtype=torch.bool)[None]
    mask = torch.zeros((b, 1, width, width), dtype=dtype).masked_fill(
        ~allowed[:, None], torch.finfo(dtype).min
    )
    return {"input_ids": ids, "attention_mask": mask, "position_ids": pos, "labels": labels}
