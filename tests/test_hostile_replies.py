"""Hostile replies against the real daemon process: an answer larger than its cap is a transient error (the
step is tried again, the job neither fails nor fires because of it, the daemon stays up), and a refusing
server's words reach the log and readers with a token, never the views without one.

The fakes stream the over-cap bodies (a few MB past the daemon's real caps, never built in memory).
"""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from daemon import DaemonProcess
from fakes import FakeKeboola, FakeOpenAI, FakeWebhookReceiver

from teckochecker.plugin_api import ReplyKind
from teckochecker.reply_caps import REPLY_CAPS

OPENAI_KEY = "sk-CANARYopenaiKEY0123456789abcdef"
KEBOOLA_TOKEN = "kbc-CANARY-token-4242-zyxwvutsrq"
HOOK_SECRET = "whsec_RdvaYFYUXuIFuEbvZHwMfYFhUf7aMYjYcmM24+Aj40c="
CONTROL_TOKEN = "control-CANARY-token-0123456789"
COMPONENT = "kds-team.app-custom-python"
OVER = 1024 * 1024  # how far past a cap the hostile answers go


@pytest.fixture
def openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=OPENAI_KEY) as fake:
        yield fake


@pytest.fixture
def env(plugin_env: dict[str, str]) -> dict[str, str]:
    return {
        **plugin_env,
        "OPENAI_API_KEY": OPENAI_KEY,
        "KEBOOLA_STORAGE_TOKEN": KEBOOLA_TOKEN,
        "HOOK": HOOK_SECRET,
        "CONTROL": CONTROL_TOKEN,
    }


def write_config(tmp_path: Path, source: str, actions: str) -> Path:
    path = tmp_path / "teckochecker.yaml"
    path.write_text(
        textwrap.dedent("""\
        log_level: DEBUG
        http: {port: 0, api_token: control}
        secrets:
          openai: {env: OPENAI_API_KEY}
          keboola: {env: KEBOOLA_STORAGE_TOKEN}
          hook: {env: HOOK}
          control: {env: CONTROL}
        defaults: {interval: 30s, startup_spread: 0s}
        jobs:
          - name: hostile
        """)
        + f"    source: {source}\n    actions:\n"
        + "".join(f"      - {action}\n" for action in actions.splitlines())
    )
    return path


def openai_source(openai: FakeOpenAI, batch: str, *, list_batches: bool) -> str:
    return (
        f'{{type: openai_batch, api_key: openai, base_url: "{openai.base_url}", targets: [{batch}], '
        f"list_batches: {str(list_batches).lower()}}}"
    )


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, daemon: DaemonProcess) -> Any:
    # The timeout counts from the daemon's start: on a loaded machine its imports alone can take seconds.
    daemon.wait_for("teckochecker started", 60)
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if daemon.proc.poll() is not None:
            raise AssertionError(f"daemon exited while waiting for {what}:\n{daemon.output}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{daemon.output}"
        time.sleep(0.05)
    return value


def job(daemon: DaemonProcess, token: str | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(f"{daemon.http_url()}/api/v1/jobs/hostile?events=100", headers=headers, timeout=10)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def requests_to(fake: FakeOpenAI | FakeKeboola | FakeWebhookReceiver, method: str, path: str) -> int:
    return sum(1 for r in list(fake.requests) if r.method == method and r.path == path)


def cap_text(kind: ReplyKind) -> str:
    size = REPLY_CAPS[kind]
    unit = f"{size // (1024 * 1024)} MiB" if size >= 1024 * 1024 else f"{size // 1024} KiB"
    return f"the reply from 127.0.0.1 is larger than the limit of {unit}"


def test_an_over_cap_listing_page_is_retried_and_decides_nothing(
    tmp_path: Path, openai: FakeOpenAI, env: dict[str, str]
) -> None:
    batch = openai.add_batch(status="completed")
    openai.answer_huge("/v1/batches", REPLY_CAPS[ReplyKind.LISTING] + OVER)
    config = write_config(
        tmp_path,
        openai_source(openai, batch, list_batches=True),
        f'{{type: webhook, url: "{openai.base_url}/hook", secret: hook}}',
    )
    daemon = DaemonProcess(config, env, tmp_path)
    try:
        wait_until(lambda: requests_to(openai, "GET", "/v1/batches") >= 2, 30, "the listing read again", daemon)
        body = job(daemon)
        assert body["state"] == "watching" and body["runs"] == []  # not fired, not failed
        assert cap_text(ReplyKind.LISTING) in json.dumps(body)
        assert cap_text(ReplyKind.LISTING) in daemon.output
    finally:
        assert daemon.stop()[0] == 0  # it stayed up and stops cleanly


def test_an_over_cap_single_object_is_retried_until_a_sane_answer_comes(
    tmp_path: Path, openai: FakeOpenAI, env: dict[str, str]
) -> None:
    batch = openai.add_batch(status="completed")
    openai.answer_huge(f"/v1/batches/{batch}", REPLY_CAPS[ReplyKind.OBJECT] + OVER)
    with FakeWebhookReceiver(secret=HOOK_SECRET) as receiver:
        config = write_config(
            tmp_path,
            openai_source(openai, batch, list_batches=False),
            f'{{type: webhook, url: "{receiver.url}", secret: hook}}',
        )
        daemon = DaemonProcess(config, env, tmp_path)
        try:
            path = f"/v1/batches/{batch}"
            wait_until(lambda: requests_to(openai, "GET", path) >= 2, 30, "the batch read again", daemon)
            body = job(daemon)
            assert body["state"] == "watching" and body["runs"] == []
            assert cap_text(ReplyKind.OBJECT) in json.dumps(body)
            openai.stop_huge()
            wait_until(lambda: receiver.deliveries, 30, "the delivery once the answer is sane", daemon)
        finally:
            assert daemon.stop()[0] == 0


@pytest.mark.parametrize("status", [200, 403])
def test_an_over_cap_receiver_answer_is_sent_again_not_judged(
    tmp_path: Path, openai: FakeOpenAI, env: dict[str, str], status: int
) -> None:
    batch = openai.add_batch(status="completed")
    with FakeWebhookReceiver(secret=HOOK_SECRET) as receiver:
        receiver.answer_huge("/hooks/teckochecker", REPLY_CAPS[ReplyKind.RECEIVER] + OVER, status=status)
        config = write_config(
            tmp_path,
            openai_source(openai, batch, list_batches=False),
            f'{{type: webhook, url: "{receiver.url}", secret: hook}}',
        )
        daemon = DaemonProcess(config, env, tmp_path)
        try:
            wait_until(lambda: len(receiver.attempts) >= 2, 30, "the delivery sent again", daemon)
            run = job(daemon)["runs"][0]
            assert run["state"] == "pending", run  # neither delivered nor rejected: tried again
            assert "larger than the limit of 64 KiB" in run["message"] and "127.0.0.1" in run["message"]
            receiver.stop_huge()
            wait_until(lambda: receiver.deliveries, 30, "the delivery once the answer is sane", daemon)
            wait_until(lambda: job(daemon)["state"] == "completed", 20, "the job completed", daemon)
        finally:
            assert daemon.stop()[0] == 0


@pytest.fixture
def keboola() -> Iterator[FakeKeboola]:
    with FakeKeboola(token=KEBOOLA_TOKEN) as fake:
        fake.add_config(COMPONENT, "101")
        yield fake


def keboola_action(keboola: FakeKeboola) -> str:
    return (
        f'{{type: keboola_job, token: keboola, stack_url: "{keboola.stack_url}", queue_url: "{keboola.queue_url}", '
        f"component: {COMPONENT}, "
        'config: "101", timeout: 1s, search_lag: 1s, follow_interval: 1s, duplicate_watch: 0s}'
    )


def test_an_over_cap_answer_to_the_keboola_create_is_in_doubt_not_a_verdict(
    tmp_path: Path, openai: FakeOpenAI, keboola: FakeKeboola, env: dict[str, str]
) -> None:
    batch = openai.add_batch(status="completed")
    keboola.answer_huge("/jobs", REPLY_CAPS[ReplyKind.OBJECT] + OVER, status=201, method="POST")
    config = write_config(tmp_path, openai_source(openai, batch, list_batches=False), keboola_action(keboola))
    daemon = DaemonProcess(config, env, tmp_path)
    try:
        wait_until(lambda: requests_to(keboola, "POST", "/jobs"), 30, "the create call", daemon)
        run = wait_until(lambda: next(iter(job(daemon)["runs"]), None), 10, "the run", daemon)
        wait_until(lambda: cap_text(ReplyKind.OBJECT) in daemon.output, 10, "the error logged", daemon)
        assert job(daemon)["state"] != "failed" and run["state"] != "rejected"
        keboola.stop_huge()
        # Searches find nothing started (the fake created nothing), so it is started again, once.
        wait_until(lambda: keboola.jobs_for(COMPONENT, "101"), 60, "the job started after all", daemon)
        assert len(keboola.jobs_for(COMPONENT, "101")) == 1
    finally:
        assert daemon.stop()[0] == 0


def test_an_over_cap_answer_while_following_a_keboola_job_is_retried(
    tmp_path: Path, openai: FakeOpenAI, keboola: FakeKeboola, env: dict[str, str]
) -> None:
    batch = openai.add_batch(status="completed")
    keboola.answer_huge("/jobs/*", REPLY_CAPS[ReplyKind.OBJECT] + OVER, method="GET")
    config = write_config(tmp_path, openai_source(openai, batch, list_batches=False), keboola_action(keboola))
    daemon = DaemonProcess(config, env, tmp_path)
    try:
        started = wait_until(lambda: keboola.jobs_for(COMPONENT, "101"), 30, "the Keboola job started", daemon)
        follows = f"/jobs/{started[0]['id']}"
        wait_until(lambda: requests_to(keboola, "GET", follows) >= 2, 30, "the job read again", daemon)
        run = job(daemon)["runs"][0]
        assert run["state"] == "running" and cap_text(ReplyKind.OBJECT) in run["message"], run
        keboola.stop_huge()
        keboola.finish_job(str(started[0]["id"]), "success")
        wait_until(lambda: job(daemon)["state"] == "completed", 30, "the job followed to its end", daemon)
    finally:
        assert daemon.stop()[0] == 0


def test_a_refusal_body_is_shown_only_with_a_token_and_logged(
    tmp_path: Path, openai: FakeOpenAI, env: dict[str, str]
) -> None:
    batch = openai.add_batch(status="completed")
    with FakeWebhookReceiver(secret=HOOK_SECRET) as receiver:
        receiver.inject(403, body=b'{"AccessKeyId": "SECRET-EXCERPT-ASIA0000"}', times=100)
        config = write_config(
            tmp_path,
            openai_source(openai, batch, list_batches=False),
            f'{{type: webhook, url: "{receiver.url}", secret: hook}}',
        )
        daemon = DaemonProcess(config, env, tmp_path)
        try:
            base = daemon.http_url()
            run = wait_until(
                lambda: next((r for r in job(daemon)["runs"] if r["state"] == "rejected"), None),
                30,
                "the refusal",
                daemon,
            )
            assert run["message"] == f"the webhook at {receiver.url} refused the delivery (HTTP 403 Forbidden)"
            unauthenticated = [
                httpx.get(f"{base}/api/v1/jobs/hostile?events=100", timeout=10).text,
                httpx.get(f"{base}/api/v1/jobs", timeout=10).text,
                httpx.get(f"{base}/", timeout=10).text,
                httpx.get(  # a wrong token is no token
                    f"{base}/api/v1/jobs/hostile", headers={"Authorization": "Bearer wrong"}, timeout=10
                ).text,
            ]
            assert all("HTTP 403" in text for text in unauthenticated[:3])
            assert not any("SECRET-EXCERPT" in text for text in unauthenticated)
            with_token = job(daemon, CONTROL_TOKEN)
            assert "SECRET-EXCERPT" in with_token["runs"][0]["details"]["excerpt"]
            assert any("SECRET-EXCERPT" in json.dumps(e["data"]) for e in with_token["events"])
            assert "SECRET-EXCERPT" in daemon.output
        finally:
            assert daemon.stop()[0] == 0


def test_text_no_encoding_can_hold_in_a_vendors_answer_is_stored_escaped(
    tmp_path: Path, openai: FakeOpenAI, env: dict[str, str]
) -> None:
    """JSON's "\\ud800" (half of a UTF-16 pair) in a batch's status or error failed the commit of every check
    of the job, with a traceback, on every tick: the job never saw its batches end."""
    batch = openai.add_batch(status="in_progress")
    openai.set_status(batch, "failed", errors=[{"code": "bad\ud800", "message": "refused \ud800", "line": 1}])
    # First an outage whose error envelope holds one too: a transient error, with its excerpt, stored.
    openai.inject(500, body=b'{"error": {"message": "down \\ud800", "type": "server_error"}}', batch_id=batch)
    with FakeWebhookReceiver(secret=HOOK_SECRET) as receiver:
        config = write_config(
            tmp_path,
            openai_source(openai, batch, list_batches=False),
            f'{{type: webhook, url: "{receiver.url}", secret: hook, when: any_failed}}',
        )
        daemon = DaemonProcess(config, env, tmp_path)
        try:
            wait_until(lambda: receiver.deliveries, 30, "the delivery of the failed batch", daemon)
            (target,) = job(daemon)["targets"]
            assert target["state"] == "failed" and "\\ud800" in target["message"], target
        finally:
            assert daemon.stop()[0] == 0
        assert "Traceback" not in daemon.output


def test_text_no_encoding_can_hold_in_a_keboola_jobs_answer_is_stored_escaped(
    tmp_path: Path, openai: FakeOpenAI, keboola: FakeKeboola, env: dict[str, str]
) -> None:
    """The same in the Keboola job's error while it is followed: its progress failed to commit, on every read."""
    batch = openai.add_batch(status="completed")
    keboola.set_outcome(COMPONENT, "101", "error", message="boom \ud800")
    config = write_config(tmp_path, openai_source(openai, batch, list_batches=False), keboola_action(keboola))
    daemon = DaemonProcess(config, env, tmp_path)
    try:
        wait_until(lambda: job(daemon)["final"], 30, "the job's end", daemon)
        (run,) = job(daemon)["runs"]
        assert run["state"] == "failed" and "\\ud800" in json.dumps(run), run
    finally:
        assert daemon.stop()[0] == 0
    assert "Traceback" not in daemon.output
