"""YAML files → plain Python data plus the FILE:LINE:COL of every key and value.

PyYAML's safe composer gives nodes with marks; we build the data ourselves so that duplicate keys are
errors (PyYAML silently keeps the last one) and so that every path in the document can be located.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

import yaml

from teckochecker.diagnostics import Diagnostic, Mark, Path

MAX_FILE_BYTES = 1024 * 1024
# Aliases can make a small file expand enormously ("billion laughs"); nobody needs this many values.
MAX_VALUES = 200_000


@dataclass
class Document:
    """One loaded file: its data, and where each path sits in it."""

    file: str
    data: Any
    marks: dict[Path, Mark] = field(default_factory=dict)

    def mark_for(self, path: Path) -> Mark:
        """The mark of ``path``, or of its nearest ancestor that has one (e.g. for a missing key)."""
        for end in range(len(path), -1, -1):
            mark = self.marks.get(tuple(path[:end]))
            if mark is not None:
                return mark
        return Mark(self.file, 1, 1)


class _Builder:
    def __init__(self, file: str) -> None:
        self.doc = Document(file=file, data=None)
        self.diagnostics: list[Diagnostic] = []
        self._count = 0
        # Only its scalar constructors are used: tags were already resolved by the composer.
        self._scalars = yaml.SafeLoader("")

    def mark(self, node: yaml.Node) -> Mark:
        m = node.start_mark
        return Mark(self.doc.file, m.line + 1, m.column + 1)

    def build(self, node: yaml.Node, path: Path) -> Any:
        self._count += 1
        if self._count > MAX_VALUES:
            raise _TooLarge(self.mark(node))
        self.doc.marks.setdefault(path, self.mark(node))
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self._scalars.construct_object(node, deep=True)

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        first_seen: dict[Any, Mark] = {}
        for key_node, value_node in _merged_pairs(node):
            key = self.build(key_node, (*path, "<key>"))
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                self.diagnostics.append(Diagnostic(self.mark(key_node), path, "a mapping key must be a plain value"))
                continue
            key_path = (*path, key if isinstance(key, (str, int)) else str(key))
            if key in first_seen:
                first = first_seen[key]
                self.diagnostics.append(
                    Diagnostic(self.mark(key_node), key_path, f"duplicate key (first defined at line {first.line})")
                )
                continue
            first_seen[key] = self.mark(key_node)
            self.doc.marks[key_path] = self.mark(key_node)
            result[key] = self.build(value_node, key_path)
        self.doc.marks.pop((*path, "<key>"), None)
        return result


class _TooLarge(Exception):
    def __init__(self, mark: Mark) -> None:
        self.mark = mark


def _merged_pairs(node: yaml.MappingNode) -> Iterator[tuple[yaml.Node, yaml.Node]]:
    """Mapping pairs with YAML merge keys (``<<: *defaults``) expanded; explicit keys win over merged ones."""
    explicit = [(k, v) for k, v in node.value if k.tag != "tag:yaml.org,2002:merge"]
    explicit_keys = {k.value for k, _ in explicit if isinstance(k, yaml.ScalarNode)}
    merged: list[tuple[yaml.Node, yaml.Node]] = []
    for key_node, value_node in node.value:
        if key_node.tag != "tag:yaml.org,2002:merge":
            continue
        sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
        for source in sources:
            if isinstance(source, yaml.MappingNode):
                merged.extend((k, v) for k, v in _merged_pairs(source) if k.value not in explicit_keys)
    yield from merged
    yield from explicit


def load_text(text: str, file: str) -> tuple[Document, list[Diagnostic]]:
    """Parse ``text``; return the document and the problems found (an empty data on syntax errors)."""
    builder = _Builder(file)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = Mark(file, mark.line + 1, mark.column + 1) if mark else Mark(file, 1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        return builder.doc, [Diagnostic(where, (), f"YAML syntax error: {problem}")]
    except yaml.reader.ReaderError as exc:
        # A character YAML forbids (NUL, most control characters): PyYAML's message spans two lines and
        # gives an offset, so say which character and where, on the one line a diagnostic has.
        code = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or "\0")
        message = f"YAML error: character U+{code:04X} is not allowed in a YAML file"
        return builder.doc, [Diagnostic(_mark_at(text, exc.position, file), (), message)]
    except yaml.YAMLError as exc:
        return builder.doc, [Diagnostic(Mark(file, 1, 1), (), f"YAML error: {' '.join(str(exc).split())}")]
    if root is None:
        builder.doc.data = {}
        return builder.doc, []
    try:
        # An explicit empty document ("---", "~", "null") means what an empty file means.
        built = builder.build(root, ())
        builder.doc.data = {} if built is None else built
    except _TooLarge as exc:
        builder.doc.data = None
        return builder.doc, [Diagnostic(exc.mark, (), f"the document expands to more than {MAX_VALUES} values")]
    except yaml.constructor.ConstructorError as exc:
        builder.doc.data = None
        mark = exc.problem_mark
        where = Mark(file, mark.line + 1, mark.column + 1) if mark else Mark(file, 1, 1)
        return builder.doc, [Diagnostic(where, (), f"YAML error: {exc.problem}")]
    return builder.doc, builder.diagnostics


def _mark_at(text: str, offset: int, file: str) -> Mark:
    line_start = text.rfind("\n", 0, offset) + 1
    return Mark(file, text.count("\n", 0, offset) + 1, offset - line_start + 1)


def load_file(path: FsPath) -> tuple[Document, list[Diagnostic]]:
    """Read and parse one file; unreadable or oversized files are reported, not raised."""
    file = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            return Document(file, None), [
                Diagnostic(Mark(file, 1, 1), (), f"file is larger than {MAX_FILE_BYTES} bytes")
            ]
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Document(file, None), [Diagnostic(Mark(file, 1, 1), (), "file not found")]
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return Document(file, None), [Diagnostic(Mark(file, 1, 1), (), f"cannot read file: {reason}")]
    return load_text(text, file)
