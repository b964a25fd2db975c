"""YAML loading that remembers where every value came from, so errors can name file, line and column."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

Path = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Position:
    line: int  # 1-based
    column: int  # 1-based


class YamlError(ValueError):
    def __init__(self, filename: str, line: int, column: int, reason: str) -> None:
        self.filename, self.line, self.column, self.reason = filename, line, column, reason
        super().__init__(f"{filename}:{line}:{column}: {reason}")


@dataclass(slots=True)
class Located:
    data: Any
    positions: dict[Path, Position]
    filename: str

    def position_of(self, path: Path) -> Position:
        """The position of ``path``, or of its nearest ancestor that exists in the file."""
        for end in range(len(path), -1, -1):
            pos = self.positions.get(tuple(path[:end]))
            if pos is not None:
                return pos
        return Position(1, 1)


def load(text: str, filename: str) -> Located:
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            positions: dict[Path, Position] = {}
            if node is not None:
                _walk(node, (), positions, filename)
                data = loader.construct_document(node)
            else:
                data = None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        reason = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise YamlError(filename, line, col, f"invalid YAML: {reason}") from None
    except yaml.YAMLError as exc:
        raise YamlError(filename, 1, 1, f"invalid YAML: {exc}") from None
    return Located(data, positions, filename)


def _walk(node: yaml.Node, path: Path, out: dict[Path, Position], filename: str) -> None:
    out[path] = Position(node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in seen:
                m = key_node.start_mark
                raise YamlError(filename, m.line + 1, m.column + 1, f"duplicate key {key!r}")
            seen.add(key)
            _walk(value_node, (*path, key), out, filename)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, (*path, index), out, filename)
