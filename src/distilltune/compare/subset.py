"""Write the task view a comparison runs on: the user's task, optionally sampled down.

Every strategy of a comparison trains and evaluates on the same files, so the comparison writes
them once into ``OUT/task/`` (a valid task card) and every run, command and report refers to that
directory. Sampling is seeded and stratified: refusal items keep their share, and every knowledge
document keeps at least one eval item when the sample allows it. The knowledge base, policy and
system prompt are copied unchanged.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import yaml

from distilltune.io import atomic_dir
from distilltune.task.load import Task


def _sample(items: list, n: int | None, seed: int, is_refusal=None, group=None) -> list[int]:
    """Indices of a seeded sample of size n (all when n is None or ≥ len), stratified by refusal."""
    idx = list(range(len(items)))
    if n is None or n >= len(items):
        return idx
    rng = random.Random(seed)
    picked: list[int] = []
    if group is not None:  # one item per group first (coverage), in a seeded order
        seen: set = set()
        order = idx[:]
        rng.shuffle(order)
        for i in order:
            g = group(items[i])
            if g is not None and g not in seen and len(picked) < n:
                seen.add(g)
                picked.append(i)
    rest = [i for i in idx if i not in set(picked)]
    if is_refusal is not None:
        ref = [i for i in rest if is_refusal(items[i])]
        non = [i for i in rest if not is_refusal(items[i])]
        want_ref = round(n * sum(1 for it in items if is_refusal(it)) / len(items)) - sum(
            1 for i in picked if is_refusal(items[i])
        )
        want_ref = max(0, min(want_ref, len(ref), n - len(picked)))
        picked += rng.sample(ref, want_ref)
        picked += rng.sample(non, min(len(non), n - len(picked)))
    else:
        picked += rng.sample(rest, min(len(rest), n - len(picked)))
    return sorted(picked)


def _lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def write_task_view(
    task: Task,
    out: Path,
    train_limit: int | None,
    eval_limit: int | None,
    behaviour_limit: int | None,
    seed: int,
) -> Path:
    """Write ``out`` (atomically) and return it; sizes and the seed are recorded in its task.yaml."""
    spec = task.spec
    data = spec.data
    with atomic_dir(out) as tmp:
        train_idx = _sample(task.train, train_limit, seed, task.is_refusal)
        eval_idx = _sample(
            task.eval,
            eval_limit,
            seed + 1,
            task.is_refusal,
            group=lambda c: c.sources[0] if c.sources else None,
        )
        for name, idx in (("train", train_idx), ("eval", eval_idx)):
            lines = _lines(task.root / getattr(data, name))
            (tmp / f"{name}.jsonl").write_text("".join(lines[i] + "\n" for i in idx), encoding="utf-8")
        for name, cases in (("scenarios", task.scenarios), ("adversarial", task.adversarial)):
            rel = getattr(data, name)
            if rel is None or not (task.root / rel).exists():
                continue
            idx = _sample(cases, behaviour_limit, seed + 2, group=lambda c: c.kind)
            lines = _lines(task.root / rel)
            (tmp / f"{name}.jsonl").write_text("".join(lines[i] + "\n" for i in idx), encoding="utf-8")
        if data.knowledge and (task.root / data.knowledge).is_dir():
            shutil.copytree(task.root / data.knowledge, tmp / "knowledge")
        if data.policy and (task.root / data.policy).exists():
            shutil.copy2(task.root / data.policy, tmp / "policy.yaml")
        view = spec.model_dump(mode="json")
        view["description"] = (
            f"{spec.description} [comparison view of {task.root}: {len(train_idx)}/{len(task.train)} train, "
            f"{len(eval_idx)}/{len(task.eval)} eval, seed {seed}]"
        ).strip()
        view["data"] = {
            "train": "train.jsonl",
            "eval": "eval.jsonl",
            "knowledge": "knowledge" if (tmp / "knowledge").exists() else None,
            "policy": "policy.yaml" if (tmp / "policy.yaml").exists() else None,
            "scenarios": "scenarios.jsonl" if (tmp / "scenarios.jsonl").exists() else None,
            "adversarial": "adversarial.jsonl" if (tmp / "adversarial.jsonl").exists() else None,
        }
        (tmp / "task.yaml").write_text(
            yaml.safe_dump(view, sort_keys=False, allow_unicode=True), encoding="utf-8"
        )
    return out
