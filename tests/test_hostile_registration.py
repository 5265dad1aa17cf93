"""A pipeline's `register` token registers jobs, nothing more: on the real daemon process, against the fake
OpenAI and Keboola servers and a listener of the caller's own.

- a body that sets where requests go or which secret a job uses is a 422 naming the field, and nothing is
  sent anywhere;
- a field the template declares overridable is set within its one_of, and refused outside it;
- a row stored before that rule is held: reported in the log, status, the API and a gauge, never run, until
  it is deleted or PUT again with an allowed body;
- a PUT that takes a target out of a watching job takes it out: only the new targets are waited for and
  passed downstream.
"""

from __future__ import annotations

import datetime as dt
import json
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from daemon import DaemonProcess, run_cli
from fakes import FakeKeboola, FakeOpenAI, FakeWebhookReceiver

from teckochecker.state.models import JobOrigin
from teckochecker.state.store import StateStore

OPENAI_KEY = "sk-CANARYopenaiKEY0123456789abcdef"
KEBOOLA_TOKEN = "kbc-CANARY-token-4242-zyxwvutsrq"
PIPELINE_TOKEN = "pipeline-token-0123456789abcdef"
OPERATOR_TOKEN = "operator-token-0123456789abcdef"
COMPONENT = "kds-team.app-custom-python"
PIPELINE = {"Authorization": f"Bearer {PIPELINE_TOKEN}"}
OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


@dataclass
class World:
    dir: Path
    openai: FakeOpenAI
    keboola: FakeKeboola
    # The caller's own server: where a hostile body would have the daemon send its requests.
    listener: FakeWebhookReceiver
    config: Path
    state_url: str
    env: dict[str, str]

    def start(self) -> tuple[DaemonProcess, httpx.Client]:
        daemon = DaemonProcess(self.config, self.env, self.dir)
        daemon.wait_for("teckochecker started")
        return daemon, httpx.Client(base_url=daemon.http_url(), timeout=10)

    def store_row(self, name: str, body: dict[str, object]) -> None:
        """As a daemon of an earlier version stored it, before the daemon starts."""
        store = StateStore.open(self.state_url)
        try:
            store.put_registered_job(name, JobOrigin.API, {"name": name, **body}, now=dt.datetime.now(dt.UTC))
        finally:
            store.close()


@pytest.fixture
def world(tmp_path: Path, plugin_env: dict[str, str]) -> Iterator[World]:
    with (
        FakeOpenAI(api_key=OPENAI_KEY) as openai,
        FakeKeboola(token=KEBOOLA_TOKEN, search_lag=0.5) as keboola,
        FakeWebhookReceiver(secret="whsec_" + "A" * 32) as listener,
    ):
        for config_id in ("101", "102"):
            keboola.add_config(COMPONENT, config_id)
            keboola.set_outcome(COMPONENT, config_id, "success")
        state = tmp_path / "state.db"
        config = tmp_path / "teckochecker.yaml"
        config.write_text(
            textwrap.dedent(f"""\
            http:
              port: 0
              api_token: operator
              tokens: [{{secret: pipeline, scopes: [register]}}]
            state: {{url: "sqlite:///{state}"}}
            secrets:
              openai: {{env: OPENAI_API_KEY}}
              keboola: {{env: KEBOOLA_STORAGE_TOKEN}}
              pipeline: {{env: PIPELINE_TOKEN}}
              operator: {{env: OPERATOR_TOKEN}}
            defaults: {{interval: 30s, startup_spread: 0s}}
            templates:
              classify:
                source: {{type: openai_batch, api_key: openai, base_url: "{openai.base_url}", list_max_age: 1s}}
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
                overridable:
                  - {{path: "actions[0].config", one_of: ["101", "102"]}}
            """)
        )
        env = {
            **plugin_env,
            "OPENAI_API_KEY": OPENAI_KEY,
            "KEBOOLA_STORAGE_TOKEN": KEBOOLA_TOKEN,
            "PIPELINE_TOKEN": PIPELINE_TOKEN,
            "OPERATOR_TOKEN": OPERATOR_TOKEN,
        }
        yield World(tmp_path, openai, keboola, listener, config, f"sqlite:///{state}", env)


@pytest.fixture
def running(world: World) -> Iterator[tuple[DaemonProcess, httpx.Client]]:
    daemon, client = world.start()
    yield daemon, client
    client.close()
    code, _ = daemon.stop()
    assert code == 0, daemon.output
    assert OPENAI_KEY not in daemon.output and OPERATOR_TOKEN not in daemon.output


def wait_until(predicate: Callable[[], bool], what: str, daemon: DaemonProcess, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{daemon.output}"
        time.sleep(0.05)


def body(*targets: str, **more: object) -> dict[str, object]:
    return {"template": "classify", "source": {"targets": list(targets)}, **more}


def checked(client: httpx.Client, name: str) -> Callable[[], bool]:
    return lambda: client.get(f"/api/v1/jobs/{name}").json().get("last_checked_at") is not None


def fire(world: World, client: httpx.Client, name: str, daemon: DaemonProcess) -> None:
    """Ask for the job's next check now (the operator's token) until it completed: a check within the shared
    listing's max age (1s) of the last one still sees the batches as they were."""
    asked = 0.0

    def done() -> bool:
        nonlocal asked
        if client.get(f"/api/v1/jobs/{name}").json()["state"] == "completed":
            return True
        if time.monotonic() - asked > 1.5:  # a job that fired is no longer scheduled: 409, and it goes on
            client.post(f"/api/v1/jobs/{name}/check-now", headers=OPERATOR)
            asked = time.monotonic()
        return False

    wait_until(done, f"{name} completed", daemon)


def variables(job: dict[str, object]) -> dict[str, str]:
    values = job["variableValuesData"]["values"]  # type: ignore[index]
    return {v["name"]: v["value"] for v in values}


def test_a_body_that_sets_where_requests_go_or_which_secret_is_refused_and_nothing_is_sent(
    world: World, running: tuple[DaemonProcess, httpx.Client]
) -> None:
    daemon, client = running
    batch = world.openai.add_batch(status="in_progress")
    hostile = world.listener.url
    where, credentials = "the files say where requests go", "the files say which credentials a job uses"
    refused = {
        "source.base_url": (body(batch, source={"targets": [batch], "base_url": hostile}), where),
        "actions[0].stack_url": (body(batch, actions=[{"stack_url": hostile}]), where),
        # The operator token's secret as the job's OpenAI key: sent to wherever the source connects.
        "source.api_key": (body(batch, source={"targets": [batch], "api_key": "operator"}), credentials),
        "actions[0].token": (body(batch, actions=[{"token": "pipeline"}]), credentials),
    }
    for path, (hostile_body, why) in refused.items():
        answer = client.put("/api/v1/jobs/hostile", headers=PIPELINE, json=hostile_body)
        assert answer.status_code == 422, answer.text
        assert answer.json()["problems"] == [
            {
                "path": path,
                "message": f"a registered job may not set {path}: {why}. With this template it may set: "
                "name, template, source.targets, variables, actions[0].config",
            }
        ]
    # A job as the YAML would write it, all its own: no template, so no job.
    whole = {
        "source": {"type": "openai_batch", "api_key": "operator", "base_url": hostile, "targets": [batch]},
        "actions": [{"type": "webhook", "url": hostile, "secret": "operator"}],
    }
    answer = client.put("/api/v1/jobs/hostile", headers=PIPELINE, json=whole)
    assert answer.status_code == 422
    assert answer.json()["problems"] == [
        {
            "path": "template",
            "message": "a registered job names a template from the files (defined: classify) and sets its targets",
        }
    ]
    assert client.get("/api/v1/jobs/hostile").status_code == 404
    # An allowed job is checked: the daemon was working, and still nothing went to the listener.
    assert client.put("/api/v1/jobs/fine", headers=PIPELINE, json=body(batch)).status_code == 201
    wait_until(checked(client, "fine"), "a check of the allowed job", daemon)
    assert world.listener.requests == []
    assert all(r.headers.get("authorization") == f"Bearer {OPENAI_KEY}" for r in world.openai.requests)
    assert "audit: register job='hostile' from 127.0.0.1: refused (422)" in daemon.output


def test_an_overridable_field_is_set_within_its_one_of(
    world: World, running: tuple[DaemonProcess, httpx.Client]
) -> None:
    daemon, client = running
    batch = world.openai.add_batch(status="in_progress")
    assert client.put("/api/v1/jobs/other", headers=PIPELINE, json=body(batch)).status_code == 201
    wait_until(checked(client, "other"), "the first check", daemon)
    outside = client.put("/api/v1/jobs/other", headers=PIPELINE, json=body(batch, actions=[{"config": "999"}]))
    assert outside.status_code == 422
    assert outside.json()["problems"] == [
        {"path": "actions[0].config", "message": "the template allows only: '101', '102'"}
    ]
    # The watching job takes the new value: the answer says updated, and the action uses it when it fires.
    within = client.put("/api/v1/jobs/other", headers=PIPELINE, json=body(batch, actions=[{"config": "102"}]))
    assert within.status_code == 200 and within.json()["outcome"] == "updated", within.text
    world.openai.set_status(batch, "completed", completed=10, failed=0)
    fire(world, client, "other", daemon)
    assert len(world.keboola.jobs_for(COMPONENT, "102")) == 1
    assert world.keboola.jobs_for(COMPONENT, "101") == []


def test_a_stored_row_that_sets_more_is_held_until_deleted_or_put_again(world: World) -> None:
    batch = world.openai.add_batch(status="completed")
    # Stored by an earlier version, which let a body set anything: here, its own OpenAI endpoint.
    world.store_row("legacy", body(batch, source={"targets": [batch], "base_url": world.listener.url}))
    world.store_row("mended", body(batch, actions=[{"stack_url": world.listener.url}]))
    daemon, client = world.start()
    try:
        note = (
            "registered job 'legacy' is held and not run: source.base_url: a registered job may not set source.base_url"
        )
        notes = lambda: client.get("/api/v1/status").json()["registered"]  # noqa: E731
        wait_until(lambda: any(n.startswith(note) for n in notes()), "the held note", daemon)
        [shown] = [n for n in client.get("/api/v1/status").json()["registered"] if n.startswith(note)]
        assert shown.endswith(
            "PUT it again with a body its template allows (or declare the field under the "
            "template's overridable:); DELETE /api/v1/jobs/legacy removes it"
        )
        answer = client.get("/api/v1/jobs/legacy")
        assert answer.status_code == 404 and answer.json()["error"] == f"no job named 'legacy' runs: {shown}"
        assert "teckochecker_registered_jobs_held 2.0" in client.get("/metrics").text
        status = run_cli("--config", str(world.config), "status", env=world.env, cwd=world.dir)
        assert shown in status.stdout, status.stdout + status.stderr

        # PUT again with an allowed body: it runs (and fires at its first check: the batch is done).
        again = client.put("/api/v1/jobs/mended", headers=PIPELINE, json=body(batch))
        assert again.status_code == 200 and again.json()["outcome"] == "updated"
        wait_until(lambda: client.get("/api/v1/jobs/mended").json().get("state") == "completed", "mended", daemon)
        assert "held" not in client.get("/api/v1/jobs/mended").json()
        # DELETE removes the held one.
        assert client.delete("/api/v1/jobs/legacy", headers=PIPELINE).status_code == 200
        wait_until(lambda: client.get("/api/v1/status").json()["registered"] == [], "no notes", daemon)
        assert "teckochecker_registered_jobs_held 0.0" in client.get("/metrics").text
        assert world.listener.requests == []
        assert len(world.keboola.jobs_for(COMPONENT, "101")) == 1  # mended's, nothing of legacy's
        # One warning per row: not again at every re-read of the rows.
        warnings = [line for line in daemon.output.splitlines() if note in line]
        assert len(warnings) == 1 and " WARNING teckochecker: " in warnings[0], daemon.output
    finally:
        client.close()
        assert daemon.stop()[0] == 0, daemon.output


def test_a_target_taken_out_is_no_longer_waited_for_or_passed_downstream(
    world: World, running: tuple[DaemonProcess, httpx.Client]
) -> None:
    daemon, client = running
    p1 = world.openai.add_batch(status="in_progress")
    p2 = world.openai.add_batch(status="in_progress")
    assert client.put("/api/v1/jobs/moved", headers=PIPELINE, json=body(p1)).status_code == 201
    wait_until(checked(client, "moved"), "the first check", daemon)
    moved = client.put("/api/v1/jobs/moved", headers=PIPELINE, json=body(p2))
    assert moved.status_code == 200 and moved.json()["outcome"] == "updated"
    job = client.get("/api/v1/jobs/moved?events=100").json()
    assert [t["target"] for t in job["targets"]] == [p2] and job["targets_total"] == 1
    assert any(e["kind"] == "targets_removed" and e["data"] == {"targets": [p1]} for e in job["events"])
    # p1 failing would have made it to batch_ids_failed; only p2 is waited for and passed on.
    world.openai.set_status(p1, "failed")
    world.openai.set_status(p2, "completed", completed=10, failed=0)
    fire(world, client, "moved", daemon)
    [started] = world.keboola.jobs_for(COMPONENT, "101")
    sent = variables(started)
    assert (sent["batch_ids_completed"], sent["batch_ids_failed"]) == (json.dumps([p2]).replace(" ", ""), "[]")
    assert (sent["batch_count_total"], sent["batch_count_failed"]) == ("1", "0")


def test_text_no_encoding_can_hold_and_a_template_no_key_can_be_are_422s(
    running: tuple[DaemonProcess, httpx.Client],
) -> None:
    """JSON's "\\ud800" (half of a UTF-16 pair) in a variable's key or value, or a template that is a list,
    was a 500 and a traceback: the body reached the store's fingerprint, or a dict lookup, unchecked."""
    daemon, client = running
    sent = {
        "variables.'\\ud800'": '{"template": "classify", "source": {"targets": ["b1"]}, "variables": {"\\ud800": "x"}}',
        "variables.run": '{"template": "classify", "source": {"targets": ["b1"]}, "variables": {"run": "\\ud800"}}',
        "template": '{"template": ["classify"], "source": {"targets": ["b1"]}}',
    }
    for path, raw in sent.items():
        answer = client.put(
            "/api/v1/jobs/hostile", content=raw, headers={**PIPELINE, "content-type": "application/json"}
        )
        assert answer.status_code == 422, answer.text
        assert path in [problem["path"] for problem in answer.json()["problems"]], answer.text
    assert client.get("/api/v1/jobs/hostile").status_code == 404
    assert "Traceback" not in daemon.output


def test_a_key_given_twice_in_a_body_is_refused(running: tuple[DaemonProcess, httpx.Client]) -> None:
    """The last of two keys won, silently: a body whose meaning depends on which parser reads it."""
    daemon, client = running
    raw = b'{"template": "classify", "source": {"targets": ["b1"]}, "source": {"targets": ["b2"]}}'
    answer = client.put("/api/v1/jobs/twice", content=raw, headers={**PIPELINE, "content-type": "application/json"})
    assert answer.status_code == 400 and "'source' appears twice" in answer.json()["error"], answer.text
    assert client.get("/api/v1/jobs/twice").status_code == 404
    assert "Traceback" not in daemon.output


def test_jobs_export_writes_a_stored_body_whose_template_is_no_name_as_it_is(world: World) -> None:
    world.store_row("odd", {"template": {"name": "classify"}, "source": {"targets": ["b1"]}})
    exported = run_cli("--config", str(world.config), "jobs", "export", env=world.env, cwd=world.dir)
    assert exported.returncode == 0, exported.stderr
    assert "name: odd" in exported.stdout and "Traceback" not in exported.stderr
