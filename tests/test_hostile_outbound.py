"""A register token cannot send a secret anywhere the config files did not: every field a registered job's
body can set, pointed at someone else's listener, on the real daemon.

A distinct canary is planted in every kind of secret (the OpenAI, Anthropic and Azure keys, the Keboola token,
the webhook action's signing secret, the http.api_token and http.tokens secrets, the webhook receiver's
signing secret). The files bind each vendor secret to its fake. Then jobs are PUT whose base_url, endpoint,
stack_url, queue_url or webhook url is the listener (a real server on 127.0.0.1 that records everything), or
whose secret option names a secret that is bound to nothing, and the daemon must refuse every one before it
is sent: by the secret's name in the log, counted in the metrics, as the job's or the step's failure. Also: a
stack index (named in the files) that names the listener as its Queue API, and a fake that redirects to it.
"""

from __future__ import annotations

import re
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from daemon import DaemonProcess
from fakes import FakeAnthropic, FakeAzureOpenAI, FakeKeboola, FakeOpenAI, FakeWebhookReceiver
from hostile_servers import HostileStack, Listener, Redirector

from teckochecker.plugin_api import Origin
from teckochecker.simulators._http import RecordedRequest

COMPONENT = "kds-team.app-custom-python"
CANARIES = {
    "openai": "sk-CANARYopenaiKEY-0123456789abcdef",
    "anthropic": "sk-ant-CANARYanthropicKEY-0123456789",
    "azure": "CANARYazureAPIkey0123456789abcdef",
    "keboola": "kbc-CANARYkeboolaTOKEN-0123456789",
    "hook": "whsec_CANARYwebhookACTIONsecret0123456",  # base64 of 24 bytes
    "legacy": "CANARYlegacyAPItoken-0123456789",
    "pipeline": "CANARYpipelineTOKEN-0123456789",
    "operator": "CANARYoperatorTOKEN-0123456789",
    "receiver": "whsec_CANARYwebhooksRECEIVERsecret0123",
}
WAIT = 30.0


@pytest.fixture
def listener() -> Iterator[Listener]:
    with Listener() as server:
        yield server


def write_config(tmp_path: Path, fakes: dict[str, Any], held: dict[str, str], fired: str) -> Path:
    openai, anthropic, azure, keboola = fakes["openai"], fakes["anthropic"], fakes["azure"], fakes["keboola"]
    secrets = "".join(f"  {name}: {{env: TC_{name.upper()}}}\n" for name in CANARIES)
    path = tmp_path / "teckochecker.yaml"
    path.write_text(
        textwrap.dedent("""\
        log_level: DEBUG
        http:
          port: 0
          api_token: legacy
          tokens:
            - {secret: pipeline, scopes: [register]}
            - {secret: operator, scopes: [control]}
        webhooks: {port: 0, secrets: [receiver]}
        defaults: {interval: 30s, startup_spread: 0s}
        secrets:
        """)
        + secrets
        + textwrap.dedent(f"""\
        jobs:
          # The files send each vendor secret to its own fake, and nowhere else.
          - name: bind-openai
            source: {{type: openai_batch, api_key: openai, base_url: "{openai.base_url}", targets: [{held["openai"]}]}}
            actions:
              - {{type: webhook, url: "{fakes["receiver"].url}", secret: hook}}
              - {{type: keboola_job, token: keboola, stack_url: "{keboola.stack_url}",
                  queue_url: "{keboola.queue_url}", component: {COMPONENT}, config: "101"}}
          - name: bind-anthropic
            source: {{type: anthropic_batch, api_key: anthropic, base_url: "{anthropic.base_url}",
                      targets: [{held["anthropic"]}]}}
            actions: [{{type: webhook, url: "{fakes["receiver"].url}", secret: hook}}]
          - name: bind-azure
            source: {{type: azure_openai_batch, api_key: azure, endpoint: "{azure.endpoint}",
                      targets: [{held["azure"]}]}}
            actions: [{{type: webhook, url: "{fakes["receiver"].url}", secret: hook}}]
          # A stack named in the files, whose index names someone else's server as the Queue API.
          - name: index-names-listener
            source: {{type: openai_batch, api_key: openai, base_url: "{openai.base_url}", targets: [{fired}]}}
            actions:
              - {{type: keboola_job, token: keboola, stack_url: "{fakes["stack"].url}", component: {COMPONENT},
                  config: "101"}}
          # A vendor endpoint named in the files that redirects to someone else's server.
          - name: redirected
            source: {{type: openai_batch, api_key: openai, base_url: "{fakes["redirector"].url}/v1", targets: [b]}}
            actions: [{{type: webhook, url: "{fakes["receiver"].url}", secret: hook}}]
        """)
    )
    return path


def hostile_jobs(fakes: dict[str, Any], listener: str, fired: Callable[[], str]) -> dict[str, tuple[Any, str]]:
    """Job name → (the PUT body, what the daemon must log about it)."""
    openai = fakes["openai"]

    def watch(source: dict[str, Any]) -> dict[str, Any]:
        action = {"type": "webhook", "url": fakes["receiver"].url, "secret": "hook"}
        return {"source": {**source, "targets": ["batch_x"]}, "actions": [action]}

    def fire(action: dict[str, Any]) -> dict[str, Any]:
        # Read on its own, not from the account's shared listing, which was read before the batch existed.
        source = {"type": "openai_batch", "api_key": "openai", "base_url": openai.base_url, "list_batches": False}
        source["targets"] = [fired()]
        return {"source": source, "actions": [action]}

    # The daemon's log line about the job, NAME standing for its name: the source's check stops the job, the
    # action's step is rejected.
    def stopped(secret: str, at: str) -> str:
        return f"job NAME stopped: refused to send secret '{secret}' to {Origin.of(at)}"

    def rejected(secret: str, at: str) -> str:
        return f"of job NAME rejected: refused to send secret '{secret}' to {Origin.of(at)}"

    jobs: dict[str, tuple[Any, str]] = {
        "openai-base-url": (
            watch({"type": "openai_batch", "api_key": "openai", "base_url": f"{listener}/v1"}),
            stopped("openai", listener),
        ),
        "anthropic-base-url": (
            watch({"type": "anthropic_batch", "api_key": "anthropic", "base_url": listener}),
            stopped("anthropic", listener),
        ),
        "azure-endpoint": (
            watch({"type": "azure_openai_batch", "api_key": "azure", "endpoint": listener}),
            stopped("azure", listener),
        ),
        "azure-entra-endpoint": (
            watch({"type": "azure_openai_batch", "entra_token": "openai", "endpoint": listener}),
            stopped("openai", listener),
        ),
        "keboola-token-as-api-key": (
            watch({"type": "openai_batch", "api_key": "keboola", "base_url": f"{listener}/v1"}),
            stopped("keboola", listener),
        ),
        "keboola-queue-url": (
            fire(
                {
                    "type": "keboola_job",
                    "token": "keboola",
                    "stack_url": fakes["keboola"].stack_url,
                    "queue_url": listener,
                    "component": COMPONENT,
                    "config": "101",
                }
            ),
            rejected("keboola", listener),
        ),
        "keboola-stack-url": (
            fire(
                {
                    "type": "keboola_job",
                    "token": "keboola",
                    "stack_url": listener,
                    "component": COMPONENT,
                    "config": "1",
                }
            ),
            # The index needs no token; a host no file names may not be reached on a loopback address at all.
            f"of job NAME rejected: refused to connect to 127.0.0.1:{Origin.of(listener).port}",
        ),
        "webhook-url": (
            fire({"type": "webhook", "url": f"{listener}/hook", "secret": "hook"}),
            rejected("hook", listener),
        ),
    }
    # Secrets bound to nothing (the API's tokens, the receiver's signing secret) go nowhere, not even to a
    # vendor the files name.
    for secret in ("legacy", "pipeline", "operator", "receiver"):
        jobs[f"{secret}-to-a-named-vendor"] = (
            watch({"type": "openai_batch", "api_key": secret, "base_url": openai.base_url}),
            stopped(secret, openai.base_url),
        )
    return jobs


def wait_until(condition: Callable[[], bool], daemon: DaemonProcess, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}:\n{daemon.output[-5000:]}")


def canaries_in(requests: list[RecordedRequest]) -> set[str]:
    blobs = [f"{r.method} {r.path} {r.query} {r.headers}".encode() + r.body for r in requests]
    return {name for name, value in CANARIES.items() for blob in blobs if value.encode() in blob}


def test_no_secret_reaches_a_place_the_files_did_not_name(
    tmp_path: Path, listener: Listener, plugin_env: dict[str, str]
) -> None:
    env = {**plugin_env, **{f"TC_{name.upper()}": value for name, value in CANARIES.items()}}
    with (
        FakeOpenAI(api_key=CANARIES["openai"]) as openai,
        FakeAnthropic(api_key=CANARIES["anthropic"]) as anthropic,
        FakeAzureOpenAI(api_key=CANARIES["azure"]) as azure,
        FakeKeboola(token=CANARIES["keboola"]) as keboola,
        FakeWebhookReceiver(secret=CANARIES["hook"]) as receiver,
        HostileStack(listener.url) as stack,
        Redirector(listener.url + "/v1/batches/stolen") as redirector,
    ):
        keboola.add_config(COMPONENT, "101")
        fakes = {
            "openai": openai,
            "anthropic": anthropic,
            "azure": azure,
            "keboola": keboola,
            "receiver": receiver,
            "stack": stack,
            "redirector": redirector,
        }

        def fired() -> str:
            batch = openai.add_batch(status="in_progress")
            openai.set_status(batch, "completed", completed=1, failed=0)
            return batch

        held = {"openai": openai.add_batch(status="in_progress"), "anthropic": anthropic.add_batch()}
        held["azure"] = azure.add_batch(status="in_progress")
        config = write_config(tmp_path, fakes, held, fired())
        daemon = DaemonProcess(config, env, tmp_path)
        try:
            daemon.wait_for("teckochecker started")
            api = httpx.Client(base_url=daemon.http_url(), timeout=10, trust_env=False)
            pipeline = {"Authorization": f"Bearer {CANARIES['pipeline']}"}
            jobs = hostile_jobs(fakes, listener.url, fired)
            registered = []
            for name, (body, _) in jobs.items():
                answer = api.put(f"/api/v1/jobs/{name}", headers=pipeline, json=body)
                # Refusing such a body at registration is a wall of its own (a 4xx); what is accepted must still
                # never send a secret elsewhere: the HTTP layer has to stand alone.
                assert answer.is_success or answer.is_client_error, (name, answer.status_code, answer.text)
                if answer.is_success:
                    registered.append(name)

            for name in registered:
                daemon.wait_for(jobs[name][1].replace("NAME", name), WAIT)
            daemon.wait_for(
                f"the Keboola stack index at {stack.url}/v2/storage?exclude=components names the Queue API at "
                f"{Origin.of(listener.url)}, where the config files do not let secret 'keboola' go; if that is the "
                f"stack's Queue API, set queue_url: {listener.url}",
                WAIT,
            )
            wait_until(
                lambda: api.get("/api/v1/jobs/redirected").json()["last_checked_at"] is not None,
                daemon,
                "the redirected job's first check",
            )
            metrics = api.get("/metrics").text
        finally:
            daemon.stop()
        output = daemon.output

    # Nothing of ours reached the listener: not a canary, not a request.
    assert canaries_in(listener.requests) == set()
    assert listener.requests == []
    assert [r.path for r in redirector.requests] and all(r.path.startswith("/v1/batches") for r in redirector.requests)
    # Each fake saw its own secret only (the unbound tokens named as an OpenAI key never left either).
    assert canaries_in(openai.requests) == {"openai"}
    assert canaries_in(anthropic.requests) == {"anthropic"}
    assert canaries_in(azure.requests) == {"azure"}
    assert canaries_in(keboola.requests) <= {"keboola"}
    assert canaries_in(stack.requests) == set()  # the index needs no token, and the token never left
    # Refused by name, never by value, and counted per secret.
    for name in registered:
        expected = jobs[name][1]
        secret = re.search(r"secret '(\w+)'", expected)
        if secret is not None:
            count = re.search(rf'teckochecker_secret_refusals_total\{{secret="{secret.group(1)}"\}} (\S+)', metrics)
            assert count is not None and float(count.group(1)) >= 1, (name, metrics)
    assert not any(value in output for value in CANARIES.values())
