"""YAML files → plain Python data plus the FILE:LINE:COL of every key and value.

PyYAML's safe composer gives nodes with marks; we build the data ourselves so that duplicate keys are
errors (PyYAML silently keeps the last one) and so that every path in the document can be located.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

import yaml

from teckochecker.boundedread import read_bounded
from teckochecker.config.diagnostics import Diagnostic, Mark, Path
from teckochecker.errors import UnreadableFile

MAX_FILE_BYTES = 1024 * 1024
# Aliases can make a small file expand enormously ("billion laughs"); nobody needs this many values.
MAX_VALUES = 200_000
# Composing and building recurse once per level; far below Python's recursion limit, far above any real config.
MAX_DEPTH = 100


@dataclass
class Document:
    """One loaded file: its data, and where each path sits in it."""

    file: str
    data: Any
    marks: Mapping[Path, Mark] = field(default_factory=dict)

    def mark_for(self, path: Path) -> Mark:
        """The mark of ``path``, or of its nearest ancestor that has one (e.g. for a missing key)."""
        for end in range(len(path), -1, -1):
            mark = self.marks.get(tuple(path[:end]))
            if mark is not None:
                return mark
        return Mark(self.file, 1, 1)


class _Builder:
    def __init__(self, file: str) -> None:
        self._marks: dict[Path, Mark] = {}
        self.doc = Document(file=file, data=None, marks=self._marks)
        self.diagnostics: list[Diagnostic] = []
        self._count = 0
        # Only its scalar constructors are used: tags were already resolved by the composer.
        self._scalars = yaml.SafeLoader("")

    def mark(self, node: yaml.Node) -> Mark:
        m = node.start_mark
        return Mark(self.doc.file, m.line + 1, m.column + 1)

    def build(self, node: yaml.Node, path: Path, inside: tuple[yaml.Node, ...] = ()) -> Any:
        """``inside``: the collections this node sits in; an alias back to one of them would never end."""
        self._count += 1
        if self._count > MAX_VALUES:
            raise _Refused(self.mark(node), path, f"the document expands to more than {MAX_VALUES} values")
        if len(inside) >= MAX_DEPTH:
            # Aliases can nest deeper than the text does, so the composer's check is not enough.
            raise _Refused(self.mark(node), path, f"nesting deeper than {MAX_DEPTH} levels")
        if any(node is outer for outer in inside):
            raise _Refused(self.mark(node), path, "alias refers to itself (a value that contains itself)")
        self._marks.setdefault(path, self.mark(node))
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path, (*inside, node))
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i), (*inside, node)) for i, item in enumerate(node.value)]
        try:
            return self._scalars.construct_object(node, deep=True)
        except (ValueError, OverflowError) as exc:
            # A 5000-digit number or a 31st of February: PyYAML's constructors raise plain ValueErrors.
            reason = str(exc).split(":")[0]
            raise _Refused(self.mark(node), path, f"invalid value: {reason[:1].lower()}{reason[1:]}") from None

    def _mapping(self, node: yaml.MappingNode, path: Path, inside: tuple[yaml.Node, ...]) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        first_seen: dict[Any, Mark] = {}
        for key_node, value_node in self._merged_pairs(node, path, inside):
            key = self.build(key_node, (*path, "<key>"), inside)
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
            self._marks[key_path] = self.mark(key_node)
            result[key] = self.build(value_node, key_path, inside)
        self._marks.pop((*path, "<key>"), None)
        return result

    def _merged_pairs(
        self, node: yaml.MappingNode, path: Path, inside: tuple[yaml.Node, ...]
    ) -> Iterator[tuple[yaml.Node, yaml.Node]]:
        """Mapping pairs with YAML merge keys (``<<: *defaults``) expanded; explicit keys win over merged ones."""
        explicit = [(k, v) for k, v in node.value if k.tag != "tag:yaml.org,2002:merge"]
        explicit_keys = {k.value for k, _ in explicit if isinstance(k, yaml.ScalarNode)}
        merged: list[tuple[yaml.Node, yaml.Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag != "tag:yaml.org,2002:merge":
                continue
            sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for source in sources:
                if not isinstance(source, yaml.MappingNode):
                    continue
                if len(inside) >= MAX_DEPTH:
                    raise _Refused(self.mark(key_node), path, f"merges nest deeper than {MAX_DEPTH} levels")
                if any(source is outer for outer in inside):
                    raise _Refused(self.mark(key_node), path, "alias refers to itself (a mapping that merges itself)")
                pairs = self._merged_pairs(source, path, (*inside, source))
                merged.extend((k, v) for k, v in pairs if k.value not in explicit_keys)
        yield from merged
        yield from explicit


class _Refused(Exception):
    """The document is well-formed YAML but would expand without bound; reported at ``mark``."""

    def __init__(self, mark: Mark, path: Path, message: str) -> None:
        self.diagnostic = Diagnostic(mark, path, message)


class _TooDeep(yaml.MarkedYAMLError):
    pass


class _DepthLimitedLoader(yaml.SafeLoader):
    """PyYAML composes nested nodes by recursion; past MAX_DEPTH levels it is refused before Python's limit."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self._depth >= MAX_DEPTH:
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            raise _TooDeep(None, None, f"nesting deeper than {MAX_DEPTH} levels", mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _compose(text: str) -> yaml.Node | None:
    """The node graph of ``text``. libyaml, when PyYAML was built with it, is about ten times faster on a file
    with thousands of jobs; it is used only for documents that parse cleanly within the depth limit (its
    composer recurses in C, unguarded). Anything else is parsed again by PyYAML's own parser, so the
    messages and marks of errors are the same either way."""
    fast = getattr(yaml, "CSafeLoader", None)
    if fast is not None:
        try:
            if _depth_within_limit(yaml.parse(text, Loader=fast)):
                return yaml.compose(text, Loader=fast)
        except yaml.YAMLError:
            pass
    return yaml.compose(text, Loader=_DepthLimitedLoader)


def _depth_within_limit(events: Iterator[yaml.Event]) -> bool:
    depth = 0
    for event in events:
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                return False
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return True


def load_text(text: str, file: str) -> tuple[Document, list[Diagnostic]]:
    """Parse ``text``; return the document and the problems found (an empty data on syntax errors)."""
    builder = _Builder(file)
    try:
        root = _compose(text)
    except _TooDeep as exc:
        line, column = (exc.problem_mark.line, exc.problem_mark.column) if exc.problem_mark else (0, 0)
        return builder.doc, [Diagnostic(Mark(file, line + 1, column + 1), (), str(exc.problem))]
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
    except _Refused as exc:
        builder.doc.data = None
        return builder.doc, [exc.diagnostic]
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
        text = read_bounded(path, MAX_FILE_BYTES).decode("utf-8")
    except UnreadableFile as exc:
        message = "file not found" if exc.missing else f"file {exc.reason}"
        return Document(file, None), [Diagnostic(Mark(file, 1, 1), (), message)]
    except UnicodeDecodeError as exc:
        return Document(file, None), [Diagnostic(Mark(file, 1, 1), (), f"file is not UTF-8 text ({exc.reason})")]
    return load_text(text, file)
