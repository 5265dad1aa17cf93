"""The ``anthropic_batch`` source and the fake Anthropic server it is tested against (real HTTP on 127.0.0.1).

The fake is held to the contract by the official ``anthropic`` SDK: every kind of answer it gives is parsed
into the SDK's models, and its batch objects carry exactly the contract example's keys.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anthropic
import httpx
import pytest
from clock import FakeClock
from fakes import PROCESSING_STATUSES, FakeAnthropic
from plugin_context import Clients, FixedClock
from pydantic import ValidationError
from teckochecker_anthropic import AnthropicBatchOptions, AnthropicBatchSource, batch_state
from teckochecker_anthropic import source as source_module

from teckochecker.errors import PermanentError
from teckochecker.plugin_api import CheckReport, PluginContext, SecretName, SharedRegistry, TargetState
from teckochecker.simulators.anthropic import error_body

API_KEY = "sk-ant-CANARY-0123456789abcdef0123456789abcdef"
EXAMPLES = json.loads((Path(__file__).parent / "contracts" / "anthropic-message-batch-examples.json").read_text())
T = TypeVar("T")


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key=API_KEY) as server:
        yield server


@pytest.fixture
def clients() -> Clients:
    return Clients()


def make_source(
    clients: Clients, fake: FakeAnthropic, *, shared: SharedRegistry | None = None, clock: Any = None, **options: Any
) -> AnthropicBatchSource:
    options.setdefault("list_batches", False)
    context = PluginContext(
        http=clients,
        clock=clock or FixedClock(),
        secret=lambda name: {"anthropic": API_KEY}[name],
        logger=logging.getLogger("teckochecker.test.anthropic"),
        shared=shared or SharedRegistry(),
    )
    opts = AnthropicBatchOptions(api_key=SecretName("anthropic"), base_url=fake.base_url, **options)
    return AnthropicBatchSource(opts, context)


def run(clients: Clients, work: Awaitable[T]) -> T:
    async def main() -> T:
        try:
            return await work
        finally:
            await clients.aclose()

    return asyncio.run(main())


def check(clients: Clients, source: AnthropicBatchSource, targets: list[str]) -> CheckReport:
    return run(clients, source.check(targets))


def only(report: CheckReport) -> Any:
    assert not report.transient_errors, report.transient_errors
    (observation,) = report.observations
    return observation


# ----- the fake, through the official SDK ------------------------------------------------------------


def sdk(fake: FakeAnthropic, **kwargs: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=kwargs.pop("api_key", API_KEY), base_url=fake.base_url, max_retries=0)


def test_sdk_parses_every_batch_state_and_the_keys_match_the_contract(fake: FakeAnthropic) -> None:
    running = fake.add_batch(requests=4)
    canceling = fake.add_batch(requests=4)
    ended = fake.add_batch(requests=4)
    client = sdk(fake)
    client.messages.batches.cancel(canceling)
    fake.end(ended, errored=1, expired=1)
    for batch_id, status in ((running, "in_progress"), (canceling, "canceling"), (ended, "ended")):
        batch = client.messages.batches.retrieve(batch_id)
        assert batch.processing_status == status
        assert set(fake.batch(batch_id)) == set(EXAMPLES["batches"]["ended"])
    ended_batch = client.messages.batches.retrieve(ended)
    assert ended_batch.request_counts.model_dump() == {
        "processing": 0,
        "succeeded": 2,
        "errored": 1,
        "canceled": 0,
        "expired": 1,
    }
    assert ended_batch.results_url == f"{fake.base_url}/v1/messages/batches/{ended}/results"
    assert ended_batch.ended_at is not None and client.messages.batches.retrieve(running).results_url is None


def test_sdk_pages_the_listing_newest_first_both_ways(fake: FakeAnthropic) -> None:
    now = time.time()
    ids = [fake.add_batch(created_at=now - 100 * i) for i in range(5)]  # ids[0] is the newest
    client = sdk(fake)
    assert [b.id for b in client.messages.batches.list(limit=2)] == ids
    first = client.messages.batches.list(limit=2)
    assert first.has_more and first.last_id == ids[1]
    assert [b.id for b in client.messages.batches.list(limit=2, before_id=ids[3]).data] == ids[1:3]
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.list(limit=1001)


def test_sdk_parses_results_delete_and_errors(fake: FakeAnthropic) -> None:
    batch_id = fake.add_batch(requests=4)
    client = sdk(fake)
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.delete(batch_id)  # not ended yet
    fake.end(batch_id, errored=1, canceled=1, expired=1)
    results = list(client.messages.batches.results(batch_id))
    assert sorted(r.result.type for r in results) == ["canceled", "errored", "expired", "succeeded"]
    assert client.messages.batches.delete(batch_id).type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.batches.retrieve(batch_id)
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.AuthenticationError):
        sdk(fake, api_key="sk-ant-wrong").messages.batches.list()
    fake.inject(529)
    with pytest.raises(anthropic.InternalServerError) as overloaded:
        client.messages.batches.list()
    assert overloaded.value.status_code == 529


@pytest.mark.parametrize("status", [400, 401, 402, 403, 404, 409, 429, 500, 504, 529])
def test_every_error_body_of_the_fake_is_an_sdk_error_response(status: int) -> None:
    body = error_body(status)
    parsed = anthropic.types.ErrorResponse.model_validate(body)
    assert parsed.type == "error" and parsed.error.type == body["error"]["type"]
    assert EXAMPLES["error_responses"]["404_not_found"]["body"].keys() == body.keys()


def test_fake_requires_the_version_header_and_sends_rate_limit_headers(fake: FakeAnthropic) -> None:
    url = f"{fake.base_url}/v1/messages/batches"
    bare = httpx.get(url, headers={"x-api-key": API_KEY}, trust_env=False)
    assert bare.status_code == 400 and "anthropic-version" in bare.json()["error"]["message"]
    ok = httpx.get(url, headers={"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}, trust_env=False)
    assert ok.status_code == 200 and ok.headers["request-id"].startswith("req_")
    assert int(ok.headers["anthropic-ratelimit-requests-remaining"]) > 0
    assert dt.datetime.fromisoformat(ok.headers["anthropic-ratelimit-requests-reset"]).tzinfo is not None


# ----- the rule for an ended batch --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("counts", "state", "says"),
    [
        ({"succeeded": 4}, TargetState.SUCCEEDED, None),
        ({"succeeded": 3, "errored": 1}, TargetState.SUCCEEDED, "1 of 4 requests errored"),
        ({"errored": 4}, TargetState.FAILED, "all 4 requests errored"),
        ({"succeeded": 2, "expired": 2}, TargetState.EXPIRED, "2 of 4 requests expired before they ran"),
        ({"errored": 2, "expired": 2}, TargetState.EXPIRED, "2 of 4 requests expired before they ran"),
        ({"succeeded": 1, "canceled": 3}, TargetState.CANCELLED, "3 of 4 requests were canceled"),
        ({"canceled": 2, "expired": 2}, TargetState.CANCELLED, "2 of 4 requests were canceled"),
    ],
)
def test_an_ended_batch_is_judged_by_its_counts(
    fake: FakeAnthropic, clients: Clients, counts: dict[str, int], state: TargetState, says: str | None
) -> None:
    batch_id = fake.add_batch(requests=4)
    fake.end(batch_id, **{"succeeded": 0, **counts})
    observation = only(check(clients, make_source(clients, fake), [batch_id]))
    assert (observation.state, observation.vendor_status) == (state, "ended")
    assert observation.message == says


def test_running_states_and_the_rule_without_counts() -> None:
    assert [batch_state(s, None)[0] for s in PROCESSING_STATUSES] == [
        TargetState.RUNNING,
        TargetState.RUNNING,
        TargetState.FAILED,
    ]
    assert batch_state("archiving", None)[0] is TargetState.UNKNOWN


def test_details_pass_the_results_url_on(fake: FakeAnthropic, clients: Clients) -> None:
    batch_id = fake.add_batch(requests=2)
    fake.end(batch_id)
    observation = only(check(clients, make_source(clients, fake), [batch_id]))
    assert observation.details["results_url"] == f"{fake.base_url}/v1/messages/batches/{batch_id}/results"
    assert observation.details["request_counts"]["succeeded"] == 2
    assert observation.details["ended_at"] and observation.details["created_at"]
    request = fake.requests[-1]
    assert request.headers["x-api-key"] == API_KEY and request.headers["anthropic-version"] == "2023-06-01"


def test_a_configured_anthropic_version_is_the_header_sent(fake: FakeAnthropic, clients: Clients) -> None:
    batch_id = fake.add_batch(requests=1)
    check(clients, make_source(clients, fake, anthropic_version="2024-01-01"), [batch_id])
    assert fake.requests[-1].headers["anthropic-version"] == "2024-01-01"


def test_undocumented_status_keeps_polling_and_warns(
    fake: FakeAnthropic, clients: Clients, caplog: pytest.LogCaptureFixture
) -> None:
    batch_id = fake.add_batch()
    fake.set_status(batch_id, "archiving")
    observation = only(check(clients, make_source(clients, fake), [batch_id]))
    assert observation.state is TargetState.UNKNOWN and "archiving" in caplog.text


# ----- the listing ----------------------------------------------------------------------------------


def test_the_listing_answers_many_batches_in_one_request(fake: FakeAnthropic, clients: Clients) -> None:
    ids = [fake.add_batch(requests=1) for _ in range(30)]
    report = check(clients, make_source(clients, fake, list_batches=True), ids)
    assert len(report.observations) == 30 and not report.transient_errors
    assert [r.path for r in fake.requests] == ["/v1/messages/batches"]
    assert fake.requests[0].query["limit"] == ["1000"]


def test_the_listing_pages_with_after_id_and_fetches_what_it_missed(
    fake: FakeAnthropic, clients: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(source_module, "PAGE_SIZE", 2)
    now = time.time()
    ids = [fake.add_batch(created_at=now - i) for i in range(5)]
    unlisted = "msgbatch_01NotInTheListingAtAll0000"
    report = check(clients, make_source(clients, fake, list_batches=True), [*ids[:4], unlisted])
    assert {o.target for o in report.observations} == {*ids[:4], unlisted}
    lists = [r for r in fake.requests if r.path == "/v1/messages/batches"]
    assert [r.query.get("after_id") for r in lists][:2] == [None, [ids[1]]]
    assert fake.request_count(unlisted) == 1 and all(fake.request_count(i) == 0 for i in ids)
    missing = next(o for o in report.observations if o.target == unlisted)
    assert missing.state is TargetState.ERROR and missing.details["excerpt"] == "Not found"
    assert missing.message == "Anthropic refused to show the batch (HTTP 404 not_found_error)"


def test_a_sweep_stops_once_its_pages_are_older_than_every_wanted_batch(
    fake: FakeAnthropic, clients: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(source_module, "PAGE_SIZE", 2)
    now = time.time()
    ids = [fake.add_batch(created_at=now - i) for i in range(8)]
    gone = fake.add_batch(created_at=now - 1.5)  # listed between ids[1] and ids[2], then deleted
    clock = FakeClock()
    source = make_source(clients, fake, clock=clock, list_batches=True)

    async def work() -> CheckReport:
        await source.check([ids[0], gone])
        fake.remove_batch(gone)
        fake.requests.clear()
        clock.advance(11)
        return await source.check([ids[0], gone])

    report = run(clients, work())
    # Page 2 already holds batches older than `gone`: no further page can show it, so it is fetched alone.
    assert [r.query.get("after_id") for r in fake.requests if r.path == "/v1/messages/batches"] == [None, [ids[1]]]
    assert {o.target: o.state for o in report.observations} == {ids[0]: TargetState.RUNNING, gone: TargetState.ERROR}


def test_a_listing_is_shared_by_the_jobs_of_one_key_until_it_is_old(fake: FakeAnthropic, clients: Clients) -> None:
    ids = [fake.add_batch() for _ in range(4)]
    shared, clock = SharedRegistry(), FakeClock()

    async def work() -> None:
        first = make_source(clients, fake, shared=shared, clock=clock, list_batches=True)
        second = make_source(clients, fake, shared=shared, clock=clock, list_batches=True)
        await first.check(ids[:2])
        await second.check(ids[2:])
        clock.advance(11)
        await second.check(ids[2:])

    run(clients, work())
    assert [r.path for r in fake.requests].count("/v1/messages/batches") == 2
    # The first sweep did not know the second job's batches yet: fetched once each, then listed.
    assert [fake.request_count(i) for i in ids] == [0, 0, 1, 1]


# ----- failures ---------------------------------------------------------------------------------------


def test_a_rejected_key_stops_the_job_without_showing_it(fake: FakeAnthropic, clients: Clients) -> None:
    batch_id = fake.add_batch()
    source = make_source(clients, fake)
    source.context = PluginContext(
        http=clients, clock=FixedClock(), secret=lambda _: "sk-ant-wrong", logger=logging.getLogger("t")
    )
    with pytest.raises(PermanentError, match="rejected the API key") as error:
        check(clients, source, [batch_id])
    assert "sk-ant-wrong" not in str(error.value)


@pytest.mark.parametrize("status", [429, 500, 529])
def test_rate_limits_and_overload_make_every_job_of_the_key_wait(
    fake: FakeAnthropic, clients: Clients, status: int
) -> None:
    batch_id = fake.add_batch()
    fake.inject(status, headers={"retry-after": "7"})
    shared, clock = SharedRegistry(), FakeClock()

    async def work() -> tuple[CheckReport, CheckReport]:
        first = await make_source(clients, fake, shared=shared, clock=clock).check([batch_id])
        other = await make_source(clients, fake, shared=shared, clock=clock).check([batch_id])
        return first, other

    first, other = run(clients, work())
    assert first.retry_after == 7 and batch_id in first.transient_errors
    assert other.retry_after == 7 and "backing off" in other.transient_errors[batch_id]
    assert fake.request_count(batch_id) == 1


def test_a_spent_request_limit_waits_for_its_reset_before_any_429(fake: FakeAnthropic, clients: Clients) -> None:
    batch_id = fake.add_batch()
    clock = FakeClock(dt.datetime.now(dt.UTC))
    fake.set_rate_limit(0, reset_at=clock.now().timestamp() + 30)
    source = make_source(clients, fake, clock=clock)

    async def work() -> CheckReport:
        assert (await source.check([batch_id])).observations
        return await source.check([batch_id])

    waiting = run(clients, work())
    assert waiting.retry_after is not None and 28 < waiting.retry_after <= 30
    assert "request limit is used up" in waiting.transient_errors[batch_id]
    assert fake.request_count(batch_id) == 1


def test_a_429_without_retry_after_waits_for_the_window_reset(fake: FakeAnthropic, clients: Clients) -> None:
    batch_id = fake.add_batch()
    clock = FakeClock(dt.datetime.now(dt.UTC))
    fake.set_rate_limit(0, reset_at=clock.now().timestamp() + 20)
    fake.inject(429)
    report = check(clients, make_source(clients, fake, clock=clock), [batch_id])
    assert report.retry_after is not None and 18 < report.retry_after <= 20


def test_a_spend_limit_is_permanent(fake: FakeAnthropic, clients: Clients) -> None:
    batch_id = fake.add_batch()
    body = {
        "type": "error",
        "error": {
            "type": "rate_limit_error",
            "message": "spend limit reached",
            "details": {"error_code": "enforced_spend_limit_reached"},
        },
    }
    fake.inject(429, body=json.dumps(body).encode())
    with pytest.raises(PermanentError, match="spend limit"):
        check(clients, make_source(clients, fake), [batch_id])


@pytest.mark.parametrize(
    ("status", "body"), [(502, b"<html>Bad Gateway</html>"), (403, b"<html>Forbidden</html>"), (200, b"[]")]
)
def test_answers_that_are_not_anthropic_speaking_are_transient(
    fake: FakeAnthropic, clients: Clients, status: int, body: bytes
) -> None:
    batch_id = fake.add_batch()
    fake.inject(status, body=body)
    report = check(clients, make_source(clients, fake), [batch_id])
    assert not report.observations and batch_id in report.transient_errors


def test_an_answer_about_another_batch_decides_nothing(fake: FakeAnthropic, clients: Clients) -> None:
    batch_id, other = fake.add_batch(), fake.add_batch()
    fake.inject(200, body=json.dumps(fake.batch(other)).encode(), batch_id=batch_id)
    report = check(clients, make_source(clients, fake), [batch_id])
    assert "another batch" in report.transient_errors[batch_id]


def test_options_are_checked() -> None:
    with pytest.raises(ValidationError, match="http"):
        AnthropicBatchOptions(api_key=SecretName("a"), base_url="ftp://x")
    with pytest.raises(ValidationError, match="anthropic_version"):
        AnthropicBatchOptions(api_key=SecretName("a"), anthropic_version="latest")
