"""Runs one blocking call on its own daemon thread and awaits its result from the event loop.

Why not asyncio.to_thread: the default executor's threads are joined when the loop closes, so a call that
never returns (a read that hangs on a FIFO or a dead network mount) would keep SIGTERM from ending the
process. A daemon thread is abandoned at exit instead; the event loop never waits on it either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


async def run_off_loop(name: str, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` on a new daemon thread called ``name``; its exception, if any, is raised here."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():  # the awaiting task was cancelled (shutdown): nobody wants the result
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:  # handed to the awaiting task, which decides what it means
            _call_back(loop, settle, None, exc)
        else:
            _call_back(loop, settle, result, None)

    threading.Thread(target=work, name=name, daemon=True).start()
    return await future


def _call_back(loop: asyncio.AbstractEventLoop, settle: Callable[..., None], *args: object) -> None:
    # RuntimeError: the loop has closed (the daemon exited while this call ran); nobody is left to tell.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(settle, *args)
