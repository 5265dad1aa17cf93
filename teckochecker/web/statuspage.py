"""The read-only status page: one server-rendered HTML document from the API's own JSON shapes.

No script, no external asset, no build step. Every value from users and vendors goes through ``_e``.
Stable classes and data-* attributes (job, target, run, event, progress-label) are what tests read.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from teckochecker.state.models import RequestCounts

REFRESH_SECONDS = 15

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#1b1b1b;background:#fafafa}
h1{font-size:1.4rem;margin:0 0 .2rem}h2{font-size:1.1rem;margin:0;display:inline}
.meta,.empty{color:#555}
#summary{list-style:none;padding:0;display:flex;gap:1rem;margin:.3rem 0}
section.job{background:#fff;border:1px solid #ddd;border-left:6px solid #999;border-radius:4px;
 padding:.8rem 1rem;margin:1rem 0}
section.job[data-state=watching]{border-left-color:#2f6fdf}
section.job[data-state=firing]{border-left-color:#d98e04}
section.job[data-state=completed]{border-left-color:#2a9d3a}
section.job[data-state=completed_with_failures]{border-left-color:#c7a004}
section.job[data-state=failed]{border-left-color:#c62828}
.badge{display:inline-block;padding:0 .5em;border-radius:1em;background:#eee;font-size:.85rem;
 margin-left:.4em}
.badge.paused,.badge.removed{background:#ffe7b3}
dl.job-meta{display:grid;grid-template-columns:max-content auto;gap:.1rem 1rem;margin:.5rem 0}
dl.job-meta dt{color:#555}dl.job-meta dd{margin:0}
.last-error{color:#c62828}
table{border-collapse:collapse;width:100%;margin:.5rem 0}
th,td{text-align:left;padding:.25rem .5rem;border-bottom:1px solid #eee;vertical-align:top}
th{font-weight:600;color:#555;font-size:.85rem}
.bar{display:inline-flex;width:12rem;height:.8rem;background:#e3e3e3;border-radius:3px;overflow:hidden;
 vertical-align:middle}
.bar-completed{background:#2a9d3a}.bar-failed{background:#c62828}
.progress-label{margin-left:.5rem;font-variant-numeric:tabular-nums}
ol.events{margin:.3rem 0;padding-left:1.2rem;font-size:.9rem}
.event-kind{font-family:ui-monospace,monospace;color:#555}
time{font-variant-numeric:tabular-nums;color:#555}
"""


def render_page(jobs: Sequence[Mapping[str, Any]], reload: Mapping[str, Any], version: str, now: dt.datetime) -> str:
    """``jobs`` are /api/v1/jobs/{name} bodies (with their recent ``events``); ``reload`` is the
    ``reload`` part of /api/v1/status."""
    body = "\n".join(_job(job, now) for job in jobs) if jobs else '<p class="empty">No jobs yet.</p>'
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>TeckoChecker status</title>
<style>{_STYLE}</style>
</head>
<body>
<header>
<h1>TeckoChecker</h1>
<p class="meta">version {_e(version)} · generated \
<time id="generated-at" datetime="{_e(now.isoformat())}">{_e(_when(now))}</time>
 · {_reload(reload)} · refreshes every {REFRESH_SECONDS}s</p>
{_summary(jobs)}
</header>
<main id="jobs">
{body}
</main>
</body>
</html>
"""


def _summary(jobs: Sequence[Mapping[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job["state"]] = counts.get(job["state"], 0) + 1
    items = "".join(f'<li class="count" data-state="{_e(state)}">{n} {_e(state)}</li>' for state, n in counts.items())
    return f'<ul id="summary" class="meta">{items}</ul>'


def _reload(reload: Mapping[str, Any]) -> str:
    ok = bool(reload.get("successful"))
    text = f"config loaded {_when(_parse(reload.get('at')))}" if ok else "last config reload FAILED"
    errors = "".join(f"<li>{_e(err)}</li>" for err in reload.get("errors") or ())
    restart = ", ".join(reload.get("restart_required") or ())
    extra = f" (restart needed for: {_e(restart)})" if restart else ""
    listing = f'<ul class="reload-errors">{errors}</ul>' if errors else ""
    return f'<span id="reload-status" data-successful="{str(ok).lower()}">{_e(text)}{extra}</span>{listing}'


def _job(job: Mapping[str, Any], now: dt.datetime) -> str:
    name, state = str(job["name"]), str(job["state"])
    badges = f'<span class="badge job-state state-{_e(state)}">{_e(state)}</span>'
    badges += '<span class="badge paused">paused</span>' if job.get("paused") else ""
    badges += '<span class="badge removed">removed from config</span>' if job.get("removed") else ""
    origin = str(job.get("origin") or "file")
    badges += f'<span class="badge origin origin-{_e(origin)}">{_e(origin)}</span>' if origin != "file" else ""
    return f"""<section class="job" id="job-{_e(name)}" data-job="{_e(name)}" data-state="{_e(state)}" \
data-origin="{_e(origin)}" \
data-paused="{str(bool(job.get("paused"))).lower()}" data-removed="{str(bool(job.get("removed"))).lower()}">
<header><h2 class="job-name">{_e(name)}</h2>{badges}</header>
{_job_meta(job, now)}
{_targets(job.get("targets") or ())}
{_runs(job.get("runs") or ())}
{_events(job.get("events") or ())}
</section>"""


def _job_meta(job: Mapping[str, Any], now: dt.datetime) -> str:
    rows = [
        ("Batches finished", "targets-done", f"{job.get('targets_done', 0)}/{job.get('targets_total', 0)}"),
        ("Next check", "next-check", "-" if job.get("final") else _relative(_parse(job.get("next_check")), now)),
        ("Deadline", "deadline", _when(_parse(job.get("deadline_at")))),
    ]
    if job.get("finished_at"):
        rows.append(("Finished", "finished-at", _when(_parse(job.get("finished_at")))))
    items = "".join(f'<dt>{label}</dt><dd class="{cls}">{_e(value)}</dd>' for label, cls, value in rows)
    if job.get("last_error"):
        items += f'<dt>Last error</dt><dd class="last-error">{_e(job["last_error"])}</dd>'
    return f'<dl class="job-meta">{items}</dl>'


def _targets(targets: Sequence[Mapping[str, Any]]) -> str:
    if not targets:
        return '<p class="empty">No batches.</p>'
    rows = "\n".join(_target(t) for t in targets)
    return (
        '<table class="targets"><thead><tr><th>Batch</th><th>State</th><th>Vendor status</th>'
        "<th>Requests</th><th>Last seen</th><th>Message</th></tr></thead>"
        f"<tbody>\n{rows}\n</tbody></table>"
    )


def _target(target: Mapping[str, Any]) -> str:
    name, state = str(target["target"]), str(target["state"])
    return (
        f'<tr class="target" data-target="{_e(name)}" data-state="{_e(state)}">'
        f'<td class="target-name"><code>{_e(name)}</code></td>'
        f'<td class="target-state">{_e(state)}</td>'
        f'<td class="vendor-status">{_e(target.get("vendor_status") or "-")}</td>'
        f'<td class="progress">{_progress(target.get("progress"))}</td>'
        f'<td class="observed-at">{_e(_when(_parse(target.get("observed_at"))))}</td>'
        f'<td class="message">{_e(target.get("message") or "")}</td></tr>'
    )


def _progress(progress: Mapping[str, Any] | None) -> str:
    if not progress:
        return (
            '<span class="bar" role="progressbar" aria-label="no request counts yet"></span>'
            '<span class="progress-label">-</span>'
        )
    counts = RequestCounts(int(progress["total"]), int(progress["completed"]), int(progress["failed"]))
    done, failed = (min(100.0, 100.0 * n / counts.total) for n in (counts.completed, counts.failed))
    return (
        f'<span class="bar" role="progressbar" aria-valuemin="0" aria-valuemax="{counts.total}" '
        f'aria-valuenow="{counts.completed}" aria-label="{_e(counts.label)}">'
        f'<span class="bar-completed" style="width:{done:.1f}%"></span>'
        f'<span class="bar-failed" style="width:{min(failed, 100.0 - done):.1f}%"></span></span>'
        f'<span class="progress-label">{_e(counts.label)}</span>'
    )


def _runs(runs: Sequence[Mapping[str, Any]]) -> str:
    if not runs:
        return ""
    rows = "\n".join(_run(r) for r in runs)
    return (
        '<table class="runs"><thead><tr><th>#</th><th>Action</th><th>State</th><th>Attempt</th>'
        "<th>Downstream job</th><th>Status</th><th>Message</th></tr></thead>"
        f"<tbody>\n{rows}\n</tbody></table>"
    )


def _run(run: Mapping[str, Any]) -> str:
    state = str(run["state"])
    return (
        f'<tr class="run" data-action-index="{_e(run.get("action_index"))}" '
        f'data-action-type="{_e(run.get("type"))}" data-state="{_e(state)}">'
        f'<td>{_e(run.get("action_index"))}</td><td class="action-type">{_e(run.get("type"))}</td>'
        f'<td class="run-state">{_e(state)}</td><td class="attempt">{_e(run.get("attempt"))}</td>'
        f"<td>{_external(run.get('external_id'), run.get('url'))}</td>"
        f'<td class="vendor-status">{_e(run.get("vendor_status") or "-")}</td>'
        f'<td class="message">{_e(run.get("message") or "")}</td></tr>'
    )


def _external(external_id: object, url: object) -> str:
    if not external_id:
        return '<span class="external-id">-</span>'
    # Only web links: a vendor-supplied "javascript:" URL must never become clickable.
    if isinstance(url, str) and url.lower().startswith(("https://", "http://")):
        return f'<a class="external-id" href="{_e(url)}" rel="noopener noreferrer">{_e(external_id)}</a>'
    return f'<span class="external-id">{_e(external_id)}</span>'


def _events(events: Sequence[Mapping[str, Any]]) -> str:
    if not events:
        return ""
    # Newest first: the page answers "what happened lately".
    items = "\n".join(
        f'<li class="event" data-kind="{_e(e.get("kind"))}"><time datetime="{_e(e.get("at"))}">'
        f'{_e(_when(_parse(e.get("at"))))}</time> <span class="event-kind">{_e(e.get("kind"))}</span> '
        f'<span class="event-message">{_e(e.get("message"))}</span></li>'
        for e in reversed(events)
    )
    return f'<h3 class="events-title">Recent events</h3>\n<ol class="events">\n{items}\n</ol>'


def _e(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)


def _parse(value: object) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError:
        return None


def _when(value: dt.datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _relative(value: dt.datetime | None, now: dt.datetime) -> str:
    if value is None:
        return "not scheduled"
    seconds = int((value - now).total_seconds())
    return "due now" if seconds <= 0 else f"in {seconds}s ({_when(value)})"
