"""Merge: accepted review items become a new task-card version, and the held-out ones the gate's failures set.

For each item the reviewer accepted or edited, the conversation (redacted turns + the reviewed
answer) is checked before anything is written, and refused with a reason when:

- ``pii``: the question or the answer still holds PII by the task's policy (a reviewer may have
  typed an e-mail address into an edit; the redaction placeholders such as ``[EMAIL]`` are fine);
- ``system_prompt_leak``: the answer quotes the system prompt;
- ``eval_duplicate``: the question equals an eval question after normalisation, or shares at least
  ``eval_overlap`` of its words with one (Jaccard) — the eval set must stay held out;
- ``train_duplicate``: the question is already in the training set.

Train-split items are appended to a copy of the task's training file in ``task-v<N>/`` (N = the
parent's flywheel version + 1), with ``id`` and ``sources`` (cited knowledge files); the copy keeps
everything else of the parent (eval untouched). ``task-v<N>/flywheel/provenance.jsonl`` records,
per merged item, the request ids, the reviewer's decision and note, the harvest reasons and the
date; ``flywheel/version.json`` the parent and the counts. Held-out items go to
``failures/eval.jsonl`` (a task dir that differs from the new version only in its eval set), the
set the gate measures an improvement on. The new version must load (``load_task``) before it
replaces anything; a re-run with the same decisions changes nothing on disk.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

from distilltune.errors import UserError
from distilltune.io import atomic_dir, atomic_write_text
from distilltune.text import normalize, tokens

VERSION_FILE = "flywheel/version.json"


def _words(text: str) -> set[str]:
    return set(tokens(normalize(text)))


def eval_duplicate(question: str, eval_questions: list[str], overlap: float) -> bool:
    q, qw = normalize(question), _words(question)
    for e in eval_questions:
        if q == normalize(e):
            return True
        ew = _words(e)
        if qw and ew and len(qw & ew) / len(qw | ew) >= overlap:
            return True
    return False


def refusal_reason(item: dict, task, guard, overlap: float) -> str | None:
    """Why an accepted item may not be merged, or None."""
    texts = [m["content"] for m in item["messages"]] + [item["answer"]]
    if any(guard.pii.find(t) for t in texts):
        return "pii"
    if "system_prompt_leak" in guard.check_output(item["answer"]).reasons:
        return "system_prompt_leak"
    if eval_duplicate(item["question"], [c.question for c in task.eval], overlap):
        return "eval_duplicate"
    if normalize(item["question"]) in {normalize(c.question) for c in task.train}:
        return "train_duplicate"
    return None


def parent_version(task) -> int:
    p = task.root / VERSION_FILE
    try:
        return int(json.loads(p.read_text(encoding="utf-8"))["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return 1


def _conversation(item: dict, knowledge: dict) -> dict:
    return {
        "messages": [*item["messages"], {"role": "assistant", "content": item["answer"].strip()}],
        "sources": [f for f in item.get("citations", []) if f in knowledge],
        "id": item["id"],
    }


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _write_version(
    dst: Path, parent, train_add: list[dict], heldout: list[dict], prov: list[dict], meta: dict
):
    """Copy the parent task into ``dst`` and append the new training conversations."""
    shutil.copytree(parent.root, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("flywheel", ".*"))
    train_rel = parent.spec.data.train
    old = (parent.root / train_rel).read_text(encoding="utf-8")
    if old and not old.endswith("\n"):
        old += "\n"
    (dst / train_rel).write_text(
        old + _jsonl([_conversation(i, parent.knowledge) for i in train_add]), encoding="utf-8"
    )
    (dst / "flywheel").mkdir(exist_ok=True)
    (dst / "flywheel" / "provenance.jsonl").write_text(_jsonl(prov), encoding="utf-8")
    (dst / VERSION_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def merge(items: list[dict], task, guard, out_dir: str | Path, overlap: float) -> dict:
    """Write ``task-v<N>`` and ``failures`` under ``out_dir`` from the accepted items; returns the summary."""
    from distilltune.task import load_task

    out = Path(out_dir)
    accepted = [it for it in items if it.get("decision") in ("accept", "edit")]
    refused, ok = [], []
    for it in accepted:
        why = refusal_reason(it, task, guard, overlap)
        (refused.append({"id": it["id"], "reason": why}) if why else ok.append(it))
    train_add = [it for it in ok if it["split"] == "train"]
    heldout = [it for it in ok if it["split"] == "heldout"]
    version = parent_version(task) + 1
    dst = out / f"task-v{version}"
    parent_train = hashlib.sha256((task.root / task.spec.data.train).read_bytes()).hexdigest()
    decided = [(i["id"], i["decision"], i["answer"], i["split"], i.get("note", "")) for i in ok]
    blob = json.dumps([str(task.root.resolve()), parent_train, decided])
    digest = hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]
    summary = {
        "task_dir": str(dst), "failures_dir": str(out / "failures"), "version": version,
        "parent": str(task.root), "accepted": len(accepted), "merged_train": len(train_add),
        "heldout": len(heldout), "refused": refused, "rejected": sum(it.get("decision") == "reject" for it in items),
        "undecided": sum(it.get("decision") is None for it in items), "digest": digest,
    }  # fmt: skip
    try:
        current = json.loads((dst / VERSION_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        current = {}
    if current.get("digest") == digest and (not heldout or (out / "failures" / "task.yaml").is_file()):
        return summary | {"unchanged": True, "date": current.get("date")}
    date = datetime.now(UTC).date().isoformat()
    prov = [{"id": it["id"], "split": it["split"], "decision": it["decision"], "note": it.get("note", ""),
             "reasons": it["reasons"], "request_ids": it["request_ids"], "date": date} for it in ok]  # fmt: skip
    meta = {"version": version, "parent": str(task.root), "parent_version": version - 1, "date": date,
            "digest": digest, "merged_train": len(train_add), "heldout": len(heldout)}  # fmt: skip
    with atomic_dir(dst) as tmp:
        _write_version(tmp, task, train_add, heldout, prov, meta)
        load_task(tmp)  # the new version must be a valid task card before it replaces anything
    _write_failures(out / "failures", dst, task, heldout)
    return summary | {"unchanged": False, "date": date}


def _write_failures(dst: Path, version_dir: Path, task, heldout: list[dict]) -> None:
    """The gate's failures set: the new version's card with the held-out reviewed items as its eval."""
    from distilltune.task import load_task

    if not heldout:
        if dst.exists():
            shutil.rmtree(dst)
        return
    with atomic_dir(dst) as tmp:
        shutil.copytree(version_dir, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns("flywheel"))
        atomic_write_text(
            tmp / task.spec.data.eval, _jsonl([_conversation(i, task.knowledge) for i in heldout])
        )
        load_task(tmp)


def load_merged(out_dir: str | Path) -> dict | None:
    """The latest merged version's ``version.json`` under ``out_dir`` (None before any merge)."""
    versions = sorted(Path(out_dir).glob("task-v*/" + VERSION_FILE), key=lambda p: p.stat().st_mtime)
    if not versions:
        return None
    return json.loads(versions[-1].read_text(encoding="utf-8")) | {
        "task_dir": str(versions[-1].parent.parent)
    }


def check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: --output must be a directory (it is a file)")
