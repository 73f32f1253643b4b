"""Load and validate a task directory.

``load_task(dir)`` returns a ``Task`` or raises ``UserError`` carrying every problem found, each as
``FILE:LINE: field: message``. Validation covers the syntax of each file, the typed schema, and the
cross-file rules: cited sources exist, facts appear in their sources (warning), policy regexes
compile, scenario ids are unique, train/eval conversations end with an assistant turn.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from distilltune.errors import Problem, ProblemList, UserError
from distilltune.io import read_jsonl_objects
from distilltune.task.schema import Case, Conversation, PolicySpec, TaskSpec

KNOWLEDGE_SUFFIXES = (".md", ".txt")


@dataclass
class Task:
    """A loaded, validated task card."""

    root: Path
    spec: TaskSpec
    train: list[Conversation]
    eval: list[Conversation]
    knowledge: dict[str, str]  # file name (relative to knowledge/) → text
    policy: PolicySpec
    scenarios: list[Case]
    adversarial: list[Case]
    warnings: list[Problem] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def system_prompt(self) -> str:
        return self.spec.system_prompt

    @property
    def knowledge_dir(self) -> Path | None:
        k = self.spec.data.knowledge
        return (self.root / k) if k else None

    def is_refusal(self, conv: Conversation) -> bool:
        return conv.answer.strip() == self.policy.refusal_message.strip()

    def summary_line(self) -> str:
        return (
            f"task {self.name!r}: {len(self.train)} train, {len(self.eval)} eval, "
            f"{len(self.knowledge)} knowledge docs, {len(self.policy.blocked_topics)} blocked topics, "
            f"{len(self.scenarios)} scenarios, {len(self.adversarial)} adversarial"
        )


def yaml_line_map(text: str) -> dict[str, int]:
    """Map dotted key paths (``data.train``, ``blocked_topics.0.patterns.1``) to 1-based line numbers."""
    lines: dict[str, int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines

    def walk(node, path: str) -> None:
        if node is None:
            return
        if path:
            lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = f"{path}.{k.value}" if path else str(k.value)
                lines[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, f"{path}.{i}" if path else str(i))

    walk(root, "")
    return lines


def _schema_problems(
    err: ValidationError, file: str, line: int | None, lines: dict[str, int]
) -> list[Problem]:
    out = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif e["type"] == "literal_error":
            msg = f"{msg}, found {e.get('input')!r}"
        elif "input" in e and not isinstance(e["input"], dict | list):
            msg = f"{msg} (found {e['input']!r})"[:200]
        at = line
        if at is None:
            probe = loc
            while probe and probe not in lines:
                probe = probe.rpartition(".")[0]
            at = lines.get(probe)
        out.append(Problem(file, msg, at, loc or None))
    return out


def _load_yaml_model(path: Path, model: type[BaseModel], rel: str, problems: ProblemList):
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        problems.add(rel, "not UTF-8 text")
        return None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problems.add(rel, f"invalid YAML: {getattr(e, 'problem', e)}", mark.line + 1 if mark else None)
        return None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.add(rel, f"expected a mapping at the top level, found {type(data).__name__}", 1)
        return None
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems.problems.extend(_schema_problems(e, rel, None, yaml_line_map(text)))
        return None


def _load_jsonl(
    path: Path, model: type[BaseModel], rel: str, problems: ProblemList
) -> list[tuple[int, BaseModel]]:
    """Parse each line; returns (line number, item) for the valid ones, records problems for the rest."""
    out: list[tuple[int, BaseModel]] = []
    for lineno, obj in read_jsonl_objects(path, problems, rel):
        try:
            out.append((lineno, model.model_validate(obj)))
        except ValidationError as e:
            problems.problems.extend(_schema_problems(e, rel, lineno, {}))
    if not out and not problems.errors:
        problems.add(rel, "file has no items")
    return out


def _check_conversation(
    conv: Conversation, rel: str, line: int, knowledge: dict[str, str] | None, problems: ProblemList
) -> None:
    roles = [m.role for m in conv.messages]
    if roles[-1] != "assistant":
        problems.add(
            rel, f"conversation must end with an assistant turn, ends with {roles[-1]!r}", line, "messages"
        )
    if "user" not in roles:
        problems.add(rel, "conversation has no user turn", line, "messages")
    for i, role in enumerate(roles):
        if role == "system" and i != 0:
            problems.add(rel, "a system turn may only come first", line, f"messages.{i}.role")
    if knowledge is None:
        return
    for s in conv.sources:
        if s not in knowledge:
            problems.add(rel, f"source {s!r} is not a file in the knowledge directory", line, "sources")
    cited = [knowledge[s].lower() for s in conv.sources if s in knowledge]
    for fact in conv.facts:
        if cited and not any(fact.lower() in doc for doc in cited):
            problems.warn(rel, f"fact {fact!r} does not appear in its cited sources", line, "facts")
        if roles[-1] == "assistant" and fact.lower() not in conv.answer.lower():
            problems.warn(rel, f"fact {fact!r} does not appear in the reference answer", line, "facts")


def load_knowledge(kdir: Path, rel: str, problems: ProblemList) -> dict[str, str]:
    docs: dict[str, str] = {}
    files = sorted(p for p in kdir.rglob("*") if p.is_file() and not p.name.startswith("."))
    for p in files:
        name = p.relative_to(kdir).as_posix()
        if p.suffix.lower() not in KNOWLEDGE_SUFFIXES:
            problems.warn(
                f"{rel}/{name}", f"ignored: knowledge files must end in {' or '.join(KNOWLEDGE_SUFFIXES)}"
            )
            continue
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            problems.add(
                f"{rel}/{name}", f"not UTF-8 text (invalid byte at offset {e.start}); re-save it as UTF-8"
            )
            continue
        if not text.strip():
            problems.warn(f"{rel}/{name}", "empty document")
            continue
        docs[name] = text
    if not docs:
        problems.add(rel, f"knowledge directory has no non-empty {'/'.join(KNOWLEDGE_SUFFIXES)} documents")
    return docs


def _check_policy(policy: PolicySpec, rel: str, text: str, problems: ProblemList) -> None:
    lines = yaml_line_map(text)
    for ti, topic in enumerate(policy.blocked_topics):
        if not topic.patterns and not topic.examples:
            problems.add(
                rel,
                f"blocked topic {topic.name!r} has neither patterns nor examples",
                lines.get(f"blocked_topics.{ti}"),
            )
        for pi, pat in enumerate(topic.patterns):
            try:
                re.compile(pat)
            except re.error as e:
                problems.add(
                    rel,
                    f"blocked topic {topic.name!r}: invalid regular expression {pat!r}: {e}",
                    lines.get(f"blocked_topics.{ti}.patterns.{pi}"),
                    f"blocked_topics.{ti}.patterns.{pi}",
                )
    names = [t.name for t in policy.blocked_topics]
    for n in {n for n in names if names.count(n) > 1}:
        problems.add(rel, f"blocked topic name {n!r} is used more than once", field="blocked_topics")
    for ci, c in enumerate(policy.pii.custom):
        try:
            re.compile(c.pattern)
        except re.error as e:
            problems.add(
                rel,
                f"custom PII {c.name!r}: invalid regular expression: {e}",
                lines.get(f"pii.custom.{ci}.pattern"),
                f"pii.custom.{ci}.pattern",
            )


def _strip_unknown(data: dict, model: type[BaseModel]) -> dict:
    out = {}
    for k, v in data.items():
        if k not in model.model_fields:
            continue
        ann = model.model_fields[k].annotation
        out[k] = (
            _strip_unknown(v, ann)
            if isinstance(v, dict) and isinstance(ann, type) and issubclass(ann, BaseModel)
            else v
        )
    return out


def _lenient_spec(task_file: Path) -> TaskSpec | None:
    try:
        data = yaml.safe_load(task_file.read_text(encoding="utf-8"))
        return TaskSpec.model_validate(_strip_unknown(data, TaskSpec)) if isinstance(data, dict) else None
    except (yaml.YAMLError, ValidationError, UnicodeDecodeError):
        return None


def _knowledge_and_policy(spec, data_path, lines: dict, problems: ProblemList):
    """The knowledge base (None if the task has none) and the policy (defaults if it has none)."""
    knowledge: dict[str, str] | None = None
    kpath = data_path("knowledge", required=False)
    if kpath is not None:
        if not kpath.is_dir():
            problems.add(
                "task.yaml",
                f"knowledge {spec.data.knowledge!r} is not a directory",
                lines.get("data.knowledge"),
                "data.knowledge",
            )
        else:
            knowledge = load_knowledge(kpath, spec.data.knowledge, problems)

    policy = PolicySpec()
    ppath = data_path("policy", required=False)
    if ppath is not None:
        loaded = _load_yaml_model(ppath, PolicySpec, spec.data.policy, problems)
        if loaded is not None:
            policy = loaded
            _check_policy(policy, spec.data.policy, ppath.read_text(encoding="utf-8"), problems)

    return knowledge, policy


def _cases(spec, data_path, problems: ProblemList) -> dict[str, list[Case]]:
    """Behavioural scenarios and adversarial cases; ids must be unique within a file."""
    cases: dict[str, list[Case]] = {"scenarios": [], "adversarial": []}
    for key in ("scenarios", "adversarial"):
        p = data_path(key, required=False)
        if p is None:
            continue
        rel = getattr(spec.data, key)
        seen: dict[str, int] = {}
        for line, case in _load_jsonl(p, Case, rel, problems):
            if case.id in seen:
                problems.add(
                    rel, f"duplicate id {case.id!r} (first used on line {seen[case.id]})", line, "id"
                )
            else:
                seen[case.id] = line
            cases[key].append(case)

    return cases


def load_task(path: str | Path) -> Task:
    """Load and validate a task directory; raise ``UserError`` listing every problem."""
    root = Path(path)
    problems = ProblemList()
    if not root.is_dir():
        raise UserError(f"{root}: task directory not found")
    task_file = root / "task.yaml"
    if not task_file.is_file():
        raise UserError(f"{task_file}: missing (a task directory needs task.yaml; see the task card format)")
    spec = _load_yaml_model(task_file, TaskSpec, "task.yaml", problems)
    if spec is None:
        # Keep validating the other files: retry without the unknown keys already reported.
        spec = _lenient_spec(task_file)
    if spec is None:
        problems.raise_if_errors(f"{root}: invalid task")
    lines = yaml_line_map(task_file.read_text(encoding="utf-8"))

    def data_path(key: str, required: bool) -> Path | None:
        """Resolve a data file; a missing optional file is an error only if task.yaml names it."""
        rel = getattr(spec.data, key)
        if rel is None:
            return None
        p = root / rel
        if not p.exists():
            if required or key in spec.data.model_fields_set:
                problems.add(
                    "task.yaml",
                    f"{key} path {rel!r} not found in {root}",
                    lines.get(f"data.{key}"),
                    f"data.{key}",
                )
            return None
        return p

    knowledge, policy = _knowledge_and_policy(spec, data_path, lines, problems)

    splits: dict[str, list[Conversation]] = {"train": [], "eval": []}
    for key in ("train", "eval"):
        p = data_path(key, required=True)
        if p is None:
            continue
        rel = getattr(spec.data, key)
        for line, conv in _load_jsonl(p, Conversation, rel, problems):
            _check_conversation(conv, rel, line, knowledge, problems)
            splits[key].append(conv)

    cases = _cases(spec, data_path, problems)

    problems.raise_if_errors(f"{root}: invalid task")
    return Task(
        root=root,
        spec=spec,
        train=splits["train"],
        eval=splits["eval"],
        knowledge=knowledge or {},
        policy=policy,
        scenarios=cases["scenarios"],
        adversarial=cases["adversarial"],
        warnings=problems.warnings,
    )
