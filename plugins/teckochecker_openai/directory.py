"""One listing of an OpenAI account's batches, shared by every job that watches that account.

``GET /batches?limit=100`` returns a hundred full Batch objects per request, so thousands of watched
batches cost a few list pages per sweep instead of one request each. The real endpoint takes a few hundred
milliseconds per page, so a sweep of 10,000 batches takes longer than a check interval: no check waits for
a whole sweep. Sweeps run in the background, one at a time per account; a check answers from the freshest
copy of each batch that any sweep has read, waiting at most ``refresh_wait`` for a running sweep to reach
its batches. A sweep starts when the last one is ``max_age`` old, or sooner for batches no sweep has looked
for yet (a new job, a start).

A sweep stops as soon as it has seen every batch wanted when it began, or when its pages have gone past the
oldest of them (by ``created_at``: OpenAI lists newest first, which is undocumented, see
docs/vendors.md, OpenAI listing; so the order is only used to stop early, never trusted), or after a
page budget. A wanted batch that such a sweep did not show is one the listing cannot reach (older than the
pages go, not where the order says, deleted; a budget running out while new batches kept arriving, as at a
start, counts only for batches wanted for ``UNREACHED_FOR``): only those are fetched one by one
(``GET /batches/{id}``), each at most once per ``max_age`` and the account at most ``FETCH_RATE`` per second.
A batch only asked about after a sweep began is left for the next sweep: a (re)start never fans out into
one request per batch. A sweep that fails is not replaced by one request per batch either: the source makes
the account back off, and every check gets that failure until the next sweep begins (``NEW_BATCHES_GAP``
later at the earliest).

Listeners (discovery, see teckochecker/discovery.py) are shown every page a sweep reads, and may ask for the
next page: a sweep ends when neither the batches looked for nor a listener need more. ``refresh`` begins a
sweep when one is due (even with no batch wanted) and waits for it, so discovery reads a whole sweep.
While there are listeners, the last sweep's copies of the batches nobody wanted are kept until the next sweep
begins: a job discovery makes of them is checked at once, and answered from that sweep rather than left
unobserved for its whole interval (the next sweep is not due yet, and the job asks again only then).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from teckochecker_openai.statuses import TIMESTAMP_FIELDS

PAGE_SIZE = 100
# Wanted batches not asked about for this long are forgotten (their jobs finished or were removed).
FORGET_AFTER = 2 * 3600.0
# Pages beyond what the wanted batches need: room for other batches in the account between them.
SPARE_PAGES = 10
# The longest a check waits for a running sweep to reach its batches before answering from the last copy.
REFRESH_WAIT = 2.0
# Batches asked about for the first time get a sweep this soon after the previous one began (not max_age).
NEW_BATCHES_GAP = 2.0
# A sweep out of pages while new batches arrived says little about them; one this long wanted is given up on.
UNREACHED_FOR = 300.0
# Single requests for batches the listing cannot reach, per account: a steady rate and a burst.
FETCH_RATE = 5.0
FETCH_BURST = 20.0

ListPage = Callable[[str | None], Awaitable[Mapping[str, Any]]]
# Shown each page a sweep reads (page 0 starts a sweep): returns whether it wants the next page.
PageListener = Callable[[int, Sequence[Mapping[str, Any]]], bool]
# What a source reads of a batch; the rest (usage, metadata, ...) is not kept for thousands of batches.
KEPT_FIELDS = frozenset(
    {"id", "object", "status", "endpoint", "model", "request_counts", "output_file_id", "error_file_id", "errors"}
) | frozenset(TIMESTAMP_FIELDS)


@dataclass
class _Wanted:
    """What the directory knows of one wanted batch."""

    first_asked: float
    asked_at: float
    created_at: int | None = None
    batch: Mapping[str, Any] | None = None  # the freshest copy a sweep read
    listed_in: int = 0  # the sweep that read it (0: none yet)
    # A sweep that looked for it ended without seeing it: fetched one by one until a sweep shows it again.
    unreachable: bool = False
    fetched_at: float | None = None


@dataclass(frozen=True)
class Lookup:
    """A check's answer from the directory. A batch in neither field is not observed yet (the next sweep will)."""

    listed: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    fetch: list[str] = field(default_factory=list)  # the listing cannot reach these: fetch them one by one now


class BatchDirectory:
    def __init__(
        self,
        monotonic: Callable[[], float],
        max_age: float,
        *,
        refresh_wait: float = REFRESH_WAIT,
        fetch_rate: float = FETCH_RATE,
        fetch_burst: float = FETCH_BURST,
    ) -> None:
        self._monotonic = monotonic
        self._max_age = max_age
        self._refresh_wait = refresh_wait
        self._wanted: dict[str, _Wanted] = {}
        self._sweeps = 0  # sweeps begun so far; the running one, if any, is number self._sweeps
        self._sweep: asyncio.Task[None] | None = None
        self._sweep_began: float | None = None
        self._new_since_sweep = False
        self._arrivals = 0  # batches first asked about so far
        self._failure: Exception | None = None
        self._progress = asyncio.Event()
        self._fetches = _TokenBucket(monotonic, fetch_rate, fetch_burst)
        self._pruned_at = monotonic()
        self._listeners: list[PageListener] = []
        # With listeners (discovery), the last sweep's copies of batches nobody wanted yet, with that sweep's
        # number: discovery makes a job of some of them at once, and that job's first check must answer from
        # this listing, not stay unobserved until its next interval because the next sweep is not due yet.
        self._unwanted: dict[str, tuple[Mapping[str, Any], int]] = {}

    def listen(self, listener: PageListener) -> Callable[[], None]:
        """Show ``listener`` every page from now on; returns the call that stops that."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    async def refresh(self, list_page: ListPage) -> None:
        """Begin a sweep if one is due and wait for the running one to end, so the listeners saw it whole.

        Raises that sweep's failure. A fresh listing (younger than ``max_age``) is not read again.
        """
        if self._sweep is None:
            now = self._monotonic()
            if not self._due(now):
                if self._failure is not None:  # the last sweep failed: it saw nothing, say so (as lookup does)
                    raise self._failure
                return
            self._begin(list_page, now)
        number = self._sweeps
        if self._sweep is not None:
            # Shielded: a caller giving up must not cancel the sweep every job's checks share.
            await asyncio.shield(self._sweep)
        if self._sweeps == number and self._failure is not None:
            raise self._failure

    async def lookup(self, ids: Iterable[str], list_page: ListPage) -> Lookup:
        """What the listing knows of ``ids``, and which of them to fetch one by one.

        Raises the failure of the last sweep (whatever ``list_page`` raised) until the next one begins.
        """
        now = self._monotonic()
        ids = list(dict.fromkeys(ids))
        for batch_id in ids:
            self._want(batch_id, now)
        if self._sweep is None:
            if self._due(now):
                self._begin(list_page, now)
            elif self._failure is not None:
                raise self._failure
        if self._sweep is not None:
            number = self._sweeps
            await self._wait_for(ids, number)
            if self._sweep is None and self._sweeps == number and self._failure is not None:
                raise self._failure
        return self._answer(ids, self._monotonic())

    def learn(self, batch: Mapping[str, Any]) -> None:
        """Remember a batch's creation time from a single fetch, so later sweeps know when to stop."""
        batch_id, created = batch.get("id"), batch.get("created_at")
        wanted = self._wanted.get(batch_id) if isinstance(batch_id, str) else None
        if wanted is not None and isinstance(created, int):
            wanted.created_at = created

    # ----- which batches, and when to sweep -----

    def _want(self, batch_id: str, now: float) -> None:
        wanted = self._wanted.get(batch_id)
        if wanted is None:
            wanted = self._wanted[batch_id] = _Wanted(first_asked=now, asked_at=now)
            self._arrivals += 1
            listed = self._unwanted.pop(batch_id, None)
            if listed is None:
                self._new_since_sweep = True
            else:
                wanted.batch, wanted.listed_in = listed
                created = listed[0].get("created_at")
                wanted.created_at = created if isinstance(created, int) else None
        else:
            wanted.asked_at = now

    def _due(self, now: float) -> bool:
        if self._sweep_began is None:
            return True
        age = now - self._sweep_began
        if age >= self._max_age:
            return True
        # Batches nobody has looked for yet get a sweep soon. So does a failed sweep: the source asks only
        # once the account's back-off allows, so this only bounds how often a refusal is asked again.
        return (self._new_since_sweep or self._failure is not None) and age >= min(NEW_BATCHES_GAP, self._max_age)

    def _answer(self, ids: Sequence[str], now: float) -> Lookup:
        listed: dict[str, Mapping[str, Any]] = {}
        fetch: list[str] = []
        for batch_id in ids:
            wanted = self._wanted[batch_id]
            if wanted.unreachable:
                due = wanted.fetched_at is None or now - wanted.fetched_at >= self._max_age
                if due and self._fetches.take():
                    wanted.fetched_at = now
                    fetch.append(batch_id)
            elif wanted.batch is not None:
                listed[batch_id] = wanted.batch
        return Lookup(listed, fetch)

    async def _wait_for(self, ids: Sequence[str], number: int) -> None:
        """Until the running sweep has read every one of ``ids`` it can, it ends, or ``refresh_wait`` passed."""
        try:
            async with asyncio.timeout(self._refresh_wait):
                while self._sweep is not None and self._sweeps == number and self._unread(ids, number):
                    await self._progress.wait()
        except TimeoutError:
            pass  # answer from the copies the last sweeps read: a slow listing never holds a check

    def _unread(self, ids: Sequence[str], number: int) -> bool:
        return any(
            (w := self._wanted.get(batch_id)) is not None and not w.unreachable and w.listed_in < number
            for batch_id in ids
        )

    # ----- the sweep -----

    def _begin(self, list_page: ListPage, now: float) -> None:
        if now - self._pruned_at > 60:
            self._forget_stale(now)
            self._pruned_at = now
        self._sweeps += 1
        self._sweep_began = now
        self._unwanted = {}
        self._new_since_sweep = False
        self._failure = None
        self._sweep = asyncio.ensure_future(self._run_sweep(list_page, self._sweeps))

    async def _run_sweep(self, list_page: ListPage, number: int) -> None:
        # Looked for: every batch wanted now that a listing can reach; the rest is fetched one by one.
        looked_for = {batch_id for batch_id, w in self._wanted.items() if not w.unreachable}
        arrivals = self._arrivals
        try:
            unseen, conclusive = await self._sweep_pages(list_page, number, looked_for)
            now = self._monotonic()
            for batch_id in unseen:
                wanted = self._wanted.get(batch_id)
                if wanted is None:
                    continue
                # Out of pages while batches kept arriving (a start): the next sweep, with a budget for all of
                # them, may well reach it. Only a batch waiting for long is given up on anyway.
                if conclusive or self._arrivals == arrivals or now - wanted.first_asked >= UNREACHED_FOR:
                    wanted.unreachable = True
        except Exception as exc:  # kept for every check until the next sweep; see lookup()
            self._failure = exc
        finally:
            self._sweep = None
            self._wake()

    async def _sweep_pages(self, list_page: ListPage, number: int, looked_for: set[str]) -> tuple[set[str], bool]:
        """Read pages until every batch looked for was seen or passed. Returns those not seen, and whether that
        is conclusive: the list ended or went past them, rather than the page budget running out."""
        unseen = set(looked_for)
        if not unseen and not self._listeners:
            return unseen, True  # every wanted batch is fetched on its own: a page would show none of them
        oldest = self._oldest_created(looked_for)
        after: str | None = None
        budget = len(looked_for) // PAGE_SIZE + SPARE_PAGES
        page_number = 0
        while True:
            page = await list_page(after)
            data = [b for b in page.get("data") or [] if isinstance(b, dict) and isinstance(b.get("id"), str)]
            for batch in data:
                self._read(batch, number)
                unseen.discard(batch["id"])
            self._wake()
            # Every listener sees the page (no short-circuit); each bounds its own pages.
            listeners_want = [listener(page_number, data) for listener in list(self._listeners)]
            if not data or not page.get("has_more"):
                return unseen, True
            passed_all = not unseen or _older(data, oldest)
            if (passed_all or page_number + 1 >= budget) and not any(listeners_want):
                return unseen, passed_all
            after = data[-1]["id"]
            page_number += 1

    def _read(self, batch: Mapping[str, Any], number: int) -> None:
        # Any wanted batch counts, also one first asked about after the sweep began.
        wanted = self._wanted.get(batch["id"])
        kept = {k: v for k, v in batch.items() if k in KEPT_FIELDS}
        if wanted is None:
            if self._listeners:
                self._unwanted[batch["id"]] = (kept, number)
            return
        wanted.batch = kept
        wanted.listed_in = number
        wanted.unreachable = False
        self.learn(batch)

    def _wake(self) -> None:
        """Tell checks waiting for the running sweep that it read another page (or ended)."""
        self._progress.set()
        self._progress = asyncio.Event()

    def _oldest_created(self, looked_for: set[str]) -> int | None:
        """The creation time of the oldest batch looked for, if every one's is known."""
        created = [self._wanted[batch_id].created_at for batch_id in looked_for]
        return None if not created or None in created else min(c for c in created if c is not None)

    def _forget_stale(self, now: float) -> None:
        for batch_id, wanted in list(self._wanted.items()):
            if now - wanted.asked_at > FORGET_AFTER:
                del self._wanted[batch_id]


class _TokenBucket:
    """At most ``rate`` per second on average, ``burst`` at once; takes without waiting, or refuses."""

    def __init__(self, monotonic: Callable[[], float], rate: float, burst: float) -> None:
        self._monotonic = monotonic
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._at = monotonic()

    def take(self) -> bool:
        now = self._monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


def _older(page: Sequence[Mapping[str, Any]], oldest_wanted: int | None) -> bool:
    """Whether this (newest-first) page has gone past every wanted batch's creation time."""
    if oldest_wanted is None:
        return False
    created = [c for b in page if isinstance(c := b.get("created_at"), int)]
    return bool(created) and min(created) < oldest_wanted
