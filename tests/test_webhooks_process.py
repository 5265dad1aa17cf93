"""OpenAI webhooks through the real daemon process: a delivery makes a job that polls every 15 minutes fire
at once (exactly one Keboola job, after the batch was fetched), bad deliveries change nothing, and a
webhook that never comes is caught by the next poll."""

from __future__ import annotations

import json
import re
import signal
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from daemon import DaemonProcess
from fakes import FakeKeboola, FakeOpenAI

from teckochecker.simulators.openai_webhooks import other_event, sign

OPENAI_KEY = "sk-CANARYopenaiKEY0123456789abcdef"
KEBOOLA_TOKEN = "kbc-CANARY-token-4242-zyxwvutsrq"
HOOK_SECRET = "whsec_RdvaYFYUXuIFuEbvZHwMfYFhUf7aMYjYcmM24+Aj40c="
COMPONENT = "kds-team.app-custom-python"


@pytest.fixture
def openai():
    with FakeOpenAI(api_key=OPENAI_KEY) as fake:
        yield fake


@pytest.fixture
def keboola():
    with FakeKeboola(token=KEBOOLA_TOKEN, search_lag=0.5) as fake:
        fake.add_config(COMPONENT, "101")
        yield fake


@pytest.fixture
def env(plugin_env: dict[str, str]) -> dict[str, str]:
    return {**plugin_env, "OPENAI_API_KEY": OPENAI_KEY, "KEBOOLA_STORAGE_TOKEN": KEBOOLA_TOKEN, "HOOK": HOOK_SECRET}


def write_config(tmp_path: Path, openai: FakeOpenAI, keboola: FakeKeboola, batches: list[str], interval: str) -> Path:
    path = tmp_path / "teckochecker.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        log_level: DEBUG
        http: {{port: 0}}
        webhooks: {{port: 0, secrets: [hook]}}
        secrets:
          openai: {{env: OPENAI_API_KEY}}
          keboola: {{env: KEBOOLA_STORAGE_TOKEN}}
          hook: {{env: HOOK}}
        defaults: {{interval: {interval}, startup_spread: 0s}}
        jobs:
          - name: hooked
            source: {{type: openai_batch, api_key: openai, base_url: "{openai.base_url}", targets: {batches}}}
            actions:
              - {{type: keboola_job, token: keboola, stack_url: "{keboola.stack_url}",
                 queue_url: "{keboola.queue_url}", component: {COMPONENT},
                  config: "101", search_lag: 1s, follow_interval: 1s, duplicate_watch: 3s}}
        """)
    )
    return path


def wait_until(predicate, timeout: float, what: str, daemon: DaemonProcess) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if daemon.proc.poll() is not None:
            raise AssertionError(f"daemon exited while waiting for {what}:\n{daemon.output}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{daemon.output}"
        time.sleep(0.05)


def posts(keboola: FakeKeboola) -> list[float]:
    return [r.at for r in keboola.requests if r.method == "POST" and r.path == "/jobs"]


def gets_of(openai: FakeOpenAI, batch: str) -> list[float]:
    return [r.at for r in openai.requests if r.method == "GET" and r.path == f"/v1/batches/{batch}"]


def lists(openai: FakeOpenAI) -> list[float]:
    return [r.at for r in openai.requests if r.path == "/v1/batches"]


def delivery_counts(metrics_url: str) -> dict[str, float]:
    text = httpx.get(metrics_url, timeout=10).text
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'^teckochecker_webhook_deliveries_total\{outcome="(\w+)"\} (\S+)$', text, re.M)
    }


def test_a_webhook_fires_a_job_that_polls_every_15_minutes(
    tmp_path: Path, openai: FakeOpenAI, keboola: FakeKeboola, env: dict[str, str]
) -> None:
    first, last = openai.add_batch(status="in_progress"), openai.add_batch(status="in_progress")
    daemon = DaemonProcess(write_config(tmp_path, openai, keboola, [first, last], "15m"), env, tmp_path)
    try:
        hook_url = daemon.http_url(listener="webhook receiver") + "/webhooks/openai"
        metrics_url = daemon.http_url() + "/metrics"
        sender = openai.send_webhooks(hook_url, HOOK_SECRET, workers=1)
        wait_until(lambda: len(lists(openai)) == 1, 20, "the first poll", daemon)

        # Bad deliveries first: refused, counted, and nothing is fetched for them.
        body = b'{"id":"evt_x","object":"event","created_at":1,"type":"batch.completed","data":{"id":"%s"}}' % (
            last.encode()
        )
        forged = sign("whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY=", "wh_forged", int(time.time()), body)
        assert httpx.post(hook_url, content=body, headers=forged).status_code == 401
        stale = sign(HOOK_SECRET, "wh_stale", int(time.time()) - 3600, body)
        assert httpx.post(hook_url, content=body, headers=stale).status_code == 401
        assert httpx.post(hook_url, content=b"{}", headers={"webhook-id": "x"}).status_code == 400
        assert httpx.get(hook_url.replace("/webhooks/openai", "/metrics")).status_code == 404

        openai.set_status(first, "completed", completed=10, failed=0)
        wait_until(lambda: gets_of(openai, first), 20, "the hinted batch fetched", daemon)
        openai.set_status(last, "completed", completed=10, failed=0)
        wait_until(lambda: posts(keboola), 30, "the Keboola job", daemon)
        daemon.wait_for("job hooked: completed", timeout=60)

        delivered = {a.event.batch_id: a for a in sender.delivered()}
        # In order: the delivery, then one GET of exactly that batch, then the Keboola POST. No poll between.
        assert len(gets_of(openai, last)) == 1 and len(gets_of(openai, first)) == 1
        assert delivered[last].event.created < gets_of(openai, last)[0] < posts(keboola)[0]
        assert len(lists(openai)) == 1
        assert len(keboola.jobs) == 1 and len(posts(keboola)) == 1

        # A replay of the delivered event, and a late event for a finished job: acknowledged, nothing started.
        event = delivered[last].event
        replay = httpx.post(
            hook_url, content=event.body, headers=sign(HOOK_SECRET, event.message_id, int(time.time()), event.body)
        )
        assert replay.status_code == 200 and replay.json()["outcome"] == "duplicate"
        late = sign(HOOK_SECRET, "wh_late", int(time.time()), event.body)
        assert httpx.post(hook_url, content=event.body, headers=late).json()["outcome"] == "unwatched"
        counts = delivery_counts(metrics_url)
        assert counts == {
            "accepted": 2,
            "duplicate": 1,
            "bad_signature": 1,
            "stale": 1,
            "malformed": 1,
            "unwatched": 1,
            "standby": 0,
        }
        assert "teckochecker_webhook_to_action_seconds_count 1.0" in httpx.get(metrics_url).text
        assert len(keboola.jobs) == 1
    finally:
        daemon.stop()
    assert HOOK_SECRET not in daemon.output and HOOK_SECRET[6:] not in daemon.output


def test_verified_events_of_other_kinds_are_acknowledged_once_and_change_nothing(
    tmp_path: Path, openai: FakeOpenAI, keboola: FakeKeboola, env: dict[str, str]
) -> None:
    batch = openai.add_batch(status="in_progress", webhooks=False)
    daemon = DaemonProcess(write_config(tmp_path, openai, keboola, [batch], "15m"), env, tmp_path)
    try:
        hook_url = daemon.http_url(listener="webhook receiver") + "/webhooks/openai"
        sender = openai.send_webhooks(hook_url, HOOK_SECRET, workers=1)
        wait_until(lambda: len(lists(openai)) == 1, 20, "the first poll", daemon)
        now = int(time.time())
        events = [
            other_event("realtime.call.incoming", {"call_id": "rtc_1", "sip_headers": []}, now),
            other_event("live.call.incoming", {"call_id": "lc_1"}, now),
            other_event("safety_identifier.blocked", "user_1234", now),
            other_event("batch.completed", {"batch": batch}, now),  # a batch event without data.id
        ]
        for event in events:
            sender.send(event)
        wait_until(lambda: sender.idle(), 30, "the deliveries", daemon)
        # Each answered 2xx on its first attempt: the fake (like OpenAI) retries nothing.
        assert [(a.event.type, a.attempt, a.status) for a in sender.attempts] == [(e.type, 1, 200) for e in events]
        counts = delivery_counts(daemon.http_url() + "/metrics")
        assert counts["unwatched"] == 4 and counts["malformed"] == 0 and counts["accepted"] == 0
        assert gets_of(openai, batch) == [] and len(lists(openai)) == 1 and posts(keboola) == []
        assert daemon.output.count("has no usable data.id") == 1
    finally:
        daemon.stop()


def test_a_webhook_that_never_comes_is_caught_by_the_next_poll(
    tmp_path: Path, openai: FakeOpenAI, keboola: FakeKeboola, env: dict[str, str]
) -> None:
    batch = openai.add_batch(status="in_progress", webhooks=False)  # the webhook gets lost
    daemon = DaemonProcess(write_config(tmp_path, openai, keboola, [batch], "30s"), env, tmp_path)
    try:
        sender = openai.send_webhooks(daemon.http_url(listener="webhook receiver") + "/webhooks/openai", HOOK_SECRET)
        wait_until(lambda: len(lists(openai)) == 1, 20, "the first poll", daemon)
        openai.set_status(batch, "completed", completed=10, failed=0)
        wait_until(lambda: posts(keboola), 90, "the Keboola job", daemon)
        assert sender.attempts == []
        # Fired by the second poll: the listing that saw the batch finished came before the POST.
        assert len(lists(openai)) == 2 and lists(openai)[1] < posts(keboola)[0]
        daemon.wait_for("job hooked: completed", timeout=60)
        assert len(keboola.jobs) == 1
    finally:
        daemon.stop()


def test_a_secret_without_its_whsec_prefix_stops_the_start_by_name(
    tmp_path: Path, openai: FakeOpenAI, keboola: FakeKeboola, env: dict[str, str]
) -> None:
    bare = HOOK_SECRET.removeprefix("whsec_")
    config = write_config(tmp_path, openai, keboola, [openai.add_batch()], "15m")
    daemon = DaemonProcess(config, {**env, "HOOK": bare}, tmp_path)
    code = daemon.proc.wait(timeout=30)
    output = daemon.output
    assert code != 0
    assert "secret 'hook' is not a webhook signing secret" in output and "whsec_" in output
    assert "Traceback" not in output and bare not in output


def test_a_reload_naming_a_secret_without_whsec_is_refused(
    tmp_path: Path, openai: FakeOpenAI, keboola: FakeKeboola, env: dict[str, str]
) -> None:
    config = write_config(tmp_path, openai, keboola, [openai.add_batch()], "15m")
    bare = HOOK_SECRET.removeprefix("whsec_")
    daemon = DaemonProcess(config, {**env, "BARE": bare}, tmp_path)
    try:
        api = daemon.http_url() + "/api/v1/status"
        text = config.read_text()
        config.write_text(
            text.replace("secrets: [hook]}", "secrets: [bare, hook]}").replace(
                "  hook: {env: HOOK}", "  hook: {env: HOOK}\n  bare: {env: BARE}"
            )
        )
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_for("config reload failed")
        status = httpx.get(api, timeout=10).json()
        assert status["reload"]["successful"] is False
        assert "secret 'bare' is not a webhook signing secret" in json.dumps(status["reload"]["errors"])
        assert bare not in daemon.output and bare not in json.dumps(status)
    finally:
        daemon.stop()
