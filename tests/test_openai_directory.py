"""The OpenAI account listing (directory.py) against the fake OpenAI server, with an injected clock.

The list pages are real HTTP requests to the fake; a test holds a sweep by closing the listing's gate, so
"a check answers while the next listing is read" is shown with events, not timing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Iterator, Mapping
from typing import Any, TypeVar

import httpx
import pytest
from clock import FakeClock
from fakes import FakeOpenAI
from teckochecker_openai.directory import FETCH_BURST, FETCH_RATE, BatchDirectory, Lookup

API_KEY = "sk-directory-test-0123456789"
MAX_AGE = 10.0
T = TypeVar("T")


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=API_KEY) as server:
        yield server


class Listing:
    """``list_page`` over real HTTP to the fake. Pages wait for ``gate`` while it is closed; ``finished`` is set
    when a page says there is no more."""

    def __init__(self, fake: FakeOpenAI) -> None:
        self.base_url = fake.base_url
        self.client: httpx.AsyncClient | None = None
        self.gate = asyncio.Event()
        self.gate.set()
        self.finished = asyncio.Event()
        self.pages = 0

    async def __call__(self, after: str | None) -> Mapping[str, Any]:
        await self.gate.wait()
        if self.client is None:
            self.client = httpx.AsyncClient(base_url=self.base_url + "/", trust_env=False)
        params = {"limit": "100", **({"after": after} if after else {})}
        response = await self.client.get("batches", params=params, headers={"Authorization": f"Bearer {API_KEY}"})
        response.raise_for_status()
        self.pages += 1
        page: dict[str, Any] = response.json()
        if not page["has_more"]:
            self.finished.set()
        return page

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()


def run(listing: Listing, work: Awaitable[T]) -> T:
    async def main() -> T:
        try:
            return await asyncio.wait_for(work, 60)  # a check that hangs fails the test instead of hanging it
        finally:
            await listing.aclose()

    return asyncio.run(main())


def statuses(lookup: Lookup) -> dict[str, str]:
    return {batch_id: batch["status"] for batch_id, batch in lookup.listed.items()}


def test_a_sweep_stops_once_it_has_seen_every_wanted_batch(fake: FakeOpenAI) -> None:
    now = int(time.time())
    for _ in range(400):
        fake.add_batch(status="completed", created_at=now - 1000)  # older batches nobody watches
    wanted = [fake.add_batch(status="in_progress", created_at=now) for _ in range(150)]
    listing, clock = Listing(fake), FakeClock()
    directory = BatchDirectory(clock.monotonic, MAX_AGE)

    lookup = run(listing, directory.lookup(wanted, listing))
    assert statuses(lookup) == dict.fromkeys(wanted, "in_progress") and lookup.fetch == []
    assert listing.pages == 2  # of 6: the 150 newest are on the first two pages
    assert fake.request_kinds() == {"list": 2, "retrieve": 0, "other": 0}


def test_a_sweep_stops_once_it_has_passed_the_oldest_wanted_batch(fake: FakeOpenAI) -> None:
    now = int(time.time())
    for _ in range(400):
        fake.add_batch(status="completed", created_at=now - 1000)
    wanted = [fake.add_batch(status="in_progress", created_at=now) for _ in range(150)]
    listing, clock = Listing(fake), FakeClock()
    directory = BatchDirectory(clock.monotonic, MAX_AGE)

    async def scenario() -> Lookup:
        await directory.lookup(wanted, listing)  # learns when each was created
        fake.remove_batch(wanted[0])  # gone from the listing: no page will show it
        clock.advance(MAX_AGE)
        return await directory.lookup(wanted, listing)

    lookup = run(listing, scenario())
    # The second sweep stops on the page that goes past the oldest wanted batch, not at the end of the list.
    assert listing.pages == 2 + 2
    assert lookup.fetch == [wanted[0]]  # the listing cannot show it: fetched on its own (then a 404)
    assert set(lookup.listed) == set(wanted[1:])


def test_a_check_answers_from_the_last_listing_while_the_next_is_read(fake: FakeOpenAI) -> None:
    wanted = [fake.add_batch(status="in_progress") for _ in range(250)]
    listing, clock = Listing(fake), FakeClock()
    directory = BatchDirectory(clock.monotonic, MAX_AGE, refresh_wait=0.05)

    async def scenario() -> tuple[Lookup, Lookup, int]:
        await directory.lookup(wanted, listing)
        await listing.finished.wait()  # the first sweep read everything
        fake.set_status(wanted[-1], "completed", completed=10, failed=0)
        clock.advance(MAX_AGE)
        listing.gate.clear()  # the next sweep cannot read a page until the test opens the gate
        listing.finished.clear()
        while_refreshing = await directory.lookup(wanted, listing)
        pages_then = listing.pages
        listing.gate.set()
        await listing.finished.wait()
        return while_refreshing, await directory.lookup(wanted, listing), pages_then

    while_refreshing, after, pages_then = run(listing, scenario())
    assert pages_then == 3  # the check did not wait for the held sweep
    assert statuses(while_refreshing) == dict.fromkeys(wanted, "in_progress") and while_refreshing.fetch == []
    assert statuses(after)[wanted[-1]] == "completed"  # the finished batch is seen by the next sweep
    assert listing.pages == 6 and fake.request_kinds()["retrieve"] == 0


def test_a_batch_first_wanted_right_after_a_sweep_its_listener_saw_is_answered_from_that_sweep(
    fake: FakeOpenAI,
) -> None:
    """Discovery's sweep lists a group nobody watched yet; the job made of it is checked at once, before the
    next sweep is due: it must be answered from that listing, not left unobserved for its whole interval."""
    now = int(time.time())
    fake.add_batch(status="in_progress", created_at=now - 10)
    found = [fake.add_batch(status="completed", created_at=now) for _ in range(2)]
    listing, clock = Listing(fake), FakeClock()
    directory = BatchDirectory(clock.monotonic, MAX_AGE)
    directory.listen(lambda page, batches: False)

    async def scenario() -> Lookup:
        await directory.refresh(listing)
        clock.advance(0.5)  # well before the next sweep is due
        return await directory.lookup(found, listing)

    lookup = run(listing, scenario())
    assert statuses(lookup) == dict.fromkeys(found, "completed") and lookup.fetch == []
    assert fake.request_kinds() == {"list": 1, "retrieve": 0, "other": 0}


def test_a_start_does_not_fan_out_into_one_request_per_batch(fake: FakeOpenAI) -> None:
    jobs = [[fake.add_batch(status="in_progress") for _ in range(10)] for _ in range(200)]
    listing, clock = Listing(fake), FakeClock()
    directory = BatchDirectory(clock.monotonic, MAX_AGE, refresh_wait=0.05)

    async def scenario() -> tuple[list[Lookup], list[Lookup]]:
        listing.gate.clear()  # the first listing is slow
        at_start = await asyncio.gather(*(directory.lookup(ids, listing) for ids in jobs))
        listing.gate.set()
        await listing.finished.wait()
        listing.finished.clear()
        clock.advance(30)  # every job's next tick
        next_ticks = await asyncio.gather(*(directory.lookup(ids, listing) for ids in jobs))
        await listing.finished.wait()  # the sweep those ticks began, so the test leaves nothing running
        return list(at_start), list(next_ticks)

    at_start, next_ticks = run(listing, scenario())
    # Every job's first check answered without waiting for the listing, and without fetching anything itself.
    assert all(lookup.listed == {} and lookup.fetch == [] for lookup in at_start)
    for lookup, ids in zip(next_ticks, jobs, strict=True):
        assert set(lookup.listed) == set(ids) and lookup.fetch == []
    assert fake.request_kinds()["retrieve"] == 0


def test_a_first_sweep_out_of_pages_while_jobs_start_gives_up_on_nothing(fake: FakeOpenAI) -> None:
    first_job = [fake.add_batch(status="in_progress") for _ in range(10)]  # the oldest: last in the list
    others = [[fake.add_batch(status="in_progress") for _ in range(10)] for _ in range(149)]
    listing, clock = Listing(fake), FakeClock()
    directory = BatchDirectory(clock.monotonic, MAX_AGE, refresh_wait=0.05)

    async def scenario() -> tuple[Lookup, Lookup]:
        listing.gate.clear()
        await directory.lookup(first_job, listing)  # the first sweep looks for 10 batches: a 10-page budget
        await asyncio.gather(*(directory.lookup(ids, listing) for ids in others))  # the other jobs start
        listing.gate.set()
        while listing.pages < 10:  # the first sweep ends at its budget, 10 of the 15 pages
            await asyncio.sleep(0.01)
        clock.advance(2)
        next_tick = await directory.lookup(first_job, listing)  # begins a sweep with a budget for all 1,500
        await listing.finished.wait()
        return next_tick, await directory.lookup(first_job, listing)

    next_tick, after = run(listing, scenario())
    assert next_tick.fetch == []  # not given up on: the next sweep, with a bigger budget, reaches it
    assert set(after.listed) == set(first_job) and after.fetch == []
    assert fake.request_kinds() == {"list": 10 + 15, "retrieve": 0, "other": 0}


def test_a_batch_the_listing_cannot_reach_is_fetched_one_by_one_at_a_bounded_rate(fake: FakeOpenAI) -> None:
    now = int(time.time())
    old = [fake.add_batch(status="in_progress", created_at=now - 86_000) for _ in range(30)]
    for _ in range(1200):  # newer batches of the account: more than the sweep's page budget reaches
        fake.add_batch(status="in_progress", created_at=now)
    listing, clock = Listing(fake), FakeClock()
    directory = BatchDirectory(clock.monotonic, MAX_AGE)

    async def scenario() -> list[Lookup]:
        lookups = [await directory.lookup(old, listing)]
        clock.advance(1)
        lookups.append(await directory.lookup(old, listing))
        clock.advance(MAX_AGE)
        for batch in old:
            directory.learn(fake.batch(batch))  # as the source does with each single answer
        lookups.append(await directory.lookup(old, listing))
        return lookups

    first, a_second_later, later = run(listing, scenario())
    # The first sweep stops at its page budget; later ones have nothing left to look for and read no page.
    assert listing.pages == 10
    assert first.listed == {} and first.fetch == old[: int(FETCH_BURST)]
    assert a_second_later.fetch == old[int(FETCH_BURST) : int(FETCH_BURST + FETCH_RATE)]
    assert len(later.fetch) == FETCH_BURST and later.listed == {}
