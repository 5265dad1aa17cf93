"""Discovery end to end, on the real daemon process against the fake OpenAI and Keboola servers: a pipeline
creates batches with the official SDK and one metadata= argument; the daemon finds them in the listing, makes
one job of the group, holds it while the group is incomplete, and starts exactly one Keboola job. A group
with a bad count fails with the reason and starts nothing."""

from __future__ import annotations

import json
import re
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from daemon import DaemonProcess
from fakes import FakeKeboola, FakeOpenAI, Latency

from teckochecker.discovery import NOTIFIED_MAX
from teckochecker.simulators.openai_webhooks import WebhookSender, flood_unknown_batches

OPENAI_KEY = "sk-CANARYdiscoveryKEY0123456789abcd"
KEBOOLA_TOKEN = "kbc-CANARY-discovery-4242-zyxwvu"
COMPONENT = "kds-team.app-custom-python"


@pytest.fixture
def openai_fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=OPENAI_KEY) as fake:
        yield fake


@pytest.fixture
def far_openai() -> Iterator[FakeOpenAI]:
    """Answers as a vendor across a WAN does: reading one batch takes about 100 ms."""
    with FakeOpenAI(api_key=OPENAI_KEY, latency=Latency(0.1, 0.02)) as fake:
        yield fake


@pytest.fixture
def keboola() -> Iterator[FakeKeboola]:
    with FakeKeboola(token=KEBOOLA_TOKEN, search_lag=0.5) as fake:
        fake.add_config(COMPONENT, "101")
        fake.set_outcome(COMPONENT, "101", "success")
        yield fake


def write_config(
    tmp_path: Path,
    oai: FakeOpenAI,
    keboola: FakeKeboola,
    discover_every: str = "5s",
    webhooks: str = "",
    list_max_age: str = "1s",
) -> Path:
    """``webhooks``: a flow mapping for the ``webhooks:`` key (its signing secret is ``hook``, from $HOOK)."""
    path = tmp_path / "teckochecker.yaml"
    hook = "  hook: {env: HOOK}" if webhooks else ""
    path.write_text(
        textwrap.dedent(f"""\
        http: {{port: 0}}
        webhooks: {webhooks or "{}"}
        secrets:
          openai: {{env: OPENAI_API_KEY}}
          keboola: {{env: KEBOOLA_STORAGE_TOKEN}}
        {hook}
        defaults: {{interval: 30s, startup_spread: 0s}}
        templates:
          classify:
            source: {{type: openai_batch, api_key: openai, base_url: "{oai.base_url}", list_max_age: {list_max_age}}}
            actions:
              - type: keboola_job
                token: keboola
                stack_url: {keboola.stack_url}
                queue_url: {keboola.queue_url}
                component: {COMPONENT}
                config: "101"
                search_lag: 1s
                duplicate_watch: 0s
                follow_interval: 1s
            discover:
              match: {{teckochecker_template: classify}}
              group_by: teckochecker_job
              count_key: teckochecker_batches
              deadline: 1h
              interval: {discover_every}
        """)
    )
    return path


def submit(oai: FakeOpenAI, group: str, count: str, how_many: int) -> list[str]:
    """The pipeline's side: create batches with the openai package, one metadata= argument each."""
    client = openai.OpenAI(api_key=OPENAI_KEY, base_url=oai.base_url, max_retries=0)
    created = [
        client.batches.create(
            input_file_id=f"file-{group}-{i}",
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"teckochecker_template": "classify", "teckochecker_job": group, "teckochecker_batches": count},
        ).id
        for i in range(how_many)
    ]
    for batch_id in created:
        oai.set_status(batch_id, "completed", completed=10, failed=0)
    return created


def wait_until(predicate: Callable[[], Any], daemon: DaemonProcess, what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if daemon.proc.poll() is not None:
            raise AssertionError(f"daemon exited while waiting for {what}:\n{daemon.output}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{daemon.output}"
        time.sleep(0.1)


def test_a_discovered_group_fires_exactly_one_keboola_job_and_a_bad_count_fires_nothing(
    tmp_path: Path, openai_fake: FakeOpenAI, keboola: FakeKeboola, plugin_env: dict[str, str]
) -> None:
    env = {**plugin_env, "OPENAI_API_KEY": OPENAI_KEY, "KEBOOLA_STORAGE_TOKEN": KEBOOLA_TOKEN}
    first = submit(openai_fake, "run-7", "3", 2)
    bad = submit(openai_fake, "bad-1", "three", 1)
    daemon = DaemonProcess(write_config(tmp_path, openai_fake, keboola), env, tmp_path)
    try:
        base = daemon.http_url()
        api = base + "/api/v1/jobs"

        def job(name: str) -> dict[str, Any] | None:
            response = httpx.get(f"{api}/{name}", timeout=5)
            return response.json() if response.status_code == 200 else None

        # The job appears at once and checks its two finished batches, but its group is incomplete: no fire.
        seen = wait_until(
            lambda: (j := job("run-7")) and all(t["state"] == "succeeded" for t in j["targets"]) and j,
            daemon,
            "run-7 with its two batches observed",
        )
        assert [t["target"] for t in seen["targets"]] == first and seen["state"] == "watching"
        assert seen["origin"] == "discovered"
        failed = wait_until(lambda: (j := job("bad-1")) and j["state"] == "failed" and j, daemon, "bad-1 failed")
        assert "teckochecker_batches='three', which is not a whole number above 0" in failed["last_error"]
        assert [t["target"] for t in failed["targets"]] == bad
        assert keboola.jobs == []

        third = submit(openai_fake, "run-7", "3", 1)
        done = wait_until(lambda: (j := job("run-7")) and j["state"] == "completed" and j, daemon, "run-7 done")
        assert [t["target"] for t in done["targets"]] == first + third
        metrics = httpx.get(base + "/metrics", timeout=5).text
        for outcome, count in (("discovered", 2), ("complete", 1), ("failed", 1)):
            line = f'teckochecker_discovery_groups_total{{outcome="{outcome}",template="classify"}} {count}.0'
            assert line in metrics, outcome
        pages = re.search(r'teckochecker_discovery_pages_total\{template="classify"\} (\d+)', metrics)
        assert pages is not None and int(pages.group(1)) >= 2
    finally:
        code, _ = daemon.stop()
    assert code == 0 and "Traceback" not in daemon.output
    assert keboola.contract_violations == []
    (started,) = keboola.jobs
    variables = {v["name"]: v["value"] for v in started["variableValuesData"]["values"]}
    assert json.loads(variables["batch_ids_completed"]) == first + third
    assert OPENAI_KEY not in daemon.output and KEBOOLA_TOKEN not in daemon.output
    # Discovery read the listing only: not one request for a single batch.
    assert [r.path for r in openai_fake.requests if r.method == "GET" and r.path != "/v1/batches"] == []


def test_a_webhook_for_a_batch_of_an_unlisted_group_brings_discovery_forward(
    tmp_path: Path, openai_fake: FakeOpenAI, keboola: FakeKeboola, plugin_env: dict[str, str]
) -> None:
    """Discovery sweeps every 10 minutes from a listing up to 5 minutes old; a verified batch event that no
    job watches makes it read that batch at once, so a group created since its last sweep becomes a job and
    fires within seconds, not minutes."""
    secret = "whsec_RdvaYFYUXuIFuEbvZHwMfYFhUf7aMYjYcmM24+Aj40c="
    env = {**plugin_env, "OPENAI_API_KEY": OPENAI_KEY, "KEBOOLA_STORAGE_TOKEN": KEBOOLA_TOKEN, "HOOK": secret}
    config = write_config(tmp_path, openai_fake, keboola, "10m", "{port: 0, secrets: [hook]}", list_max_age="5m")
    daemon = DaemonProcess(config, env, tmp_path)
    try:
        base = daemon.http_url()
        openai_fake.send_webhooks(daemon.http_url(listener="webhook receiver") + "/webhooks/openai", secret)
        sweeps = 'teckochecker_discovery_sweeps_total{outcome="ok",template="classify"} '
        wait_until(lambda: sweeps + "1.0" in httpx.get(base + "/metrics", timeout=5).text, daemon, "the first sweep")
        (batch,) = submit(openai_fake, "run-8", "1", 1)  # created and finished after that sweep: one webhook
        wait_until(lambda: len(keboola.jobs) == 1, daemon, "the Keboola job of run-8", timeout=30)
        metrics = httpx.get(base + "/metrics", timeout=5).text
        assert 'teckochecker_webhook_deliveries_total{outcome="unwatched"} 1.0' in metrics
        assert f"checked at once, a notification named {batch}" in daemon.output
    finally:
        code, _ = daemon.stop()
    assert code == 0 and "Traceback" not in daemon.output
    variables = {v["name"]: v["value"] for v in keboola.jobs[0]["variableValuesData"]["values"]}
    assert json.loads(variables["batch_ids_completed"]) == [batch]


def test_a_flood_of_webhooks_for_unknown_batches_never_stops_the_sweep(
    tmp_path: Path, far_openai: FakeOpenAI, keboola: FakeKeboola, plugin_env: dict[str, str]
) -> None:
    """Signed events for batches nobody created, at 9,000 a minute, more than discovery remembers: each pass
    reads some of them while more arrive and the oldest are forgotten. A group created during the flood (its
    batches send no webhook) is still found by the next sweep, within one discovery interval."""
    secret = "whsec_RdvaYFYUXuIFuEbvZHwMfYFhUf7aMYjYcmM24+Aj40c="
    interval = 5.0  # the shortest discovery interval allowed
    env = {**plugin_env, "OPENAI_API_KEY": OPENAI_KEY, "KEBOOLA_STORAGE_TOKEN": KEBOOLA_TOKEN, "HOOK": secret}
    config = write_config(tmp_path, far_openai, keboola, f"{interval:.0f}s", "{port: 0, secrets: [hook]}")
    daemon = DaemonProcess(config, env, tmp_path)
    sender: WebhookSender | None = None
    try:
        base = daemon.http_url()
        sender = WebhookSender(
            daemon.http_url(listener="webhook receiver") + "/webhooks/openai", secret, workers=8, max_attempts=1
        )
        flooding = threading.Thread(
            target=flood_unknown_batches, args=(sender,), kwargs={"per_minute": 9_000, "seconds": 20.0}, daemon=True
        )
        flooding.start()
        wait_until(lambda: len(sender.delivered()) > NOTIFIED_MAX, daemon, "more deliveries than are remembered")
        created = time.monotonic()
        submit(far_openai, "run-9", "1", 1)
        wait_until(lambda: httpx.get(f"{base}/api/v1/jobs/run-9", timeout=5).status_code == 200, daemon, "run-9")
        found = time.monotonic() - created
        assert flooding.is_alive(), "the group was to be created and found during the flood"
        # The next sweep finds it; its own time (reading the listing, writing the job) is the 1 s beyond.
        assert found <= interval + 1.0, f"found {found:.1f} s after it was created"
        flooding.join()
        metrics = httpx.get(base + "/metrics", timeout=5).text
        unwatched = re.search(r'teckochecker_webhook_deliveries_total\{outcome="unwatched"\} (\S+)', metrics)
        assert unwatched is not None and float(unwatched.group(1)) > NOTIFIED_MAX
    finally:
        if sender is not None:
            sender.stop()
        code, _ = daemon.stop()
    assert code == 0 and "Traceback" not in daemon.output and "KeyError" not in daemon.output


def test_a_listed_batch_no_job_can_hold_is_passed_over_and_discovery_goes_on(
    tmp_path: Path, openai_fake: FakeOpenAI, keboola: FakeKeboola, plugin_env: dict[str, str]
) -> None:
    """A listing that holds JSON's "\\ud800" in an ID (nothing can store it) stopped every pass of the
    template with a traceback, so no group of it was ever found again."""
    env = {**plugin_env, "OPENAI_API_KEY": OPENAI_KEY, "KEBOOLA_STORAGE_TOKEN": KEBOOLA_TOKEN}

    def metadata(group: str) -> dict[str, str]:
        return {"teckochecker_template": "classify", "teckochecker_job": group, "teckochecker_batches": "1"}

    openai_fake.add_batch("batch_\ud800", status="completed", metadata=metadata("lone-1"))
    openai_fake.add_batch("batch_" + "x" * 300, status="completed", metadata=metadata("long-1"))
    good = openai_fake.add_batch(status="completed", metadata=metadata("good-1"))
    daemon = DaemonProcess(write_config(tmp_path, openai_fake, keboola), env, tmp_path)
    try:
        api = daemon.http_url() + "/api/v1/jobs"

        def completed() -> dict[str, Any] | None:
            response = httpx.get(f"{api}/good-1", timeout=5)
            return response.json() if response.status_code == 200 and response.json()["state"] == "completed" else None

        done = wait_until(completed, daemon, "good-1 completed")
        assert [t["target"] for t in done["targets"]] == [good]
        names = {job["name"] for job in httpx.get(api, timeout=5).json()["jobs"]}
        assert names == {"good-1"}
    finally:
        code, _ = daemon.stop()
    assert code == 0 and "Traceback" not in daemon.output
