"""Hot reload on the real daemon process: edits, renames, symlink swaps, drop-ins, bad YAML, SIGHUP."""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from daemon import DaemonProcess, read_ledger, run_cli


class Setup:
    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.status = tmp_path / "status.json"
        self.ledger = tmp_path / "ledger.jsonl"
        self.checks = tmp_path / "checks.jsonl"
        self.config = tmp_path / "teckochecker.yaml"
        self.status.write_text(json.dumps({"done1": "succeeded"}))

    def text(self, *, interval: str = "30s", extra_jobs: str = "", port: int = 0) -> str:
        return (
            textwrap.dedent(f"""\
            http: {{port: {port}}}
            defaults: {{startup_spread: 0s}}
            include: [jobs.d/*.yaml]
            templates:
              std:
                source: {{type: status_file, path: {self.status}, check_log: {self.checks}}}
                actions: [{{type: record, ledger: {self.ledger}, follow: false}}]
            jobs:
              - name: finished
                template: std
                source: {{targets: [done1]}}
              - name: steady
                template: std
                interval: 30s
                source: {{targets: [never1]}}
              - name: tuned
                template: std
                interval: {interval}
                source: {{targets: [never2]}}
            """)
            + extra_jobs
        )

    def checks_of(self, job_target: str) -> int:
        return sum(1 for e in read_ledger(self.checks) if job_target in e["targets"])


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    s = Setup(tmp_path)
    s.config.write_text(s.text())
    (tmp_path / "jobs.d").mkdir()
    return s


def reloads(daemon: DaemonProcess) -> int:
    return daemon.output.count("config reloaded:")


def wait_reloads(daemon: DaemonProcess, count: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while reloads(daemon) < count:
        assert time.monotonic() < deadline, f"expected {count} reloads:\n{daemon.output}"
        assert daemon.proc.poll() is None, daemon.output
        time.sleep(0.05)


def start(setup: Setup, env: dict[str, str]) -> DaemonProcess:
    daemon = DaemonProcess(setup.config, env, setup.dir)
    daemon.wait_for("job finished: completed", timeout=30)
    return daemon


def test_edit_in_place_reschedules_only_the_changed_job(setup: Setup, plugin_env: dict[str, str]) -> None:
    daemon = start(setup, plugin_env)
    steady_before = setup.checks_of("never1")
    setup.config.write_text(setup.text(interval="45s"))
    wait_reloads(daemon, 1)
    assert "1 changed ['tuned']" in daemon.output and "0 added" in daemon.output
    time.sleep(0.5)
    assert setup.checks_of("never1") == steady_before  # unchanged job: no extra poll
    daemon.stop()
    assert len(read_ledger(setup.ledger)) == 1  # the finished job never fires again


def test_save_by_rename_repeatedly_is_seen_every_time(setup: Setup, plugin_env: dict[str, str]) -> None:
    daemon = start(setup, plugin_env)
    for i, interval in enumerate(["40s", "41s", "42s", "43s", "44s"]):
        tmp = setup.dir / f".teckochecker.yaml.swp{i}"
        tmp.write_text(setup.text(interval=interval))
        os.replace(tmp, setup.config)
        time.sleep(0.2)
    wait_reloads(daemon, 1)
    time.sleep(2.5)
    first_burst = reloads(daemon)
    assert first_burst <= 2  # debounced
    tmp = setup.dir / ".teckochecker.yaml.swp9"
    tmp.write_text(setup.text(interval="50s"))
    os.replace(tmp, setup.config)  # a later save is still seen (the directory is watched, not the inode)
    wait_reloads(daemon, first_burst + 1)
    daemon.stop()


def test_kubernetes_style_symlink_swap(tmp_path: Path, plugin_env: dict[str, str]) -> None:
    setup = Setup(tmp_path)
    (tmp_path / "jobs.d").mkdir()
    for version, interval in (("..v1", "30s"), ("..v2", "55s")):
        (tmp_path / version).mkdir()
        (tmp_path / version / "teckochecker.yaml").write_text(setup.text(interval=interval))
    os.symlink("..v1", tmp_path / "..data")
    os.symlink("..data/teckochecker.yaml", setup.config)
    daemon = start(setup, plugin_env)
    os.symlink("..v2", tmp_path / "..data_tmp")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    wait_reloads(daemon, 1)
    assert "1 changed ['tuned']" in daemon.output
    daemon.stop()


def test_drop_ins_added_and_removed_with_the_cli(setup: Setup, plugin_env: dict[str, str]) -> None:
    daemon = start(setup, plugin_env)
    status = json.loads(setup.status.read_text())
    status["b-new"] = "succeeded"
    setup.status.write_text(json.dumps(status))
    out = run_cli(
        "--config",
        str(setup.config),
        "jobs",
        "add",
        "fresh",
        "--template",
        "std",
        "--batch",
        "b-new",
        env=plugin_env,
        cwd=setup.dir,
    )
    assert out.returncode == 0, out.stderr
    assert (setup.dir / "jobs.d" / "fresh.yaml").exists()
    daemon.wait_for("job fresh: completed", timeout=20)
    assert "1 added ['fresh']" in daemon.output
    dup = run_cli(
        "--config",
        str(setup.config),
        "jobs",
        "add",
        "fresh",
        "--template",
        "std",
        "--batch",
        "x",
        env=plugin_env,
        cwd=setup.dir,
    )
    assert dup.returncode == 2 and "already exists" in dup.stderr
    bad = run_cli(
        "--config",
        str(setup.config),
        "jobs",
        "add",
        "other",
        "--template",
        "nope",
        "--batch",
        "x",
        env=plugin_env,
        cwd=setup.dir,
    )
    assert bad.returncode == 1 and "unknown template 'nope'" in bad.stderr
    assert not (setup.dir / "jobs.d" / "other.yaml").exists()
    out = run_cli("--config", str(setup.config), "jobs", "remove", "fresh", env=plugin_env, cwd=setup.dir)
    assert out.returncode == 0 and not (setup.dir / "jobs.d" / "fresh.yaml").exists()
    wait_reloads(daemon, 2)
    assert "1 removed ['fresh']" in daemon.output
    daemon.stop()
    assert sorted(e["job"] for e in read_ledger(setup.ledger)) == ["finished", "fresh"]
    shown = run_cli("--config", str(setup.config), "show", "fresh", env=plugin_env, cwd=setup.dir)
    assert "completed" in shown.stdout and "removed" in shown.stdout  # history kept


def test_broken_yaml_keeps_the_old_config_then_a_fix_applies(setup: Setup, plugin_env: dict[str, str]) -> None:
    daemon = start(setup, plugin_env)
    setup.config.write_text(setup.text() + "  - name: broken\n    source: [\n")
    daemon.wait_for("config reload failed", timeout=15)
    assert f"config reload: {setup.config}:" in daemon.output and "YAML syntax error" in daemon.output
    assert daemon.proc.poll() is None
    time.sleep(0.3)  # the outcome is written to the state store right after the reload
    status = run_cli(
        "--config",
        str(setup.config),
        "status",
        "--state-url",
        f"sqlite:///{setup.dir / '.teckochecker' / 'state.db'}",
        env=plugin_env,
        cwd=setup.dir,
    )
    assert "config: last reload FAILED at" in status.stdout and "YAML syntax error" in status.stdout
    assert "finished  completed" in status.stdout  # the old config's jobs are all still there
    setup.config.write_text(setup.text(interval="35s"))
    wait_reloads(daemon, 1)
    daemon.stop()
    assert len(read_ledger(setup.ledger)) == 1
    status = run_cli("--config", str(setup.config), "status", env=plugin_env, cwd=setup.dir)
    assert "config: last (re)load OK at" in status.stdout


def test_sighup_reloads_and_restart_only_settings_are_reported(setup: Setup, plugin_env: dict[str, str]) -> None:
    daemon = start(setup, plugin_env)
    daemon.proc.send_signal(signal.SIGHUP)
    wait_reloads(daemon, 1)
    assert "reloading config (SIGHUP)" in daemon.output
    setup.config.write_text(setup.text(port=1))
    daemon.wait_for("http.port changed; it takes effect after a restart", timeout=15)
    daemon.stop()


def http_base(daemon: DaemonProcess) -> str:
    return daemon.http_url()


def test_an_unexpected_error_while_reloading_is_reported_and_the_daemon_keeps_serving(
    setup: Setup, plugin_env: dict[str, str]
) -> None:
    daemon = start(setup, plugin_env)
    base = http_base(daemon)
    # 100,000 nested lists: deeper than the parser's recursion limit (a RecursionError, not a ConfigError,
    # until the loader reports such nesting itself; either way the reload must fail visibly).
    (setup.dir / "jobs.d" / "deep.yaml").write_text("jobs: " + "[" * 100_000 + "]" * 100_000 + "\n")
    daemon.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while "config reload failed" not in daemon.output:
        assert time.monotonic() < deadline, daemon.output
        assert httpx.get(base + "/healthz", timeout=10).status_code == 200  # the loop is never blocked
    reload = httpx.get(base + "/api/v1/status", timeout=10).json()["reload"]
    assert reload["successful"] is False and reload["errors"], reload
    assert "teckochecker_config_last_reload_successful 0.0" in httpx.get(base + "/metrics", timeout=10).text
    assert "Traceback" not in daemon.output  # one line with the reason; the traceback is DEBUG only
    jobs = {j["name"] for j in httpx.get(base + "/api/v1/jobs", timeout=10).json()["jobs"]}
    assert {"finished", "steady", "tuned"} <= jobs  # the running config stays
    (setup.dir / "jobs.d" / "deep.yaml").unlink()
    setup.config.write_text(setup.text(interval="35s"))
    wait_reloads(daemon, 1)
    assert httpx.get(base + "/api/v1/status", timeout=10).json()["reload"]["successful"] is True
    code, _ = daemon.stop()
    assert code == 0


def test_a_fifo_drop_in_never_blocks_the_daemon(setup: Setup, plugin_env: dict[str, str]) -> None:
    daemon = start(setup, plugin_env)
    base = http_base(daemon)
    os.mkfifo(setup.dir / "jobs.d" / "pipe.yaml")  # reading it blocks until a writer comes, i.e. forever
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for("reloading config")
    for _ in range(5):
        assert httpx.get(base + "/healthz", timeout=5).status_code == 200
        time.sleep(0.2)
    code, took = daemon.stop()
    assert code == 0 and took < 5, (code, took, daemon.output)
