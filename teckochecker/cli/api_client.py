"""Reads a running daemon's JSON API back into the snapshot types, so the CLI renders one view for both
sources (the state store, or `status --url`)."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from teckochecker.errors import TeckoCheckerError
from teckochecker.plugin_api import TargetState
from teckochecker.state.leadership import ReplicaInfo
from teckochecker.state.models import Event, JobOrigin, JobSnapshot, JobState, RunSnapshot, RunState, TargetSnapshot

TIMEOUT = httpx.Timeout(10.0, connect=5.0)
# "//user:" then everything up to the last "@": the password, however oddly the rest of the URL is formed.
_PASSWORD = re.compile(r"(//[^/?#@:]*:).*@")


def fetch_jobs(base_url: str, *, transport: httpx.BaseTransport | None = None) -> list[JobSnapshot]:
    body = _get(base_url, "/api/v1/jobs", transport)
    jobs = body.get("jobs") if isinstance(body, Mapping) else None
    if not isinstance(jobs, list):
        raise TeckoCheckerError(f"{shown_url(base_url)} did not answer like a TeckoChecker daemon (no job list)")
    return [_convert(base_url, job_from_json, job) for job in jobs]


def fetch_job(
    base_url: str, name: str, events: int = 50, *, transport: httpx.BaseTransport | None = None
) -> tuple[JobSnapshot, list[Event]]:
    body = _get(base_url, f"/api/v1/jobs/{quote(name, safe='')}?events={events}", transport)
    job = _convert(base_url, job_from_json, body)
    return job, [_convert(base_url, event_from_json, e) for e in body.get("events") or ()]


def fetch_replicas(base_url: str, *, transport: httpx.BaseTransport | None = None) -> list[ReplicaInfo]:
    """The replicas a daemon on PostgreSQL sees (its /api/v1/status); none from a SQLite daemon."""
    body = _get(base_url, "/api/v1/status", transport)
    replication = body.get("replication") if isinstance(body, Mapping) else None
    if not isinstance(replication, Mapping):
        return []
    return [_convert(base_url, replica_from_json, r) for r in replication.get("replicas") or ()]


def replica_from_json(data: Mapping[str, Any]) -> ReplicaInfo:
    return ReplicaInfo(
        name=str(data["name"]),
        host=str(data["host"]),
        pid=int(data["pid"]),
        role=str(data["role"]),
        started_at=dt.datetime.fromisoformat(data["started_at"]),
        heartbeat_at=dt.datetime.fromisoformat(data["last_heartbeat"]),
        config_checksum=str(data["config_checksum"]),
        epoch=None if data.get("epoch") is None else int(data["epoch"]),
        age=float(data["heartbeat_age_seconds"]),
    )


def _get(base_url: str, path: str, transport: httpx.BaseTransport | None) -> Any:
    root = api_root(base_url)
    try:
        # trust_env=False: an HTTP(S)_PROXY meant for the internet must not swallow a loopback daemon.
        with httpx.Client(timeout=TIMEOUT, transport=transport, trust_env=False) as client:
            response = client.get(root + path, headers={"Accept": "application/json"})
    # UnicodeError: a host no IDNA encoding takes (xn--, a..b), found only when the request is made.
    except (httpx.HTTPError, httpx.InvalidURL, UnicodeError) as exc:
        raise TeckoCheckerError(f"cannot reach the daemon at {shown_url(base_url)}: {_describe(exc)}") from exc
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code != 200:
        detail = body.get("error") if isinstance(body, Mapping) else None
        answered = f"the daemon at {shown_url(base_url)} answered HTTP {response.status_code}"
        raise TeckoCheckerError(answered + (f": {detail}" if detail else ""))
    if body is None:
        raise TeckoCheckerError(f"{shown_url(base_url)} did not answer with JSON (is it a TeckoChecker daemon?)")
    return body


def api_root(base_url: str) -> str:
    example = "(e.g. http://127.0.0.1:9718)"
    try:
        parts = urlsplit(base_url)
        parts.port  # noqa: B018 - parsed on access: a port that is not a number or out of range raises here
    except ValueError as exc:
        raise TeckoCheckerError(f"not a valid URL: {shown_url(base_url)!r} ({exc}) {example}") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise TeckoCheckerError(f"not an http(s) URL: {shown_url(base_url)!r} {example}")
    return base_url.rstrip("/")


def shown_url(url: str) -> str:
    """``url`` fit to print: a password in it masked (``user:***@``), whether or not the rest of it parses."""
    return _PASSWORD.sub(r"\1***@", url)


def _describe(exc: httpx.HTTPError | httpx.InvalidURL | UnicodeError) -> str:
    return shown_url(str(exc)) or type(exc).__name__


def _convert(base_url: str, convert: Any, data: Any) -> Any:
    try:
        return convert(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
        raise TeckoCheckerError(f"{shown_url(base_url)} answered JSON this version cannot read ({problem})") from exc


def job_from_json(data: Mapping[str, Any]) -> JobSnapshot:
    return JobSnapshot(
        name=str(data["name"]),
        state=JobState(data["state"]),
        fingerprint=str(data.get("fingerprint") or ""),
        removed=bool(data.get("removed")),
        paused=bool(data.get("paused")),
        created_at=_required_time(data["created_at"]),
        first_observed_at=_time(data.get("first_observed_at")),
        deadline_at=_time(data.get("deadline_at")),
        last_checked_at=_time(data.get("last_checked_at")),
        # The API gives the scheduler's plan; for a reader that is what "next check" means.
        next_check_at=_time(data.get("next_check")),
        finished_at=_time(data.get("finished_at")),
        last_error=data.get("last_error"),
        consecutive_failures=int(data.get("consecutive_failures") or 0),
        targets=tuple(target_from_json(t) for t in data.get("targets") or ()),
        runs=tuple(run_from_json(r) for r in data.get("runs") or ()),
        origin=JobOrigin(data.get("origin") or JobOrigin.FILE.value),
    )


def target_from_json(data: Mapping[str, Any]) -> TargetSnapshot:
    return TargetSnapshot(
        target=str(data["target"]),
        state=TargetState(data["state"]),
        vendor_status=data.get("vendor_status"),
        details=dict(data.get("details") or {}),
        message=data.get("message"),
        observed_at=_time(data.get("observed_at")),
    )


def run_from_json(data: Mapping[str, Any]) -> RunSnapshot:
    return RunSnapshot(
        id=int(data["id"]),
        action_index=int(data["action_index"]),
        action_type=str(data["type"]),
        state=RunState(data["state"]),
        trigger_id=str(data.get("trigger_id") or ""),
        attempt=int(data.get("attempt") or 0),
        created_at=_required_time(data["created_at"]),
        intent_at=_time(data.get("intent_at")),
        next_try_at=_time(data.get("next_try_at")),
        search_empty_count=int(data.get("search_empty_count") or 0),
        external_id=data.get("external_id"),
        external_url=data.get("url"),
        vendor_status=data.get("vendor_status"),
        message=data.get("message"),
        details=dict(data.get("details") or {}),
        target_key=str(data.get("target_key") or ""),
    )


def event_from_json(data: Mapping[str, Any]) -> Event:
    return Event(
        at=_required_time(data["at"]),
        kind=str(data["kind"]),
        message=str(data["message"]),
        data=dict(data.get("data") or {}),
    )


def _time(value: Any) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromisoformat(value)


def _required_time(value: Any) -> dt.datetime:
    return dt.datetime.fromisoformat(value)
