"""Runs state-store calls on one worker thread, so the event loop never waits on a disk sync."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class StoreWorker:
    def __init__(self) -> None:
        # One thread: writes are serialized anyway (SQLite has one writer), and order is kept.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="state-store")

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        """Let the transaction under way finish; then stop."""
        self._executor.shutdown(wait=True, cancel_futures=True)
