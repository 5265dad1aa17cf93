"""The product end to end, through the real daemon process against the fake OpenAI and Keboola servers:
batches finish → exactly one Keboola job with the right variables → followed to its end."""

from __future__ import annotations

import json
import signal
import sqlite3
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from daemon import DaemonProcess, run_cli
from fakes import FakeKeboola, FakeOpenAI

OPENAI_KEY = "sk-CANARYopenaiKEY0123456789abcdef"
KEBOOLA_TOKEN = "kbc-CANARY-token-4242-zyxwvutsrq"
COMPONENT = "kds-team.app-custom-python"


@pytest.fixture
def openai():
    with FakeOpenAI(api_key=OPENAI_KEY) as fake:
        yield fake


@pytest.fixture
def keboola():
    with FakeKeboola(token=KEBOOLA_TOKEN, search_lag=0.5) as fake:
        yield fake


@pytest.fixture
def env(plugin_env: dict[str, str]) -> dict[str, str]:
    return {**plugin_env, "OPENAI_API_KEY": OPENAI_KEY, "KEBOOLA_STORAGE_TOKEN": KEBOOLA_TOKEN}


def job_yaml(name: str, config: str, batches: list[str], search_lag: str = "1s", timeout: str = "15s") -> str:
    return textwrap.dedent(f"""\
          - name: {name}
            template: pipeline
            source: {{targets: {json.dumps(batches)}}}
            actions:
              - type: keboola_job
                token: keboola
                stack_url: {{stack}}
                queue_url: {{queue}}
                component: {COMPONENT}
                config: "{config}"
                search_lag: {search_lag}
                timeout: {timeout}
                duplicate_watch: 3s
                follow_interval: 1s
                variables: {{pipeline: {name}}}
        """)


def write_config(tmp_path: Path, openai: FakeOpenAI, keboola: FakeKeboola, jobs: str) -> Path:
    path = tmp_path / "teckochecker.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        log_level: DEBUG
        http: {{port: 0}}
        secrets:
          openai: {{env: OPENAI_API_KEY}}
          keboola: {{env: KEBOOLA_STORAGE_TOKEN}}
        defaults: {{interval: 30s, startup_spread: 0s}}
        templates:
          pipeline:
            source: {{type: openai_batch, api_key: openai, base_url: "{openai.base_url}"}}
        jobs:
        """)
        + jobs.replace("{stack}", keboola.stack_url).replace("{queue}", keboola.queue_url)
    )
    return path


def variables(job: dict[str, Any]) -> dict[str, str]:
    return {v["name"]: v["value"] for v in job["variableValuesData"]["values"]}


def wait_until(predicate, timeout: float, what: str, daemon: DaemonProcess | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if daemon is not None and daemon.proc.poll() is not None:
            raise AssertionError(f"daemon exited while waiting for {what}:\n{daemon.output}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}" + (f":\n{daemon.output}" if daemon else "")
        time.sleep(0.05)


def test_three_jobs_end_to_end(tmp_path: Path, openai: FakeOpenAI, keboola: FakeKeboola, env: dict[str, str]) -> None:
    ok = [openai.add_batch(status="in_progress"), openai.add_batch(status="in_progress")]
    mixed = [
        openai.add_batch(status="in_progress"),
        openai.add_batch(status="in_progress"),
        openai.add_batch(status="in_progress"),
    ]
    never = [openai.add_batch(status="validating")]
    keboola.add_config(COMPONENT, "101")
    keboola.add_config(COMPONENT, "202")
    keboola.add_config(COMPONENT, "303")
    keboola.set_outcome(COMPONENT, "101", "success")
    keboola.set_outcome(COMPONENT, "202", "error", message="Missing values for placeholders: x")
    config = write_config(
        tmp_path,
        openai,
        keboola,
        job_yaml("all-ok", "101", ok) + job_yaml("mixed", "202", mixed) + job_yaml("waits", "303", never),
    )
    # Batches finish before the daemon's first check: it sees them finished and fires at once.
    openai.set_status(ok[0], "completed", completed=10, failed=0)
    openai.set_status(ok[1], "completed", completed=8, failed=2)
    openai.set_status(mixed[0], "completed", completed=10, failed=0)
    openai.set_status(mixed[1], "failed")
    openai.set_status(mixed[2], "expired", completed=3, failed=0)

    daemon = DaemonProcess(config, env, tmp_path)
    daemon.wait_for("job all-ok: completed", timeout=60)
    daemon.wait_for("job mixed: failed", timeout=60)
    code, _ = daemon.stop()
    assert code == 0

    assert len(keboola.jobs) == 2 and keboola.jobs_for(COMPONENT, "303") == []
    assert keboola.contract_violations == []
    (ok_job,) = keboola.jobs_for(COMPONENT, "101")
    (mixed_job,) = keboola.jobs_for(COMPONENT, "202")
    assert ok_job["status"] == "success" and mixed_job["status"] == "error"
    v = variables(ok_job)
    assert json.loads(v["batch_ids_completed"]) == ok and json.loads(v["batch_ids_failed"]) == []
    assert (v["batch_count_total"], v["batch_count_completed"], v["batch_count_failed"]) == ("2", "2", "0")
    outputs = json.loads(v["batch_output_file_ids"])
    assert set(outputs) == set(ok) and all(fid.startswith("file-") for fid in outputs.values())
    assert set(json.loads(v["batch_error_file_ids"])) == {ok[1]}  # the batch with 2 failed requests
    assert v["pipeline"] == "all-ok" and v["teckochecker_trigger_id"]
    v = variables(mixed_job)
    assert json.loads(v["batch_ids_completed"]) == [mixed[0]]
    assert json.loads(v["batch_ids_failed"]) == [mixed[1], mixed[2]]
    assert (v["batch_count_total"], v["batch_count_completed"], v["batch_count_failed"]) == ("3", "1", "2")
    assert all(value != "" for value in v.values())

    status = run_cli("--config", str(config), "status", env=env, cwd=tmp_path).stdout
    assert "all-ok" in status and "completed" in status and ok_job["id"] in status
    assert "waits" in status and "watching" in status
    shown = run_cli("--config", str(config), "show", "mixed", env=env, cwd=tmp_path).stdout
    assert mixed_job["id"] in shown and mixed_job["url"] in shown and "Missing values for placeholders" in shown
    assert "failed" in shown and "expired" in shown


def test_batches_finishing_while_the_daemon_runs(
    tmp_path: Path, openai: FakeOpenAI, keboola: FakeKeboola, env: dict[str, str]
) -> None:
    batches = [openai.add_batch(status="in_progress"), openai.add_batch(status="validating")]
    keboola.add_config(COMPONENT, "101")
    config = write_config(tmp_path, openai, keboola, job_yaml("live", "101", batches))
    daemon = DaemonProcess(config, env, tmp_path)

    def first_check_recorded() -> bool:
        shown = run_cli("--config", str(config), "show", "live", env=env, cwd=tmp_path).stdout
        return "pending → in_progress" in shown  # batch 0 seen running: the daemon watched before completion

    wait_until(first_check_recorded, 20, "the first check to be recorded", daemon)
    assert keboola.jobs == []
    openai.set_status(batches[0], "completed", completed=10, failed=0)
    openai.set_status(batches[1], "cancelled", completed=0, failed=0)
    daemon.wait_for("job live: completed_with_failures", timeout=80)
    daemon.stop()
    (job,) = keboola.jobs
    assert json.loads(variables(job)["batch_ids_failed"]) == [batches[1]]


def start_fired(
    tmp_path: Path, openai: FakeOpenAI, keboola: FakeKeboola, **action: str
) -> tuple[Path, list[str], list[str]]:
    done = [openai.add_batch(status="in_progress"), openai.add_batch(status="in_progress")]
    pending = [openai.add_batch(status="in_progress")]
    for batch in done:
        openai.set_status(batch, "completed", completed=10, failed=0)
    keboola.add_config(COMPONENT, "101")
    keboola.add_config(COMPONENT, "999")
    config = write_config(
        tmp_path, openai, keboola, job_yaml("fire", "101", done, **action) + job_yaml("hold", "999", pending)
    )
    return config, done, pending


@pytest.mark.parametrize(
    "point", ["after_check_commit", "after_intent_commit", "after_start_response", "during_follow"]
)
def test_sigkill_at_each_trigger_step_gives_exactly_one_keboola_job(
    tmp_path: Path, openai: FakeOpenAI, keboola: FakeKeboola, env: dict[str, str], point: str
) -> None:
    config, _, _ = start_fired(tmp_path, openai, keboola)
    crashing = DaemonProcess(config, {**env, "TECKOCHECKER_CRASHPOINT": point}, tmp_path)
    assert crashing.proc.wait(timeout=40) == -signal.SIGKILL, crashing.output
    restarted = DaemonProcess(config, env, tmp_path)
    restarted.wait_for("job fire: completed", timeout=60)
    restarted.stop()
    assert len(keboola.jobs_for(COMPONENT, "101")) == 1, keboola.jobs
    assert keboola.jobs_for(COMPONENT, "999") == []
    assert keboola.contract_violations == []


@pytest.mark.parametrize("fault", ["slow_create", "create_then_hang"])
def test_sigkill_after_the_post_was_sent_adopts_the_job_it_created(
    tmp_path: Path, openai: FakeOpenAI, keboola: FakeKeboola, env: dict[str, str], fault: str
) -> None:
    config, _, _ = start_fired(tmp_path, openai, keboola)
    keboola.post_fault(fault, delay=2.0)
    daemon = DaemonProcess(config, env, tmp_path)
    wait_until(lambda: any(r.method == "POST" for r in keboola.requests), 30, "the create POST", daemon)
    daemon.kill()  # the request is out; its answer never arrives
    wait_until(lambda: len(keboola.jobs) == 1, 10, "the job to be created")
    restarted = DaemonProcess(config, env, tmp_path)
    restarted.wait_for("job fire: completed", timeout=60)
    restarted.stop()
    assert len(keboola.jobs_for(COMPONENT, "101")) == 1
    assert sum(1 for r in keboola.requests if r.method == "POST" and r.path == "/jobs") == 1
    assert "action_adopted" in run_cli("--config", str(config), "show", "fire", env=env, cwd=tmp_path).stdout


def test_sigkill_during_a_slow_create_never_gives_a_second_job(
    tmp_path: Path, openai: FakeOpenAI, keboola: FakeKeboola, env: dict[str, str]
) -> None:
    # The create takes 7 s; the daemon dies at once and restarts. The searches it makes before the create
    # could have taken effect (intent + create timeout + search_lag) find nothing, and must not count.
    config, _, _ = start_fired(tmp_path, openai, keboola, search_lag="2s", timeout="10s")
    keboola.search_lag = 2.0
    keboola.post_fault("slow_create", delay=7.0)
    daemon = DaemonProcess(config, env, tmp_path)
    wait_until(lambda: any(r.method == "POST" for r in keboola.requests), 30, "the create POST", daemon)
    daemon.kill()
    restarted = DaemonProcess(config, env, tmp_path)

    # A second job would wait forever behind the first (the config lock): stop waiting as soon as one exists.
    def done() -> bool:
        return "job fire: completed" in restarted.output or len(keboola.jobs_for(COMPONENT, "101")) > 1

    wait_until(done, 90, "the job to complete", restarted)
    restarted.stop()
    assert len(keboola.jobs_for(COMPONENT, "101")) == 1, keboola.jobs
    assert sum(1 for r in keboola.requests if r.method == "POST" and r.path == "/jobs") == 1
    assert "job fire: completed" in restarted.output
    shown = run_cli("--config", str(config), "show", "fire", env=env, cwd=tmp_path).stdout
    assert "does not count" in shown and "action_adopted" in shown


@pytest.mark.parametrize(
    ("fault", "creates"), [("create_then_503", True), ("create_then_reset", True), ("503_before_create", False)]
)
def test_in_doubt_outcomes_are_reconciled_never_reposted_blindly(
    tmp_path: Path, openai: FakeOpenAI, keboola: FakeKeboola, env: dict[str, str], fault: str, creates: bool
) -> None:
    config, _, _ = start_fired(tmp_path, openai, keboola, timeout="2s")
    keboola.post_fault(fault)
    daemon = DaemonProcess(config, env, tmp_path)
    daemon.wait_for("job fire: completed", timeout=60)
    daemon.stop()
    assert len(keboola.jobs_for(COMPONENT, "101")) == 1
    posts = sum(1 for r in keboola.requests if r.method == "POST" and r.path == "/jobs")
    assert posts == (1 if creates else 2)
    searches = [r for r in keboola.requests if r.path == "/search/jobs"]
    assert len(searches) >= (1 if creates else 2)


def test_rejected_create_ends_in_a_visible_error(
    tmp_path: Path, openai: FakeOpenAI, keboola: FakeKeboola, env: dict[str, str]
) -> None:
    config, _, _ = start_fired(tmp_path, openai, keboola)
    keboola.post_fault("reject_400")
    daemon = DaemonProcess(config, env, tmp_path)
    daemon.wait_for("job fire: failed", timeout=40)
    daemon.stop()
    assert keboola.jobs == []
    shown = run_cli("--config", str(config), "show", "fire", env=env, cwd=tmp_path).stdout
    assert "rejected" in shown and "HTTP 400" in shown


def test_unknown_batch_and_rejected_key(
    tmp_path: Path, openai: FakeOpenAI, keboola: FakeKeboola, env: dict[str, str]
) -> None:
    real = openai.add_batch(status="in_progress")
    openai.set_status(real, "completed", completed=1, failed=0)
    keboola.add_config(COMPONENT, "101")
    config = write_config(tmp_path, openai, keboola, job_yaml("lost", "101", [real, "batch_doesnotexist"]))
    daemon = DaemonProcess(config, env, tmp_path)
    daemon.wait_for("job lost: completed_with_failures", timeout=60)
    daemon.stop()
    (job,) = keboola.jobs
    assert json.loads(variables(job)["batch_ids_failed"]) == ["batch_doesnotexist"]
    shown = run_cli("--config", str(config), "show", "lost", env=env, cwd=tmp_path).stdout
    assert "No batch found" in shown

    bad_env = {**env, "OPENAI_API_KEY": "sk-wrong-key-000000000000000000"}
    config2 = tmp_path / "two"
    config2.mkdir()
    cfg = write_config(config2, openai, keboola, job_yaml("badkey", "101", [real]))
    daemon = DaemonProcess(cfg, bad_env, config2)
    daemon.wait_for("job badkey stopped", timeout=30)
    daemon.stop()
    assert "OpenAI rejected the API key (HTTP 401)" in daemon.output
    assert len(keboola.jobs) == 1


def test_secrets_never_leak(tmp_path: Path, openai: FakeOpenAI, keboola: FakeKeboola, env: dict[str, str]) -> None:
    config, _, _ = start_fired(tmp_path, openai, keboola)
    keboola.post_fault("create_then_503")  # exercise the error paths too
    openai.inject(429, times=2, headers={"retry-after": "1"})
    daemon = DaemonProcess(config, env, tmp_path, "--log-level", "DEBUG")
    daemon.wait_for("job fire: completed", timeout=60)
    daemon.stop()
    outputs = [daemon.output, daemon.output.replace("\n", "")]
    for args in (["status"], ["show", "fire"], ["show", "hold"], ["validate-config"], ["plugins"]):
        out = run_cli("--config", str(config), *args, env=env, cwd=tmp_path)
        outputs += [out.stdout, out.stderr]
    db = tmp_path / ".teckochecker" / "state.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(FULL)")
    raw_files = [p.read_bytes() for p in (tmp_path / ".teckochecker").iterdir()]
    assert "DEBUG" in daemon.output  # the run really logged at DEBUG
    for secret in (OPENAI_KEY, KEBOOLA_TOKEN):
        for text in outputs:
            assert secret not in text
        for blob in raw_files:
            assert secret.encode() not in blob
    # The fakes did receive them: the canaries were real credentials for this run.
    assert any(r.headers.get("x-storageapi-token") == KEBOOLA_TOKEN for r in keboola.requests)
    assert any(r.headers.get("authorization") == f"Bearer {OPENAI_KEY}" for r in openai.requests)
