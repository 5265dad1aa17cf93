"""Waits the vendors cannot shorten, against the real daemon process and real fakes: a vendor answering
``429`` with ``retry-after: 0`` (or ``retry-after-ms: 0``, or a date in the past) forever gets at most about
one request a second, fewer as the failures go on; and a check that keeps failing the same way writes one
``check_failed`` event, not one per attempt.

The bounds are counts over a window with a generous margin (a second's request more at each end), never a
latency: the hostile fakes made hundreds of requests in such a window before the floor.
"""

from __future__ import annotations

import email.utils
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from daemon import DaemonProcess
from fakes import FakeAnthropic, FakeKeboola

from teckochecker.simulators._http import Reply, json_reply, too_many_requests

ANTHROPIC_KEY = "sk-ant-CANARY-waits-0123456789"
KEBOOLA_TOKEN = "kbc-CANARY-waits-4242-zyxwvut"
COMPONENT = "kds-team.app-custom-python"
WINDOW = 5.0  # seconds of hostile answers each test watches

# Hints that, taken at their word, let a step run again at once.
ZERO_HINTS: dict[str, Callable[[], Reply]] = {
    "retry-after 0": lambda: too_many_requests(retry_after="0"),
    "retry-after-ms 0": lambda: too_many_requests(retry_after_ms="0"),
    # A few seconds of clock skew are enough to put the vendor's date in our past.
    "date in the past": lambda: too_many_requests(retry_at=time.time() - 5),
}


@pytest.fixture
def anthropic() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key=ANTHROPIC_KEY) as fake:
        yield fake


@pytest.fixture
def keboola() -> Iterator[FakeKeboola]:
    with FakeKeboola(token=KEBOOLA_TOKEN) as fake:
        fake.add_config(COMPONENT, "101")
        yield fake


@pytest.fixture
def env(plugin_env: dict[str, str]) -> dict[str, str]:
    return {**plugin_env, "ANTHROPIC_API_KEY": ANTHROPIC_KEY, "KEBOOLA_STORAGE_TOKEN": KEBOOLA_TOKEN}


def write_config(tmp_path: Path, anthropic: FakeAnthropic, batch: str, *, list_batches: bool, action: str) -> Path:
    path = tmp_path / "teckochecker.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        http: {{port: 0}}
        secrets:
          anthropic: {{env: ANTHROPIC_API_KEY}}
          keboola: {{env: KEBOOLA_STORAGE_TOKEN}}
        defaults: {{interval: 30s, startup_spread: 0s}}
        jobs:
          - name: hostile
            source:
              type: anthropic_batch
              api_key: anthropic
              base_url: "{anthropic.base_url}"
              targets: [{batch}]
              list_batches: {str(list_batches).lower()}
            actions:
              - {action}
        """)
    )
    return path


def keboola_action(keboola: FakeKeboola) -> str:
    return (
        f'{{type: keboola_job, token: keboola, stack_url: "{keboola.stack_url}", queue_url: "{keboola.queue_url}", '
        f"component: {COMPONENT}, "
        'config: "101", timeout: 1s, search_lag: 1s, follow_interval: 1s, duplicate_watch: 0s}'
    )


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, daemon: DaemonProcess) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if daemon.proc.poll() is not None:
            raise AssertionError(f"daemon exited while waiting for {what}:\n{daemon.output}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{daemon.output}"
        time.sleep(0.05)
    return value


def requests_in_window(count: Callable[[], int], daemon: DaemonProcess) -> int:
    """Requests counted over WINDOW seconds from the first hostile answer."""
    wait_until(count, 30, "the first request", daemon)
    first = count()
    time.sleep(WINDOW)  # the window itself: what is measured is how many requests fall in it
    return count() - first


@pytest.mark.parametrize("hint", ZERO_HINTS.values(), ids=ZERO_HINTS.keys())
def test_a_single_read_told_to_retry_at_once_waits_at_least_a_second(
    tmp_path: Path, anthropic: FakeAnthropic, keboola: FakeKeboola, env: dict[str, str], hint: Callable[[], Reply]
) -> None:
    batch = anthropic.add_batch()
    path = f"/v1/messages/batches/{batch}"
    anthropic.answer_always(path, hint(), method="GET")
    config = write_config(tmp_path, anthropic, batch, list_batches=False, action=keboola_action(keboola))
    daemon = DaemonProcess(config, env, tmp_path)
    try:
        sent = requests_in_window(lambda: anthropic.requests_to(path), daemon)
        assert 1 <= sent <= WINDOW + 2, f"{sent} GETs in {WINDOW:.0f} s"
    finally:
        assert daemon.stop()[0] == 0
    assert keboola.jobs_for(COMPONENT, "101") == []  # a 429 decides nothing


def test_following_a_keboola_job_told_to_retry_at_once_waits_at_least_a_second(
    tmp_path: Path, anthropic: FakeAnthropic, keboola: FakeKeboola, env: dict[str, str]
) -> None:
    batch = anthropic.add_batch()
    anthropic.end(batch)
    keboola.answer_always("/jobs/*", too_many_requests(retry_after="0"), method="GET")
    config = write_config(tmp_path, anthropic, batch, list_batches=False, action=keboola_action(keboola))
    daemon = DaemonProcess(config, env, tmp_path)
    try:
        started = wait_until(lambda: keboola.jobs_for(COMPONENT, "101"), 30, "the Keboola job started", daemon)
        path = f"/jobs/{started[0]['id']}"
        sent = requests_in_window(lambda: keboola.requests_to(path), daemon)
        assert 1 <= sent <= WINDOW + 2, f"{sent} follow GETs in {WINDOW:.0f} s"
    finally:
        assert daemon.stop()[0] == 0
    assert len(keboola.jobs_for(COMPONENT, "101")) == 1


def test_a_keboola_create_told_to_retry_at_once_waits_at_least_a_second(
    tmp_path: Path, anthropic: FakeAnthropic, keboola: FakeKeboola, env: dict[str, str]
) -> None:
    batch = anthropic.add_batch()
    anthropic.end(batch)
    keboola.answer_always("/jobs", too_many_requests(retry_after="0"), method="POST")
    config = write_config(tmp_path, anthropic, batch, list_batches=False, action=keboola_action(keboola))
    daemon = DaemonProcess(config, env, tmp_path)
    try:
        sent = requests_in_window(lambda: keboola.requests_to("/jobs", "POST"), daemon)
        assert 1 <= sent <= WINDOW + 2, f"{sent} creates in {WINDOW:.0f} s"
    finally:
        assert daemon.stop()[0] == 0
    assert keboola.jobs_for(COMPONENT, "101") == []


def test_a_listing_that_is_no_listing_writes_one_event_not_one_per_attempt(
    tmp_path: Path, anthropic: FakeAnthropic, keboola: FakeKeboola, env: dict[str, str]
) -> None:
    batch = anthropic.add_batch()
    listing = "/v1/messages/batches"
    anthropic.answer_always(listing, json_reply(200, [1, 2, 3]), method="GET")
    config = write_config(tmp_path, anthropic, batch, list_batches=True, action=keboola_action(keboola))
    daemon = DaemonProcess(config, env, tmp_path)
    try:
        wait_until(lambda: anthropic.requests_to(listing) >= 3, 30, "the listing asked three times", daemon)
        body = httpx.get(f"{daemon.http_url()}/api/v1/jobs/hostile?events=1000", timeout=10).json()
    finally:
        assert daemon.stop()[0] == 0
    failed = [e for e in body["events"] if e["kind"] == "check_failed"]
    assert body["state"] == "watching"
    assert 1 <= len(failed) <= 2, [e["message"] for e in failed]  # one condition (and, at most, its waiting twin)


def test_the_fake_says_the_date_it_was_told() -> None:
    """The switch itself: an HTTP date, as vendors send it, in the past when asked."""
    reply = too_many_requests(retry_at=1_000_000_000)
    when = email.utils.parsedate_to_datetime(reply.headers["retry-after"])
    assert reply.status == 429 and when.timestamp() == 1_000_000_000
