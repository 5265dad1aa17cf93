"""Whether the daemon may still act on its state store.

SQLite keeps writing to an open file that was unlinked, and a new connection would create an empty store
at the path: acting on either would fire every trigger again after the next restart. Once the file the
daemon opened is deleted or replaced, the guard says so for good; everything that writes or starts asks it
first (ticks, reloads, control requests, the gauge loop).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from teckochecker.errors import StateStoreError
from teckochecker.state.location import StoreFileIdentity


class StoreGuard:
    def __init__(self, identity: StoreFileIdentity | None, logger: logging.Logger, on_lost: Callable[[], None]) -> None:
        """``identity``: the SQLite file opened (None for PostgreSQL: nothing to watch). ``on_lost`` runs once,
        when the loss is first noticed (the daemon stops its ticks there)."""
        self._identity = identity
        self._log = logger
        self._on_lost = on_lost
        self.problem: str | None = None

    def intact(self) -> bool:
        if self.problem is not None:
            return False
        problem = self._identity.problem() if self._identity is not None else None
        if problem is None:
            return True
        self.problem = problem
        self._on_lost()
        self._log.error("%s; stopped acting; restart the daemon after restoring it", problem)
        return False

    def require(self) -> None:
        """For requests that would write: refuse them while the store is not the one that was opened."""
        if not self.intact():
            raise StateStoreError(f"{self.problem}; the daemon stopped acting until it is restarted")
