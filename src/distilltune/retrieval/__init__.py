"""Retrieval: the task's knowledge in LanceDB (dense + BM25, fused by RRF) and grounded prompt assembly.

``KnowledgeIndex.open(task, RetrievalConfig())`` builds or reuses the index;
``GroundedPrompter(...).messages(conversation)`` builds the model input for training, evaluation and
serving alike.
"""

from distilltune.retrieval.config import RetrievalConfig
from distilltune.retrieval.index import Hit, KnowledgeIndex
from distilltune.retrieval.prompt import GroundedPrompter, format_context

__all__ = ["GroundedPrompter", "Hit", "KnowledgeIndex", "RetrievalConfig", "format_context"]
