"""Runs state-store calls on one worker thread, so the event loop never waits on a disk sync.

It is also where a failing store becomes one error type: every database-level failure (server down,
database dropped, file unreadable, disk full) leaves here as StateStoreUnavailable, with the driver's
message and never the URL's password, so callers (the HTTP API answers 503) need not know SQLAlchemy.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from sqlalchemy.exc import DBAPIError

from teckochecker.errors import StateStoreUnavailable

P = ParamSpec("P")
T = TypeVar("T")
MASK = "***"


class StoreWorker:
    def __init__(self, hidden: Iterable[str] = ()) -> None:
        """``hidden``: strings never to repeat in an error (the store URL's password)."""
        # One thread: writes are serialized anyway (SQLite has one writer), and order is kept.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="state-store")
        self._hidden = [h for h in hidden if h]
        self._closed = False

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self._closed:
            raise StateStoreUnavailable("the daemon is shutting down")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))
        except DBAPIError as exc:
            raise StateStoreUnavailable(self._describe(exc)) from exc

    def _describe(self, exc: DBAPIError) -> str:
        # The driver's first line: without SQLAlchemy's SQL echo (which may hold values) and background link.
        text = str(exc.orig or exc).strip().split("\n")[0]
        for secret in self._hidden:
            text = text.replace(secret, MASK)
        return text

    def close(self) -> None:
        """Let the transaction under way finish; then stop."""
        self._closed = True
        self._executor.shutdown(wait=True, cancel_futures=True)
