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
    """The rules of one file that are valid, and every error of the others (each rule is validated on its
    own, so one bad rule hides nothing about the rest)."""
    rules, errors, _ = _parse_located(text, filename)
    return rules, errors


def _parse_located(
    text: str, filename: str
) -> tuple[list[Rule], list[RuleError], list[tuple[int, str, int, int]]]:
    """Also the ``(index, id, line, column)`` of every rule that names an id, valid or not."""
    try:
        located = yaml_source.load(text, filename)
    except yaml_source.YamlError as exc:
        return [], [RuleError(exc.filename, exc.line, exc.column, "", exc.reason)], []
    data = located.data if located.data is not None else {}
    if isinstance(data, list):  # a bare list of rules is accepted too
        data = {"rules": data}
        located.positions = {("rules", *k): v for k, v in located.positions.items()}
    errors: list[RuleError] = []

    def add(exc: ValidationError, prefix: tuple[str | int, ...]) -> None:
        for err in exc.errors():
            loc = (*prefix, *err["loc"])
            pos = located.position_of(loc)
            field = ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in loc).replace(".[", "[")
            reason = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                reason = "unknown field"
            errors.append(RuleError(filename, pos.line, pos.column, field, reason))

    items = data.get("rules", []) if isinstance(data, dict) else None
    if not isinstance(items, list):
        try:
            RuleFile.model_validate(data)
        except ValidationError as exc:
            add(exc, ())
        return [], errors, []
    try:
        RuleFile.model_validate({**data, "rules": []})  # the file's other keys
    except ValidationError as exc:
        add(exc, ())
    rules: list[Rule] = []
    ids: list[tuple[int, str, int, int]] = []
    for index, item in enumerate(items):
        if isinstance(item, dict) and isinstance(item.get("id"), str):
            pos = located.position_of(("rules", index, "id"))
            ids.append((index, item["id"], pos.line, pos.column))
        try:
            rules.append(Rule.model_validate(item))
        except ValidationError as exc:
            add(exc, ("rules", index))
    return (rules if not errors else []), errors, ids


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
        parsed, file_errors, ids = _parse_located(text, str(file))
        errors.extend(file_errors)
        for index, rule_id, line, column in ids:  # duplicates among valid and invalid rules alike
            if rule_id in seen:
                errors.append(
                    RuleError(
                        str(file),
                        line,
                        column,
                        f"rules[{index}].id",
                        f"rule id {rule_id!r} is already used in {seen[rule_id]}",
                    )
                )
            seen.setdefault(rule_id, str(file))
        rules.extend(parsed)
    if not files:
        errors.append(
            RuleError(", ".join(str(p) for p in paths) or "(none)", 1, 1, "", "no rule files found")
        )
    if errors:
        raise RuleLoadError(errors)
    return compile_rules(rules)
