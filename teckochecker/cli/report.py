"""Plain-text views of the state for people: `status`, `show` and `plugins`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from teckochecker.config.durations import format_duration
from teckochecker.control import ReloadStatus
from teckochecker.plugins import PluginRegistry
from teckochecker.state.heartbeat import Heartbeat
from teckochecker.state.leadership import ReplicaInfo, Role
from teckochecker.state.models import (
    EXCERPT,
    Event,
    JobOrigin,
    JobSnapshot,
    RequestCounts,
    RunSnapshot,
    request_counts,
)

BAR_WIDTH = 20


def text_bar(counts: RequestCounts | None, width: int = BAR_WIDTH) -> str:
    """``[#######x..]``: # completed, x failed, . not done yet."""
    if counts is None:
        return "[" + " " * width + "]"
    done = min(width, counts.completed * width // counts.total)
    failed_end = min(width, (counts.completed + counts.failed) * width // counts.total)
    # Keep a single failure visible even when it is less than one cell.
    failed = max(failed_end - done, 1 if counts.failed and done < width else 0)
    return "[" + "#" * done + "x" * failed + "." * (width - done - failed) + "]"


def render_reload(status: ReloadStatus | None) -> str:
    """One line on the daemon's last config (re)load, for the foot of `status`."""
    if status is None:
        return "config: no (re)load recorded yet"
    when = _time(status.at)
    if status.successful:
        line = f"config: last (re)load OK at {when}"
        if status.restart_required:
            line += f"; waiting for a restart: {', '.join(status.restart_required)}"
        return line
    first = _one_line(status.errors[0]) if status.errors else "no details"
    return f"config: last reload FAILED at {when} ({len(status.errors)} problem(s); the previous config runs): {first}"


def render_registry_notes(notes: Sequence[str]) -> str:
    """Registered jobs a file job shadows, or that no longer validate (registered_jobs.Assembly.notes)."""
    return "\n".join(f"registered jobs: {note}" for note in notes)


def daemon_down(heartbeat: Heartbeat | None, now: dt.datetime) -> str | None:
    """None while the daemon's heartbeat is fresh (teckochecker.state.heartbeat); else a line saying that it is not
    running and when it was last seen."""
    if heartbeat is None:
        return "daemon not running (it has recorded no heartbeat)"
    if heartbeat.is_fresh(now):
        return None
    age = format_duration(max(0.0, (now - heartbeat.at).total_seconds()))
    how = "; it stopped cleanly" if heartbeat.stopped else ""
    return f"daemon not running (last seen {_time(heartbeat.at)}, {age} ago{how})"


def render_replicas(replicas: Sequence[ReplicaInfo]) -> str:
    """The replicas sharing a PostgreSQL store, for the foot of `status`."""
    rows = [("REPLICA", "ROLE", "LAST HEARTBEAT", "CONFIG")]
    for r in replicas:
        role = r.role if r.alive or r.role == Role.STOPPED else f"{r.role} (silent)"
        rows.append((r.name, role, f"{format_duration(r.age)} ago", r.config_checksum))
    checksums = {r.config_checksum for r in replicas if r.alive}
    lines = _table_lines(rows)
    if len(checksums) > 1:
        lines.append("WARNING: live replicas disagree on the configuration (see CONFIG)")
    return "\n".join(lines)


def replicas_down(replicas: Sequence[ReplicaInfo]) -> str | None:
    """Like daemon_down, for replicas: None while any replica beats."""
    if any(r.alive for r in replicas):
        return None
    newest = min(replicas, key=lambda r: r.age)
    return f"no replica running (last seen: {newest.name}, {format_duration(newest.age)} ago)"


def render_unchecked(targets: Mapping[str, Sequence[str]], why: str) -> str:
    """The configured jobs before a daemon has ever run with this config: nothing is known of them yet."""
    if not targets:
        return f"no jobs configured\n{why}"
    rows = [("JOB", "STATE", "TARGETS", "NEXT CHECK", "ACTION", "LAST ERROR")]
    rows += [(name, "not yet checked", f"0/{len(names)}", "-", "-", "") for name, names in targets.items()]
    return "\n".join([*_table_lines(rows), why])


def render_status(jobs: Sequence[JobSnapshot], now: dt.datetime, *, daemon_down: str | None = None) -> str:
    """The job table. ``daemon_down`` (see daemon_down()) says no daemon runs: then no check is promised."""
    if not jobs:
        return "no jobs in the state store" + (f"\n{daemon_down}" if daemon_down else "")
    # The ORIGIN column appears once a job came from elsewhere than a file (the API, discovery).
    origins = any(job.origin is not JobOrigin.FILE for job in jobs)
    rows = [("JOB", *(("ORIGIN",) if origins else ()), "STATE", "TARGETS", "NEXT CHECK", "ACTION", "LAST ERROR")]
    for job in jobs:
        state = job.state.value + (" (removed)" if job.removed else "") + (" (paused)" if job.paused else "")
        rows.append(
            (
                job.name,
                *((job.origin.value,) if origins else ()),
                state,
                f"{job.done_count}/{len(job.targets)}",
                _next_check(job, now) if daemon_down is None else _no_daemon(job),
                _actions_summary(job.runs),
                _clip(job.last_error or "", 60),
            )
        )
    # The job table keeps its own column widths; each job's batch bars go right under its row.
    table = _table_lines(rows)
    lines = table[:1]
    for job, row in zip(jobs, table[1:], strict=True):
        lines.append(row)
        lines += _target_bars(job)
    if daemon_down:
        lines.append(daemon_down)
    return "\n".join(lines)


def _target_bars(job: JobSnapshot) -> list[str]:
    if not job.targets:
        return []
    width = max(len(t.target) for t in job.targets)
    lines = []
    for target in job.targets:
        counts = request_counts(target.details)
        label = counts.label if counts else "-"
        status = target.state.value + (f" ({target.vendor_status})" if target.vendor_status else "")
        line = f"  {target.target.ljust(width)}  {text_bar(counts)} {label.ljust(18)} {status}"
        lines.append(_one_line(line).rstrip())
    return lines


def render_job(job: JobSnapshot, events: Sequence[Event], now: dt.datetime, *, daemon_down: str | None = None) -> str:
    next_check = _next_check(job, now) if daemon_down is None or job.state.is_final else daemon_down
    lines = [
        f"job:        {_one_line(job.name)}",
        f"origin:     {job.origin.value}",
        f"state:      {job.state.value}" + (" (removed from config)" if job.removed else ""),
        f"targets:    {job.done_count}/{len(job.targets)} finished",
        f"next check: {next_check}",
        f"deadline:   {_time(job.deadline_at)}",
    ]
    if job.last_error:
        lines.append(f"last error: {_one_line(job.last_error)}")
    lines += [
        "",
        _table(
            [("TARGET", "STATE", "STATUS", "PROGRESS", "SEEN", "MESSAGE")]
            + [
                (
                    t.target,
                    t.state.value,
                    t.vendor_status or "-",
                    _progress(t.details),
                    _time(t.observed_at),
                    _clip(t.message or "", 60),
                )
                for t in job.targets
            ]
        ),
    ]
    # What vendors answered, kept out of the messages (the API shows it only with a token; this reads the store).
    lines += [_one_line(f"  {t.target}: the answer said: {said}") for t in job.targets if (said := _said(t.details))]
    if job.runs:
        lines += [
            "",
            _table(
                [("ACTION", "TYPE", "STATE", "EXTERNAL ID", "STATUS", "URL")]
                + [
                    (
                        str(r.action_index),
                        r.action_type,
                        r.state.value,
                        r.external_id or "-",
                        r.vendor_status or "-",
                        r.external_url or "-",
                    )
                    for r in job.runs
                ]
            ),
        ]
        lines += [_run_line(r) for r in job.runs if r.message]
    lines += ["", "EVENTS"] + [_one_line(f"{_time(e.at)}  {e.kind:<20} {e.message}") for e in events]
    return "\n".join(lines)


def render_plugins(registry: PluginRegistry) -> str:
    if not registry.plugins:
        return "no plugins loaded"
    rows = [("PLUGIN", "VERSION", "SOURCE TYPES", "ACTION TYPES")]
    for plugin in registry.plugins:
        rows.append(
            (
                plugin.name,
                plugin.version or "-",
                ", ".join(plugin.source_types) or "-",
                ", ".join(plugin.action_types) or "-",
            )
        )
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


def _no_daemon(job: JobSnapshot) -> str:
    # A stored next_check_at is only a promise while a daemon runs to keep it.
    return "-" if job.state.is_final else "no daemon"


def _progress(details: object) -> str:
    counts = request_counts(details)
    return counts.label if counts else "-"


def _time(value: dt.datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


def _run_line(run: RunSnapshot) -> str:
    said = _said(run.details)
    return _one_line(f"  action {run.action_index}: {run.message}" + (f"; the answer said: {said}" if said else ""))


def _said(details: Mapping[str, Any]) -> str:
    excerpt = details.get(EXCERPT)
    return _clip(excerpt, 200) if isinstance(excerpt, str) else ""


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _one_line(text: str) -> str:
    # Names and messages come from users and vendors: a newline would break the table and an escape
    # sequence could rewrite the reader's terminal.
    return "".join(" " if ord(c) < 32 or 127 <= ord(c) < 160 else c for c in text)


def _table_lines(rows: Sequence[Sequence[str]]) -> list[str]:
    rows = [[_one_line(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def _table(rows: Sequence[Sequence[str]]) -> str:
    return "\n".join(_table_lines(rows))
