"""Writing a file so that a reader (the daemon, a crash, a concurrent editor) sees the old one or the new
one, never half of either: a dot-named temporary file beside it, fsynced, then renamed or linked into place,
then the directory fsynced. `jobs add` and `secrets rotate` both write through here."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path


def write_atomically(
    dir_fd: int,
    name: str,
    text: str,
    *,
    replace: bool,
    mode: int = 0o644,
    before_commit: Callable[[int], None] | None = None,
) -> None:
    """Write ``text`` as ``name`` in the directory ``dir_fd`` (names relative to it, so a directory swapped
    for a symlink meanwhile is not followed).

    ``replace`` renames over an existing file; without it the file is linked into place, which fails with
    FileExistsError if the name exists (even one made by a writer that ignores every lock).
    ``before_commit(fd)`` runs on the written temporary file before it is fsynced (e.g. to copy the old
    file's mode and owner); whatever it raises leaves the target untouched."""
    # A dot-name never matches an include glob, so the daemon never reads a half-written file.
    temp = f".{name}.tmp-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp, dir_fd=dir_fd)  # left by a crashed process that had our pid
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:  # the text exactly: CRLF stays CRLF
            fh.write(text)
            fh.flush()
            if before_commit is not None:
                before_commit(fh.fileno())
            os.fsync(fh.fileno())
        if replace:
            os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        else:
            os.link(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp, dir_fd=dir_fd)
    os.fsync(dir_fd)  # so the rename (or link) itself survives a crash


@contextlib.contextmanager
def open_directory(directory: Path) -> Iterator[int]:
    """A read-only fd of ``directory``, for write_atomically and fsync_directory; closed on exit."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def fsync_directory(directory: Path) -> None:
    """Make a rename, link or unlink in ``directory`` survive a crash."""
    with open_directory(directory) as fd:
        os.fsync(fd)
