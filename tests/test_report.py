"""The text views: `status` keeps its job table and shows each batch's progress as a bar under its job."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from teckochecker.cli.report import daemon_down, render_job, render_status, render_unchecked, text_bar
from teckochecker.plugin_api import TargetState
from teckochecker.state.heartbeat import FRESH_FOR, Heartbeat, heartbeat_from_json, heartbeat_json
from teckochecker.state.models import (
    Event,
    JobSnapshot,
    JobState,
    RequestCounts,
    RunSnapshot,
    RunState,
    TargetSnapshot,
    request_counts,
)

NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)


def target(
    name: str, state: str, counts: tuple[int, int, int] | None = None, status: str | None = None
) -> TargetSnapshot:
    details: dict[str, Any] = {}
    if counts is not None:
        details["request_counts"] = dict(zip(("total", "completed", "failed"), counts, strict=True))
    return TargetSnapshot(name, TargetState(state), status, details, None, NOW)


def job(
    name: str,
    state: JobState,
    *targets: TargetSnapshot,
    runs: tuple[RunSnapshot, ...] = (),
    last_error: str | None = None,
    next_check: dt.datetime | None = None,
) -> JobSnapshot:
    return JobSnapshot(
        name=name,
        state=state,
        fingerprint="f",
        removed=False,
        paused=False,
        created_at=NOW,
        first_observed_at=NOW,
        deadline_at=None,
        last_checked_at=NOW,
        next_check_at=next_check,
        finished_at=None,
        last_error=last_error,
        consecutive_failures=0,
        targets=targets,
        runs=runs,
    )


def run(state: RunState, external_id: str | None) -> RunSnapshot:
    return RunSnapshot(
        id=1,
        action_index=0,
        action_type="keboola_job",
        state=state,
        trigger_id="t",
        attempt=1,
        created_at=NOW,
        intent_at=NOW,
        next_try_at=None,
        search_empty_count=0,
        external_id=external_id,
        external_url=None,
        vendor_status="processing",
        message=None,
        details={},
    )


@pytest.mark.parametrize(
    ("counts", "bar"),
    [
        (RequestCounts(10, 7, 1), "[##############xx....]"),
        (RequestCounts(10, 10, 0), "[####################]"),
        (RequestCounts(10, 0, 0), "[....................]"),
        (RequestCounts(1000, 990, 1), "[###################x]"),  # one failure stays visible
        (RequestCounts(3, 0, 3), "[xxxxxxxxxxxxxxxxxxxx]"),
        (RequestCounts(5, 9, 9), "[####################]"),  # nonsense from a vendor never overflows
        (None, "[                    ]"),
    ],
)
def test_text_bar(counts: RequestCounts | None, bar: str) -> None:
    assert text_bar(counts) == bar


def test_request_counts_tolerate_vendor_data() -> None:
    assert request_counts({"request_counts": {"total": 10, "completed": 7, "failed": 1}}) == RequestCounts(10, 7, 1)
    assert request_counts({"request_counts": {"total": 0, "completed": 0, "failed": 0}}) is None
    assert request_counts({"request_counts": None}) is None
    assert request_counts({}) is None and request_counts(None) is None
    assert request_counts({"request_counts": {"total": "10", "completed": True, "failed": -1}}) is None
    assert request_counts({"request_counts": {"total": 4, "completed": "3"}}) == RequestCounts(4, 0, 0)
    assert RequestCounts(10, 7, 1).label == "7/10 (1 failed)" and RequestCounts(2, 2, 0).label == "2/2"


def test_status_shows_bars_under_each_job_row() -> None:
    jobs = [
        job(
            "done",
            JobState.COMPLETED,
            target("batch_x", "succeeded", (2, 2, 0), "completed"),
            runs=(run(RunState.SUCCEEDED, "777"),),
        ),
        job(
            "waiting",
            JobState.WATCHING,
            target("batch_abc", "running", (10, 7, 1), "in_progress"),
            target("batch_b", "pending", None, "validating"),
            next_check=NOW + dt.timedelta(seconds=42),
        ),
    ]
    lines = render_status(jobs, NOW).splitlines()
    assert lines == [
        "JOB      STATE      TARGETS  NEXT CHECK  ACTION         LAST ERROR",
        "done     completed  1/1      -           succeeded 777",
        "  batch_x  [####################] 2/2                succeeded (completed)",
        "waiting  watching   0/2      in 42s      -",
        "  batch_abc  [##############xx....] 7/10 (1 failed)    running (in_progress)",
        "  batch_b    [                    ] -                  pending (validating)",
    ]


def test_the_job_rows_keep_their_format() -> None:
    # tests/test_daemon_process.py reads these rows from the real CLI.
    out = render_status(
        [
            job("done", JobState.COMPLETED, target("a", "succeeded")),
            job("waiting", JobState.WATCHING, target("b", "pending")),
        ],
        NOW,
    )
    assert "done     completed" in out and "waiting  watching   0/1" in out


def test_hostile_text_stays_on_its_line() -> None:
    evil = job(
        "j",
        JobState.WATCHING,
        target("batch\n\x1b[2Jx", "running", (4, 1, 0)),
        last_error="line one\nline two\x1b[31m red",
    )
    lines = render_status([evil], NOW).splitlines()
    assert len(lines) == 3 and "\x1b" not in "".join(lines)
    assert "line one line two" in lines[1] and "1/4" in lines[2]
    shown = render_job(evil, [Event(NOW, "check_failed", "bad\nthing")], NOW)
    assert "bad thing" in shown and "\x1b" not in shown


def test_empty_store() -> None:
    assert render_status([], NOW) == "no jobs in the state store"


def test_no_check_is_promised_when_the_daemon_is_not_running() -> None:
    waiting = job("waiting", JobState.WATCHING, target("b", "pending"), next_check=NOW + dt.timedelta(seconds=9))
    fresh = Heartbeat(NOW - dt.timedelta(seconds=4), 12, "host")
    assert daemon_down(fresh, NOW) is None
    assert "in 9s" in render_status([waiting], NOW, daemon_down=daemon_down(fresh, NOW))

    stale = Heartbeat(NOW - dt.timedelta(minutes=5, seconds=3), 12, "host")
    down = daemon_down(stale, NOW)
    assert down == "daemon not running (last seen 2026-01-01 11:54:57Z, 5m3s ago)"
    lines = render_status([waiting], NOW, daemon_down=down).splitlines()
    assert lines[1].split()[:4] == ["waiting", "watching", "0/1", "no"] and "in 9s" not in "\n".join(lines)
    assert lines[-1] == down
    shown = render_job(waiting, [], NOW, daemon_down=down)
    assert f"next check: {down}\n" in shown and "in 9s" not in shown

    stopped = Heartbeat(NOW - dt.timedelta(seconds=2), 12, "host", stopped=True)
    assert daemon_down(stopped, NOW) == (
        "daemon not running (last seen 2026-01-01 11:59:58Z, 2s ago; it stopped cleanly)"
    )
    assert daemon_down(None, NOW) == "daemon not running (it has recorded no heartbeat)"


def test_heartbeat_is_fresh_until_it_is_marked_stopped_or_too_old() -> None:
    beat = Heartbeat(NOW, 7, "h")
    assert beat.is_fresh(NOW + FRESH_FOR - dt.timedelta(seconds=1)) and not beat.is_fresh(NOW + FRESH_FOR)
    assert not Heartbeat(NOW, 7, "h", stopped=True).is_fresh(NOW)
    assert heartbeat_from_json(heartbeat_json(beat)) == beat
    assert heartbeat_from_json(None) is None and heartbeat_from_json("{not json") is None


def test_configured_jobs_before_the_first_run() -> None:
    assert render_unchecked({"nightly": ["b1", "b2"], "x": ["c"]}, "daemon never ran").splitlines() == [
        "JOB      STATE            TARGETS  NEXT CHECK  ACTION  LAST ERROR",
        "nightly  not yet checked  0/2      -           -",
        "x        not yet checked  0/1      -           -",
        "daemon never ran",
    ]
