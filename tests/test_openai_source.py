"""The ``openai_batch`` source against the fake OpenAI server (real HTTP on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

import pytest
from clock import FakeClock
from fakes import BATCH_STATUSES as DOCUMENTED_STATUSES
from fakes import FakeOpenAI
from plugin_context import Clients, FixedClock
from pydantic import ValidationError
from teckochecker_openai import (
    BATCH_STATUSES,
    AzureOpenAIBatchSource,
    OpenAIBatchOptions,
    OpenAIBatchSource,
    teckochecker_source_types,
)
from teckochecker_openai.throttle import MAX_IN_FLIGHT, AccountThrottle

from teckochecker.errors import PermanentError, TransientError
from teckochecker.plugin_api import CheckReport, PluginContext, SecretName, SharedRegistry, TargetState
from teckochecker.retry import RETRY_AFTER_MAX, WAIT_FLOOR

API_KEY = "sk-CANARY-openai-5f0e1d2c3b4a59687766554433221100"
T = TypeVar("T")


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=API_KEY) as server:
        yield server


@pytest.fixture
def clients() -> Clients:
    return Clients()


def make_source(
    clients: Clients,
    base_url: str,
    *,
    key: str = API_KEY,
    shared: SharedRegistry | None = None,
    clock: Any = None,
    **options: Any,
) -> OpenAIBatchSource:
    """These tests exercise one request per batch unless they ask for the listing (list_batches=True)."""
    options = {
        k: (f"{v}s" if k in ("timeout", "search_lag", "list_max_age") and isinstance(v, (int, float)) else v)
        for k, v in options.items()
    }
    options.setdefault("list_batches", False)
    context = PluginContext(
        http=clients,
        clock=clock or FixedClock(),
        secret=lambda name: {"openai": key}[name],
        logger=logging.getLogger("teckochecker.test.openai"),
        shared=shared or SharedRegistry(),
    )
    return OpenAIBatchSource(OpenAIBatchOptions(api_key=SecretName("openai"), base_url=base_url, **options), context)


def run(clients: Clients, work: Awaitable[T]) -> T:
    async def main() -> T:
        try:
            return await work
        finally:
            await clients.aclose()

    return asyncio.run(main())


def check(clients: Clients, source: OpenAIBatchSource, *targets: str) -> CheckReport:
    return run(clients, source.check(list(targets)))


def by_target(report: CheckReport) -> dict[str, Any]:
    return {o.target: o for o in report.observations}


def assert_no_secret(*texts: object) -> None:
    for text in texts:
        assert API_KEY not in str(text)


# ----- statuses ----------------------------------------------------------------------------------


def test_every_documented_status_is_mapped() -> None:
    assert set(BATCH_STATUSES) == set(DOCUMENTED_STATUSES)


EXPECTED = {
    "validating": TargetState.PENDING,
    "in_progress": TargetState.RUNNING,
    "finalizing": TargetState.RUNNING,
    "cancelling": TargetState.RUNNING,
    "completed": TargetState.SUCCEEDED,
    "failed": TargetState.FAILED,
    "expired": TargetState.EXPIRED,
    "cancelled": TargetState.CANCELLED,
}


def test_each_status_maps_to_its_state(fake: FakeOpenAI, clients: Clients) -> None:
    ids = {status: fake.add_batch(status=status) for status in EXPECTED}
    report = check(clients, make_source(clients, fake.base_url), *ids.values())
    seen = by_target(report)
    assert report.transient_errors == {}
    for status, batch_id in ids.items():
        assert seen[batch_id].state is EXPECTED[status], status
        assert seen[batch_id].vendor_status == status
    assert fake.request_count() == len(EXPECTED)


def test_undocumented_status_is_unknown_and_logged(
    fake: FakeOpenAI, clients: Clients, caplog: pytest.LogCaptureFixture
) -> None:
    batch_id = fake.add_batch(status="in_progress")
    fake.set_status(batch_id, "paused_for_review")
    with caplog.at_level(logging.WARNING):
        report = check(clients, make_source(clients, fake.base_url), batch_id)
    observation = by_target(report)[batch_id]
    assert observation.state is TargetState.UNKNOWN
    assert observation.vendor_status == "paused_for_review"
    assert observation.details["status"] == "paused_for_review"
    assert any("paused_for_review" in r.getMessage() and batch_id in r.getMessage() for r in caplog.records)


# ----- details and messages ----------------------------------------------------------------------


def test_details_keep_counts_files_errors_and_timestamps(fake: FakeOpenAI, clients: Clients) -> None:
    batch_id = fake.add_batch(status="completed", total=10, endpoint="/v1/responses")
    fake.set_status(batch_id, "completed", completed=8, failed=2, output_file_id="file-out", error_file_id="file-err")
    report = check(clients, make_source(clients, fake.base_url), batch_id)
    observation = by_target(report)[batch_id]
    batch = fake.batch(batch_id)
    assert observation.state is TargetState.SUCCEEDED
    details = observation.details
    assert details["request_counts"] == {"total": 10, "completed": 8, "failed": 2}
    assert details["output_file_id"] == "file-out"
    assert details["error_file_id"] == "file-err"
    assert details["errors"] is None
    assert details["endpoint"] == "/v1/responses"
    assert details["model"] == batch["model"]
    for name in (
        "created_at",
        "in_progress_at",
        "expires_at",
        "finalizing_at",
        "completed_at",
        "failed_at",
        "expired_at",
        "cancelling_at",
        "cancelled_at",
    ):
        assert details[name] == batch[name], name
    assert details["completed_at"] is not None
    assert observation.message == "2 of 10 requests failed"


def test_completed_with_every_request_failed_is_succeeded_with_counts(fake: FakeOpenAI, clients: Clients) -> None:
    batch_id = fake.add_batch(status="completed", total=9)
    fake.set_status(batch_id, "completed", completed=0, failed=9, output_file_id=None, error_file_id="file-e")
    observation = by_target(check(clients, make_source(clients, fake.base_url), batch_id))[batch_id]
    assert observation.state is TargetState.SUCCEEDED
    assert observation.details["request_counts"] == {"total": 9, "completed": 0, "failed": 9}
    assert observation.details["output_file_id"] is None
    assert observation.details["error_file_id"] == "file-e"
    assert observation.message == "9 of 9 requests failed"


def test_empty_string_file_ids_are_none(fake: FakeOpenAI, clients: Clients) -> None:
    batch_id = fake.add_batch(status="completed")
    fake.set_status(batch_id, "completed", output_file_id="file-out", error_file_id="")
    observation = by_target(check(clients, make_source(clients, fake.base_url), batch_id))[batch_id]
    assert observation.details["error_file_id"] is None


def test_failed_batch_carries_the_first_error_message(fake: FakeOpenAI, clients: Clients) -> None:
    batch_id = fake.add_batch()
    errors: list[dict[str, Any]] = [
        {
            "code": "token_limit_exceeded",
            "message": "Enqueued token limit reached.",
            "param": None,
            "line": None,
        },
        {"code": "other", "message": "second", "param": None, "line": 3},
    ]
    fake.set_status(batch_id, "failed", errors=errors)
    observation = by_target(check(clients, make_source(clients, fake.base_url), batch_id))[batch_id]
    assert observation.state is TargetState.FAILED
    assert observation.message == "Enqueued token limit reached."
    assert observation.details["errors"] == errors
    assert observation.details["failed_at"] is not None


# ----- per-target errors -------------------------------------------------------------------------


def test_unknown_batch_is_error_with_the_api_message(fake: FakeOpenAI, clients: Clients) -> None:
    known = fake.add_batch(status="in_progress")
    gone = fake.add_batch(status="in_progress")
    fake.remove_batch(gone)
    report = check(clients, make_source(clients, fake.base_url), known, gone)
    observation = by_target(report)[gone]
    assert observation.state is TargetState.ERROR
    assert observation.vendor_status is None
    # OpenAI's words (they name the unknown id) are kept apart from the message (docs/security.md).
    assert gone in observation.details["excerpt"] and gone not in (observation.message or "")
    assert observation.message == "OpenAI refused to show the batch (HTTP 404 batch_not_found)"
    assert by_target(report)[known].state is TargetState.RUNNING
    assert report.transient_errors == {}


def test_forbidden_batch_is_error_not_transient(fake: FakeOpenAI, clients: Clients) -> None:
    batch_id = fake.add_batch()
    fake.inject(
        403,
        batch_id=batch_id,
        body=b'{"error":{"message":"Not your batch.","type":"x","param":null,"code":null}}',
    )
    observation = by_target(check(clients, make_source(clients, fake.base_url), batch_id))[batch_id]
    assert observation.state is TargetState.ERROR
    assert observation.details["excerpt"] == "Not your batch." and "Not your" not in (observation.message or "")
    assert observation.details["http_status"] == 403


def test_rejected_api_key_stops_the_job(fake: FakeOpenAI, clients: Clients, caplog: pytest.LogCaptureFixture) -> None:
    batch_id = fake.add_batch()
    wrong = "sk-CANARY-wrong-key-0000000000000000"
    source = make_source(clients, fake.base_url, key=wrong)
    with caplog.at_level(logging.DEBUG), pytest.raises(PermanentError) as raised:
        check(clients, source, batch_id)
    message = str(raised.value)
    assert "HTTP 401" in message and f"{fake.base_url}/batches/{batch_id}" in message
    assert "Incorrect API key provided" not in message  # kept apart: logged and shown with a token
    assert raised.value.excerpt is not None and "Incorrect API key provided" in raised.value.excerpt
    assert wrong not in message and wrong not in raised.value.excerpt and wrong not in caplog.text


def test_insufficient_quota_is_permanent(fake: FakeOpenAI, clients: Clients) -> None:
    batch_id = fake.add_batch()
    body = (
        b'{"error":{"message":"You exceeded your current quota, please check your plan and billing details.",'
        b'"type":"insufficient_quota","param":null,"code":"insufficient_quota"}}'
    )
    fake.inject(429, body=body)
    with pytest.raises(PermanentError, match=r"insufficient_quota.*check the plan") as raised:
        check(clients, make_source(clients, fake.base_url), batch_id)
    assert raised.value.excerpt is not None and "current quota" in raised.value.excerpt


def test_rate_limit_is_transient_and_honours_the_largest_wait(fake: FakeOpenAI, clients: Clients) -> None:
    seconds, millis, fine = (fake.add_batch(status="in_progress") for _ in range(3))
    fake.inject(429, batch_id=seconds, headers={"Retry-After": "2"})
    fake.inject(429, batch_id=millis, headers={"retry-after-ms": "3500"})
    report = check(clients, make_source(clients, fake.base_url), seconds, millis, fine)
    assert set(report.transient_errors) == {seconds, millis}
    assert "HTTP 429" in report.transient_errors[seconds]
    assert f"{fake.base_url}/batches/{seconds}" in report.transient_errors[seconds]
    assert report.retry_after == 3.5
    assert [o.target for o in report.observations] == [fine]


def test_retry_after_ms_alone(fake: FakeOpenAI, clients: Clients) -> None:
    batch_id = fake.add_batch()
    fake.inject(429, headers={"retry-after-ms": "2500"})
    report = check(clients, make_source(clients, fake.base_url), batch_id)
    assert report.retry_after == 2.5 and set(report.transient_errors) == {batch_id}


def test_retry_after_ms_below_the_floor_waits_the_floor(fake: FakeOpenAI, clients: Clients) -> None:
    batch_id = fake.add_batch()
    fake.inject(429, headers={"retry-after-ms": "250"})
    report = check(clients, make_source(clients, fake.base_url), batch_id)
    assert report.retry_after == WAIT_FLOOR and set(report.transient_errors) == {batch_id}


def test_html_gateway_error_is_transient(fake: FakeOpenAI, clients: Clients) -> None:
    batch_id = fake.add_batch()
    fake.inject(502, body=b"<html><head><title>502 Bad Gateway</title></head><body>bad gateway</body></html>")
    report = check(clients, make_source(clients, fake.base_url), batch_id)
    assert report.observations == ()
    message = report.transient_errors[batch_id]
    assert "HTTP 502" in message and f"{fake.base_url}/batches/{batch_id}" in message
    assert "<html>" not in message
    # A 5xx makes the whole account wait: the first step of the back-off, with jitter (up to 1 s).
    assert report.retry_after is not None and 0 <= report.retry_after <= 1.0


@pytest.mark.parametrize(
    ("body", "reason"),
    [(b"this is not json", "not JSON"), (b'{"object":"batch","id":"batch_x"}', "'status'"), (b"[1,2]", "'id'")],
)
def test_unreadable_success_is_transient(fake: FakeOpenAI, clients: Clients, body: bytes, reason: str) -> None:
    batch_id = fake.add_batch("batch_x")
    fake.inject(200, body=body)
    report = check(clients, make_source(clients, fake.base_url), batch_id)
    message = report.transient_errors[batch_id]
    assert message.startswith(f"unexpected response from {fake.base_url}/batches/{batch_id}")
    assert reason in message


def test_cut_off_success_is_transient(fake: FakeOpenAI, clients: Clients) -> None:
    batch_id = fake.add_batch()
    fake.inject(200, truncate_to=20)
    report = check(clients, make_source(clients, fake.base_url), batch_id)
    assert f"could not reach {fake.base_url}/batches/{batch_id}" in report.transient_errors[batch_id]


def test_no_targets_no_requests(fake: FakeOpenAI, clients: Clients) -> None:
    assert check(clients, make_source(clients, fake.base_url)) == CheckReport()
    assert fake.request_count() == 0


def test_every_target_failing_still_returns_a_report(fake: FakeOpenAI, clients: Clients) -> None:
    ids = [fake.add_batch() for _ in range(3)]
    fake.inject(503, times=3, headers={"Retry-After": "7"})
    report = check(clients, make_source(clients, fake.base_url), *ids)
    assert report.observations == () and set(report.transient_errors) == set(ids)
    assert report.retry_after == 7


def test_unreachable_endpoint_is_transient(clients: Clients) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}/v1"
    report = check(clients, make_source(clients, base_url), "batch_a")
    assert f"could not reach {base_url}/batches/batch_a" in report.transient_errors["batch_a"]


def test_timeout_is_transient(fake: FakeOpenAI, clients: Clients) -> None:
    batch_id = fake.add_batch()
    fake.inject(200, delay=2.0)
    report = check(clients, make_source(clients, fake.base_url, timeout=0.3), batch_id)
    assert "ReadTimeout" in report.transient_errors[batch_id]


# ----- requests ----------------------------------------------------------------------------------


def test_headers_and_concurrent_polling(clients: Clients) -> None:
    with FakeOpenAI(api_key=API_KEY, organization="org-1", project="proj-1") as fake:
        ids = [fake.add_batch(status="in_progress") for _ in range(8)]
        source = make_source(clients, fake.base_url + "/", organization="org-1", project="proj-1")
        report = check(clients, source, *ids, ids[0])
        assert len(report.observations) == 8 and report.transient_errors == {}
        assert len(fake.requests) == 8  # duplicates are asked once
        headers = fake.requests[0].headers
        assert headers["authorization"] == f"Bearer {API_KEY}"
        assert headers["openai-organization"] == "org-1" and headers["openai-project"] == "proj-1"


def test_optional_headers_are_absent_when_unset(fake: FakeOpenAI, clients: Clients) -> None:
    batch_id = fake.add_batch()
    check(clients, make_source(clients, fake.base_url), batch_id)
    headers = fake.requests[-1].headers
    assert "openai-organization" not in headers and "openai-project" not in headers
    assert fake.requests[-1].path == f"/v1/batches/{batch_id}"


def test_ids_are_quoted_into_the_path(fake: FakeOpenAI, clients: Clients) -> None:
    report = check(clients, make_source(clients, fake.base_url), "../files?x=1")
    assert fake.requests[-1].path.startswith("/v1/batches/..%2Ffiles%3Fx%3D1")
    assert by_target(report)["../files?x=1"].state is TargetState.ERROR


def test_secret_never_leaks(fake: FakeOpenAI, clients: Clients, caplog: pytest.LogCaptureFixture) -> None:
    ok, gone, unknown, limited, broken = (fake.add_batch() for _ in range(5))
    fake.remove_batch(gone)
    fake.set_status(unknown, "mystery")
    fake.inject(429, batch_id=limited, headers={"retry-after": "1"})
    fake.inject(502, batch_id=broken, body=b"<html>bad</html>")
    source = make_source(clients, fake.base_url)
    with caplog.at_level(logging.DEBUG):
        report = check(clients, source, ok, gone, unknown, limited, broken)
    assert_no_secret(report, repr(source.options), caplog.text, *(r.body for r in fake.requests))
    assert_no_secret(*(r.getMessage() for r in caplog.records))


# ----- options and registration ------------------------------------------------------------------


def test_options() -> None:
    options = OpenAIBatchOptions(api_key=SecretName("openai"), base_url="https://example.test/openai/v1/")
    assert options.base_url == "https://example.test/openai/v1"
    assert options.timeout == 30.0 and options.organization is None
    for bad in (
        {"base_url": "ftp://example.test"},
        {"base_url": "not a url"},
        {"timeout": 0},
        {"api_key": ""},
        {"unknown": 1},
    ):
        with pytest.raises(ValidationError):
            settings: dict[str, Any] = {"api_key": "openai", **bad}
            OpenAIBatchOptions(**settings)


def test_registered_through_the_hook() -> None:
    assert teckochecker_source_types() == [OpenAIBatchSource, AzureOpenAIBatchSource]
    assert OpenAIBatchSource.type_name == "openai_batch" and OpenAIBatchSource.Options is OpenAIBatchOptions


class SteppingClock(FixedClock):
    def __init__(self) -> None:
        self.mono = 1000.0

    def monotonic(self) -> float:
        return self.mono


def list_requests(fake: FakeOpenAI) -> int:
    return sum(1 for r in fake.requests if r.path == "/v1/batches")


def get_requests(fake: FakeOpenAI) -> int:
    return sum(1 for r in fake.requests if r.path.startswith("/v1/batches/"))


def test_listing_observes_hundreds_of_batches_in_a_few_requests(fake: FakeOpenAI) -> None:
    ids = [fake.add_batch(status="in_progress") for _ in range(250)]
    fake.set_status(ids[7], "completed", completed=10, failed=0)
    fake.add_batch(status="in_progress")  # someone else's batch in the same account
    clients = Clients()
    report = run(clients, make_source(clients, fake.base_url, list_batches=True).check(ids))
    states = {o.target: o.state for o in report.observations}
    assert len(states) == 250 and states[ids[7]] is TargetState.SUCCEEDED and states[ids[0]] is TargetState.RUNNING
    assert list_requests(fake) == 3 and get_requests(fake) == 0
    assert all(r.query.get("limit") == ["100"] for r in fake.requests)


def test_jobs_of_one_account_share_a_listing_and_new_batches_wait_for_the_next_sweep(fake: FakeOpenAI) -> None:
    a = [fake.add_batch(status="in_progress") for _ in range(3)]
    b = [fake.add_batch(status="validating") for _ in range(3)]
    shared, clock, clients = SharedRegistry(), SteppingClock(), Clients()

    async def checks() -> list[CheckReport]:
        first = make_source(clients, fake.base_url, list_batches=True, shared=shared, clock=clock)
        second = make_source(clients, fake.base_url, list_batches=True, shared=shared, clock=clock)
        reports = [await first.check(a)]
        reports.append(await second.check(b))  # b was not wanted in that sweep: not observed yet, not fetched
        clock.mono += 2  # new batches get a sweep soon (NEW_BATCHES_GAP), not after list_max_age
        reports.append(await second.check(b))
        reports.append(await first.check(a))  # reuses that listing
        clock.mono += 10  # older than list_max_age (10 s): the next check lists again
        reports.append(await first.check(a))
        return reports

    reports = run(clients, checks())
    assert [len(r.observations) for r in reports] == [3, 0, 3, 3, 3]
    assert not any(r.transient_errors for r in reports)
    assert list_requests(fake) == 3 and get_requests(fake) == 0


def test_batches_missing_from_the_listing_are_fetched_one_by_one(fake: FakeOpenAI) -> None:
    known = fake.add_batch(status="in_progress")
    clients = Clients()
    report = run(clients, make_source(clients, fake.base_url, list_batches=True).check([known, "batch_missing"]))
    by = {o.target: o for o in report.observations}
    assert by[known].state is TargetState.RUNNING
    assert by["batch_missing"].state is TargetState.ERROR and "No batch found" in by["batch_missing"].details["excerpt"]
    assert fake.request_count("batch_missing") == 1 and fake.request_count(known) == 0


def test_a_rejected_key_is_still_reported_when_listing(fake: FakeOpenAI) -> None:
    batch = fake.add_batch(status="in_progress")
    clients = Clients()
    with pytest.raises(PermanentError, match="HTTP 401"):
        run(clients, make_source(clients, fake.base_url, key="sk-wrong-000000000000", list_batches=True).check([batch]))


def test_openai_refusing_the_listing_falls_back_to_one_by_one(
    fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    ids = [fake.add_batch(status="in_progress") for _ in range(2)]
    fake.inject(404)  # the listing, refused in OpenAI's own envelope (an endpoint without it)
    clients = Clients()
    with caplog.at_level(logging.WARNING):
        report = run(clients, make_source(clients, fake.base_url, list_batches=True).check(ids))
    assert {o.state for o in report.observations} == {TargetState.RUNNING} and not report.transient_errors
    assert list_requests(fake) == 1 and get_requests(fake) == 2
    assert "list_batches: false" in caplog.text


# ----- an account backs off as a whole -----------------------------------------------------------


def test_a_rate_limited_listing_makes_the_whole_account_wait(fake: FakeOpenAI) -> None:
    ids = [fake.add_batch(status="in_progress") for _ in range(300)]
    jobs = [ids[i : i + 100] for i in range(0, 300, 100)]  # three jobs of one account
    fake.inject(429, headers={"retry-after": "30"})  # the first request, the listing, is rate-limited
    shared, clock, clients = SharedRegistry(), FakeClock(), Clients()
    sources = [make_source(clients, fake.base_url, list_batches=True, shared=shared, clock=clock) for _ in jobs]

    async def every_job_checks_after(seconds: float) -> tuple[int, list[CheckReport]]:
        clock.advance(seconds)
        reports = await asyncio.gather(*(source.check(targets) for source, targets in zip(sources, jobs, strict=True)))
        return fake.request_count(), list(reports)

    async def scenario() -> list[tuple[int, list[CheckReport]]]:
        return [await every_job_checks_after(seconds) for seconds in (0, 0.9, 10, 18.6, 0.5)]

    steps = run(clients, scenario())
    for (requests, reports), waits in zip(steps[:4], (30, 29.1, 19.1, 0.5), strict=True):
        assert requests == 1  # the one listing that got the 429: no request at all while the account waits
        for report, targets in zip(reports, jobs, strict=True):
            assert report.observations == () and set(report.transient_errors) == set(targets)
            assert report.retry_after == pytest.approx(waits)
            assert "HTTP 429" in report.transient_errors[targets[0]]
    requests, reports = steps[4]  # 30 s later: one sweep of the listing (three pages), nothing one by one
    assert requests == 1 + 3 and list_requests(fake) == 4 and get_requests(fake) == 0
    assert all(len(r.observations) == 100 and not r.transient_errors and r.retry_after is None for r in reports)


def test_a_rate_limited_single_request_stops_the_account_s_other_requests(fake: FakeOpenAI) -> None:
    ids = [fake.add_batch(status="in_progress") for _ in range(40)]
    fake.inject(429, headers={"retry-after": "5"})  # whichever request comes first
    fake.inject(200, delay=0.5, times=100)  # the others answer after the 429 is known
    shared, clients = SharedRegistry(), Clients()
    first, second = (make_source(clients, fake.base_url, shared=shared) for _ in range(2))

    async def checks() -> tuple[CheckReport, CheckReport]:
        return await first.check(ids[:30]), await second.check(ids[30:])

    one, two = run(clients, checks())
    # Only the requests already under way when the 429 came (one slot each) were sent, then no more.
    assert fake.request_count() == MAX_IN_FLIGHT
    assert len(one.observations) == MAX_IN_FLIGHT - 1 and len(one.transient_errors) == 30 - (MAX_IN_FLIGHT - 1)
    assert one.retry_after == 5
    assert two.observations == () and set(two.transient_errors) == set(ids[30:]) and two.retry_after == 5
    assert all("backing off after HTTP 429" in m for m in two.transient_errors.values())


@pytest.mark.parametrize(
    ("status", "body", "truncate_to"),
    [
        (200, b"<html>Sign in to the network</html>", None),  # a captive portal
        (200, b'{"object": "list"}', None),  # JSON, but no list of batches in it
        (200, None, 20),  # cut off mid-answer
        (403, b"<html>Forbidden</html>", None),  # a proxy's page, not OpenAI refusing the listing
        (401, b"<html>Unauthorized</html>", None),  # a proxy's page is no proof the key is bad
        (503, None, None),  # OpenAI's own 503, without Retry-After
    ],
)
def test_a_listing_that_fails_otherwise_makes_the_account_wait_too(
    fake: FakeOpenAI, status: int, body: bytes | None, truncate_to: int | None
) -> None:
    ids = [fake.add_batch(status="in_progress") for _ in range(5)]
    fake.inject(status, body=body, truncate_to=truncate_to)
    shared, clients = SharedRegistry(), Clients()
    first, second = (make_source(clients, fake.base_url, list_batches=True, shared=shared) for _ in range(2))

    async def checks() -> tuple[CheckReport, CheckReport]:
        return await first.check(ids[:3]), await second.check(ids[3:])

    one, two = run(clients, checks())
    assert fake.request_count() == 1  # never one request per batch instead
    assert one.observations == () and set(one.transient_errors) == set(ids[:3])
    assert two.observations == () and set(two.transient_errors) == set(ids[3:])
    # No Retry-After: the first step of the account's back-off (full jitter up to 1 s), the same for both jobs.
    assert one.retry_after is not None and 0 < one.retry_after <= 1.0
    assert two.retry_after == one.retry_after


class HighestRandom(random.Random):
    """Full jitter at its ceiling, so the back-off steps can be seen."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_the_account_backs_off_exponentially_per_incident_not_per_failed_request() -> None:
    clock = FakeClock()
    throttle = AccountThrottle(clock.monotonic, rng=HighestRandom())
    waits = []
    for _ in range(8):
        waits.append(throttle.failed("HTTP 503"))
        throttle.failed("HTTP 500")  # an answer to a request already in flight: the same incident
        assert throttle.remaining() == waits[-1] and throttle.reason == "HTTP 503"
        clock.advance(waits[-1])
        assert throttle.remaining() is None
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60]
    throttle.succeeded()
    assert throttle.failed("HTTP 502") == 1  # a real answer since: back to the first step
    assert throttle.failed("HTTP 429", retry_after=30) == 30  # the vendor's wait wins over a shorter one
    clock.advance(30)
    assert throttle.failed("HTTP 429", retry_after=3600) == RETRY_AFTER_MAX


# ----- answers are checked, not trusted -----------------------------------------------------------


def test_an_answer_about_another_batch_is_no_answer_about_this_one(fake: FakeOpenAI, clients: Clients) -> None:
    asked = fake.add_batch(status="in_progress")
    other = fake.add_batch(status="completed")
    fake.inject(200, batch_id=asked, body=json.dumps(fake.batch(other)).encode())
    report = check(clients, make_source(clients, fake.base_url), asked)
    assert report.observations == ()
    assert "answer is about another batch" in report.transient_errors[asked] and other in report.transient_errors[asked]


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (403, b"<html><body><h1>403 Forbidden</h1>by the proxy</body></html>"),
        (404, b'{"detail": "Not Found"}'),  # JSON, but not OpenAI's envelope
        (404, b'{"error": "Not Found"}'),
        (400, b'{"error": {"message": "Bad request"}}'),  # neither a type nor a code
        (401, b"<html><body>401 Authorization Required</body></html>"),  # a proxy's, not OpenAI's
    ],
)
def test_an_error_without_openai_s_envelope_is_no_verdict(
    fake: FakeOpenAI, clients: Clients, status: int, body: bytes
) -> None:
    batch_id = fake.add_batch(status="in_progress")
    fake.inject(status, body=body, batch_id=batch_id)
    report = check(clients, make_source(clients, fake.base_url), batch_id)
    assert report.observations == ()
    message = report.transient_errors[batch_id]
    assert f"HTTP {status} from {fake.base_url}/batches/{batch_id} without OpenAI's error body" in message
    assert "<html>" not in message
    # One odd answer to one request: that batch is asked again later; the account does not wait for it.
    assert report.retry_after is None


def test_describe_reads_one_batch_for_discovery_and_says_what_it_could_not(fake: FakeOpenAI, clients: Clients) -> None:
    """What a webhook about a batch no job watches costs discovery: one GET of it, never the listing."""
    batch_id = fake.add_batch(status="completed", metadata={"teckochecker_job": "run-1"})
    unknown = "batch_of_another_project"
    source = make_source(clients, fake.base_url, list_batches=True)  # the listing is there, and not used

    async def scenario() -> None:
        listed = await source.describe(batch_id)
        assert listed is not None and listed.target == batch_id
        assert (listed.state, listed.vendor_status, dict(listed.metadata)) == (
            TargetState.SUCCEEDED,
            "completed",
            {"teckochecker_job": "run-1"},
        )
        assert await source.describe(unknown) is None  # OpenAI's 404: no such batch for this key
        fake.inject(429, batch_id=batch_id, headers={"Retry-After": "3"})
        with pytest.raises(TransientError, match="HTTP 429"):
            await source.describe(batch_id)
        with pytest.raises(TransientError, match="backing off"):  # the account waits: nothing is sent
            await source.describe(batch_id)

    sent_before = fake.request_count()
    run(clients, scenario())
    assert fake.request_kinds()["list"] == 0 and fake.request_count() - sent_before == 3
