"""One newest-first listing of a vendor account's batches, shared by every job that watches that account.

A list page carries many full batch objects, so thousands of watched batches cost a few pages per sweep
instead of one request each. A sweep is shared by all jobs of the account and reused for ``max_age``
seconds; it stops as soon as every wanted batch was seen, when a page has gone past the oldest wanted
batch's creation time (the vendor lists newest first), or after a page budget. The listing only saves
requests: whatever a sweep did not show, the source fetches one by one. A failing page raises to every
caller waiting for that sweep, so the source can make the whole account back off.

Generic over the vendor: the source passes a function that reads one page and says where the next starts,
and a function that reads a batch's creation time. (The OpenAI source has its own, older BatchDirectory.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["FORGET_AFTER", "SPARE_PAGES", "ListPage", "NewestFirstListing", "Page"]

# Wanted batches not asked about for this long are forgotten (their jobs finished or were removed).
FORGET_AFTER = 2 * 3600.0
# Pages beyond what the wanted batches need: room for other batches in the account between them.
SPARE_PAGES = 10


@dataclass(frozen=True)
class Page:
    """One page of the listing: batch objects (each with a string ``id``), and the cursor of the next page,
    None on the last one."""

    batches: tuple[Mapping[str, Any], ...]
    next_cursor: str | None


ListPage = Callable[[str | None], Awaitable[Page]]
CreatedAt = Callable[[Mapping[str, Any]], float | None]


class NewestFirstListing:
    def __init__(
        self,
        monotonic: Callable[[], float],
        max_age: float,
        *,
        page_size: int,
        created_at: CreatedAt,
        keep: Callable[[Mapping[str, Any]], Mapping[str, Any]] = dict,
    ) -> None:
        self._monotonic = monotonic
        self._max_age = max_age
        self._page_size = page_size
        self._created_of = created_at
        # What is kept of a listed batch: thousands of them stay in memory between sweeps.
        self._keep = keep
        self._wanted: dict[str, float] = {}
        self._created_at: dict[str, float] = {}
        self._listed: dict[str, Mapping[str, Any]] = {}
        self._swept_at: float | None = None
        self._sweep: asyncio.Task[None] | None = None
        self._pruned_at = monotonic()

    async def lookup(self, ids: Iterable[str], list_page: ListPage) -> dict[str, Mapping[str, Any]]:
        """The batches among ``ids`` that a sweep at most ``max_age`` old has seen. Raises whatever
        ``list_page`` raises, to every caller waiting for that sweep."""
        now = self._monotonic()
        ids = list(ids)
        for batch_id in ids:
            self._wanted[batch_id] = now
        if self._sweep is None and (self._swept_at is None or now - self._swept_at >= self._max_age):
            self._sweep = asyncio.ensure_future(self._run_sweep(list_page))
        if self._sweep is not None:
            await asyncio.shield(self._sweep)
        return {batch_id: self._listed[batch_id] for batch_id in ids if batch_id in self._listed}

    def learn(self, batch: Mapping[str, Any]) -> None:
        """Remember a batch's creation time from a single fetch, so later sweeps know when to stop."""
        created = self._created_of(batch)
        if isinstance(batch.get("id"), str) and created is not None:
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
        cursor: str | None = None
        oldest_wanted = self._oldest_created(wanted)
        for _ in range(len(wanted) // self._page_size + SPARE_PAGES):
            page = await list_page(cursor)
            for batch in page.batches:
                if batch["id"] in wanted:
                    seen[batch["id"]] = self._keep(batch)
                    self.learn(batch)
            if page.next_cursor is None or not page.batches or len(seen) == len(wanted):
                break
            if self._past(page, oldest_wanted):
                break
            cursor = page.next_cursor
        return seen

    def _past(self, page: Page, oldest_wanted: float | None) -> bool:
        """Whether this (newest-first) page has gone past every wanted batch's creation time."""
        if oldest_wanted is None:
            return False
        created = [c for b in page.batches if (c := self._created_of(b)) is not None]
        return bool(created) and min(created) < oldest_wanted

    def _oldest_created(self, wanted: set[str]) -> float | None:
        """The creation time of the oldest wanted batch, if every wanted batch's is known."""
        created = [self._created_at.get(batch_id) for batch_id in wanted]
        return None if not created or None in created else min(c for c in created if c is not None)

    def _forget_stale(self, now: float) -> None:
        for batch_id, asked in list(self._wanted.items()):
            if now - asked > FORGET_AFTER:
                del self._wanted[batch_id]
                self._created_at.pop(batch_id, None)
