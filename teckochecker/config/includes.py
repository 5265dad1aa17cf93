"""What an ``include:`` glob means: which files it matches, and whether its directory can hold drop-ins.

One place for the loader, the change watcher and `jobs add`/`jobs remove`, so the file the daemon loads,
the file whose change triggers a reload and the file `jobs remove` deletes are always the same file.
"""

from __future__ import annotations

import errno
import fnmatch
import os
from collections.abc import Iterable
from pathlib import Path


def include_matches(pattern: Path, extra: Iterable[Path] = ()) -> list[Path]:
    """The files the include glob ``pattern`` (already joined to the main file's directory) matches, sorted.

    Dot-files never match: pathlib's ``*`` would match them, but a dot-name is where an editor or
    `jobs add` keeps a half-written file. ``extra`` are paths not (yet) on disk that count if they match
    (the overlay `jobs add` validates before writing)."""
    found = set(pattern.parent.glob(pattern.name)) | {p for p in extra if matches_include(p, pattern)}
    return sorted(p for p in found if not p.name.startswith("."))


def matches_include(path: Path, pattern: Path) -> bool:
    """Whether the include glob ``pattern`` matches the file ``path`` (which need not exist)."""
    return (
        path.parent == pattern.parent and not path.name.startswith(".") and fnmatch.fnmatchcase(path.name, pattern.name)
    )


def include_directory_problem(directory: Path) -> str | None:
    """Why an include directory cannot hold drop-ins (a dangling symlink, a symlink loop, a file), or None.
    One that does not exist yet is fine: it simply holds no drop-ins."""
    if not os.path.lexists(directory):
        return None
    try:
        real = directory.resolve(strict=True)
    except FileNotFoundError:
        target = os.readlink(directory) if directory.is_symlink() else "a missing path"
        return f"is a symlink to {target}, which does not exist"
    except (RuntimeError, OSError) as exc:  # RuntimeError: a symlink loop, before Python 3.13
        if isinstance(exc, RuntimeError) or exc.errno == errno.ELOOP:
            return "cannot be used: a symlink loop"
        return f"cannot be used: {exc.strerror or exc}"
    if not real.is_dir():
        return f"is not a directory ({real} is a file)"
    return None
