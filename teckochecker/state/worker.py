"""Runs state-store calls on one worker thread, so the event loop never waits on a disk sync.

Calls wait in two lanes. ``run_urgent`` is for the way from a check to an action's start (recording checks,
reading a job that just fired, recording the start): those go before anything waiting in ``run``. In a
burst of webhooks the store's thread is the daemon's bottleneck, and a job that fired otherwise queued
behind hundreds of follow-ups, gauges and quiet-check times before its start could be written; measured at
1,000 jobs x 10 batches finishing within a minute, that queue held each step of a start for seconds. Order
within a lane is kept; across lanes no caller relies on it (each awaits its own calls in turn).

It is also where a failing store becomes one error type: every database-level failure (server down,
database dropped, file unreadable, disk full) leaves here as StateStoreUnavailable, with the driver's
message and never the URL's password, so callers (the HTTP API answers 503) need not know SQLAlchemy.

A stuck store (PostgreSQL cancelled a call for waiting on a lock or running too long: state.lock_timeout,
state.statement_timeout) fails the calls behind it at once, for PROBE_EVERY, instead of each waiting out its
own timeout: behind a held lock a queue of N calls took N timeouts, and an API request queued behind them
got no answer. Then one call is tried again; the first that succeeds ends it. A call failed that way was
not run at all, which its caller handles as it does any outage (nothing of it is committed).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any, ParamSpec, TypeVar

from sqlalchemy.exc import DBAPIError

from teckochecker.errors import StateStoreUnavailable

P = ParamSpec("P")
T = TypeVar("T")
MASK = "***"
# SQLSTATEs of a statement the server cancelled: lock_not_available (lock_timeout), query_canceled.
TIMED_OUT = frozenset({"55P03", "57014"})
PROBE_EVERY = 1.0
URGENT, NORMAL = 0, 1
_Call = tuple[int, int, Callable[[], Any] | None, "Future[Any] | None"]


class StoreWorker:
    def __init__(self, hidden: Iterable[str] = (), *, probe_every: float = PROBE_EVERY) -> None:
        """``hidden``: strings never to repeat in an error (the store URL's password)."""
        # One thread: writes are serialized anyway (SQLite has one writer).
        self._calls: queue.PriorityQueue[_Call] = queue.PriorityQueue()
        self._order = itertools.count()
        self._thread = threading.Thread(target=self._serve, name="state-store", daemon=True)
        self._thread.start()
        self._hidden = [h for h in hidden if h]
        self._closed = False
        # close() runs on another thread: nothing may be queued behind the stop marker, never to be answered.
        self._closing = threading.Lock()
        # Why the store is stuck (the last timeout's message) and until when calls fail untried; the thread's own.
        self._probe_every = probe_every
        self._stuck: str | None = None
        self._untried_until = 0.0

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._submit(NORMAL, functools.partial(fn, *args, **kwargs))

    async def run_urgent(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Like ``run``, ahead of every call waiting in ``run`` (module docstring)."""
        return await self._submit(URGENT, functools.partial(fn, *args, **kwargs))

    async def _submit(self, lane: int, call: Callable[[], T]) -> T:
        future: Future[T] = Future()
        with self._closing:
            if self._closed:
                raise StateStoreUnavailable("the daemon is shutting down")
            self._calls.put((lane, next(self._order), call, future))
        try:
            return await asyncio.wrap_future(future)
        except DBAPIError as exc:
            raise StateStoreUnavailable(self._describe(exc)) from exc

    def _serve(self) -> None:
        while True:
            _, _, call, future = self._calls.get()
            if call is None or future is None:
                return
            if not future.set_running_or_notify_cancel():  # its caller was cancelled while it waited
                continue
            if self._stuck is not None and time.monotonic() < self._untried_until:
                future.set_exception(StateStoreUnavailable(f"{self._stuck} (a moment ago; not tried)"))
                continue
            try:
                result = call()
            except BaseException as exc:
                self._note_failure(exc)
                future.set_exception(exc)
            else:
                self._stuck = None
                future.set_result(result)

    def _note_failure(self, exc: BaseException) -> None:
        if isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) in TIMED_OUT:
            self._stuck = self._describe(exc)
            self._untried_until = time.monotonic() + self._probe_every

    def _describe(self, exc: DBAPIError) -> str:
        # The driver's first line: without SQLAlchemy's SQL echo (which may hold values) and background link.
        text = str(exc.orig or exc).strip().split("\n")[0]
        for secret in self._hidden:
            text = text.replace(secret, MASK)
        return text

    def close(self) -> None:
        """Let the transaction under way finish; then stop. Calls still waiting are cancelled."""
        with self._closing:
            self._closed = True
            while True:
                try:
                    _, _, _, future = self._calls.get_nowait()
                except queue.Empty:
                    break
                if future is not None:
                    future.cancel()
            self._calls.put((-1, -1, None, None))
        self._thread.join()
