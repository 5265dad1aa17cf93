"""Plain-text views of the state for people: `status`, `show` and `plugins`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from teckochecker.plugins import PluginRegistry
from teckochecker.state.models import Event, JobSnapshot, RunSnapshot


def render_status(jobs: Sequence[JobSnapshot], now: dt.datetime) -> str:
    if not jobs:
        return "no jobs in the state store"
    rows = [("JOB", "STATE", "TARGETS", "NEXT CHECK", "ACTION", "LAST ERROR")]
    for job in jobs:
        state = job.state.value + (" (removed)" if job.removed else "") + (" (paused)" if job.paused else "")
        rows.append((
            job.name, state, f"{job.done_count}/{len(job.targets)}", _next_check(job, now),
            _actions_summary(job.runs), _clip(job.last_error or "", 60),
        ))
    return _table(rows)


def render_job(job: JobSnapshot, events: Sequence[Event], now: dt.datetime) -> str:
    lines = [
        f"job:        {job.name}",
        f"state:      {job.state.value}" + (" (removed from config)" if job.removed else ""),
        f"targets:    {job.done_count}/{len(job.targets)} finished",
        f"next check: {_next_check(job, now)}",
        f"deadline:   {_time(job.deadline_at)}",
    ]
    if job.last_error:
        lines.append(f"last error: {job.last_error}")
    lines += ["", _table([("TARGET", "STATE", "STATUS", "PROGRESS", "SEEN", "MESSAGE")] + [
        (t.target, t.state.value, t.vendor_status or "-", _progress(t.details), _time(t.observed_at), _clip(t.message or "", 60))
        for t in job.targets
    ])]
    if job.runs:
        lines += ["", _table([("ACTION", "TYPE", "STATE", "EXTERNAL ID", "STATUS", "URL")] + [
            (str(r.action_index), r.action_type, r.state.value, r.external_id or "-", r.vendor_status or "-", r.external_url or "-")
            for r in job.runs
        ])]
        lines += [f"  action {r.action_index}: {r.message}" for r in job.runs if r.message]
    lines += ["", "EVENTS"] + [f"{_time(e.at)}  {e.kind:<20} {e.message}" for e in events]
    return "\n".join(lines)


def render_plugins(registry: PluginRegistry) -> str:
    if not registry.plugins:
        return "no plugins loaded"
    rows = [("PLUGIN", "VERSION", "SOURCE TYPES", "ACTION TYPES")]
    for plugin in registry.plugins:
        rows.append((plugin.name, plugin.version or "-", ", ".join(plugin.source_types) or "-",
                     ", ".join(plugin.action_types) or "-"))
    return _table(rows)


def _actions_summary(runs: Sequence[RunSnapshot]) -> str:
    if not runs:
        return "-"
    return ", ".join(f"{r.state.value}" + (f" {r.external_id}" if r.external_id else "") for r in runs)


def _next_check(job: JobSnapshot, now: dt.datetime) -> str:
    if job.state.is_final or job.next_check_at is None:
        return "-"
    seconds = (job.next_check_at - now).total_seconds()
    return "due" if seconds <= 0 else f"in {int(seconds)}s"


def _progress(details: object) -> str:
    counts = details.get("request_counts") if isinstance(details, dict) else None
    if not isinstance(counts, dict) or not counts.get("total"):
        return "-"
    return f"{counts.get('completed', 0)}/{counts['total']}" + (f" ({counts['failed']} failed)" if counts.get("failed") else "")


def _time(value: dt.datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)
