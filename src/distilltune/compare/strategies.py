"""The strategy matrix: what each candidate trains, from what, and how the report describes it.

Each strategy is a training recipe (or none, for the teacher as is) followed by one evaluation.
Dependencies are explicit: the distilled students learn from the *fine-tuned* teacher, and the
distill-then-LoRA blend starts from the distilled student. Selecting a strategy whose source is not
selected still trains that source (it is needed), but evaluates only what was asked for.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Strategy:
    name: str
    kind: str  # report kind: teacher | finetune | distill | blend
    description: str
    needs: tuple[str, ...] = ()
    base: str | None = None  # the evaluated strategy this one fine-tunes (the report checks it improved)


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("teacher", "teacher", "the teacher as is, with retrieval"),
        Strategy(
            "teacher-lora",
            "finetune",
            "the teacher fine-tuned with LoRA on the task (retrieval in the prompt)",
            base="teacher",
        ),
        Strategy("student-ft", "finetune", "the depth-pruned student fully fine-tuned on the labels only"),
        Strategy(
            "student-kd",
            "distill",
            "the student distilled (cached top-k logit KD) from the fine-tuned teacher",
            needs=("teacher-lora",),
        ),
        Strategy(
            "student-kd-lora",
            "blend",
            "the distilled student, then fine-tuned with LoRA on the labels",
            needs=("student-kd",),
            base="student-kd",
        ),
        Strategy(
            "student-seqkd",
            "distill",
            "the student trained on the fine-tuned teacher's curated answers (sequence-level KD)",
            needs=("teacher-lora",),
        ),
    )
}


def training_order(selected: list[str]) -> list[str]:
    """Every strategy that must be trained for ``selected``, dependencies first, in matrix order."""
    needed: set[str] = set()

    def visit(name: str) -> None:
        if name in needed:
            return
        for dep in STRATEGIES[name].needs:
            visit(dep)
        needed.add(name)

    for s in selected:
        visit(s)
    return [n for n in STRATEGIES if n in needed and n != "teacher"]
