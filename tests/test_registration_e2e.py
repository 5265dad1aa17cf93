"""The pipeline's path end to end, on the real daemon process against the fake OpenAI and Keboola servers:
the script that submitted the batches registers the job over HTTP → exactly one Keboola job; the same PUT
again (a retry) changes nothing; a restart keeps the registered job and fires nothing again."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import httpx
from daemon import DaemonProcess
from fakes import FakeKeboola, FakeOpenAI

OPENAI_KEY = "sk-CANARYopenaiKEY0123456789abcdef"
KEBOOLA_TOKEN = "kbc-CANARY-token-4242-zyxwvutsrq"
PIPELINE_TOKEN = "pipeline-token-0123456789abcdef"
OPERATOR_TOKEN = "operator-token-0123456789abcdef"
COMPONENT = "kds-team.app-custom-python"


def write_config(tmp_path: Path, openai: FakeOpenAI, keboola: FakeKeboola) -> Path:
    path = tmp_path / "teckochecker.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        http:
          port: 0
          tokens:
            - {{secret: pipeline, scopes: [register]}}
            - {{secret: operator, scopes: [control]}}
        secrets:
          openai: {{env: OPENAI_API_KEY}}
          keboola: {{env: KEBOOLA_STORAGE_TOKEN}}
          pipeline: {{env: PIPELINE_TOKEN}}
          operator: {{env: OPERATOR_TOKEN}}
        defaults: {{interval: 30s, startup_spread: 0s}}
        templates:
          classify:
            source: {{type: openai_batch, api_key: openai, base_url: "{openai.base_url}"}}
            actions:
              - type: keboola_job
                token: keboola
                stack_url: {keboola.stack_url}
                queue_url: {keboola.queue_url}
                component: {COMPONENT}
                config: "101"
                search_lag: 1s
                follow_interval: 1s
                duplicate_watch: 0s
        """)
    )
    return path


def start(config: Path, env: dict[str, str], cwd: Path) -> tuple[DaemonProcess, httpx.Client]:
    daemon = DaemonProcess(config, env, cwd)
    daemon.wait_for("teckochecker started")
    return daemon, httpx.Client(base_url=daemon.http_url(), timeout=10)


def test_a_job_registered_over_http_fires_one_keboola_job(tmp_path: Path, plugin_env: dict[str, str]) -> None:
    env = {
        **plugin_env,
        "OPENAI_API_KEY": OPENAI_KEY,
        "KEBOOLA_STORAGE_TOKEN": KEBOOLA_TOKEN,
        "PIPELINE_TOKEN": PIPELINE_TOKEN,
        "OPERATOR_TOKEN": OPERATOR_TOKEN,
    }
    with FakeOpenAI(api_key=OPENAI_KEY) as openai, FakeKeboola(token=KEBOOLA_TOKEN, search_lag=0.5) as keboola:
        keboola.add_config(COMPONENT, "101")
        keboola.set_outcome(COMPONENT, "101", "success")
        batches = [openai.add_batch(status="in_progress"), openai.add_batch(status="in_progress")]
        config = write_config(tmp_path, openai, keboola)
        daemon, client = start(config, env, tmp_path)
        pipeline = {"Authorization": f"Bearer {PIPELINE_TOKEN}"}
        body = {"template": "classify", "source": {"targets": batches}}
        try:
            assert client.put("/api/v1/jobs/nightly", headers=pipeline, json=body).status_code == 201
            daemon.wait_for("registered jobs applied: 1 added")
            _wait(lambda: client.get("/api/v1/jobs/nightly").json()["last_checked_at"] is not None, daemon)
            for batch in batches:
                openai.set_status(batch, "completed", completed=10, failed=0)
            # The operator's token asks for the next check now (the pipeline's token may not).
            assert client.post("/api/v1/jobs/nightly/check-now", headers=pipeline).status_code == 403
            operator = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
            assert client.post("/api/v1/jobs/nightly/check-now", headers=operator).status_code == 200
            daemon.wait_for("job nightly: completed", timeout=60)
            assert len(keboola.jobs_for(COMPONENT, "101")) == 1

            # The submitting script retries (a lost answer, say): same body, 200, nothing changes or fires.
            again = client.put("/api/v1/jobs/nightly", headers=pipeline, json=body)
            assert again.status_code == 200 and again.json()["outcome"] == "unchanged"
            time.sleep(1.0)
            assert len(keboola.jobs_for(COMPONENT, "101")) == 1
        finally:
            client.close()
            assert daemon.stop()[0] == 0, daemon.output

        daemon, client = start(config, env, tmp_path)
        try:
            job = client.get("/api/v1/jobs/nightly").json()
            assert (job["origin"], job["state"], job["removed"]) == ("api", "completed", False)
            assert [t["target"] for t in job["targets"]] == batches
            assert client.put("/api/v1/jobs/nightly", headers=pipeline, json=body).json()["outcome"] == "unchanged"
            time.sleep(1.0)
        finally:
            client.close()
            assert daemon.stop()[0] == 0, daemon.output
        assert len(keboola.jobs) == 1 and keboola.contract_violations == []
        assert OPENAI_KEY not in daemon.output and PIPELINE_TOKEN not in daemon.output


def _wait(predicate, daemon: DaemonProcess, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, daemon.output
        time.sleep(0.05)
