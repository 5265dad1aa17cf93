"""The new vendors end to end, through the real daemon process: Anthropic batches → one signed webhook, and
Azure OpenAI batches → one Keboola job; each fires once, across a lost answer, a crash and a restart."""

from __future__ import annotations

import base64
import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import DaemonProcess, run_cli
from fakes import FakeAnthropic, FakeAzureOpenAI, FakeKeboola, FakeWebhookReceiver

ANTHROPIC_KEY = "sk-ant-CANARY-e2e-0123456789abcdef"
AZURE_KEY = "azure-CANARY-e2e-00112233445566778899"
KEBOOLA_TOKEN = "kbc-CANARY-e2e-token-4242-zyxwvu"
HOOK_SECRET = "whsec_" + base64.b64encode(b"CANARY-e2e-webhook-secret-bytes!").decode()
COMPONENT = "kds-team.app-custom-python"
CONFIG = "777"


@pytest.fixture
def anthropic() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key=ANTHROPIC_KEY) as fake:
        yield fake


@pytest.fixture
def receiver() -> Iterator[FakeWebhookReceiver]:
    with FakeWebhookReceiver(secret=HOOK_SECRET) as fake:
        yield fake


@pytest.fixture
def env(plugin_env: dict[str, str]) -> dict[str, str]:
    return {
        **plugin_env,
        "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
        "AZURE_OPENAI_API_KEY": AZURE_KEY,
        "KEBOOLA_STORAGE_TOKEN": KEBOOLA_TOKEN,
        "HOOK_SECRET": HOOK_SECRET,
    }


def write_config(tmp_path: Path, job: str) -> Path:
    path = tmp_path / "teckochecker.yaml"
    path.write_text(
        textwrap.dedent("""\
        http: {port: 0}
        secrets:
          anthropic: {env: ANTHROPIC_API_KEY}
          azure: {env: AZURE_OPENAI_API_KEY}
          keboola: {env: KEBOOLA_STORAGE_TOKEN}
          hook: {env: HOOK_SECRET}
        defaults: {interval: 30s, startup_spread: 0s}
        jobs:
        """)
        + textwrap.indent(textwrap.dedent(job), "  ")
    )
    return path


def anthropic_job(anthropic: FakeAnthropic, receiver: FakeWebhookReceiver, batches: list[str]) -> str:
    return f"""\
    - name: claude-nightly
      source:
        type: anthropic_batch
        api_key: anthropic
        base_url: "{anthropic.base_url}"
        targets: {json.dumps(batches)}
      actions:
        - type: webhook
          url: "{receiver.url}"
          secret: hook
          timeout: 5s
          variables: {{pipeline: nightly}}
    """


@pytest.mark.parametrize("trouble", ["answer_lost", "crash_before_sending"])
def test_anthropic_batches_fire_one_webhook(
    tmp_path: Path, anthropic: FakeAnthropic, receiver: FakeWebhookReceiver, env: dict[str, str], trouble: str
) -> None:
    ok, partly = anthropic.add_batch(requests=5), anthropic.add_batch(requests=4)
    anthropic.end(ok)
    anthropic.end(partly, errored=1, expired=1)
    config = write_config(tmp_path, anthropic_job(anthropic, receiver, [ok, partly]))
    if trouble == "answer_lost":
        # The receiver processes the first POST, then the connection dies before the answer: in doubt.
        receiver.inject(reset=True, process=True)
        daemon = DaemonProcess(config, env, tmp_path)
    else:
        crashing = DaemonProcess(config, {**env, "TECKOCHECKER_CRASHPOINT": "after_intent_commit"}, tmp_path)
        crashing.proc.wait(timeout=60)
        assert crashing.proc.returncode == -9 and receiver.attempts == []
        daemon = DaemonProcess(config, env, tmp_path)
    daemon.wait_for("job claude-nightly: completed_with_failures", timeout=60)
    assert daemon.stop()[0] == 0

    (delivery,) = receiver.deliveries
    data = delivery.payload["data"]
    assert data["batch_ids_completed"] == [ok] and data["batch_ids_failed"] == [partly]
    assert data["batch_results_urls"] == {
        b: f"{anthropic.base_url}/v1/messages/batches/{b}/results" for b in (ok, partly)
    }
    assert data["variables"] == {"pipeline": "nightly"} and delivery.message_id == data["trigger_id"]
    assert len(receiver.attempts) == (2 if trouble == "answer_lost" else 1)
    assert receiver.duplicates == ([data["trigger_id"]] if trouble == "answer_lost" else [])
    # One listing answered both batches, with Anthropic's headers.
    asked = [r for r in anthropic.requests if r.path.startswith("/v1/messages/batches")]
    assert asked and all(r.path == "/v1/messages/batches" for r in asked)
    assert all(r.headers["anthropic-version"] == "2023-06-01" for r in asked)

    again = DaemonProcess(config, env, tmp_path)
    again.wait_for("listening on", timeout=30)
    assert again.stop()[0] == 0
    assert len(receiver.deliveries) == 1 and len(receiver.attempts) == (2 if trouble == "answer_lost" else 1)
    assert ANTHROPIC_KEY not in daemon.output + again.output and HOOK_SECRET not in daemon.output


def test_azure_batches_fire_one_keboola_job(tmp_path: Path, env: dict[str, str]) -> None:
    with FakeAzureOpenAI(api_key=AZURE_KEY) as azure, FakeKeboola(token=KEBOOLA_TOKEN, search_lag=0.5) as keboola:
        keboola.add_config(COMPONENT, CONFIG)
        keboola.set_outcome(COMPONENT, CONFIG, "success")
        batches = [azure.add_batch(status="completed"), azure.add_batch(status="expired")]
        config = write_config(
            tmp_path,
            f"""\
            - name: azure-nightly
              source:
                type: azure_openai_batch
                endpoint: "{azure.endpoint}"
                api_version: "2024-10-21"
                api_key: azure
                targets: {json.dumps(batches)}
              actions:
                - type: keboola_job
                  token: keboola
                  stack_url: "{keboola.stack_url}"
                  queue_url: "{keboola.queue_url}"
                  component: {COMPONENT}
                  config: "{CONFIG}"
                  search_lag: 1s
                  follow_interval: 1s
            """,
        )
        daemon = DaemonProcess(config, env, tmp_path)
        daemon.wait_for("job azure-nightly: completed_with_failures", timeout=60)
        assert daemon.stop()[0] == 0
        again = DaemonProcess(config, env, tmp_path)
        again.wait_for("listening on", timeout=30)
        assert again.stop()[0] == 0

        (job,) = keboola.jobs_for(COMPONENT, CONFIG)
        assert job["status"] == "success" and keboola.contract_violations == []
        values = {v["name"]: v["value"] for v in job["variableValuesData"]["values"]}
        assert json.loads(values["batch_ids_completed"]) == [batches[0]]
        assert json.loads(values["batch_ids_failed"]) == [batches[1]]
        assert "batch_results_urls" not in values  # OpenAI batches have file ids instead
        asked = [r for r in azure.requests if "/batches" in r.path]
        assert asked and all(r.path.startswith("/openai/batches") for r in asked)
        assert all(r.query["api-version"] == ["2024-10-21"] and r.headers["api-key"] == AZURE_KEY for r in asked)
        assert AZURE_KEY not in daemon.output and KEBOOLA_TOKEN not in daemon.output


def test_the_commented_vendor_jobs_of_the_example_config_are_valid(tmp_path: Path, env: dict[str, str]) -> None:
    example = (Path(__file__).parent.parent / "teckochecker.yaml.example").read_text()
    head, commented = example.split("  # Other vendors", 1)
    # Uncomment the YAML (lines "  # - ..." and deeper), not the prose between the jobs.
    jobs = [line.replace("  # ", "  ", 1) for line in commented.splitlines() if line.startswith(("  # -", "  #   "))]
    secrets = "  anthropic: {env: A}\n  webhook_secret: {env: W}\n  azure_openai: {env: Z}\n"
    config = tmp_path / "example.yaml"
    config.write_text(head.replace("secrets:\n", "secrets:\n" + secrets, 1) + "\n".join(jobs) + "\n")
    out = run_cli("validate-config", str(config), env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 job(s)" in out.stdout
