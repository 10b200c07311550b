"""YAML documents with the line of every value, so errors can name file and line."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from charter.errors import Problem


@dataclass
class Document:
    """One YAML document: its data and the line (1-based) of each JSON pointer in it."""

    file: str
    line: int
    data: Any
    lines: dict[str, int] = field(default_factory=dict)

    def line_of(self, pointer: str) -> int:
        """The line of ``pointer`` or of its nearest ancestor present in the document."""
        while True:
            if pointer in self.lines:
                return self.lines[pointer]
            if not pointer:
                return self.line
            pointer = pointer.rsplit("/", 1)[0]


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


class _Builder:
    def __init__(self) -> None:
        self.lines: dict[str, int] = {}
        self._constructor = yaml.SafeLoader("")

    def build(self, node: yaml.Node, pointer: str) -> Any:
        self.lines[pointer] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            self._constructor.flatten_mapping(node)
            result: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self._constructor.construct_object(key_node, deep=True)
                if not isinstance(key, str | int | float | bool) or key is None:
                    raise yaml.MarkedYAMLError(
                        problem=f"mapping key {key!r} is not a plain scalar",
                        problem_mark=key_node.start_mark,
                    )
                key = str(key) if not isinstance(key, str) else key
                if key in result:
                    raise yaml.MarkedYAMLError(
                        problem=f"duplicate key {key!r}", problem_mark=key_node.start_mark
                    )
                child = f"{pointer}/{_escape(key)}"
                result[key] = self.build(value_node, child)
                # Point at the key, where a reader looks for the field.
                self.lines[child] = key_node.start_mark.line + 1
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, f"{pointer}/{i}") for i, item in enumerate(node.value)]
        value = self._constructor.construct_object(node, deep=True)
        if isinstance(value, str) and "${" in value:
            return expand_environment(value, node)
        return value


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_environment(value: str, node: yaml.Node) -> str:
    """Replace ``${NAME}`` and ``${NAME:-default}`` with environment values."""

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        unset.append(name)
        return ""

    unset: list[str] = []
    expanded = _VARIABLE.sub(replace, value)
    if unset:
        raise UnsetVariable(unset[0], node.start_mark.line + 1)
    return expanded


class UnsetVariable(Exception):
    """A ``${NAME}`` without a default names a variable that is not set."""

    def __init__(self, name: str, line: int) -> None:
        super().__init__(name)
        self.name = name
        self.line = line


def read_documents(path: Path, shown_as: str) -> tuple[list[Document], list[Problem]]:
    """Every document of a YAML file, or the syntax problem that stops reading it."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [], [Problem(shown_as, None, f"cannot read the file: {exc}", "save it as UTF-8")]
    documents: list[Document] = []
    try:
        for node in yaml.compose_all(text, Loader=yaml.SafeLoader):
            if node is None:
                continue
            builder = _Builder()
            data = builder.build(node, "")
            documents.append(Document(shown_as, node.start_mark.line + 1, data, builder.lines))
    except UnsetVariable as exc:
        return [], [
            Problem(
                shown_as,
                exc.line,
                f"environment variable {exc.name} is not set",
                f"set {exc.name}, or write ${{{exc.name}:-default}}",
            )
        ]
    except yaml.MarkedYAMLError as exc:
        # The context mark is where the broken construct starts, which is where to look.
        mark = exc.context_mark or exc.problem_mark
        line = mark.line + 1 if mark else None
        message = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        return [], [Problem(shown_as, line, f"invalid YAML: {message}", "fix the YAML syntax")]
    except yaml.YAMLError as exc:
        return [], [Problem(shown_as, None, f"invalid YAML: {exc}", "fix the YAML syntax")]
    return documents, []
