"""YAML loading that remembers where every value came from, for error messages with lines."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass
class LoadedYaml:
    """Plain data plus a map from each value's path to its 1-based line in ``file``."""

    data: Any
    lines: dict[tuple, int]
    file: str
    problems: list[str]
    columns: dict[tuple, int] | None = None  # path → 1-based column of the value

    def column_of(self, path: tuple) -> int | None:
        return (self.columns or {}).get(tuple(path))

    def line_of(self, path: tuple) -> int | None:
        """The line of ``path`` or of its nearest ancestor that has one."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), None)

    def where(self, path: tuple) -> str:
        line = self.line_of(path)
        return f"{self.file}:{line}" if line else self.file


def _expand_env(text: str, problems: list[str], where: str) -> str:
    def repl(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        problems.append(f"{where}: environment variable ${{{name}}} is not set")
        return ""

    return _ENV_REF.sub(repl, text)


def load_yaml(path: str | Path) -> LoadedYaml:
    """Parse ``path``; ``${VAR}`` and ``${VAR:-default}`` in strings are replaced from the environment."""
    file = str(path)
    text = Path(path).read_text(encoding="utf-8")
    problems: list[str] = []
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise_problem = f"{file}{line}: not valid YAML: {getattr(exc, 'problem', exc)}"
        return LoadedYaml(None, {}, file, [raise_problem])
    lines: dict[tuple, int] = {}
    columns: dict[tuple, int] = {}

    def build(node: yaml.Node | None, path: tuple) -> Any:
        if node is None:
            return None
        lines[path] = node.start_mark.line + 1
        columns[path] = node.start_mark.column + 1
        if isinstance(node, yaml.MappingNode):
            out: dict = {}
            for key_node, value_node in node.value:
                key = build(key_node, path + ("<key>",))
                if key in out:
                    problems.append(f"{file}:{key_node.start_mark.line + 1}: duplicate key {key!r}")
                lines[path + (key,)] = key_node.start_mark.line + 1
                out[key] = build(value_node, path + (key,))
                lines[path + (key,)] = key_node.start_mark.line + 1
            return out
        if isinstance(node, yaml.SequenceNode):
            return [build(item, path + (i,)) for i, item in enumerate(node.value)]
        value = yaml.SafeLoader(  # resolve the scalar with YAML's own tag rules
            ""
        ).construct_object(node, deep=True)
        if isinstance(value, str):
            value = _expand_env(value, problems, f"{file}:{node.start_mark.line + 1}")
        return value

    data = build(root, ())
    return LoadedYaml(data, lines, file, problems, columns)
