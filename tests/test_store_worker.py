"""The state store's worker thread: one call at a time, urgent calls ahead of the others waiting, calls
whose caller gave up are not run, and a closed worker refuses new calls."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

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


@pytest.mark.postgres
def test_behind_a_held_lock_the_calls_queued_fail_at_once_and_the_first_after_it_goes_through(
    postgres_url: str,
) -> None:
    """Five reads queued behind a table locked by hand: the first waits its lock_timeout, the others fail at
    once instead of one timeout each; once the lock is gone, a call after PROBE_EVERY goes through."""
    import psycopg

    from teckochecker.state.schema import StoreTimeouts
    from teckochecker.state.store import StateStore

    store = StateStore.open(postgres_url, timeouts=StoreTimeouts(lock=0.5, statement=5.0))

    async def scenario() -> tuple[list[BaseException | object], float]:
        worker = StoreWorker(probe_every=0.5)
        try:
            with psycopg.connect(postgres_url.replace("postgresql+psycopg://", "postgresql://")) as locker:
                locker.execute("LOCK TABLE tc_jobs IN ACCESS EXCLUSIVE MODE")
                started = time.monotonic()
                answers = await asyncio.gather(*(worker.run(store.jobs) for _ in range(5)), return_exceptions=True)
                took = time.monotonic() - started
            await asyncio.sleep(0.6)  # past PROBE_EVERY: the next call is tried
            answers.append(await worker.run(store.jobs))
            return answers, took
        finally:
            worker.close()

    try:
        answers, took = asyncio.run(scenario())
    finally:
        store.close()
    assert all(isinstance(a, StateStoreUnavailable) for a in answers[:5]), answers
    assert "lock timeout" in str(answers[0]) and "not tried" in str(answers[1])
    assert took < 1.5, f"five calls behind the lock took {took:.1f} s (one lock_timeout is 0.5 s)"
    assert answers[5] == []
