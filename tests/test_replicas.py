"""Three real `teckochecker run` replicas on a PostgreSQL server this test owns, against the fake OpenAI and
Keboola: 50 jobs fire over about a minute while the leader is SIGKILLed, the next leader is SIGSTOPped past
its lease and continued, and the PostgreSQL server is restarted. Every trigger must start exactly one
Keboola job, every job must end, and the surviving replicas must still run and stop cleanly.

Takes about two minutes (the shortest check interval is 30 s). Skipped when no PostgreSQL
server binaries are installed, unless TECKOCHECKER_REQUIRE_POSTGRES is set (CI): then it fails.
"""

from __future__ import annotations

import json
import os
import re
import signal
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from daemon import DaemonProcess, run_cli
from fakes import FakeKeboola, FakeOpenAI
from private_postgres import REQUIRE, PrivatePostgres, postgres_bin

pytestmark = pytest.mark.postgres

OPENAI_KEY = "sk-replicas-0123456789abcdef"
KEBOOLA_TOKEN = "kbc-replicas-token-0123456789"
COMPONENT = "kds-team.app-custom-python"
MARKER = "teckochecker_trigger_id"
JOBS = 50
WAVES = 5  # the batches complete in this many waves, WAVE_GAP apart
WAVE_GAP = 12.0
LEASE = 6.0
FINAL = ("completed", "completed_with_failures", "failed")


@pytest.fixture
def server() -> Iterator[PrivatePostgres]:
    bindir = postgres_bin()
    if bindir is None:
        reason = "no PostgreSQL server binaries (initdb, pg_ctl) in /usr/lib/postgresql/*/bin or on PATH"
        if os.environ.get(REQUIRE):
            pytest.fail(f"{REQUIRE} is set but {reason}")
        pytest.skip(reason)
    pg = PrivatePostgres(bindir)
    pg.start()
    try:
        yield pg
    finally:
        pg.destroy()


def write_config(
    path: Path,
    name: str,
    pg: PrivatePostgres | _SharedServer,
    openai: FakeOpenAI,
    keboola: FakeKeboola,
    batches: list[str],
) -> Path:
    lines = [
        textwrap.dedent(f"""\
            log_level: INFO
            http: {{port: 0}}
            state: {{url: "{pg.url}", lease: {LEASE:g}s, replica_name: {name}}}
            secrets:
              openai: {{env: OPENAI_API_KEY}}
              keboola: {{env: KEBOOLA_STORAGE_TOKEN}}
            defaults: {{interval: 30s, startup_spread: 0s}}
            templates:
              replicated:
                source: {{type: openai_batch, api_key: openai, base_url: "{openai.base_url}"}}
            jobs:
            """)
    ]
    for i, batch in enumerate(batches):
        lines.append(
            f"  - name: job-{i:02d}\n    template: replicated\n    source: {{targets: [{batch}]}}\n"
            f"    actions: [{{type: keboola_job, token: keboola, stack_url: '{keboola.stack_url}',"
            f" queue_url: '{keboola.queue_url}', "
            f"component: {COMPONENT}, config: cfg{i}, search_lag: 1s, timeout: 2s, follow_interval: 1s}}]\n"
        )
    path.write_text("".join(lines))
    return path


def daemon_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TECKOCHECKER_") and k != "STATE_DIRECTORY"}
    return {**env, "OPENAI_API_KEY": OPENAI_KEY, "KEBOOLA_STORAGE_TOKEN": KEBOOLA_TOKEN}


def query(pg: PrivatePostgres | _SharedServer, sql: str) -> list[tuple[Any, ...]]:
    """Read the replicas' store from outside; an empty answer while the server restarts."""
    try:
        with psycopg.connect(pg.url.replace("+psycopg", ""), connect_timeout=3) as conn:
            return list(conn.execute(sql).fetchall())
    except psycopg.OperationalError:
        return []


def leader(pg: PrivatePostgres) -> tuple[str, int] | None:
    rows = query(pg, "SELECT holder, epoch FROM tc_leader WHERE expires_at > clock_timestamp()")
    return (rows[0][0], int(rows[0][1])) if rows and rows[0][0] else None


def wait_until(what: str, predicate: Callable[[], bool], timeout: float, replicas: dict[str, DaemonProcess]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    logs = "\n".join(f"--- {name}\n{d.output[-3000:]}" for name, d in replicas.items())
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


def marker_of(job: dict[str, Any]) -> str | None:
    data = job.get("variableValuesData")
    for value in (data.get("values") if isinstance(data, dict) else None) or []:
        if isinstance(value, dict) and value.get("name") == MARKER:
            return str(value.get("value"))
    return None


def test_three_replicas_fire_each_trigger_once_through_kill_pause_and_database_restart(
    server: PrivatePostgres, tmp_path: Path
) -> None:
    env = daemon_env()
    with (
        FakeOpenAI(api_key=OPENAI_KEY, record_requests=False) as openai,
        FakeKeboola(token=KEBOOLA_TOKEN, search_lag=0.3) as keboola,
    ):
        batches = [openai.add_batch(status="in_progress") for _ in range(JOBS)]
        for i in range(JOBS):
            keboola.add_config(COMPONENT, f"cfg{i}")
        # Every create answers slowly, so creates are under way whenever a replica is killed or paused.
        keboola.post_fault("slow_create", times=10 * JOBS, delay=0.7)
        replicas: dict[str, DaemonProcess] = {}
        try:
            for name in ("r1", "r2", "r3"):
                config = write_config(tmp_path / f"{name}.yaml", name, server, openai, keboola, batches)
                replicas[name] = DaemonProcess(config, env, tmp_path)
            for d in replicas.values():
                d.wait_for("teckochecker started", timeout=60)
            wait_until("a leader", lambda: leader(server) is not None, 30, replicas)
            started = time.monotonic()

            def at(seconds: float) -> None:
                time.sleep(max(0.0, started + seconds - time.monotonic()))

            def complete_wave(wave: int) -> None:
                for batch in batches[wave::WAVES]:
                    openai.set_status(batch, "completed", completed=10, failed=0)

            complete_wave(0)
            at(WAVE_GAP)
            complete_wave(1)

            # SIGKILL the leader while creates are under way.
            at(WAVE_GAP + 16)
            first = leader(server)
            assert first is not None
            replicas[first[0]].kill()
            wait_until("a takeover after SIGKILL", lambda: _new_leader(server, first), 3 * LEASE, replicas)
            complete_wave(2)

            # SIGSTOP the next leader past its lease, then let it go on: it must write and start nothing.
            at(3 * WAVE_GAP + 8)
            second = leader(server)
            assert second is not None
            paused = replicas[second[0]]
            os.kill(paused.proc.pid, signal.SIGSTOP)
            try:
                wait_until("a takeover after SIGSTOP", lambda: _new_leader(server, second), 3 * LEASE, replicas)
                complete_wave(3)
                time.sleep(LEASE)
            finally:
                os.kill(paused.proc.pid, signal.SIGCONT)
            paused.wait_for("lost leadership", timeout=3 * LEASE)

            # Restart the PostgreSQL server under the two that are left.
            at(4 * WAVE_GAP + 10)
            complete_wave(4)
            server.stop()
            for name, d in replicas.items():
                if d.proc.poll() is None:  # while the store is unreachable: alive, but not ready
                    base = _base_url(d)
                    assert httpx.get(base + "/healthz", timeout=10).status_code == 200
                    ready = httpx.get(base + "/readyz", timeout=10)
                    assert ready.status_code == 503 and ready.json()["checks"]["state_store"] is False, name
            server.start()

            wait_until(
                f"all {JOBS} jobs final",
                lambda: len(query(server, f"SELECT 1 FROM tc_jobs WHERE state IN {FINAL}")) == JOBS,
                150,
                replicas,
            )
            time.sleep(2 * LEASE)  # a late start of the paused replica would show up now

            survivors = {n: d for n, d in replicas.items() if n != first[0]}
            for name, d in survivors.items():
                assert d.proc.poll() is None, f"replica {name} exited:\n{d.output[-3000:]}"
            triggers = [t for (t,) in query(server, "SELECT trigger_id FROM tc_action_runs")]
            per_trigger = Counter(marker_of(job) for job in keboola.jobs)
            assert len(triggers) == JOBS
            assert {t: per_trigger[t] for t in triggers} == dict.fromkeys(triggers, 1), per_trigger
            assert sum(per_trigger.values()) == JOBS  # and no Keboola job without a trigger of ours
            states = Counter(s for (s,) in query(server, "SELECT state FROM tc_jobs"))
            assert states == {"completed": JOBS}
            last = leader(server)
            assert last is not None and last[1] >= 3  # three leaders at least: first, after the kill, after the pause
            assert "Traceback" not in paused.output
            for name, d in survivors.items():
                code, _ = d.stop(signal.SIGTERM)
                assert code == 0, f"replica {name} exited {code}:\n{d.output[-3000:]}"
        finally:
            for d in replicas.values():
                if d.proc.poll() is None:
                    os.kill(d.proc.pid, signal.SIGCONT)
                    d.kill()


def _new_leader(pg: PrivatePostgres, old: tuple[str, int]) -> bool:
    now = leader(pg)
    return now is not None and now[0] != old[0] and now[1] > old[1]


def test_replicas_show_in_status_warn_when_their_jobs_differ_and_a_clean_stop_hands_over_at_once(
    postgres_url: str, tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    """Two replicas on the shared test server: one leads, one stands by (ready, but refusing control
    requests); they load different jobs, so both say so; SIGTERM to the leader hands the lease over."""
    status = tmp_path / "status.json"
    status.write_text(json.dumps({"a": "running"}))

    def config(name: str, jobs: list[str]) -> Path:
        body = "".join(
            f"  - name: {job}\n    source: {{type: status_file, path: {status}, targets: [a]}}\n"
            f"    actions: [{{type: record, ledger: {tmp_path / 'ledger.jsonl'}}}]\n"
            for job in jobs
        )
        path = tmp_path / f"{name}.yaml"
        path.write_text(
            f'state: {{url: "{postgres_url}", lease: 3s, replica_name: {name}}}\n'
            "http: {port: 0, api_token: control}\nsecrets: {control: {env: CONTROL_TOKEN}}\n"
            f"defaults: {{interval: 30s, startup_spread: 0s}}\njobs:\n{body}"
        )
        return path

    env = {**plugin_env, "CONTROL_TOKEN": "control-token-0123456789"}
    one = DaemonProcess(config("one", ["x", "y"]), env, tmp_path)
    try:
        one.wait_for("replica one leads")
        two = DaemonProcess(config("two", ["x"]), env, tmp_path)
        try:
            two.wait_for("teckochecker started")
            for d in (one, two):
                d.wait_for("replicas disagree on the configuration")
            assert "this replica two has jobs checksum" in two.output and "one (" in two.output
            urls = {name: _base_url(d) for name, d in (("one", one), ("two", two))}
            for name, base in urls.items():
                body = httpx.get(base + "/api/v1/status").json()["replication"]
                assert body["this"] == name and body["role"] == ("leader" if name == "one" else "standby")
                assert {r["name"]: r["role"] for r in body["replicas"] if r["alive"]} == {
                    "one": "leader",
                    "two": "standby",
                }
                ready = httpx.get(base + "/readyz")
                assert ready.status_code == 200 and ready.json()["role"] == body["role"]
                metrics = httpx.get(base + "/metrics").text
                assert "teckochecker_replica_config_mismatch 1.0" in metrics
            refused = httpx.post(
                urls["two"] + "/api/v1/jobs/x/pause", headers={"Authorization": "Bearer control-token-0123456789"}
            )
            assert refused.status_code == 503 and "replica one leads" in refused.text
            out = run_cli("status", "--state-url", postgres_url, env=env, cwd=tmp_path)
            assert out.returncode == 0, out.stderr
            lines = {
                line.split()[0]: line.split() for line in out.stdout.splitlines() if line.startswith(("one", "two"))
            }
            assert lines["one"][1] == "leader" and lines["two"][1] == "standby"
            assert "replicas disagree" in out.stdout
            through_api = run_cli("status", "--url", urls["two"], env=env, cwd=tmp_path)  # a standby answers too
            assert through_api.returncode == 0, through_api.stderr
            assert re.search(r"^one +leader ", through_api.stdout, re.M), through_api.stdout
            assert re.search(r"^two +standby ", through_api.stdout, re.M), through_api.stdout

            code, _ = one.stop(signal.SIGTERM)
            assert code == 0
            two.wait_for("replica two leads (epoch 2, took over from one)", timeout=10)
            assert "Traceback" not in one.output + two.output
        finally:
            two.stop()
    finally:
        one.stop()


def _base_url(daemon: DaemonProcess) -> str:
    return daemon.http_url()


def test_a_replica_started_while_the_leaders_creates_are_under_way_neither_reconciles_nor_restarts_them(
    postgres_url: str, tmp_path: Path
) -> None:
    """The issue's bug: a second daemon took the first one's slow creates for abandoned and started them
    again. Now it stands by; each trigger starts one Keboola job and the newcomer touches none."""
    jobs = 6
    with (
        FakeOpenAI(api_key=OPENAI_KEY, record_requests=False) as openai,
        FakeKeboola(token=KEBOOLA_TOKEN, search_lag=0.0) as keboola,
    ):
        batches = [openai.add_batch(status="completed") for _ in range(jobs)]
        for i in range(jobs):
            keboola.add_config(COMPONENT, f"cfg{i}")
        keboola.post_fault("slow_create", times=jobs, delay=1.5)  # under the action's 2 s timeout
        pg = _SharedServer(postgres_url)
        env = daemon_env()
        first = DaemonProcess(write_config(tmp_path / "a.yaml", "a", pg, openai, keboola, batches), env, tmp_path)
        second: DaemonProcess | None = None
        try:
            first.wait_for("replica a leads", timeout=30)
            deadline = time.monotonic() + 30
            while not any(r.method == "POST" and r.path.rstrip("/") == "/jobs" for r in keboola.requests):
                assert time.monotonic() < deadline, first.output
                time.sleep(0.02)
            second = DaemonProcess(write_config(tmp_path / "b.yaml", "b", pg, openai, keboola, batches), env, tmp_path)
            second.wait_for("teckochecker started", timeout=30)
            final = f"SELECT 1 FROM tc_jobs WHERE state IN {FINAL}"
            deadline = time.monotonic() + 60
            while len(query(pg, final)) < jobs:
                assert time.monotonic() < deadline, first.output + second.output
                time.sleep(0.2)
            triggers = [t for (t,) in query(pg, "SELECT trigger_id FROM tc_action_runs")]
            assert Counter(marker_of(job) for job in keboola.jobs) == dict.fromkeys(triggers, 1)
            assert "standby" in second.output and "in doubt" not in second.output
            assert "leads" not in second.output.replace("replica a leads", "")
        finally:
            if second is not None:
                second.stop()
            first.stop()


class _SharedServer:
    """The test PostgreSQL's database in the shape write_config and query expect."""

    def __init__(self, url: str) -> None:
        self.url = url
