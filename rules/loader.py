"""Loads rule files (a file or a directory of ``*.yaml``/``*.yml``) into one rule set, with every error
located by file, line and column."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from rules import yaml_source
from rules.engine import RuleSet, compile_rules
from rules.schema import Rule, RuleFile

EXAMPLES_DIR = Path(__file__).parent / "examples"
# The rules a Cumulocity microservice runs when none are configured: the alarm app's behaviour.
CUMULOCITY_EXAMPLES = EXAMPLES_DIR / "cumulocity"


@dataclass(frozen=True, slots=True)
class RuleError:
    file: str
    line: int
    column: int
    field: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.field}: {self.reason}" if self.field else f"{where}: {self.reason}"


class RuleLoadError(Exception):
    def __init__(self, errors: list[RuleError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


def rule_files(paths: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()))
        else:
            files.append(path)
    return files


def parse_rule_text(text: str, filename: str) -> tuple[list[Rule], list[RuleError]]:
    try:
        located = yaml_source.load(text, filename)
    except yaml_source.YamlError as exc:
        return [], [RuleError(exc.filename, exc.line, exc.column, "", exc.reason)]
    data = located.data if located.data is not None else {}
    if isinstance(data, list):  # a bare list of rules is accepted too
        data = {"rules": data}
        located.positions = {("rules", *k): v for k, v in located.positions.items()}
    try:
        return list(RuleFile.model_validate(data).rules), []
    except ValidationError as exc:
        errors = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            pos = located.position_of(loc)
            field = ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in loc).replace(".[", "[")
            reason = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                reason = "unknown field"
            errors.append(RuleError(filename, pos.line, pos.column, field, reason))
        return [], errors


def load_rules(paths: Iterable[Path]) -> RuleSet:
    """Load and compile; raises RuleLoadError listing every problem found, not only the first."""
    rules: list[Rule] = []
    errors: list[RuleError] = []
    seen: dict[str, str] = {}
    files = rule_files(paths)
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(RuleError(str(file), 1, 1, "", f"cannot read rule file: {exc}"))
            continue
        parsed, file_errors = parse_rule_text(text, str(file))
        errors.extend(file_errors)
        for index, rule in enumerate(parsed):
            if rule.id in seen:
                pos = yaml_source.load(text, str(file)).position_of(("rules", index, "id"))
                errors.append(
                    RuleError(
                        str(file),
                        pos.line,
                        pos.column,
                        f"rules[{index}].id",
                        f"rule id {rule.id!r} is already used in {seen[rule.id]}",
                    )
                )
            seen[rule.id] = str(file)
            rules.append(rule)
    if not files:
        errors.append(
            RuleError(", ".join(str(p) for p in paths) or "(none)", 1, 1, "", "no rule files found")
        )
    if errors:
        raise RuleLoadError(errors)
    return compile_rules(rules)
