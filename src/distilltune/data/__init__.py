"""Chat data: templates, assistant-only labels, truncation, ordering, packing."""

from distilltune.data.chat import IGNORE_INDEX, Example, collate, encode_chat, encode_many, with_system

__all__ = ["IGNORE_INDEX", "Example", "collate", "encode_chat", "encode_many", "with_system"]
