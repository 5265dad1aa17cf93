"""What the HTTP layer may ask of the running daemon. The daemon implements it; the web app only calls it."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any, Protocol

from teckochecker.state.models import Event, JobSnapshot


@dataclass(frozen=True)
class ReloadStatus:
    successful: bool
    at: dt.datetime | None
    errors: tuple[str, ...] = ()
    # Settings that changed in the file but only take effect after a restart.
    restart_required: tuple[str, ...] = ()


RELOAD_META = "last_reload"


def reload_status_to_dict(status: ReloadStatus) -> dict[str, Any]:
    """The one JSON shape of a reload status: stored in the state store's meta and served by the HTTP API."""
    return {
        "successful": status.successful,
        "at": status.at.isoformat() if status.at else None,
        "errors": list(status.errors),
        "restart_required": list(status.restart_required),
    }


def reload_status_json(status: ReloadStatus) -> str:
    return json.dumps(reload_status_to_dict(status))


def reload_status_from_json(text: str) -> ReloadStatus:
    data = json.loads(text)
    at = dt.datetime.fromisoformat(data["at"]) if data.get("at") else None
    return ReloadStatus(
        bool(data["successful"]), at, tuple(data.get("errors", ())), tuple(data.get("restart_required", ()))
    )


class DaemonControl(Protocol):
    async def jobs(self) -> list[JobSnapshot]:
        """Every job in the state store, removed ones included (their `removed` flag is set)."""
        ...

    async def job(self, name: str) -> JobSnapshot | None: ...

    async def events(self, name: str, limit: int) -> list[Event]:
        """The most recent ``limit`` events of a job, oldest first."""
        ...

    def next_run(self, name: str) -> dt.datetime | None:
        """When the scheduler runs the job next (None if not scheduled)."""
        ...

    async def readiness(self) -> dict[str, bool]:
        """Named checks for /readyz: config_loaded, state_store, scheduler."""
        ...

    def store_problem(self) -> str | None:
        """Why the daemon stopped acting on its state store (its SQLite file deleted or replaced), if it did."""
        ...

    async def pause(self, name: str) -> bool:
        """False if there is no such job."""
        ...

    async def resume(self, name: str) -> bool: ...

    async def check_now(self, name: str) -> bool:
        """Run the job's next tick now. False if there is no such scheduled job."""
        ...

    def reload_status(self) -> ReloadStatus: ...

    def api_token(self) -> str | None:
        """The control endpoints' bearer token, or None when none is configured (endpoints off)."""
        ...
