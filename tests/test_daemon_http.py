"""The HTTP listener of the real daemon process: status page in Chromium, API, control, port conflicts."""

from __future__ import annotations

import json
import os
import resource
import socket
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from daemon import DaemonProcess, run_cli
from test_status_page import parse, run_browser

TOKEN = "control-token-0123456789"


def write(tmp_path: Path, port: int = 0) -> Path:
    status = tmp_path / "status.json"
    status.write_text(
        json.dumps(
            {
                "d1": "succeeded",
                "w1": {
                    "state": "running",
                    "status": "in_progress",
                    "details": {"request_counts": {"total": 10, "completed": 7, "failed": 1}},
                },
                "w2": {"state": "pending", "status": "validating"},
                "r1": "succeeded",
            }
        )
    )
    config = tmp_path / "teckochecker.yaml"
    ledger = tmp_path / "ledger.jsonl"
    config.write_text(
        textwrap.dedent(f"""\
        http: {{port: {port}, api_token: control}}
        secrets: {{control: {{env: TC_CONTROL_TOKEN}}}}
        defaults: {{startup_spread: 0s}}
        templates:
          t:
            source: {{type: status_file, path: {status}}}
        jobs:
          - name: done
            template: t
            source: {{targets: [d1]}}
            actions: [{{type: record, ledger: {ledger}, follow: false}}]
          - {{name: waiting, template: t, source: {{targets: [w1, w2]}}, actions: [{{type: record, ledger: {ledger}}}]}}
          - name: refused
            template: t
            source: {{targets: [r1]}}
            actions: [{{type: record, ledger: {ledger}, fault: reject}}]
        """)
    )
    return config


@pytest.fixture
def running(tmp_path: Path, plugin_env: dict[str, str]):
    env = {**plugin_env, "TC_CONTROL_TOKEN": TOKEN}
    daemon = DaemonProcess(write(tmp_path), env, tmp_path)
    daemon.wait_for("job done: completed")
    daemon.wait_for("job refused: failed")
    yield daemon, daemon.http_url(), env
    code, _ = daemon.stop()
    assert code == 0


def test_status_page_of_a_running_daemon_in_chromium(running, tmp_path: Path) -> None:
    _, base, _ = running
    out = run_browser(tmp_path, "--dump-dom", base + "/")
    assert out.returncode == 0, out.stderr[-2000:]
    dom = parse(out.stdout)
    jobs = {s.attrs["data-job"]: s for s in dom.find_all("section", "job")}
    assert {n: s.attrs["data-state"] for n, s in jobs.items()} == {
        "done": "completed",
        "waiting": "watching",
        "refused": "failed",
    }
    targets = {r.attrs["data-target"]: r for r in jobs["waiting"].find_all("tr", "target")}
    assert targets["w1"].find("span", "progress-label").text() == "7/10 (1 failed)"
    assert targets["w2"].attrs["data-state"] == "pending"
    assert jobs["refused"].find("tr", "run").attrs["data-state"] == "rejected"
    assert any("trigger fired" in li.text() for li in jobs["done"].find_all("li", "event"))


def test_api_health_metrics_and_control(running) -> None:
    daemon, base, env = running
    assert httpx.get(base + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(base + "/readyz")
    assert ready.status_code == 200 and all(ready.json()["checks"].values())
    jobs = {j["name"]: j for j in httpx.get(base + "/api/v1/jobs").json()["jobs"]}
    assert jobs["waiting"]["next_check"] and jobs["done"]["state"] == "completed"
    metrics = httpx.get(base + "/metrics").text
    assert "teckochecker_build_info{" in metrics and "teckochecker_config_last_reload_successful 1.0" in metrics
    assert httpx.post(base + "/api/v1/jobs/waiting/pause").status_code == 401
    bad = httpx.post(base + "/api/v1/jobs/waiting/pause", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and TOKEN not in bad.text
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.post(base + "/api/v1/jobs/waiting/pause", headers=auth).json()["ok"] is True
    assert httpx.get(base + "/api/v1/jobs/waiting").json()["paused"] is True
    assert httpx.post(base + "/api/v1/jobs/waiting/resume", headers=auth).status_code == 200
    assert httpx.post(base + "/api/v1/jobs/waiting/check-now", headers=auth).status_code == 200
    assert httpx.post(base + "/api/v1/jobs/nope/check-now", headers=auth).status_code == 404
    assert httpx.get(base + "/api/v1/jobs/nope").status_code == 404
    assert httpx.get(base + "/api/v1/jobs/waiting?events=zero").status_code == 400
    out = run_cli("status", "--url", base, env=env, cwd=daemon.log_path.parent)
    assert out.returncode == 0 and "7/10 (1 failed)" in out.stdout
    assert TOKEN not in daemon.output
    assert "audit: pause job='waiting'" in daemon.output


def test_port_in_use_refuses_to_start(running, tmp_path: Path, plugin_env: dict[str, str]) -> None:
    _, base, env = running
    port = int(base.rsplit(":", 1)[1])
    other = tmp_path / "other"
    other.mkdir()
    out = run_cli("--config", str(write(other, port)), "run", env=env, cwd=other)
    assert out.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_state_store_outage_is_503_not_a_bug(tmp_path: Path, plugin_env: dict[str, str], postgres_url: str) -> None:
    import psycopg

    # Trust auth ignores the password, so this URL works and shows whether the password ever leaks.
    password = "pw-canary-31415926"
    url = postgres_url.replace("postgres@", f"postgres:{password}@")
    config = write(tmp_path)
    config.write_text(config.read_text() + f"state: {{url: '{url}'}}\n")
    env = {**plugin_env, "TC_CONTROL_TOKEN": TOKEN}
    daemon = DaemonProcess(config, env, tmp_path)
    daemon.wait_for("job done: completed")
    base = daemon.http_url()
    assert httpx.get(base + "/api/v1/jobs").status_code == 200
    admin_url = postgres_url.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE "{url.rsplit("/", 1)[1]}" WITH (FORCE)')  # the store goes away under it
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for answer in (
        httpx.get(base + "/api/v1/jobs"),
        httpx.get(base + "/api/v1/jobs/waiting"),
        httpx.post(base + "/api/v1/jobs/waiting/check-now", headers=auth),
    ):
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"].startswith("state store unavailable: "), answer.text
        assert password not in answer.text
    assert httpx.get(base + "/healthz").status_code == 200
    assert httpx.get(base + "/readyz").status_code == 503
    daemon.stop()
    assert password not in daemon.output and "(a bug)" not in daemon.output


def test_check_now_on_a_paused_job_is_409(running) -> None:
    _, base, _ = running
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.post(base + "/api/v1/jobs/waiting/pause", headers=auth).status_code == 200
    refused = httpx.post(base + "/api/v1/jobs/waiting/check-now", headers=auth)
    assert refused.status_code == 409 and refused.json()["error"] == "job 'waiting' is paused; resume it first"
    assert httpx.post(base + "/api/v1/jobs/waiting/resume", headers=auth).status_code == 200
    assert httpx.post(base + "/api/v1/jobs/waiting/check-now", headers=auth).status_code == 200


def test_a_flood_of_idle_connections_neither_exhausts_the_daemon_nor_its_log(running) -> None:
    daemon, base, _ = running
    # systemd's default soft limit for a service; the test process itself may have a higher one.
    resource.prlimit(daemon.proc.pid, resource.RLIMIT_NOFILE, (1024, 1024))
    port = int(base.rsplit(":", 1)[1])
    idle: list[socket.socket] = []
    try:
        for _ in range(2000):  # opened and never used: each would hold one of the daemon's descriptors
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        assert httpx.get(base + "/healthz", timeout=10).status_code == 200  # a fresh client is still served
        held = len(os.listdir(f"/proc/{daemon.proc.pid}/fd"))
        assert held < 400, held  # the connection cap, not the descriptor limit, bounds what clients hold
    finally:
        for sock in idle:
            sock.close()
    assert httpx.get(base + "/api/v1/jobs", timeout=10).status_code == 200
    assert "Traceback" not in daemon.output and "out of system resource" not in daemon.output


@pytest.mark.postgres
def test_a_table_locked_by_hand_is_a_quick_503_not_ready_while_it_lasts_and_nothing_is_lost(
    tmp_path: Path, plugin_env: dict[str, str], postgres_url: str
) -> None:
    """LOCK TABLE ... IN ACCESS EXCLUSIVE MODE held from another session: with state.lock_timeout 1 s, reads,
    PUTs and /readyz answer 503 within about 2 s (no answer in 30 s before), /readyz is ready again once the
    lock is released, and the PUT refused meanwhile succeeds when retried."""
    import psycopg

    status, ledger = tmp_path / "status.json", tmp_path / "ledger.jsonl"
    status.write_text(json.dumps({"w1": {"state": "running", "status": "in_progress"}}))
    config = tmp_path / "teckochecker.yaml"
    config.write_text(
        textwrap.dedent(f"""\
        http: {{port: 0, api_token: control}}
        secrets: {{control: {{env: TC_CONTROL_TOKEN}}}}
        state: {{url: '{postgres_url}', lock_timeout: 1s, statement_timeout: 1s}}
        defaults: {{startup_spread: 0s}}
        templates:
          t:
            source: {{type: status_file, path: {status}}}
            actions: [{{type: record, ledger: {ledger}}}]
        jobs:
          - {{name: waiting, template: t, source: {{targets: [w1]}}}}
        """)
    )
    daemon = DaemonProcess(config, {**plugin_env, "TC_CONTROL_TOKEN": TOKEN}, tmp_path)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    body = {"template": "t", "source": {"targets": ["w1"]}}
    try:
        daemon.wait_for("teckochecker started")
        client = httpx.Client(base_url=daemon.http_url(), timeout=30)
        assert client.get("/readyz").status_code == 200
        libpq_url = postgres_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(libpq_url) as locker:
            locker.execute("LOCK TABLE tc_jobs, tc_registered_jobs IN ACCESS EXCLUSIVE MODE")
            for method, path in (("GET", "/api/v1/jobs"), ("PUT", "/api/v1/jobs/late"), ("GET", "/readyz")):
                started = time.monotonic()
                answer = client.request(method, path, headers=auth, json=body if method == "PUT" else None)
                took = time.monotonic() - started
                assert answer.status_code == 503, (method, path, answer.text)
                assert took <= 2.0, f"{method} {path}: 503 after {took:.1f} s"
                if path != "/readyz":
                    assert answer.json()["error"].startswith("state store unavailable: "), answer.text
                else:
                    assert answer.json()["checks"]["state_store"] is False
            locker.rollback()  # the lock is released
        deadline = time.monotonic() + 10
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "not ready again after the lock was released"
            time.sleep(0.1)
        retried = client.put("/api/v1/jobs/late", headers=auth, json=body)
        assert retried.status_code == 201, retried.text
        assert "late" in {job["name"] for job in client.get("/api/v1/jobs").json()["jobs"]}
        client.close()
    finally:
        code, _ = daemon.stop()
    assert code == 0 and "Traceback" not in daemon.output, daemon.output
