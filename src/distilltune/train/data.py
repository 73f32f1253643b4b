"""Training examples from task conversations, with or without retrieved context.

``build_examples`` is the one place a conversation becomes a training row: the task's system prompt
(or, with a ``GroundedPrompter``, the system prompt plus the numbered context the server would
retrieve for the same question) followed by the conversation, encoded with assistant-only labels.
Fine-tuning passes the task's train split; the distiller passes its own conversation lists
(e.g. teacher-generated answers) and gets rows in the same order, so ``batch["index"]`` refers back
to its list.
"""

from __future__ import annotations

from collections.abc import Sequence

from distilltune.data.chat import EncodeStats, Example, encode_chat, with_system


def _messages(conv) -> list[dict]:
    msgs = conv.messages if hasattr(conv, "messages") else conv
    return [m.model_dump() if hasattr(m, "model_dump") else dict(m) for m in msgs]


def conversation_messages(conv, system_prompt: str | None, prompter=None) -> list[dict]:
    """The full chat a model is trained on: system (+ retrieved context), turns, final answer."""
    msgs = _messages(conv)
    if prompter is None:
        return with_system(system_prompt, msgs)
    prompt, answer = msgs[:-1], msgs[-1]
    full, _hits = prompter.messages(prompt)
    return [*full, answer]


def prompt_messages(conv, system_prompt: str | None, prompter=None) -> list[dict]:
    """What the model sees at answer time (everything but the final answer), as served."""
    msgs = _messages(conv)[:-1]
    if prompter is None:
        return with_system(system_prompt, msgs)
    full, _hits = prompter.messages(msgs)
    return full


def build_examples(
    conversations: Sequence,
    tokenizer,
    system_prompt: str | None,
    max_length: int,
    prompter=None,
) -> tuple[list[Example], EncodeStats]:
    """Encode ``conversations`` (task ``Conversation``s or lists of {role, content}) in order."""
    stats = EncodeStats()
    out: list[Example] = []
    for conv in conversations:
        ex = encode_chat(tokenizer, conversation_messages(conv, system_prompt, prompter), max_length)
        stats.total += 1
        stats.truncated += ex.truncated
        stats.answer_truncated += ex.answer_truncated
        stats.loss_tokens += ex.n_loss_tokens
        stats.lengths.append(len(ex.input_ids))
        out.append(ex)
    return out, stats
