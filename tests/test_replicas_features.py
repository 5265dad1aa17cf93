"""Replicas and the features merged with them, on real `teckochecker run` processes sharing a real PostgreSQL
database, against the fake OpenAI and Keboola servers: a job registered over the standby's API is run by the
leader; only the leader discovers, and a group discovered by a leader that is then SIGKILLed is completed and
fired once by the next; a webhook is refused by the standby and acted on by the leader.

Each replica reaches OpenAI under its own organization (OpenAI-Organization header; the fake checks none), so
the fake's request log tells which replica sent what.
"""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from daemon import DaemonProcess
from fakes import FakeKeboola, FakeOpenAI

from teckochecker.simulators.openai_webhooks import sign

pytestmark = pytest.mark.postgres

OPENAI_KEY = "sk-CANARYcrossrepKEY0123456789abcdef"
KEBOOLA_TOKEN = "kbc-CANARY-crossrep-4242-zyxwvuts"
PIPELINE_TOKEN = "pipeline-token-crossrep-0123456789"
HOOK_SECRET = "whsec_RdvaYFYUXuIFuEbvZHwMfYFhUf7aMYjYcmM24+Aj40c="
COMPONENT = "kds-team.app-custom-python"
LEASE = "3s"
GROUP_METADATA = {"teckochecker_template": "classify", "teckochecker_job": "run-7", "teckochecker_batches": "3"}


@pytest.fixture
def oai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=OPENAI_KEY) as fake:
        yield fake


@pytest.fixture
def keboola() -> Iterator[FakeKeboola]:
    with FakeKeboola(token=KEBOOLA_TOKEN, search_lag=0.3) as fake:
        fake.add_config(COMPONENT, "101")
        fake.set_outcome(COMPONENT, "101", "success")
        yield fake


@pytest.fixture
def env(plugin_env: dict[str, str]) -> dict[str, str]:
    return {
        **plugin_env,
        "OPENAI_API_KEY": OPENAI_KEY,
        "KEBOOLA_STORAGE_TOKEN": KEBOOLA_TOKEN,
        "PIPELINE_TOKEN": PIPELINE_TOKEN,
        "HOOK": HOOK_SECRET,
    }


class Replicas:
    """Replicas started on one config shape, each under its own name and OpenAI organization."""

    def __init__(self, tmp_path: Path, env: dict[str, str], shape: Callable[[str], str]) -> None:
        self._tmp, self._env, self._shape = tmp_path, env, shape
        self.running: dict[str, DaemonProcess] = {}

    def start(self, name: str) -> DaemonProcess:
        path = self._tmp / f"{name}.yaml"
        path.write_text(self._shape(name))
        logs = self._tmp / "logs"  # not beside the configs: the config watcher would see every log line
        logs.mkdir(exist_ok=True)
        daemon = DaemonProcess(path, self._env, logs)
        self.running[name] = daemon
        return daemon

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{d.output[-4000:]}" for name, d in self.running.items())

    def wait(self, what: str, predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            assert time.monotonic() < deadline, f"timed out waiting for {what}\n{self.logs()}"
            time.sleep(0.1)

    def stop_all(self) -> None:
        for daemon in self.running.values():
            daemon.stop()


def base_config(name: str, postgres_url: str) -> str:
    return textwrap.dedent(f"""\
        log_level: DEBUG
        state: {{url: "{postgres_url}", lease: {LEASE}, replica_name: {name}}}
        secrets:
          openai: {{env: OPENAI_API_KEY}}
          keboola: {{env: KEBOOLA_STORAGE_TOKEN}}
          pipeline: {{env: PIPELINE_TOKEN}}
          hook: {{env: HOOK}}
        """)


def action(keboola: FakeKeboola) -> str:
    return (
        f'{{type: keboola_job, token: keboola, stack_url: "{keboola.stack_url}",'
        f' queue_url: "{keboola.queue_url}", component: {COMPONENT}, '
        'config: "101", search_lag: 1s, follow_interval: 1s, duplicate_watch: 0s}'
    )


def source(oai: FakeOpenAI, name: str) -> str:
    return f'type: openai_batch, api_key: openai, base_url: "{oai.base_url}", organization: org-{name}'


def sent_by(oai: FakeOpenAI, name: str) -> list[str]:
    return [f"{r.method} {r.path}" for r in oai.requests if r.headers.get("openai-organization") == f"org-{name}"]


def posts(keboola: FakeKeboola) -> int:
    return sum(1 for r in keboola.requests if r.method == "POST" and r.path.rstrip("/") == "/jobs")


def get_job(base: str, name: str) -> dict[str, Any] | None:
    response = httpx.get(f"{base}/api/v1/jobs/{name}", timeout=5)
    return response.json() if response.status_code == 200 else None


def variables(job: dict[str, Any]) -> dict[str, Any]:
    return {v["name"]: v["value"] for v in job["variableValuesData"]["values"]}


def test_jobs_put_to_the_standby_are_run_by_the_leader_once_and_by_the_next_leader_after_a_sigkill(
    tmp_path: Path, postgres_url: str, oai: FakeOpenAI, keboola: FakeKeboola, env: dict[str, str]
) -> None:
    def shape(name: str) -> str:
        return base_config(name, postgres_url) + textwrap.dedent(f"""\
            http: {{port: 0, tokens: [{{secret: pipeline, scopes: [register]}}]}}
            defaults: {{interval: 30s, startup_spread: 0s}}
            templates:
              classify:
                source: {{{source(oai, name)}}}
                actions: [{action(keboola)}]
            """)

    def register(base: str, name: str, targets: list[str]) -> None:
        put = httpx.put(
            f"{base}/api/v1/jobs/{name}",
            headers={"Authorization": f"Bearer {PIPELINE_TOKEN}"},
            json={"template": "classify", "source": {"targets": targets}},
            timeout=10,
        )
        assert put.status_code == 201, put.text

    nightly = [oai.add_batch(status="completed"), oai.add_batch(status="completed")]
    late = [oai.add_batch(status="in_progress")]
    orphan = [oai.add_batch(status="completed")]
    replicas = Replicas(tmp_path, env, shape)
    try:
        leader = replicas.start("r1")
        leader.wait_for("replica r1 leads")
        standby = replicas.start("r2")
        standby.wait_for("teckochecker started")
        urls = {name: d.http_url() for name, d in replicas.running.items()}

        register(urls["r2"], "nightly", nightly)
        # The leader notices the standby's row within its registry poll (5 s) and runs the job at once.
        replicas.wait("the leader's Keboola job", lambda: posts(keboola) >= 1, timeout=15)
        replicas.wait("job nightly completed", lambda: "job nightly: completed" in leader.output, timeout=30)
        for name, base in urls.items():
            job = get_job(base, "nightly")
            assert job is not None, name
            assert (job["origin"], job["state"]) == ("api", "completed"), (name, job)
            assert [t["target"] for t in job["targets"]] == nightly
        assert sent_by(oai, "r2") == [] and sent_by(oai, "r1") != []  # the standby polled nothing

        # A second registered job, checked by the leader, then the leader dies before its batch ends.
        register(urls["r2"], "late", late)
        replicas.wait(
            "the leader's first check of late",
            lambda: (j := get_job(urls["r1"], "late")) and j["last_checked_at"] is not None,
            timeout=15,
        )
        leader.kill()
        oai.set_status(late[0], "completed", completed=10, failed=0)
        register(urls["r2"], "orphan", orphan)  # while nobody leads: stored, and run by whoever leads next
        standby.wait_for("replica r2 leads", timeout=15)
        for name in ("late", "orphan"):
            standby.wait_for(f"job {name}: completed", timeout=30)
            job = get_job(urls["r2"], name)
            assert job is not None and (job["origin"], job["state"]) == ("api", "completed")
        time.sleep(2.0)  # a second start by either replica would show up now
        assert posts(keboola) == 3 and len(keboola.jobs) == 3
        fired = sorted(json.loads(variables(j)["batch_ids_completed"]) for j in keboola.jobs)
        assert fired == sorted([nightly, late, orphan])
        assert "job nightly" not in standby.output.split("replica r2 leads")[0]
    finally:
        replicas.stop_all()
    assert keboola.contract_violations == []
    assert "Traceback" not in replicas.logs()


def test_only_the_leader_discovers_and_the_next_leader_completes_a_group_after_a_sigkill(
    tmp_path: Path, postgres_url: str, oai: FakeOpenAI, keboola: FakeKeboola, env: dict[str, str]
) -> None:
    def shape(name: str) -> str:
        return base_config(name, postgres_url) + textwrap.dedent(f"""\
            http: {{port: 0}}
            defaults: {{interval: 30s, startup_spread: 0s}}
            templates:
              classify:
                source: {{{source(oai, name)}, list_max_age: 10s}}
                actions: [{action(keboola)}]
                discover:
                  match: {{teckochecker_template: classify}}
                  group_by: teckochecker_job
                  count_key: teckochecker_batches
                  deadline: 1h
                  interval: 5s
            """)

    client = openai.OpenAI(api_key=OPENAI_KEY, base_url=oai.base_url, max_retries=0)

    def submit(how_many: int) -> list[str]:
        created = [
            client.batches.create(
                input_file_id=f"file-{i}",
                endpoint="/v1/chat/completions",
                completion_window="24h",
                metadata=GROUP_METADATA,
            ).id
            for i in range(how_many)
        ]
        for batch_id in created:
            oai.set_status(batch_id, "completed", completed=10, failed=0)
        return created

    replicas = Replicas(tmp_path, env, shape)
    try:
        first = replicas.start("r1")
        first.wait_for("replica r1 leads")
        second = replicas.start("r2")
        second.wait_for("teckochecker started")
        urls = {name: d.http_url() for name, d in replicas.running.items()}
        lists_before = sent_by(oai, "r1").count("GET /v1/batches")
        early = submit(2)
        seen = replicas.wait(
            "run-7 discovered with its two batches observed",
            lambda: (j := get_job(urls["r1"], "run-7")) and all(t["state"] == "succeeded" for t in j["targets"]) and j,
            timeout=20,  # well within the jobs' 30 s interval: observed by the check discovery asks for at once
        )
        assert [t["target"] for t in seen["targets"]] == early and seen["origin"] == "discovered"
        assert seen["state"] == "watching" and keboola.jobs == []
        # The leader swept (discovery and the job's polls list); the standby sent OpenAI nothing at all.
        assert sent_by(oai, "r1").count("GET /v1/batches") > lists_before
        assert sent_by(oai, "r2") == []
        standby_view = get_job(urls["r2"], "run-7")
        assert standby_view is not None and standby_view["origin"] == "discovered"

        first.kill()  # mid-group: the job exists, one batch of three is still to come
        late = submit(1)
        second.wait_for("replica r2 leads", timeout=15)
        done = replicas.wait(
            "run-7 completed by the new leader",
            lambda: (j := get_job(urls["r2"], "run-7")) and j["state"] == "completed" and j,
            timeout=40,
        )
        assert [t["target"] for t in done["targets"]] == early + late
        assert "GET /v1/batches" in sent_by(oai, "r2")  # the new leader swept
        time.sleep(2.0)
        assert posts(keboola) == 1 and len(keboola.jobs) == 1
        assert json.loads(variables(keboola.jobs[0])["batch_ids_completed"]) == early + late
    finally:
        replicas.stop_all()
    assert keboola.contract_violations == []
    assert "Traceback" not in second.output


def test_a_webhook_is_refused_by_the_standby_and_fires_the_job_through_the_leader(
    tmp_path: Path, postgres_url: str, oai: FakeOpenAI, keboola: FakeKeboola, env: dict[str, str]
) -> None:
    batch = oai.add_batch(status="in_progress")

    def shape(name: str) -> str:
        return base_config(name, postgres_url) + textwrap.dedent(f"""\
            http: {{port: 0}}
            webhooks: {{port: 0, secrets: [hook]}}
            defaults: {{interval: 1h, startup_spread: 0s}}
            jobs:
              - name: hooked
                source: {{{source(oai, name)}, targets: [{batch}]}}
                actions: [{action(keboola)}]
            """)

    def deliver(url: str, message_id: str) -> httpx.Response:
        body = json.dumps(
            {
                "id": f"evt_{message_id}",
                "object": "event",
                "created_at": int(time.time()),
                "type": "batch.completed",
                "data": {"id": batch},
            }
        ).encode()
        return httpx.post(url, content=body, headers=sign(HOOK_SECRET, message_id, int(time.time()), body), timeout=10)

    replicas = Replicas(tmp_path, env, shape)
    try:
        leader = replicas.start("r1")
        leader.wait_for("replica r1 leads")
        standby = replicas.start("r2")
        standby.wait_for("teckochecker started")
        hooks = {
            name: d.http_url(listener="webhook receiver") + "/webhooks/openai" for name, d in replicas.running.items()
        }
        metrics = {name: d.http_url() + "/metrics" for name, d in replicas.running.items()}
        replicas.wait("the leader's first poll", lambda: "GET /v1/batches" in sent_by(oai, "r1"))
        oai.set_status(batch, "completed", completed=10, failed=0)

        refused = deliver(hooks["r2"], "wh_to_standby")
        assert refused.status_code == 503 and "stands by" in refused.text
        assert 'teckochecker_webhook_deliveries_total{outcome="standby"} 1.0' in httpx.get(metrics["r2"]).text
        time.sleep(2.0)  # the 1 h poll is far off: only a hint could start the job now
        assert posts(keboola) == 0 and sent_by(oai, "r2") == []

        accepted = deliver(hooks["r1"], "wh_to_leader")
        assert accepted.status_code == 200 and accepted.json()["outcome"] == "accepted"
        replicas.wait("the job fired by the webhook", lambda: posts(keboola) >= 1, timeout=15)
        leader.wait_for("job hooked: completed", timeout=30)
        assert f"GET /v1/batches/{batch}" in sent_by(oai, "r1")
        time.sleep(2.0)
        assert posts(keboola) == 1 and len(keboola.jobs) == 1 and sent_by(oai, "r2") == []
    finally:
        replicas.stop_all()
    assert keboola.contract_violations == []
    assert "Traceback" not in replicas.logs() and HOOK_SECRET[6:] not in replicas.logs()
