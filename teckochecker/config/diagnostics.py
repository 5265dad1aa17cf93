"""A problem found in a config file, located as FILE:LINE:COL and by its path in the document."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

PathPart = str | int
Path = tuple[PathPart, ...]


@dataclass(frozen=True, order=True)
class Mark:
    file: str
    line: int  # 1-based
    column: int  # 1-based

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class Diagnostic:
    mark: Mark
    path: Path
    message: str

    def __str__(self) -> str:
        where = format_path(self.path)
        return f"{self.mark}: {where}: {self.message}" if where else f"{self.mark}: {self.message}"


def format_path(path: Sequence[PathPart]) -> str:
    """``("jobs", 0, "source", "type")`` → ``jobs[0].source.type``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            # A key is the user's text: a line break or control character in it must not break the one line.
            name = str(part) if str(part).isprintable() else repr(part)
            out += f".{name}" if out else name
    return out
