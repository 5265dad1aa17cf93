"""The state store's worker thread: one call at a time, urgent calls ahead of the others waiting, calls
whose caller gave up are not run, and a closed worker refuses new calls."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest

from teckochecker.errors import StateStoreUnavailable
from teckochecker.state.worker import StoreWorker


async def _blocked(worker: StoreWorker) -> tuple[threading.Event, asyncio.Task[None]]:
    """Occupy the worker's thread until the returned event is set."""
    started, release = threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        release.wait(10)

    task = asyncio.ensure_future(worker.run(hold))
    assert await asyncio.to_thread(started.wait, 10)
    return release, task


def test_urgent_calls_go_ahead_of_the_waiting_ones_and_each_lane_keeps_its_order() -> None:
    async def scenario() -> list[str]:
        worker = StoreWorker()
        ran: list[str] = []
        release, holding = await _blocked(worker)
        calls = [asyncio.ensure_future(worker.run(ran.append, name)) for name in ("follow-1", "gauges", "follow-2")]
        calls += [asyncio.ensure_future(worker.run_urgent(ran.append, name)) for name in ("record", "start")]
        await asyncio.sleep(0.05)  # every call is queued before the thread is free
        release.set()
        await asyncio.gather(holding, *calls)
        worker.close()
        return ran

    assert asyncio.run(scenario()) == ["record", "start", "follow-1", "gauges", "follow-2"]


def test_a_call_whose_caller_gave_up_is_not_run_and_errors_reach_the_caller() -> None:
    async def scenario() -> tuple[list[str], str]:
        worker = StoreWorker()
        ran: list[str] = []
        release, holding = await _blocked(worker)
        given_up = asyncio.ensure_future(worker.run(ran.append, "given up"))
        kept = asyncio.ensure_future(worker.run(ran.append, "kept"))
        await asyncio.sleep(0.05)
        given_up.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await given_up
        for _ in range(3):  # the cancellation reaches the worker's side in a callback of the loop
            await asyncio.sleep(0)
        release.set()
        await asyncio.gather(holding, kept)

        def fail() -> None:
            raise ValueError("the store said no")

        with pytest.raises(ValueError) as raised:
            await worker.run_urgent(fail)
        worker.close()
        return ran, str(raised.value)

    ran, error = asyncio.run(scenario())
    assert ran == ["kept"] and error == "the store said no"


def test_closing_cancels_what_waits_and_refuses_new_calls() -> None:
    async def scenario() -> None:
        worker = StoreWorker()
        ran: list[str] = []
        release, holding = await _blocked(worker)
        waiting = asyncio.ensure_future(worker.run(ran.append, "never"))
        await asyncio.sleep(0.05)
        closing = asyncio.ensure_future(asyncio.to_thread(worker.close))
        await asyncio.sleep(0.05)
        release.set()  # the call under way finishes; then the thread stops
        await asyncio.gather(holding, closing)
        with pytest.raises(asyncio.CancelledError):
            await waiting
        with pytest.raises(StateStoreUnavailable, match="shutting down"):
            await worker.run(ran.append, "late")
        assert ran == []

    asyncio.run(scenario())
