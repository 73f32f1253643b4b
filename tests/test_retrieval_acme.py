"""Retrieval quality bar on the bundled example task: hybrid recall@3 ≥ dense and ≥ lexical.

Builds the acme-support index with the bundled MiniLM (74 chunks) and scores 160 eval questions in
three modes; about 10-20 s on 2 busy cores.
"""

from __future__ import annotations

import pytest

from conftest import EXAMPLE_TASK
from distilltune.retrieval import KnowledgeIndex, RetrievalConfig
from distilltune.retrieval.evaluate import evaluate_retrieval
from distilltune.task import load_task


def test_acme_hybrid_recall_at_3_is_at_least_dense_and_lexical(tmp_path):
    if not (EXAMPLE_TASK / "task.yaml").exists():
        pytest.skip("examples/acme-support is not present")
    task = load_task(EXAMPLE_TASK)
    index = KnowledgeIndex.open(task, RetrievalConfig(uri=str(tmp_path / "acme")))
    r = evaluate_retrieval(index, task.eval)
    m = r["modes"]
    assert r["items"] >= 100
    assert m["hybrid"]["recall@3"] >= m["dense"]["recall@3"]
    assert m["hybrid"]["recall@3"] >= m["lexical"]["recall@3"]
    assert m["hybrid"]["recall@3"] >= 0.9
