"""The task validator: a valid card passes; each planted error is reported with file and line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from distilltune.errors import UserError
from distilltune.task import load_task


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "distilltune", *args], capture_output=True, text=True, timeout=120
    )


def test_valid_task_loads(tiny_task):
    t = load_task(tiny_task)
    assert len(t.train) == 12 and len(t.eval) == 5
    assert set(t.knowledge) == {"rentals.md", "repairs.md", "hours.md"}
    assert t.is_refusal(t.eval[-1]) and not t.is_refusal(t.eval[0])
    assert t.train[-1].question == "And the daily price?"


def test_cli_validate_ok(tiny_task):
    r = _run_cli("task", "validate", str(tiny_task))
    assert r.returncode == 0, r.stderr
    assert "12 train, 5 eval" in r.stdout


def _append(path, obj_or_text):
    text = obj_or_text if isinstance(obj_or_text, str) else json.dumps(obj_or_text)
    with open(path, "a") as f:
        f.write(text + "\n")


def test_planted_errors_each_reported_with_file_and_line(tiny_task):
    train = tiny_task / "train.jsonl"
    n = len(train.read_text().splitlines())
    _append(train, '{"messages": [')  # n+1 malformed JSON
    _append(
        train, {"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}
    )  # n+2
    _append(
        train, {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}
    )  # n+3
    _append(train, {"messages": [{"role": "user", "content": "hi"}]})  # n+4 does not end with assistant
    _append(
        train,
        {
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a $99"}],
            "facts": ["$99"],
            "sources": ["nope.md"],
        },
    )  # n+5 missing source
    _append(
        train,
        {
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "$77"}],
            "facts": ["$77"],
            "sources": ["hours.md"],
        },
    )  # n+6 fact absent from its source (warning)
    _append(train, {"messages": "not a list"})  # n+7 wrong type
    _append(train, {"facts": []})  # n+8 missing messages
    (tiny_task / "policy.yaml").write_text(
        (tiny_task / "policy.yaml").read_text().replace('"(?i)\\\\b(diagnose', '"(?i)\\\\b((diagnose')
    )
    (tiny_task / "task.yaml").write_text((tiny_task / "task.yaml").read_text() + "colour: blue\n")
    (tiny_task / "task.yaml").write_text(
        (tiny_task / "task.yaml").read_text().replace("eval: eval.jsonl", "eval: missing.jsonl")
    )
    _append(tiny_task / "scenarios.jsonl", {"id": "sc-1", "prompt": "again", "expect": {"refuse": False}})

    with pytest.raises(UserError) as ei:
        load_task(tiny_task)
    lines = [str(p) for p in ei.value.problems]
    text = "\n".join(lines)

    def has(prefix: str, *words: str) -> bool:
        return any(line.startswith(prefix) and all(w in line for w in words) for line in lines)

    assert has(f"train.jsonl:{n + 1}:", "malformed JSON"), text
    assert has(f"train.jsonl:{n + 2}:", "messages.0.role", "robot"), text
    assert has(f"train.jsonl:{n + 3}:", "assistant turn is empty"), text
    assert has(f"train.jsonl:{n + 4}:", "end with an assistant turn"), text
    assert has(f"train.jsonl:{n + 5}:", "sources", "nope.md"), text
    assert has(f"train.jsonl:{n + 6}:", "warning", "$77"), text
    assert has(f"train.jsonl:{n + 7}:", "messages"), text
    assert has(f"train.jsonl:{n + 8}:", "messages", "required"), text
    assert has("policy.yaml:", "medical_advice", "invalid regular expression"), text
    assert has("task.yaml:", "colour", "unknown key"), text
    assert has("task.yaml:", "missing.jsonl", "not found"), text
    assert has("scenarios.jsonl:", "duplicate id 'sc-1'", "first used on line 1"), text
    # the regex problem names the line of the pattern in policy.yaml
    assert any(line.startswith("policy.yaml:5:") for line in lines), text
    # task.yaml problems carry the line of the offending key
    assert any(
        line.startswith("task.yaml:") and "colour" in line and line.split(":")[1].isdigit() for line in lines
    )


def test_cli_validate_reports_and_exits_2_without_traceback(tiny_task):
    _append(tiny_task / "eval.jsonl", "{oops")
    r = _run_cli("task", "validate", str(tiny_task))
    assert r.returncode == 2
    assert "eval.jsonl:6:" in r.stderr and "malformed JSON" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_non_utf8_and_empty_knowledge(tiny_task):
    (tiny_task / "knowledge" / "bad.md").write_bytes(b"caf\xe9 prices\n")
    with pytest.raises(UserError) as ei:
        load_task(tiny_task)
    assert any("bad.md" in str(p) and "UTF-8" in str(p) for p in ei.value.problems)
    for f in (tiny_task / "knowledge").iterdir():
        f.unlink()
    with pytest.raises(UserError) as ei:
        load_task(tiny_task)
    assert any("no non-empty" in str(p) for p in ei.value.problems)


def test_missing_task_yaml_is_clear(tmp_path):
    with pytest.raises(UserError, match=r"task\.yaml: missing"):
        load_task(tmp_path)
