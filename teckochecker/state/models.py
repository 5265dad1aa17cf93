"""What the state store hands out: frozen snapshots and state enums. Database rows never leave the store."""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict

from teckochecker.plugin_api import ActionOutcome, ActionResult, Observation, TargetState


class JobState(str, enum.Enum):
    WATCHING = "watching"  # polling targets
    FIRING = "firing"  # the trigger fired; actions are being started or followed
    COMPLETED = "completed"
    COMPLETED_WITH_FAILURES = "completed_with_failures"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self in (JobState.COMPLETED, JobState.COMPLETED_WITH_FAILURES, JobState.FAILED)


class JobOrigin(str, enum.Enum):
    """Where a job's definition came from. File jobs are read-only through the API."""

    FILE = "file"  # the YAML or a drop-in
    API = "api"  # PUT /api/v1/jobs/{name}
    DISCOVERED = "discovered"  # found by batch metadata (a template's discover:)


class RunState(str, enum.Enum):
    """One action of one job, through the effectively-once protocol (docs/reliability.md, Starting an action once)."""

    PENDING = "pending"  # decided (the outbox row); not yet attempted, or a definite non-start
    SENDING = "sending"  # intent committed; the start call may be under way
    IN_DOUBT = "in_doubt"  # the start may or may not have happened: reconcile by searching
    RUNNING = "running"  # started downstream; being followed
    SUCCEEDED = "succeeded"
    SUCCEEDED_WITH_WARNINGS = "succeeded_with_warnings"
    FAILED = "failed"
    REJECTED = "rejected"  # the downstream system refused the start; a person must look
    SKIPPED = "skipped"  # its `when:` condition did not hold

    @property
    def is_final(self) -> bool:
        return self in _FINAL_RUN_STATES

    @classmethod
    def from_outcome(cls, outcome: ActionOutcome) -> RunState:
        return {
            ActionOutcome.RUNNING: cls.RUNNING,
            ActionOutcome.SUCCEEDED: cls.SUCCEEDED,
            ActionOutcome.SUCCEEDED_WITH_WARNINGS: cls.SUCCEEDED_WITH_WARNINGS,
            ActionOutcome.FAILED: cls.FAILED,
        }[outcome]


_FINAL_RUN_STATES = frozenset(
    {RunState.SUCCEEDED, RunState.SUCCEEDED_WITH_WARNINGS, RunState.FAILED, RunState.REJECTED, RunState.SKIPPED}
)


@dataclass(frozen=True)
class TargetSnapshot:
    target: str
    state: TargetState
    vendor_status: str | None
    details: Mapping[str, Any]
    message: str | None
    observed_at: dt.datetime | None

    def as_observation(self) -> Observation:
        return Observation(self.target, self.state, self.vendor_status, self.details, self.message)


@dataclass(frozen=True)
class Duplicate:
    """A second downstream start found for one trigger, and what was done about it."""

    external_id: str
    vendor_status: str | None
    cancelled: bool
    note: str
    found_at: dt.datetime


@dataclass(frozen=True)
class DuplicateWatch:
    """The search for duplicates that goes on after a start that followed an in-doubt outcome."""

    armed_at: dt.datetime | None  # None: armed by the next start
    until: dt.datetime | None
    next_search_at: dt.datetime | None
    searches: int
    closed_at: dt.datetime | None
    duplicates: tuple[Duplicate, ...] = ()

    @property
    def is_open(self) -> bool:
        return self.armed_at is not None and self.closed_at is None

    @property
    def known(self) -> frozenset[str]:
        return frozenset(d.external_id for d in self.duplicates)


@dataclass(frozen=True)
class RunSnapshot:
    id: int
    action_index: int
    action_type: str
    state: RunState
    trigger_id: str
    attempt: int
    created_at: dt.datetime
    intent_at: dt.datetime | None
    next_try_at: dt.datetime | None
    search_empty_count: int
    external_id: str | None
    external_url: str | None
    vendor_status: str | None
    message: str | None
    details: Mapping[str, Any]
    watch: DuplicateWatch | None = None
    target_key: str = ""  # the downstream target it fired at (empty: not known, e.g. a test's snapshot)

    def as_result(self) -> ActionResult:
        return ActionResult(
            external_id=self.external_id or "",
            vendor_status=self.vendor_status,
            url=self.external_url,
            message=self.message,
            details=self.details,
        )


@dataclass(frozen=True)
class JobSnapshot:
    name: str
    state: JobState
    fingerprint: str
    removed: bool
    paused: bool
    created_at: dt.datetime
    first_observed_at: dt.datetime | None
    deadline_at: dt.datetime | None
    last_checked_at: dt.datetime | None
    next_check_at: dt.datetime | None
    finished_at: dt.datetime | None
    last_error: str | None
    consecutive_failures: int
    targets: tuple[TargetSnapshot, ...] = ()
    runs: tuple[RunSnapshot, ...] = ()
    origin: JobOrigin = JobOrigin.FILE

    @property
    def pending_targets(self) -> list[str]:
        return [t.target for t in self.targets if not t.state.is_terminal]

    @property
    def done_count(self) -> int:
        return sum(1 for t in self.targets if t.state.is_terminal)


@dataclass(frozen=True)
class Event:
    at: dt.datetime
    kind: str
    message: str
    data: Mapping[str, Any] = field(default_factory=dict)


PROGRESS_KINDS = ("total", "completed", "failed")


@dataclass(frozen=True)
class RequestCounts:
    """How far one batch got, from the vendor's ``request_counts`` (OpenAI: total, completed, failed)."""

    total: int
    completed: int
    failed: int

    @property
    def label(self) -> str:
        return f"{self.completed}/{self.total}" + (f" ({self.failed} failed)" if self.failed else "")


class FirstObservation(TypedDict):
    first_observed_at: dt.datetime
    deadline_at: dt.datetime


def first_observation(now: dt.datetime, deadline: float) -> FirstObservation:
    """What a job's first observation sets: its deadline (``deadline`` seconds) runs from then. The store
    writes it (state/checks.py) and the watch cache keeps it (watchcache.py): one rule for both."""
    return FirstObservation(first_observed_at=now, deadline_at=now + dt.timedelta(seconds=deadline))


# The key, in a run's details and in its events' data, of the start of a refusing server's answer: kept apart
# from the message, so that the views without a token can leave it out (web/routes.py).
EXCERPT = "excerpt"


def request_counts(details: object) -> RequestCounts | None:
    """A target's request counts, from the ``request_counts`` a source reports in its details: the one
    reading behind `status`, the API, the status page, the stored columns and the batch_requests metric,
    so they never disagree. None while the vendor has none (e.g. still validating: total 0)."""
    counts = details.get("request_counts") if isinstance(details, Mapping) else None
    if not isinstance(counts, Mapping):
        return None
    total, completed, failed = (_count(counts.get(kind)) for kind in PROGRESS_KINDS)
    return RequestCounts(total, completed, failed) if total else None


def _count(value: object) -> int:
    # Vendor data: anything but a non-negative int counts as 0, rather than hiding the other counts or
    # making a gauge negative.
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


@dataclass(frozen=True)
class JobGauges:
    """What the state gauges show: jobs by state, and per job its targets by state, request progress and
    deadline. Removed jobs are left out."""

    jobs: Mapping[str, int]
    targets: Mapping[tuple[str, str], int]
    requests: Mapping[str, tuple[int, int, int]]
    deadlines: Mapping[str, float]

    @classmethod
    def from_snapshots(cls, snapshots: Iterable[JobSnapshot]) -> JobGauges:
        jobs = dict.fromkeys((s.value for s in JobState), 0)
        targets: dict[tuple[str, str], int] = {}
        requests: dict[str, tuple[int, int, int]] = {}
        deadlines: dict[str, float] = {}
        for job in snapshots:
            if job.removed:
                continue
            jobs[job.state.value] += 1
            sums = [0, 0, 0]
            for target in job.targets:
                key = (job.name, target.state.value)
                targets[key] = targets.get(key, 0) + 1
                counts = request_counts(target.details)
                if counts is not None:
                    sums = [sums[0] + counts.total, sums[1] + counts.completed, sums[2] + counts.failed]
            requests[job.name] = (sums[0], sums[1], sums[2])
            if job.deadline_at is not None and not job.state.is_final:
                deadlines[job.name] = job.deadline_at.timestamp()
        return cls(jobs, targets, requests, deadlines)


class PutOutcome(str, enum.Enum):
    """What storing a registered job did: the HTTP answer (201 / 200) and whether a rebuild is needed."""

    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class RegisteredJob:
    """A job that did not come from a file: its body is the job as it would be written in the YAML (secrets
    by name only), and ``details`` the origin's own bookkeeping (e.g. a discovered group's expected count)."""

    name: str
    origin: JobOrigin
    body: Mapping[str, Any]
    fingerprint: str
    created_at: dt.datetime
    updated_at: dt.datetime
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RegistryVersion:
    """A cheap summary of the registered jobs: when it differs from the last one seen, re-read them all.

    ``token`` changes on every put or remove through the store; count and latest update also catch rows
    written some other way."""

    token: str | None
    count: int
    latest: dt.datetime | None
