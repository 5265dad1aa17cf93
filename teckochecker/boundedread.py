"""Reading a file the daemon was pointed at, without trusting what it is: regular files only, and never more
than a cap.

Config files, drop-ins, secret files, credentials and key files are named by people, and a wrong name can
be ``/dev/zero`` (reads forever), a FIFO (blocks forever), a directory or a huge log. Every one of those
reads goes through ``read_bounded``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from teckochecker.errors import UnreadableFile

_CHUNK = 64 * 1024


def read_bounded(path: Path, cap: int) -> bytes:
    """The bytes of the regular file ``path``, at most ``cap`` of them; UnreadableFile otherwise.

    The error names the file and the reason, never any of the content. Its ``reason`` reads on from a
    subject ("file X" + " is a FIFO (named pipe), not a regular file"), so callers can name the file their way."""
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer; on a regular file it
        # changes nothing. The type is checked on the opened fd, so a swapped path cannot slip past.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise UnreadableFile(path, f"not readable: {exc.strerror}", missing=True) from None
    except ValueError:  # only from a NUL in the path, which a YAML string can hold
        raise UnreadableFile(path, "the path contains a NUL character") from None
    except OSError as exc:
        raise UnreadableFile(path, f"not readable: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnreadableFile(path, f"is {_kind(mode)}, not a regular file")
        return _read_at_most(fd, path, cap)
    finally:
        os.close(fd)


def _read_at_most(fd: int, path: Path, cap: int) -> bytes:
    # cap + 1: the size in fstat can lie (procfs, a file still growing); only reading past the cap proves it.
    chunks: list[bytes] = []
    total = 0
    while total <= cap:
        try:
            chunk = os.read(fd, min(_CHUNK, cap + 1 - total))
        except OSError as exc:
            raise UnreadableFile(path, f"not readable: {exc.strerror or exc}") from None
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
    raise UnreadableFile(path, f"is larger than the limit of {format_size(cap)}; is it the right file?")


def format_size(size: int) -> str:
    """``65536`` → ``64 KiB``; ``1048576`` → ``1 MiB``."""
    for unit, factor in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} bytes"


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "a special file")
