"""``RetrievalConfig``: the retrieval settings other configs nest as ``retrieval:``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from distilltune.config import StrictModel

SearchMode = Literal["dense", "lexical", "hybrid"]


class RetrievalConfig(StrictModel):
    """Where the knowledge index lives, how it is built, and how prompts use it."""

    enabled: bool = Field(
        default=True, description="retrieve context for prompts (false: system prompt only)"
    )
    embedding_model: str | None = Field(
        default=None,
        description="sentence-transformers model dir (None = the bundled all-MiniLM-L6-v2)",
    )
    uri: str | None = Field(
        default=None,
        description="LanceDB URI (dir or object store); None = $DISTILLTUNE_HOME/indexes/<task>-<hash>",
    )
    chunk_words: int = Field(default=120, ge=16, le=2000, description="max words per chunk")
    chunk_overlap_words: int = Field(default=30, ge=0, description="words shared by neighbouring chunks")
    mode: SearchMode = "hybrid"
    k: int = Field(default=3, ge=1, le=50, description="chunks put into a prompt")
    max_context_tokens: int = Field(default=384, ge=0, description="token budget of the context block")
    rrf_k: int = Field(default=60, ge=1, description="reciprocal rank fusion constant")
    candidates: int = Field(default=50, ge=1, description="depth of each ranking before fusion")
    previous_turn: Literal["never", "short", "always"] = Field(
        default="short",
        description="add the previous user turn to the query: never, when the last turn is short, always",
    )

    @model_validator(mode="after")
    def _overlap_below_size(self) -> RetrievalConfig:
        if self.chunk_overlap_words >= self.chunk_words:
            raise ValueError("chunk_overlap_words must be smaller than chunk_words")
        return self
