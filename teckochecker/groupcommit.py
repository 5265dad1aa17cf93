"""Checks recorded together: the ``record_check`` calls that arrive while one transaction is being written
go into the next one, as one ``StateStore.record_checks`` (group commit).

On SQLite every commit is an fsync (``synchronous=FULL``, docs/reliability.md, SQLite) and the store has one
writer thread, so one transaction per check caps the daemon at a few hundred checks with news per second.
A burst of webhooks (every batch finishing within a minute) is exactly that; grouped, a burst costs a few
commits. Nothing waits on purpose: a lone check is written at once, alone. Each job's observations and its
outbox rows still commit in the same transaction, so a trigger still fires exactly once.
"""

from __future__ import annotations

import asyncio

from teckochecker.state.models import JobState
from teckochecker.state.store import CheckToRecord, StateStore
from teckochecker.state.worker import StoreWorker

# A bound on one transaction: a reload of 10,000 jobs all seeing news at once is written in a few of these.
MAX_GROUP = 200


class CheckRecorder:
    def __init__(self, store: StateStore, worker: StoreWorker) -> None:
        self._store = store
        self._db = worker
        self._waiting: list[tuple[CheckToRecord, asyncio.Future[JobState]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def record(self, check: CheckToRecord) -> JobState:
        """The job's state after ``check`` is committed; raises what the store raised for its transaction."""
        future: asyncio.Future[JobState] = asyncio.get_running_loop().create_future()
        self._waiting.append((check, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_all(), name="record-checks")
        return await future

    async def _write_all(self) -> None:
        try:
            while self._waiting:
                group, self._waiting = self._waiting[:MAX_GROUP], self._waiting[MAX_GROUP:]
                if len(group) > 1 and not await self._write(group, report_errors=False):
                    # One job's problem must not fail the others' checks: write them one by one instead.
                    for one in group:
                        await self._write([one], report_errors=True)
                elif len(group) == 1:
                    await self._write(group, report_errors=True)
        finally:
            self._writer = None

    async def _write(self, group: list[tuple[CheckToRecord, asyncio.Future[JobState]]], *, report_errors: bool) -> bool:
        try:
            states = await self._db.run_urgent(self._store.record_checks, [check for check, _ in group])
        except Exception as exc:
            if report_errors:
                for _, future in group:
                    if not future.done():
                        future.set_exception(exc)
            return False
        for (_, future), state in zip(group, states, strict=True):
            if not future.done():  # its tick may have been cancelled by shutdown meanwhile
                future.set_result(state)
        return True
