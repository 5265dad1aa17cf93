"""Where the state lives: the default SQLite file, and the one-process lock SQLite needs."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from teckochecker.errors import StateStoreError

DB_FILE = "state.db"


def resolve_state_url(configured: str | None, environ: Mapping[str, str], cwd: Path) -> str:
    """The configured URL, else a SQLite file in systemd's $STATE_DIRECTORY, else ./.teckochecker/."""
    if configured:
        try:
            make_url(configured)
        except ArgumentError as exc:
            raise StateStoreError(f"state.url is not a valid SQLAlchemy URL: {exc}") from exc
        return configured
    state_dir = environ.get("STATE_DIRECTORY", "").split(":")[0]
    directory = Path(state_dir) if state_dir else cwd / ".teckochecker"
    return f"sqlite:///{(directory / DB_FILE).resolve()}"


def sqlite_path(url: str) -> Path | None:
    try:
        parsed = make_url(url)
    except ArgumentError:  # no SQLite file; opening it says what is wrong with the URL (schema.create_engine)
        return None
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


class SingleInstanceLock:
    """An exclusive flock beside a SQLite file: SQLite supports one daemon; use PostgreSQL for replicas."""

    def __init__(self, db_path: Path) -> None:
        # The real path: the same file reached through a symlink must meet the same lock.
        real = Path(os.path.realpath(db_path))
        self.path = real.with_name(real.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateStoreError(
                f"another teckochecker daemon already uses {self.path.with_suffix('')}; "
                "the SQLite state store supports one daemon (use PostgreSQL for several replicas)"
            ) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def ensure_parent(db_path: Path) -> None:
    try:
        db_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StateStoreError(f"cannot create the state directory {db_path.parent}: {exc.strerror}") from exc


@dataclass(frozen=True)
class StoreFileIdentity:
    """The SQLite file the daemon opened, by device and inode, to notice it being deleted or replaced.

    SQLite keeps writing to an open file that was unlinked, and a new connection would create an empty
    store at the path: either way the daemon would act on state nobody will ever see again."""

    path: Path
    device: int
    inode: int

    @classmethod
    def of(cls, db_path: Path) -> StoreFileIdentity:
        st = os.stat(db_path)
        return cls(db_path, st.st_dev, st.st_ino)

    def problem(self) -> str | None:
        """None while the path still names the file that was opened; else what happened to it."""
        try:
            st = os.stat(self.path)  # follows a symlink: re-pointing it is a replacement too
        except FileNotFoundError:
            return f"the state store file {self.path} was deleted"
        except OSError as exc:
            return f"the state store file {self.path} cannot be checked ({exc.strerror})"
        if (st.st_dev, st.st_ino) != (self.device, self.inode):
            return f"the state store file {self.path} was replaced by another file"
        return None
