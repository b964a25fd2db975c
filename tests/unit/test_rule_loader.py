from pathlib import Path

import pytest

from rules.loader import RuleLoadError, load_rules

GOOD = """rules:
  - id: bell
    topic: home/{room}/bell
    title: Bell
    audience: {tags: [home]}
"""


def errors_for(tmp_path: Path, text: str, name: str = "r.yaml") -> list[str]:
    (tmp_path / name).write_text(text)
    with pytest.raises(RuleLoadError) as info:
        load_rules([tmp_path])
    return [str(e) for e in info.value.errors]


def test_good_directory_loads(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "notes.txt").write_text("ignored")
    assert [r.id for r in load_rules([tmp_path]).rules] == ["bell"]


def test_errors_give_file_line_column_field_and_reason(tmp_path: Path) -> None:
    text = """rules:
  - id: bell
    topic: home/{room}/bell
    title: Bell
    audience: {tags: [home]}
    threshhold: {above: 3}
  - id: hot
    topic: a/#/b
    title: "{{ broken"
    threshold: {above: 3, below: 1, for: soon}
    audience: {}
"""
    errs = errors_for(tmp_path, text)
    f = str(tmp_path / "r.yaml")
    assert f"{f}:6:17: rules[0].threshhold: unknown field" in errs
    assert any(e.startswith(f"{f}:8:12: rules[1].topic:") and "'#' must be the last level" in e for e in errs)
    assert any(e.startswith(f"{f}:9:12: rules[1].title:") and "template syntax error" in e for e in errs)
    assert any(
        e.startswith(f"{f}:10:") and "rules[1].threshold.for" in e and "cannot read 'soon'" in e for e in errs
    )
    assert any(
        e.startswith(f"{f}:11:15: rules[1].audience:")
        and "at least one tag, user, channel or expression" in e
        for e in errs
    )


def test_yaml_syntax_and_duplicate_keys(tmp_path: Path) -> None:
    errs = errors_for(tmp_path, "rules:\n  - id: a\n    id: b\n")
    assert errs == [f"{tmp_path / 'r.yaml'}:3:5: duplicate key 'id'"]
    errs = errors_for(tmp_path, "rules: [\n", "r.yaml")
    assert errs[0].startswith(f"{tmp_path / 'r.yaml'}:2:1: invalid YAML")


def test_duplicate_rule_ids_across_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD)
    errs = errors_for(tmp_path, GOOD, "b.yaml")
    assert errs == [
        f"{tmp_path / 'b.yaml'}:2:9: rules[0].id: rule id 'bell' is already used in {tmp_path / 'a.yaml'}"
    ]


def test_no_rule_files(tmp_path: Path) -> None:
    with pytest.raises(RuleLoadError, match="no rule files found"):
        load_rules([tmp_path])
