"""examples/flywheel's traffic: deterministic, PII only where it is planted, never an eval question.

The PII check uses the acme task's own guard (the detector the server runs) as the reference: the
generated questions are scanned the way the server scans a request.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent
ACME = REPO / "examples" / "acme-support"


@pytest.fixture(scope="module")
def traffic_mod():
    sys.path.insert(0, str(REPO / "examples" / "flywheel"))
    try:
        import traffic

        yield traffic
    finally:
        sys.path.remove(str(REPO / "examples" / "flywheel"))


@pytest.fixture(scope="module")
def served_task(tmp_path_factory) -> Path:
    """A demo-like view of acme: the first 160 training conversations, all eval."""
    root = tmp_path_factory.mktemp("view")
    for name in ("task.yaml", "policy.yaml", "eval.jsonl", "scenarios.jsonl", "adversarial.jsonl"):
        shutil.copy(ACME / name, root / name)
    shutil.copytree(ACME / "knowledge", root / "knowledge")
    lines = (ACME / "train.jsonl").read_text().splitlines()[:160]
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_traffic_is_seeded_and_pii_free_except_the_planted_cases(traffic_mod, served_task, tmp_path):
    from distilltune.policy import Guard
    from distilltune.task import load_task

    t = traffic_mod.make_traffic(ACME, served_task, seed=0)
    assert t == traffic_mod.make_traffic(ACME, served_task, seed=0)
    assert t != traffic_mod.make_traffic(ACME, served_task, seed=1)
    assert {k: len(v) for k, v in t.items()} == {"calm": 40, "drifted": 68, "split": 40}
    guard = Guard.for_task(load_task(served_task))
    rows = [r for v in t.values() for r in v]
    planted = [r for r in rows if r["planted_pii"]]
    assert len(planted) == 4 and all(guard.pii.find(r["question"]) for r in planted)
    assert not [r["question"] for r in rows if not r["planted_pii"] and guard.pii.find(r["question"])]
    blob = json.dumps([r for r in rows if not r["planted_pii"]])
    assert not any(s in blob for s in traffic_mod.planted_strings())

    seen = {json.loads(x)["messages"][0]["content"] for n in ("train", "eval")
            for x in (served_task / f"{n}.jsonl").read_text().splitlines() if x.strip()}  # fmt: skip
    assert not {r["question"] for r in t["calm"]} & seen  # unseen, and never an eval question
    drifted = t["drifted"]
    assert sum(r["area"] == "mobile" for r in drifted) / len(drifted) > 0.6
    assert all(r["topic"] in traffic_mod.MOBILE_FACTS for r in drifted if r["area"] == "mobile")
    paths = traffic_mod.write_traffic(tmp_path, t)
    assert [json.loads(x) for x in paths["drifted"].read_text().splitlines()] == drifted
