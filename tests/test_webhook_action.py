"""The ``webhook`` action against a Standard Webhooks receiver on 127.0.0.1 that verifies every signature
and deduplicates on ``webhook-id``; and the core's retry of a start that is safe to repeat."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import socket
import textwrap
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from clock import FakeClock
from fakes import FakeWebhookReceiver
from plugin_context import Clients
from pydantic import ValidationError
from teckochecker_keboola import job_variables
from teckochecker_webhook import EVENT_TYPE, WebhookAction, WebhookOptions

from teckochecker.config.validate import load_config
from teckochecker.crashpoints import CrashPoints
from teckochecker.errors import InDoubt, NotStarted, PermanentError, Rejected
from teckochecker.metrics import Metrics
from teckochecker.plugin_api import (
    ActionOutcome,
    ActionRequest,
    Observation,
    PluginContext,
    SecretName,
    TargetState,
)
from teckochecker.plugins import load_plugins
from teckochecker.runner import JobRunner
from teckochecker.runtime import JobRuntime
from teckochecker.secrets.resolving import Redactor, SecretResolver
from teckochecker.services import TickServices
from teckochecker.state.models import JobState, RunState
from teckochecker.state.store import StateStore
from teckochecker.state.worker import StoreWorker

SECRET = "whsec_" + base64.b64encode(b"CANARY-webhook-secret-32-bytes!!").decode()
TRIGGER = "5f0e1d2c-3b4a-4968-8776-554433221100"
T = TypeVar("T")

REQUEST = ActionRequest(
    job_name="nightly",
    trigger_id=TRIGGER,
    fired_at=dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC),
    targets=(
        Observation("batch_a", TargetState.SUCCEEDED, "completed", {"output_file_id": "file-out", "error_file_id": ""}),
        Observation("msgbatch_b", TargetState.SUCCEEDED, "ended", {"results_url": "https://x/results"}),
        Observation("batch_c", TargetState.EXPIRED, "expired", {"output_file_id": None, "error_file_id": "file-err"}),
    ),
)


@pytest.fixture
def receiver() -> Iterator[FakeWebhookReceiver]:
    with FakeWebhookReceiver(secret=SECRET) as server:
        yield server


def make_action(url: str, *, secret: str = SECRET, clients: Clients | None = None, **options: Any) -> WebhookAction:
    context = PluginContext(
        http=clients or Clients(),
        clock=FakeClock(dt.datetime.now(dt.UTC)),
        secret=lambda name: {"hook": secret}[name],
        logger=logging.getLogger("teckochecker.test.webhook"),
    )
    return WebhookAction(WebhookOptions(url=url, secret=SecretName("hook"), **options), context)


def run(action: WebhookAction, work: Callable[[WebhookAction], Awaitable[T]]) -> T:
    async def main() -> T:
        try:
            return await work(action)
        finally:
            await action.context.http.aclose()  # type: ignore[attr-defined]

    return asyncio.run(main())


def start(action: WebhookAction) -> Any:
    return run(action, lambda a: a.start(REQUEST))


def test_a_delivery_is_signed_and_carries_the_keboola_facts(receiver: FakeWebhookReceiver) -> None:
    result = start(make_action(receiver.url, variables={"pipeline": "nightly"}))
    assert (result.outcome, result.vendor_status) == (ActionOutcome.SUCCEEDED, "HTTP 204")
    (delivery,) = receiver.deliveries
    assert delivery.message_id == TRIGGER and receiver.refused == []
    document = delivery.payload
    assert document["type"] == EVENT_TYPE and document["timestamp"] == "2026-01-01T12:00:00+00:00"
    data = document["data"]
    assert data["trigger_id"] == TRIGGER and data["job"] == "nightly"
    assert data["variables"] == {"pipeline": "nightly"}
    # The same facts as the Keboola action's variables, as JSON values instead of strings.
    variables = {v["name"]: v["value"] for v in job_variables(REQUEST, {})}
    for name in ("batch_ids_completed", "batch_ids_failed", "batch_output_file_ids", "batch_error_file_ids"):
        assert data[name] == json.loads(variables[name]), name
    for name in ("batch_count_total", "batch_count_completed", "batch_count_failed"):
        assert data[name] == int(variables[name]), name
    assert (
        data["batch_results_urls"] == json.loads(variables["batch_results_urls"]) == {"msgbatch_b": "https://x/results"}
    )
    assert data["batch_ids_failed"] == ["batch_c"] and data["batch_error_file_ids"] == {"batch_c": "file-err"}


def test_the_same_trigger_sent_twice_is_processed_once(receiver: FakeWebhookReceiver) -> None:
    action = make_action(receiver.url)
    start(action)
    start(make_action(receiver.url))
    assert len(receiver.deliveries) == 1 and receiver.duplicates == [TRIGGER]
    first, second = receiver.attempts
    assert first.body == second.body  # one message: the body does not change between attempts


def test_a_wrong_secret_fails_verification_at_the_receiver(receiver: FakeWebhookReceiver) -> None:
    other = "whsec_" + base64.b64encode(b"another-secret-of-32-bytes-long!").decode()
    with pytest.raises(Rejected, match="HTTP 400"):
        start(make_action(receiver.url, secret=other))
    assert receiver.deliveries == [] and receiver.refused == ["No matching signature found"]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 410, 413, 422])
def test_a_refusal_is_rejected(receiver: FakeWebhookReceiver, status: int) -> None:
    receiver.inject(status, body=f"no thanks, {SECRET}".encode())
    with pytest.raises(Rejected, match=f"HTTP {status}") as refused:
        start(make_action(receiver.url))
    # The message says status and host only; the receiver's words go apart (log, readers with a token).
    assert "no thanks" not in str(refused.value)
    assert refused.value.excerpt is not None
    assert SECRET not in refused.value.excerpt and "no thanks" in refused.value.excerpt


@pytest.mark.parametrize(("status", "wait"), [(408, None), (429, 12.0), (500, None), (502, None), (503, 3.0)])
def test_a_temporary_failure_is_retried_later(receiver: FakeWebhookReceiver, status: int, wait: float | None) -> None:
    receiver.inject(status, headers={"retry-after": str(int(wait))} if wait else {})
    with pytest.raises(NotStarted, match=f"HTTP {status}") as failed:
        start(make_action(receiver.url))
    assert failed.value.retry_after == wait


def test_a_redirect_is_not_followed(receiver: FakeWebhookReceiver) -> None:
    receiver.inject(307, headers={"location": receiver.url + "/elsewhere"})
    with pytest.raises(Rejected, match="redirects are not followed"):
        start(make_action(receiver.url))
    assert len(receiver.attempts) == 1


def test_nothing_listening_is_not_started() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(NotStarted, match="could not connect"):
        start(make_action(f"http://127.0.0.1:{port}/hook"))


def test_a_connection_lost_after_sending_is_in_doubt(receiver: FakeWebhookReceiver) -> None:
    receiver.inject(reset=True, process=True)
    with pytest.raises(InDoubt, match="may or may not"):
        start(make_action(receiver.url))
    assert len(receiver.deliveries) == 1


def test_a_secret_that_is_not_a_standard_webhooks_secret_is_named_not_shown(receiver: FakeWebhookReceiver) -> None:
    with pytest.raises(PermanentError, match="secret 'hook' is not a Standard Webhooks secret") as bad:
        start(make_action(receiver.url, secret="whsec_CANARY!!not*base64"))
    assert "CANARY" not in str(bad.value) and receiver.attempts == []


def test_the_url_in_messages_has_no_query_or_user_info(receiver: FakeWebhookReceiver) -> None:
    receiver.inject(500)
    url = receiver.url.replace("http://", "http://user:CANARYpw@") + "?token=CANARY"
    with pytest.raises(NotStarted) as failed:
        start(make_action(url))
    assert "CANARY" not in str(failed.value)


def test_the_target_key_keeps_no_token_of_the_url() -> None:
    action = make_action("https://user:CANARYpw@[::1]:8443/hook?token=CANARY")
    assert action.target_key == "webhook:https://[::1]:8443/hook"


def test_options_are_checked() -> None:
    with pytest.raises(ValidationError, match="http"):
        WebhookOptions(url="mailto:x@example.com", secret=SecretName("s"))
    with pytest.raises(ValidationError, match="timeout"):
        WebhookOptions(url="https://x", secret=SecretName("s"), timeout="0s")  # type: ignore[arg-type]


# ----- the core: an in-doubt start of a repeatable action is sent again, not searched for --------------


class Harness:
    """One job (two status-file targets → one webhook action) ticked in one event loop."""

    def __init__(self, tmp_path: Path, url: str) -> None:
        self.status = tmp_path / "status.json"
        config_path = tmp_path / "tc.yaml"
        config_path.write_text(
            textwrap.dedent(f"""\
            secrets:
              hook: {{env: HOOK_SECRET}}
            jobs:
              - name: j
                interval: 30s
                source: {{type: status_file, path: {self.status}, targets: [a, b]}}
                actions:
                  - {{type: webhook, url: "{url}", secret: hook, timeout: 5s}}
            """)
        )
        config = load_config(config_path, load_plugins({"TECKOCHECKER_PLUGINS": "teckotest_plugin"}))
        self.clock = FakeClock(dt.datetime.now(dt.UTC))
        self.store = StateStore.open(f"sqlite:///{tmp_path / 'state.db'}")
        self.worker = StoreWorker()
        self.metrics = Metrics()
        self.runner = JobRunner(
            TickServices(self.store, self.worker, self.clock, CrashPoints({}), logging.getLogger("test"), self.metrics)
        )
        self.clients = Clients()
        context = PluginContext(
            http=self.clients,
            clock=self.clock,
            logger=logging.getLogger("test.plugins"),
            secret=SecretResolver(config.secrets, {"HOOK_SECRET": SECRET}, Redactor()),
        )
        self.job = JobRuntime.build(config.jobs["j"], context)
        self.store.sync_jobs([self.job.plan()], self.clock.now())
        self.status.write_text(json.dumps({"a": "succeeded", "b": "failed"}))

    async def tick_until_done(self, limit: int = 30) -> None:
        for _ in range(limit):
            result = await self.runner.tick(self.job)
            if result.done:
                return
            self.clock.advance(max(result.next_in or 0.0, 0.5))
        raise AssertionError("not done")

    def outcome(self, name: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "teckochecker_actions_total", {"action_type": "webhook", "outcome": name}
        )
        return value or 0.0

    async def aclose(self) -> None:
        await self.clients.aclose()
        self.worker.close()
        self.store.close()


@pytest.mark.parametrize("failure", ["reset_after_processing", "503_then_ok"])
def test_the_core_sends_an_in_doubt_webhook_again_and_the_receiver_keeps_one(
    tmp_path: Path, receiver: FakeWebhookReceiver, failure: str
) -> None:
    if failure == "reset_after_processing":
        receiver.inject(reset=True, process=True)
    else:
        receiver.inject(503, times=2, headers={"retry-after": "2"})

    async def main() -> Harness:
        h = Harness(tmp_path, receiver.url)
        try:
            await h.tick_until_done()
        finally:
            await h.aclose()
        return h

    h = asyncio.run(main())
    assert len(receiver.deliveries) == 1 and receiver.deliveries[0].payload["data"]["batch_count_failed"] == 1
    snap = h.store.job("j")
    assert snap is not None and snap.state is JobState.COMPLETED_WITH_FAILURES  # batch b failed
    (run_,) = snap.runs
    assert run_.state is RunState.SUCCEEDED and run_.external_id == run_.trigger_id
    if failure == "reset_after_processing":
        # In doubt, then sent again (no search): the receiver saw the second arrival as a duplicate.
        assert receiver.duplicates == [run_.trigger_id] and h.outcome("in_doubt") == 1
        assert run_.attempt == 2
    else:
        assert receiver.duplicates == [] and h.outcome("not_started") == 2 and run_.attempt == 3
