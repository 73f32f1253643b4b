"""Typed configs: YAML < CLI values < dotted overrides; all problems reported at once."""

from __future__ import annotations

import pytest

from distilltune.config import StrictModel, parse_override, resolve_config, to_yaml
from distilltune.errors import UserError


class Train(StrictModel):
    lr: float = 1e-4
    steps: int = 10
    targets: list[str] = ["q_proj"]


class Cfg(StrictModel):
    model: str = "m"
    train: Train = Train()


def test_parse_override_types():
    assert parse_override("train.lr=3e-4") == (["train", "lr"], 3e-4)
    assert parse_override("train.steps=5") == (["train", "steps"], 5)
    assert parse_override("train.targets=[q_proj,v_proj]") == (["train", "targets"], ["q_proj", "v_proj"])
    with pytest.raises(ValueError):
        parse_override("train.lr")


def test_precedence(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model: from-file\ntrain:\n  steps: 3\n  lr: 0.1\n")
    cfg = resolve_config(Cfg, f, {"model": "from-cli"}, ["train.lr=0.5"])
    assert cfg.model == "from-cli" and cfg.train.steps == 3 and cfg.train.lr == 0.5
    again = resolve_config(Cfg, None, None, None)
    assert again.train.lr == 1e-4
    # the resolved YAML round-trips
    f2 = tmp_path / "r.yaml"
    f2.write_text(to_yaml(cfg))
    assert resolve_config(Cfg, f2) == cfg


def test_all_problems_at_once():
    with pytest.raises(UserError) as ei:
        resolve_config(Cfg, None, None, ["train.lr=fast", "train.bogus=1", "nope=2"])
    msgs = [str(p) for p in ei.value.problems]
    assert any("train.lr" in m for m in msgs)
    assert any("train.bogus" in m and "unknown key" in m for m in msgs)
    assert any("nope" in m and "unknown key" in m for m in msgs)


def test_bad_yaml_names_line(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model: a\ntrain: [\n")
    with pytest.raises(UserError, match=r"c\.yaml:\d+: invalid YAML"):
        resolve_config(Cfg, f)
