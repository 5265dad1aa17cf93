"""Notices config changes: watchfiles on the config's directories, SIGHUP, and a periodic checksum.

All three only *request* a reload; the daemon coalesces requests and validates the whole config before
applying anything. Directories are watched, not files, so editors that save by rename and Kubernetes
ConfigMap symlink swaps are seen; the checksum poll catches what events miss (network filesystems).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import watchfiles

from teckochecker.boundedread import read_bounded
from teckochecker.config.includes import include_matches
from teckochecker.config.loader import MAX_FILE_BYTES
from teckochecker.errors import UnreadableFile

CHECKSUM_INTERVAL = 30.0
# Changes are grouped until the directory has been quiet this long (an editor's save is a burst of
# events), but never for longer than the debounce.
WATCH_QUIET_MS = 400
WATCH_DEBOUNCE_MS = 1600


def config_checksum(main: Path, include: Iterable[str]) -> str:
    """A digest of the main file and every drop-in its include globs match now (through symlinks).

    It reads files: the daemon calls it off the event loop."""
    digest = hashlib.sha256()
    for path in [main, *_matches(main, include)]:
        digest.update(str(path).encode() + b"\0")
        try:
            # The loader's own bounded read: a FIFO, a device or a huge file is refused at once, not read.
            digest.update(read_bounded(path, MAX_FILE_BYTES))
        except UnreadableFile as exc:
            digest.update(f"<unreadable: {exc}>".encode())
        digest.update(b"\0")
    return digest.hexdigest()


def _matches(main: Path, include: Iterable[str]) -> list[Path]:
    return sorted({path for pattern in include for path in include_matches(main.parent / pattern)})


def watched_dirs(main: Path, include: Iterable[str]) -> list[Path]:
    dirs = [main.parent, *((main.parent / pattern).parent for pattern in include)]
    return [d for d in dict.fromkeys(p.resolve() for p in dirs) if d.is_dir()]


class Reloader:
    """Runs the watcher and the checksum poll; calls ``request(reason)`` when a reload may be due."""

    def __init__(self, request: Callable[[str], None], logger: logging.Logger) -> None:
        self._request = request
        self._log = logger
        self._watch_task: asyncio.Task[None] | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self._watching: list[Path] = []
        self._stop_watch = asyncio.Event()

    def start(self, dirs: list[Path]) -> None:
        self._poll_task = asyncio.create_task(self._poll(), name="config-checksum-poll")
        self.watch(dirs)

    def watch(self, dirs: list[Path]) -> None:
        """(Re)start the watcher when the set of directories changed (e.g. a new include)."""
        if dirs == self._watching and self._watch_task and not self._watch_task.done():
            return
        if self._watch_task:
            self._stop_watch.set()
        self._stop_watch = asyncio.Event()
        self._watching = dirs
        if dirs:
            self._watch_task = asyncio.create_task(self._watch(dirs, self._stop_watch), name="config-watch")

    async def stop(self) -> None:
        self._stop_watch.set()
        for task in (self._poll_task, self._watch_task):
            if task:
                task.cancel()
        await asyncio.gather(*(t for t in (self._poll_task, self._watch_task) if t), return_exceptions=True)

    async def _watch(self, dirs: list[Path], stop: asyncio.Event) -> None:
        try:
            async for changes in watchfiles.awatch(
                *dirs,
                stop_event=stop,
                debounce=WATCH_DEBOUNCE_MS,
                step=WATCH_QUIET_MS,
                recursive=False,
                raise_interrupt=False,
                # No timeout: by default the watching thread returns every 5 s only to be started again.
                # It still looks at the stop event every WATCH_QUIET_MS.
                rust_timeout=0,
            ):
                self._log.debug("config directory changed: %s", sorted(p for _, p in changes))
                self._request("file change")
        except (OSError, RuntimeError) as exc:
            # The checksum poll still covers us; say so rather than die.
            self._log.warning(
                "watching %s stopped (%s); relying on the %ds checksum check",
                ", ".join(map(str, dirs)),
                exc,
                int(CHECKSUM_INTERVAL),
            )

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(CHECKSUM_INTERVAL)
            self._request("checksum poll")
