"""What the HTTP layer may ask of the running daemon: the DaemonControl protocol the web app calls, and
Control, the daemon's implementation over its store, its running jobs and its store guard."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from teckochecker.errors import Fenced
from teckochecker.state.leadership import Role, replica_to_json
from teckochecker.state.models import Event, JobSnapshot, PutOutcome

if TYPE_CHECKING:  # the web layer imports this module for the protocol alone; the engine stays out of it
    from teckochecker.config.validate import Config
    from teckochecker.registered_jobs import RegisteredJobs
    from teckochecker.replicas import Replication
    from teckochecker.running_jobs import RunningJobs
    from teckochecker.state.guard import StoreGuard
    from teckochecker.state.store import StateStore
    from teckochecker.state.worker import StoreWorker


@dataclass(frozen=True)
class ReloadStatus:
    successful: bool
    at: dt.datetime | None
    errors: tuple[str, ...] = ()
    # Settings that changed in the file but only take effect after a restart.
    restart_required: tuple[str, ...] = ()


RELOAD_META = "last_reload"


@dataclass(frozen=True)
class BearerToken:
    """A configured token's value and what it may do ("register", "control")."""

    value: str
    scopes: frozenset[str]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a registered job's body; ``path`` is relative to the body (``source.targets[2]``)."""

    path: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


@dataclass(frozen=True)
class Refusal:
    """Why a PUT or DELETE of a registered job was refused: the HTTP status and, for 422, every problem."""

    status: int
    message: str
    problems: tuple[Problem, ...] = ()


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

    def replicas(self) -> dict[str, Any] | None:
        """This replica's name and role and every replica sharing the store (None on SQLite: one process)."""
        ...

    def bearer_tokens(self) -> list[BearerToken]:
        """The configured tokens (http.tokens, and http.api_token with every scope); none: endpoints off."""
        ...

    async def register_job(self, name: str, body: object) -> PutOutcome | Refusal:
        """Create or replace a job registered over the API; returns once the daemon runs the result."""
        ...

    async def unregister_job(self, name: str) -> bool | Refusal:
        """Remove a job registered over the API; False if there is none of that name."""
        ...

    def registry_notes(self) -> tuple[str, ...]:
        """Registered jobs a file job shadows, or that no longer validate: shown in /api/v1/status."""
        ...

    def registry_note(self, name: str) -> str | None:
        """Why the stored registered job ``name`` is not run (held, or no longer valid), if it is not."""
        ...


class Control:
    """The daemon's answer to DaemonControl, given the collaborators it needs (and nothing else)."""

    def __init__(
        self,
        store: StateStore,
        worker: StoreWorker,
        jobs: RunningJobs,
        guard: StoreGuard,
        *,
        registered: RegisteredJobs,
        reload_status: Callable[[], ReloadStatus],
        bearer_tokens: Callable[[], list[BearerToken]],
        config: Callable[[], Config],
        rebuild: Callable[[], Awaitable[None]],
        replicas: Replication | None = None,
    ) -> None:
        self._store = store
        self._db = worker
        self._jobs = jobs
        self._guard = guard
        self._registered = registered
        self._reload_status = reload_status
        self._replication = replicas
        self._bearer_tokens = bearer_tokens
        self._config = config
        self._rebuild = rebuild

    async def jobs(self) -> list[JobSnapshot]:
        return await self._db.run(self._store.jobs)

    async def job(self, name: str) -> JobSnapshot | None:
        return await self._db.run(self._store.job, name)

    async def events(self, name: str, limit: int) -> list[Event]:
        return await self._db.run(self._store.events, name, limit=limit)

    def next_run(self, name: str) -> dt.datetime | None:
        return self._jobs.next_run(name)

    async def readiness(self) -> dict[str, bool]:
        try:
            await self._db.run(self._store.ping)
            store_ok = self._guard.intact()
        except Exception:
            store_ok = False
        # A standby is ready: it serves the status and the API, and runs no scheduler until it leads.
        scheduler = self._jobs.scheduler_running or not self._leads()
        return {"config_loaded": True, "state_store": store_ok, "scheduler": scheduler}

    def _leads(self) -> bool:
        return self._replication is None or self._replication.role == Role.LEADER

    def _require_leader(self) -> None:
        if self._leads() or self._replication is None:
            return
        leaders = [r.name for r in self._replication.live() if r.role == Role.LEADER]
        where = f"replica {leaders[0]} leads" if leaders else "no replica leads right now"
        raise Fenced(f"replica {self._replication.name} is a standby; {where}: send control requests there")

    def store_problem(self) -> str | None:
        return self._guard.problem

    async def pause(self, name: str) -> bool:
        self._guard.require()
        self._require_leader()
        return await self._jobs.set_paused(name, True)

    async def resume(self, name: str) -> bool:
        self._guard.require()
        self._require_leader()
        return await self._jobs.set_paused(name, False)

    async def check_now(self, name: str) -> bool:
        self._guard.require()
        self._require_leader()
        return self._jobs.run_now(name)

    def reload_status(self) -> ReloadStatus:
        return self._reload_status()

    def replicas(self) -> dict[str, Any] | None:
        r = self._replication
        if r is None:
            return None
        return {
            "this": r.name,
            "role": r.role,
            "epoch": r.epoch,
            "replicas": [replica_to_json(info) for info in r.replicas],
        }

    def bearer_tokens(self) -> list[BearerToken]:
        return self._bearer_tokens()

    async def register_job(self, name: str, body: object) -> PutOutcome | Refusal:
        self._guard.require()
        outcome = await self._registered.put(name, body, self._config())
        # Unchanged but not running here: another replica stored it and this one has not polled yet.
        if outcome in (PutOutcome.CREATED, PutOutcome.UPDATED) or (
            outcome is PutOutcome.UNCHANGED and name not in self._registered.assembly.definitions
        ):
            await self._rebuild()
        if outcome is PutOutcome.UPDATED and (late := await self._registered.fired_meanwhile(name)) is not None:
            await self._rebuild()
            return late
        return outcome

    async def unregister_job(self, name: str) -> bool | Refusal:
        self._guard.require()
        removed = await self._registered.remove(name, self._config())
        if removed is True:
            await self._rebuild()
        return removed

    def registry_notes(self) -> tuple[str, ...]:
        return self._registered.assembly.notes()

    def registry_note(self, name: str) -> str | None:
        return self._registered.held_note(name)
