"""One listing of an OpenAI account's batches, shared by every job that watches that account.

``GET /batches?limit=100`` returns a hundred full Batch objects per request, so thousands of watched
batches cost a few list pages per sweep instead of one request each. A sweep is shared by all jobs of the
account and reused for ``max_age`` seconds; it stops as soon as every wanted batch was seen, or when the
pages have gone past the oldest wanted batch (OpenAI lists newest first — undocumented, so this is only
used to stop early, never to conclude anything), or after a page budget. Whatever a sweep did not see is
fetched one by one (``GET /batches/{id}``) by the source: the listing saves requests, it never decides.
A sweep that fails is not replaced by one request per batch: the source makes the account back off.

Listeners (discovery, see teckochecker/discovery.py) are shown every page a sweep reads, whoever asked for
it, and may ask for the next page: a sweep ends when neither the wanted batches nor a listener need more.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from teckochecker_openai.statuses import TIMESTAMP_FIELDS

PAGE_SIZE = 100
# Wanted batches not asked about for this long are forgotten (their jobs finished or were removed).
FORGET_AFTER = 2 * 3600.0
# Pages beyond what the wanted batches need: room for other batches in the account between them.
SPARE_PAGES = 10

ListPage = Callable[[str | None], Awaitable[Mapping[str, Any]]]
# Shown each page a sweep reads (page 0 starts a sweep): returns whether it wants the next page.
PageListener = Callable[[int, Sequence[Mapping[str, Any]]], bool]
# What a source reads of a batch; the rest (usage, metadata, ...) is not kept for thousands of batches.
KEPT_FIELDS = frozenset(
    {"id", "object", "status", "endpoint", "model", "request_counts", "output_file_id", "error_file_id", "errors"}
) | frozenset(TIMESTAMP_FIELDS)


class BatchDirectory:
    def __init__(self, monotonic: Callable[[], float], max_age: float) -> None:
        self._monotonic = monotonic
        self._max_age = max_age
        self._wanted: dict[str, float] = {}
        self._created_at: dict[str, int] = {}
        self._listed: dict[str, Mapping[str, Any]] = {}
        self._swept_at: float | None = None
        self._sweep: asyncio.Task[None] | None = None
        self._pruned_at = monotonic()
        self._listeners: list[PageListener] = []

    def listen(self, listener: PageListener) -> Callable[[], None]:
        """Show ``listener`` every page from now on; returns the call that stops that."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    async def lookup(self, ids: Iterable[str], list_page: ListPage) -> dict[str, Mapping[str, Any]]:
        """The batches among ``ids`` that a sweep at most ``max_age`` old has seen.

        Raises whatever ``list_page`` raises, to every caller waiting for that sweep.
        """
        now = self._monotonic()
        ids = list(ids)
        for batch_id in ids:
            self._wanted[batch_id] = now
        if self._sweep is None and (self._swept_at is None or now - self._swept_at >= self._max_age):
            self._sweep = asyncio.ensure_future(self._run_sweep(list_page))
        if self._sweep is not None:
            sweep = self._sweep
            await asyncio.shield(sweep)
        return {batch_id: self._listed[batch_id] for batch_id in ids if batch_id in self._listed}

    def learn(self, batch: Mapping[str, Any]) -> None:
        """Remember a batch's creation time from a single fetch, so later sweeps know when to stop."""
        created = batch.get("created_at")
        if isinstance(batch.get("id"), str) and isinstance(created, int):
            self._created_at[batch["id"]] = created

    async def _run_sweep(self, list_page: ListPage) -> None:
        started = self._monotonic()
        try:
            if started - self._pruned_at > 60:
                self._forget_stale(started)
                self._pruned_at = started
            self._listed = await self._sweep_pages(list_page, set(self._wanted))
            self._swept_at = started
        finally:
            self._sweep = None

    async def _sweep_pages(self, list_page: ListPage, wanted: set[str]) -> dict[str, Mapping[str, Any]]:
        seen: dict[str, Mapping[str, Any]] = {}
        after: str | None = None
        oldest_wanted = self._oldest_created(wanted)
        budget = len(wanted) // PAGE_SIZE + SPARE_PAGES
        found: set[str] = set()
        for number in itertools.count():
            page = await list_page(after)
            data = [b for b in page.get("data") or [] if isinstance(b, dict) and isinstance(b.get("id"), str)]
            for batch in data:
                # With listeners, every batch read is kept: a job discovery makes of it asks right after, and
                # must find it here rather than fetch it on its own (bounded by the pages the listeners read).
                if batch["id"] in wanted or self._listeners:
                    seen[batch["id"]] = {k: v for k, v in batch.items() if k in KEPT_FIELDS}
                    self.learn(batch)
                if batch["id"] in wanted:
                    found.add(batch["id"])
            # Every listener sees the page (no short-circuit); each bounds its own pages.
            listeners_want = [listener(number, data) for listener in list(self._listeners)]
            enough = len(found) == len(wanted) or _older(data, oldest_wanted) or number + 1 >= budget
            if not data or not page.get("has_more") or (enough and not any(listeners_want)):
                break
            after = data[-1]["id"]
        return seen

    def _oldest_created(self, wanted: set[str]) -> int | None:
        """The creation time of the oldest wanted batch, if every wanted batch's is known."""
        created = [self._created_at.get(batch_id) for batch_id in wanted]
        return None if not created or None in created else min(c for c in created if c is not None)

    def _forget_stale(self, now: float) -> None:
        for batch_id, asked in list(self._wanted.items()):
            if now - asked > FORGET_AFTER:
                del self._wanted[batch_id]
                self._created_at.pop(batch_id, None)


def _older(page: Sequence[Mapping[str, Any]], oldest_wanted: int | None) -> bool:
    """Whether this (newest-first) page has gone past every wanted batch's creation time."""
    if oldest_wanted is None:
        return False
    created = [c for b in page if isinstance(c := b.get("created_at"), int)]
    return bool(created) and min(created) < oldest_wanted
