"""The ``keboola_job`` action against the fake Keboola stack (real HTTP on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import socket
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

import httpx
import pytest
from fakes import FakeKeboola
from plugin_context import Clients, FixedClock
from pydantic import ValidationError
from teckochecker_keboola import (
    JOB_STATUSES,
    KeboolaJobAction,
    KeboolaJobOptions,
    guess_queue_url,
    job_outcome,
    parse_time,
    teckochecker_action_types,
)

from teckochecker.errors import InDoubt, NotStarted, Rejected, TransientError
from teckochecker.plugin_api import (
    ActionOutcome,
    ActionRequest,
    ActionResult,
    Cancellation,
    Observation,
    PluginContext,
    SecretName,
    TargetState,
)

TOKEN = "kbc-CANARY-token-1234-abcdefabcdefabcdefabcdef"
COMPONENT = "kds-team.app-custom-python"
CONFIG = "123456789"
TRIGGER = "trig-0f1e2d3c"
T = TypeVar("T")


@pytest.fixture
def fake() -> Iterator[FakeKeboola]:
    with FakeKeboola(token=TOKEN, token_id="4242") as server:
        server.add_config(COMPONENT, CONFIG)
        yield server
        assert server.contract_violations == []


@pytest.fixture
def clients() -> Clients:
    return Clients()


def make_action(clients: Clients, stack_url: str, *, token_value: str = TOKEN, **options: Any) -> KeboolaJobAction:
    options = {
        k: (f"{v}s" if k in ("timeout", "search_lag") and isinstance(v, (int, float)) else v)
        for k, v in options.items()
    }
    context = PluginContext(
        http=clients,
        clock=FixedClock(),
        secret=lambda name: {"kbc": token_value}[name],
        logger=logging.getLogger("teckochecker.test.keboola"),
    )
    settings: dict[str, Any] = {
        "token": "kbc",
        "stack_url": stack_url,
        "component": COMPONENT,
        "config": CONFIG,
    }
    return KeboolaJobAction(KeboolaJobOptions(**{**settings, **options}), context)


def run(clients: Clients, work: Awaitable[T]) -> T:
    async def main() -> T:
        try:
            return await work
        finally:
            await clients.aclose()

    return asyncio.run(main())


def make_request(trigger_id: str = TRIGGER) -> ActionRequest:
    def seen(target: str, state: TargetState, **details: Any) -> Observation:
        return Observation(target=target, state=state, vendor_status=None, details=details)

    return ActionRequest(
        job_name="nightly-classify",
        trigger_id=trigger_id,
        fired_at=dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC),
        targets=(
            seen("batch_1", TargetState.SUCCEEDED, output_file_id="file-o1", error_file_id=None),
            seen("batch_2", TargetState.SUCCEEDED, output_file_id="file-o2", error_file_id="file-e2"),
            seen("batch_3", TargetState.FAILED, output_file_id=None, error_file_id=None),
            seen("batch_4", TargetState.EXPIRED, output_file_id="file-o4", error_file_id="file-e4"),
            seen("batch_5", TargetState.CANCELLED),
            seen("batch_6", TargetState.ERROR),
        ),
    )


def posts(fake: FakeKeboola) -> list[Any]:
    return [r for r in fake.requests if r.method == "POST" and r.path == "/jobs"]


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ----- start -------------------------------------------------------------------------------------


def test_start_creates_one_job_and_discovers_the_queue_once(fake: FakeKeboola, clients: Clients) -> None:
    action = make_action(clients, fake.stack_url + "/")

    async def scenario() -> tuple[ActionResult, ActionResult]:
        return await action.start(make_request()), await action.start(make_request("trig-2"))

    first, second = run(clients, scenario())
    index_requests = [r for r in fake.requests if r.service == "stack"]
    assert len(index_requests) == 1
    assert index_requests[0].path.rstrip("/") == "/v2/storage"
    assert index_requests[0].query.get("exclude") == ["components"]
    assert "x-storageapi-token" not in index_requests[0].headers  # the index needs no token
    ledger = fake.jobs_for(COMPONENT, CONFIG)
    assert [j["id"] for j in ledger] == [first.external_id, second.external_id]
    job = ledger[0]
    assert first.outcome is ActionOutcome.RUNNING
    assert first.vendor_status == "created"
    assert first.url == f"{fake.queue_url}/jobs/{job['id']}"
    assert first.created_at == dt.datetime.fromisoformat(job["createdTime"])
    assert first.details["runId"] == job["runId"]
    assert first.details["project_id"] == job["project"]["id"]
    assert first.details["branchId"] is None


def test_body_and_variables(fake: FakeKeboola, clients: Clients) -> None:
    action = make_action(clients, fake.stack_url, variables={"env": "prod", "region": "eu"})
    run(clients, action.start(make_request()))
    (request,) = posts(fake)
    assert request.headers["x-storageapi-token"] == TOKEN
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {
        "component": COMPONENT,
        "config": CONFIG,
        "mode": "run",
        "variableValuesData": {
            "values": [
                {"name": "batch_ids_completed", "value": '["batch_1","batch_2"]'},
                {"name": "batch_ids_failed", "value": '["batch_3","batch_4","batch_5","batch_6"]'},
                {"name": "batch_count_total", "value": "6"},
                {"name": "batch_count_completed", "value": "2"},
                {"name": "batch_count_failed", "value": "4"},
                {
                    "name": "batch_output_file_ids",
                    "value": '{"batch_1":"file-o1","batch_2":"file-o2","batch_4":"file-o4"}',
                },
                {"name": "batch_error_file_ids", "value": '{"batch_2":"file-e2","batch_4":"file-e4"}'},
                {"name": "teckochecker_trigger_id", "value": TRIGGER},
                {"name": "env", "value": "prod"},
                {"name": "region", "value": "eu"},
            ]
        },
    }


def test_no_files_and_no_batches_give_json_not_empty_strings(fake: FakeKeboola, clients: Clients) -> None:
    action = make_action(clients, fake.stack_url)
    request = ActionRequest("j", TRIGGER, dt.datetime(2026, 1, 1, tzinfo=dt.UTC), targets=())
    run(clients, action.start(request))
    values = {v["name"]: v["value"] for v in posts(fake)[0].json()["variableValuesData"]["values"]}
    assert values["batch_output_file_ids"] == "{}" and values["batch_error_file_ids"] == "{}"
    assert values["batch_ids_completed"] == "[]" and values["batch_count_total"] == "0"


def test_rows_branch_and_mode_are_sent_only_when_set(fake: FakeKeboola, clients: Clients) -> None:
    action = make_action(clients, fake.stack_url, config_row_ids=["r1", "r2"], branch_id="777", mode="debug")
    result = run(clients, action.start(make_request()))
    body = posts(fake)[0].json()
    assert body["configRowIds"] == ["r1", "r2"] and body["branchId"] == "777" and body["mode"] == "debug"
    assert "tag" not in body
    assert result.details["branchId"] == "777"


def test_start_without_follow_succeeds_at_once(fake: FakeKeboola, clients: Clients) -> None:
    action = make_action(clients, fake.stack_url, follow=False)

    async def scenario() -> tuple[ActionResult, ActionResult]:
        started = await action.start(make_request())
        return started, await action.follow(started)

    started, followed = run(clients, scenario())
    assert started.outcome is ActionOutcome.SUCCEEDED and followed.outcome is ActionOutcome.SUCCEEDED
    assert followed.external_id == started.external_id
    assert not [r for r in fake.requests if r.method == "GET" and r.path.startswith("/jobs/")]


@pytest.mark.parametrize(
    ("mode", "error", "text"),
    [
        ("reject_400", Rejected, "Keboola rejected the job (HTTP 400) at {queue}/jobs"),
        ("reject_401", Rejected, "Keboola rejected the job (HTTP 401) at {queue}/jobs"),
        ("reject_403", Rejected, "HTTP 403"),
        ("reject_404", Rejected, "HTTP 404"),
        ("reject_422", Rejected, "HTTP 422"),
        ("reject_429", NotStarted, "HTTP 429"),
        ("503_before_create", InDoubt, "HTTP 503 at {queue}/jobs"),
        ("reject_500", InDoubt, "HTTP 500"),
        ("reject_409", InDoubt, "HTTP 409"),
        ("create_then_503", InDoubt, "HTTP 503 at {queue}/jobs"),
        ("create_then_reset", InDoubt, "{queue}/jobs"),
        ("create_then_hang", InDoubt, "ReadTimeout"),
    ],
)
def test_post_faults_are_classified(
    fake: FakeKeboola, clients: Clients, mode: str, error: type[Exception], text: str
) -> None:
    fake.post_fault(mode)
    action = make_action(clients, fake.stack_url, timeout=0.3)
    with pytest.raises(error) as raised:
        run(clients, action.start(make_request()))
    assert text.format(queue=fake.queue_url) in str(raised.value)
    assert type(raised.value) is error  # NotStarted is a TransientError; InDoubt is not a Rejected


@pytest.mark.parametrize(("mode", "words"), [("reject_400", "The component"), ("reject_401", "Invalid access token")])
def test_keboolas_words_are_kept_apart_from_the_message(
    fake: FakeKeboola, clients: Clients, mode: str, words: str
) -> None:
    fake.post_fault(mode)
    action = make_action(clients, fake.stack_url, timeout=0.3)
    with pytest.raises(Rejected) as raised:
        run(clients, action.start(make_request()))
    assert words not in str(raised.value)
    assert raised.value.excerpt is not None and words in raised.value.excerpt


def test_slow_create_within_the_timeout_is_created(fake: FakeKeboola, clients: Clients) -> None:
    fake.post_fault("slow_create", delay=0.2)
    result = run(clients, make_action(clients, fake.stack_url, timeout=2).start(make_request()))
    assert result.outcome is ActionOutcome.RUNNING and len(fake.jobs) == 1


def test_refused_connection_is_not_started(fake: FakeKeboola, clients: Clients) -> None:
    action = make_action(clients, fake.stack_url)

    async def scenario() -> None:
        await action.start(make_request())  # discovers the queue and creates one job
        fake.stop()  # the same ports now refuse connections
        try:
            await action.start(make_request("trig-2"))
        finally:
            fake.start()

    with pytest.raises(NotStarted, match=f"could not connect to Keboola at {fake.queue_url}/jobs"):
        run(clients, scenario())
    assert len(fake.jobs) == 1


def test_unreachable_index_without_fallback_is_not_started(clients: Clients) -> None:
    stack_url = f"http://127.0.0.1:{unused_port()}"
    with pytest.raises(NotStarted, match=r"stack index at .*v2/storage.* failed") as raised:
        run(clients, make_action(clients, stack_url).start(make_request()))
    assert stack_url in str(raised.value)


def test_failed_index_falls_back_to_the_host_swap(clients: Clients, caplog: pytest.LogCaptureFixture) -> None:
    port = unused_port()
    action = make_action(clients, f"http://connection.localhost:{port}")
    with caplog.at_level(logging.WARNING), pytest.raises(NotStarted) as raised:
        run(clients, action.start(make_request()))
    guessed = f"http://queue.localhost:{port}"
    assert f"{guessed}/jobs" in str(raised.value)  # it tried the guessed queue host
    assert any("guessing the Queue API" in r.getMessage() and guessed in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("stack_url", "queue_url"),
    [
        ("https://connection.keboola.com", "https://queue.keboola.com"),
        ("https://connection.eu-central-1.keboola.com", "https://queue.eu-central-1.keboola.com"),
        (
            "https://connection.north-europe.azure.keboola.com/",
            "https://queue.north-europe.azure.keboola.com",
        ),
        ("http://connection.acme.keboola.com:8443/v2/connection", "http://queue.acme.keboola.com:8443"),
        ("https://connection.connection.example", "https://queue.connection.example"),
        ("https://queue.keboola.com", None),
        ("https://my-connection.keboola.com", None),
        ("https://127.0.0.1:9000", None),
    ],
)
def test_guess_queue_url(stack_url: str, queue_url: str | None) -> None:
    assert guess_queue_url(stack_url) == queue_url


# ----- find_started ------------------------------------------------------------------------------


def search_params(fake: FakeKeboola) -> dict[str, list[str]]:
    (search,) = [r for r in fake.requests if r.path == "/search/jobs"]
    return search.query


def test_find_started_finds_our_job_by_the_marker(fake: FakeKeboola, clients: Clients) -> None:
    action = make_action(clients, fake.stack_url)
    since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)

    async def scenario() -> tuple[ActionResult, ActionResult, list[ActionResult]]:
        ours = await action.start(make_request())
        other = await action.start(make_request("someone-else"))
        return ours, other, list(await action.find_started(make_request(), since))

    ours, other, found = run(clients, scenario())
    assert [r.external_id for r in found] == [ours.external_id]  # not the other trigger's job
    assert other.external_id != ours.external_id
    assert found[0].url == ours.url and found[0].created_at == ours.created_at
    query = search_params(fake)
    assert query["componentId[]"] == [COMPONENT] and query["configId[]"] == [CONFIG]
    assert query["tokenId[]"] == ["4242"]  # our token's id, from GET /v2/storage/tokens/verify
    assert "branchId[]" not in query  # whether branchId[]=null means the default branch is unconfirmed
    assert query["createdTimeFrom"] == [since.replace(microsecond=0).isoformat()]
    assert query["createdTimeFrom"][0].endswith("+00:00")
    assert query["sortBy"] == ["createdTime"] and query["sortOrder"] == ["asc"] and query["limit"] == ["100"]


def test_find_started_is_empty_while_the_index_lags(clients: Clients) -> None:
    with FakeKeboola(token=TOKEN, search_lag=0.4) as fake:
        fake.add_config(COMPONENT, CONFIG)
        action = make_action(clients, fake.stack_url, search_lag=0.4)
        since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)

        async def scenario() -> tuple[ActionResult, list[ActionResult], list[ActionResult]]:
            started = await action.start(make_request())
            lagging = list(await action.find_started(make_request(), since))
            await asyncio.sleep(0.5)
            return started, lagging, list(await action.find_started(make_request(), since))

        started, lagging, later = run(clients, scenario())
        assert action.search_lag == 0.4
        assert lagging == []
        assert [r.external_id for r in later] == [started.external_id]
        assert fake.contract_violations == []


def test_find_started_in_a_dev_branch(clients: Clients) -> None:
    with FakeKeboola(token=TOKEN) as fake:
        fake.add_config(COMPONENT, CONFIG)
        main = make_action(clients, fake.stack_url)
        dev = make_action(clients, fake.stack_url, branch_id="555")
        since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)

        async def scenario() -> tuple[ActionResult, list[ActionResult]]:
            await main.start(make_request())  # same marker, default branch: not this target's job
            started = await dev.start(make_request())
            return started, list(await dev.find_started(make_request(), since))

        started, found = run(clients, scenario())
        assert [r.external_id for r in found] == [started.external_id]  # the branch is compared on our side
        assert fake.contract_violations == []


def create_by_hand(fake: FakeKeboola, token: str = TOKEN) -> str:
    """A run of the same configuration without variables, as a person starts it, made straight on the fake."""
    created = httpx.post(
        f"{fake.queue_url}/jobs",
        headers={"X-StorageApi-Token": token},
        json={"component": COMPONENT, "config": CONFIG, "mode": "run"},
        trust_env=False,
    )
    assert created.status_code == 201
    return str(created.json()["id"])


@pytest.mark.parametrize("omit", [False, True])
def test_only_a_job_with_our_marker_is_ours(fake: FakeKeboola, clients: Clients, omit: bool) -> None:
    # The same token started the job by hand (no variables), a moment before ours: it is not ours, whether or
    # not the search shows variables; when it does not, each candidate is read from GET /jobs/{id}.
    fake.search_omits_variables = omit
    action = make_action(clients, fake.stack_url)
    by_hand = create_by_hand(fake)
    since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)

    async def scenario() -> tuple[ActionResult, list[ActionResult], list[ActionResult]]:
        ours = await action.start(make_request())
        return (
            ours,
            list(await action.find_started(make_request(), since)),
            list(await action.find_started(make_request(), since)),
        )

    ours, found, again = run(clients, scenario())
    assert [r.external_id for r in found] == [ours.external_id] == [r.external_id for r in again]
    reads = [r.path for r in fake.requests if r.method == "GET" and r.path.startswith("/jobs/")]
    if omit:
        # Both candidates read once; the job without any marker is remembered as not ours.
        assert reads == [f"/jobs/{by_hand}", f"/jobs/{ours.external_id}", f"/jobs/{ours.external_id}"]
    else:
        assert reads == [f"/jobs/{by_hand}"]  # {"values": []} might be the index's doing: read to be sure
    assert fake.job(by_hand)["desiredStatus"] == "processing"  # never killed


def test_a_job_by_another_token_is_not_even_a_candidate(fake: FakeKeboola, clients: Clients) -> None:
    fake.add_token("kbc-person-token", "777", "someone@example.com")
    by_hand = create_by_hand(fake, "kbc-person-token")
    action = make_action(clients, fake.stack_url)
    found = run(clients, action.find_started(make_request(), dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)))
    assert found == []
    assert fake.job(by_hand)["token"]["id"] == "777"
    assert not [r for r in fake.requests if r.method == "GET" and r.path.startswith("/jobs/")]


def test_token_id_is_verified_once_and_its_answer_never_kept(
    fake: FakeKeboola, clients: Clients, caplog: pytest.LogCaptureFixture
) -> None:
    action = make_action(clients, fake.stack_url)
    since = dt.datetime.now(dt.UTC)

    async def scenario() -> None:
        await action.find_started(make_request(), since)
        await action.find_started(make_request(), since)

    with caplog.at_level(logging.DEBUG):
        run(clients, scenario())
    verifies = [r for r in fake.requests if r.path == "/v2/storage/tokens/verify"]
    assert len(verifies) == 1 and verifies[0].service == "stack"
    assert verifies[0].headers["x-storageapi-token"] == TOKEN
    assert all(TOKEN not in r.getMessage() for r in caplog.records)
    assert TOKEN not in repr(action.context.shared.get("keboola-token-ids", dict))


def test_a_rejected_token_makes_the_search_fail_with_a_clear_message(fake: FakeKeboola, clients: Clients) -> None:
    context_token = "kbc-revoked-0000000000"
    action = make_action(clients, fake.stack_url, token_value=context_token)
    with pytest.raises(Rejected, match=r"HTTP 401\) at .*/v2/storage/tokens/verify$") as raised:
        run(clients, action.find_started(make_request(), dt.datetime.now(dt.UTC)))
    assert raised.value.excerpt == "Invalid access token"
    assert context_token not in str(raised.value)


def test_find_started_returns_oldest_first(fake: FakeKeboola, clients: Clients) -> None:
    action = make_action(clients, fake.stack_url)
    since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)

    async def scenario() -> tuple[list[ActionResult], list[ActionResult]]:
        started = [await action.start(make_request()) for _ in range(3)]  # a duplicate start, three times
        return started, list(await action.find_started(make_request(), since))

    started, found = run(clients, scenario())
    assert [r.external_id for r in found] == [r.external_id for r in started]
    assert found[0].outcome is ActionOutcome.RUNNING


def test_find_started_when_the_queue_is_down_is_transient(fake: FakeKeboola, clients: Clients) -> None:
    action = make_action(clients, fake.stack_url)

    async def scenario() -> None:
        await action.start(make_request())
        await action.find_started(make_request(), dt.datetime.now(dt.UTC))  # the token id is known from now on
        fake.stop()
        try:
            await action.find_started(make_request(), dt.datetime.now(dt.UTC))
        finally:
            fake.start()

    with pytest.raises(TransientError, match=f"could not reach Keboola at {fake.queue_url}/search/jobs"):
        run(clients, scenario())


# ----- follow and cancel -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        ("success", ActionOutcome.SUCCEEDED),
        ("warning", ActionOutcome.SUCCEEDED_WITH_WARNINGS),
        ("error", ActionOutcome.FAILED),
    ],
)
def test_follow_to_the_end(fake: FakeKeboola, clients: Clients, status: str, outcome: ActionOutcome) -> None:
    fake.set_outcome(COMPONENT, CONFIG, status, processing_after_gets=1, finish_after_gets=2, message="done: x")
    action = make_action(clients, fake.stack_url)

    async def scenario() -> list[ActionResult]:
        started = await action.start(make_request())
        return [await action.follow(started), await action.follow(started)]

    running, finished = run(clients, scenario())
    assert running.outcome is ActionOutcome.RUNNING and running.vendor_status == "processing"
    assert running.message is None  # result is [] until the job ends
    assert finished.outcome is outcome and finished.vendor_status == status
    assert finished.message == "done: x"
    assert finished.details["isFinished"] is True and finished.details["endTime"]
    assert finished.details["result_message"] == "done: x"
    assert finished.details["error_type"] == ("user" if status == "error" else None)
    assert finished.details["status"] == status and "durationSeconds" in finished.details


def test_follow_a_terminated_job_fails(fake: FakeKeboola, clients: Clients) -> None:
    action = make_action(clients, fake.stack_url)

    async def scenario() -> ActionResult:
        started = await action.start(make_request())
        fake.finish_job(started.external_id, "terminated")
        return await action.follow(started)

    result = run(clients, scenario())
    assert result.outcome is ActionOutcome.FAILED and result.message == "Job has been terminated."


def test_follow_an_unknown_job_is_rejected(fake: FakeKeboola, clients: Clients) -> None:
    action = make_action(clients, fake.stack_url)
    with pytest.raises(Rejected, match=rf"HTTP 404\) at {fake.queue_url}/jobs/999$") as raised:
        run(clients, action.follow(ActionResult(external_id="999")))
    assert raised.value.excerpt == 'Job "999" not found'


def test_cancel_a_waiting_duplicate(fake: FakeKeboola, clients: Clients) -> None:
    action = make_action(clients, fake.stack_url)

    async def scenario() -> tuple[Cancellation, ActionResult]:
        await action.start(make_request())
        duplicate = await action.start(make_request())
        cancellation = await action.cancel(make_request(), duplicate)
        return cancellation, await action.follow(duplicate)

    cancellation, duplicate = run(clients, scenario())
    assert cancellation.cancelled is True and "cancelled before it started" in cancellation.note
    assert fake.job(duplicate.external_id)["status"] == "cancelled"
    assert duplicate.outcome is ActionOutcome.FAILED and duplicate.vendor_status == "cancelled"
    kills = [r for r in fake.requests if r.path.endswith("/kill")]
    assert [r.path for r in kills] == [f"/jobs/{duplicate.external_id}/kill"]


def test_cancel_never_touches_a_job_without_our_marker(fake: FakeKeboola, clients: Clients) -> None:
    action = make_action(clients, fake.stack_url, on_duplicate="cancel")
    by_hand = create_by_hand(fake)

    async def scenario() -> tuple[Cancellation, Cancellation]:
        other = await action.start(make_request("another-trigger"))
        return (
            await action.cancel(make_request(), ActionResult(external_id=by_hand)),
            await action.cancel(make_request(), other),
        )

    for cancellation in run(clients, scenario()):
        assert cancellation.cancelled is False and "not ours" in cancellation.note
    assert not [r for r in fake.requests if r.path.endswith("/kill")]
    assert fake.job(by_hand)["desiredStatus"] == "processing"


@pytest.mark.parametrize(("policy", "killed"), [("report", False), ("cancel", True)])
def test_a_duplicate_that_already_runs_is_cancelled_only_on_request(
    fake: FakeKeboola, clients: Clients, policy: str, killed: bool
) -> None:
    fake.set_outcome(COMPONENT, CONFIG, processing_after_gets=0, finish_after_gets=50)
    action = make_action(clients, fake.stack_url, on_duplicate=policy)

    async def scenario() -> Cancellation:
        duplicate = await action.start(make_request())
        return await action.cancel(make_request(), duplicate)

    cancellation = run(clients, scenario())
    (job,) = fake.jobs
    assert cancellation.cancelled is killed
    if killed:
        assert job["status"] == "terminating" and "stopped while processing" in cancellation.note
    else:
        assert job["status"] == "processing" and "on_duplicate is report" in cancellation.note
        assert not [r for r in fake.requests if r.path.endswith("/kill")]


def test_cancel_a_finished_job_is_not_a_cancellation(fake: FakeKeboola, clients: Clients) -> None:
    action = make_action(clients, fake.stack_url)

    async def scenario() -> Cancellation:
        started = await action.start(make_request())
        fake.finish_job(started.external_id, "success")
        return await action.cancel(make_request(), started)

    cancellation = run(clients, scenario())
    assert cancellation.cancelled is False and "already ended with status success" in cancellation.note
    assert not [r for r in fake.requests if r.path.endswith("/kill")]


# ----- secrets -----------------------------------------------------------------------------------


def test_token_never_leaks(fake: FakeKeboola, clients: Clients, caplog: pytest.LogCaptureFixture) -> None:
    action = make_action(clients, fake.stack_url, timeout=0.3)
    errors: list[str] = []

    async def scenario() -> None:
        started = await action.start(make_request())
        for mode in ("reject_401", "reject_400", "create_then_503", "create_then_hang", "reject_429"):
            fake.post_fault(mode)
            try:
                await action.start(make_request())
            except Exception as exc:
                errors.append(f"{exc!r} {exc}")
        fake.finish_job(started.external_id, "error")
        errors.append(repr(await action.follow(started)))
        errors.append(str(await action.cancel(make_request(), started)))
        errors.append(repr(await action.find_started(make_request(), dt.datetime.now(dt.UTC))))
        try:
            await action.follow(ActionResult(external_id="404"))
        except Rejected as exc:
            errors.append(str(exc))

    with caplog.at_level(logging.DEBUG):
        run(clients, scenario())
    assert len(errors) == 9
    texts = [*errors, caplog.text, repr(action.options), action.target_key]
    texts += [r.getMessage() for r in caplog.records]
    texts += [r.body.decode() for r in fake.requests]
    for text in texts:
        assert TOKEN not in text


# ----- options, statuses, registration -----------------------------------------------------------


def test_target_key_and_options() -> None:
    options = KeboolaJobOptions(
        token=SecretName("kbc"),
        stack_url="https://connection.keboola.com/",
        component=COMPONENT,
        config=CONFIG,
    )
    assert options.stack_url == "https://connection.keboola.com"
    assert (options.mode, options.follow, options.search_lag, options.timeout) == ("run", True, 60.0, 15.0)
    assert options.config_row_ids == [] and options.variables == {} and options.branch_id is None
    action = KeboolaJobAction(options, PluginContext(Clients(), FixedClock(), lambda n: TOKEN, logging.getLogger()))
    assert action.target_key == f"keboola:https://connection.keboola.com:{COMPONENT}:{CONFIG}:default"
    assert action.search_lag == 60.0


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"variables": {"batch_count_total": "9"}}, "batch_count_total"),
        ({"variables": {"teckochecker_trigger_id": "x"}}, "teckochecker_trigger_id"),
        ({"variables": {"empty": ""}}, "empty"),
        ({"variables": {"": "x"}}, "name must not be empty"),
        ({"stack_url": "ftp://connection.keboola.com"}, "http(s)"),
        ({"mode": "later"}, "mode"),
        ({"search_lag": -1}, "search_lag"),
        ({"timeout": 0}, "timeout"),
        ({"config_row_ids": [""]}, "row ids"),
        ({"tag": "1.2.3"}, "tag"),
    ],
)
def test_invalid_options(change: dict[str, Any], needle: str) -> None:
    settings: dict[str, Any] = {
        "token": "kbc",
        "stack_url": "https://connection.keboola.com",
        "component": "c",
    }
    with pytest.raises(ValidationError) as raised:
        KeboolaJobOptions(**{**settings, "config": "1", **change})
    assert needle in str(raised.value)


def test_every_job_status_is_mapped() -> None:
    documented = {"created", "waiting", "processing", "terminating", "success", "warning", "error"}
    assert set(JOB_STATUSES) == documented | {"terminated", "cancelled"}
    assert job_outcome("processing", False) is ActionOutcome.RUNNING
    assert job_outcome("brand_new", True) is ActionOutcome.FAILED  # finished, but not as any success we know
    assert job_outcome("processing", True) is ActionOutcome.FAILED
    assert job_outcome("brand_new", False) is None


def test_parse_time_reads_both_formats() -> None:
    assert parse_time("2022-01-25T16:34:40+00:00") == dt.datetime(2022, 1, 25, 16, 34, 40, tzinfo=dt.UTC)
    assert parse_time("2019-06-21T09:12:33.001Z") == dt.datetime(2019, 6, 21, 9, 12, 33, 1000, tzinfo=dt.UTC)
    assert parse_time(None) is None and parse_time("soon") is None


def test_registered_through_the_hook() -> None:
    assert teckochecker_action_types() == [KeboolaJobAction]
    assert KeboolaJobAction.type_name == "keboola_job" and KeboolaJobAction.Options is KeboolaJobOptions
