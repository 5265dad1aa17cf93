"""The real `teckochecker run` process: start, fire, SIGTERM, restart, crash."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from daemon import DaemonProcess, read_ledger, run_cli


def write_config(tmp_path: Path, jobs: str, extra: str = "") -> Path:
    path = tmp_path / "teckochecker.yaml"
    path.write_text(
        textwrap.dedent("""\
        http: {{port: 0}}
        defaults:
          interval: 30s
          startup_spread: 0s
        {extra}
        jobs:
        {jobs}
        """).format(jobs=textwrap.indent(textwrap.dedent(jobs), ""), extra=extra)
    )
    return path


def job(name: str, status: Path, ledger: Path, targets: str = "[a, b]", action: str = "") -> str:
    return (
        f"  - name: {name}\n"
        f"    source: {{type: status_file, path: {status}, targets: {targets}}}\n"
        f"    actions:\n      - {{type: record, ledger: {ledger}, duplicate_watch: 2s{action}}}\n"
    )


def test_fires_stops_on_sigterm_and_never_fires_twice_after_restart(tmp_path: Path, plugin_env: dict[str, str]) -> None:
    status, ledger = tmp_path / "status.json", tmp_path / "ledger.jsonl"
    status.write_text(json.dumps({"a": "succeeded", "b": "succeeded", "c": "running"}))
    config = write_config(tmp_path, job("done", status, ledger) + job("waiting", status, ledger, "[c]"))
    daemon = DaemonProcess(config, plugin_env, tmp_path)
    daemon.wait_for("job done: trigger fired")
    code, took = daemon.stop(signal.SIGTERM)
    assert code == 0 and took < 5.0, daemon.output
    assert "Traceback" not in daemon.output
    assert [e["job"] for e in read_ledger(ledger)] == ["done"]

    db = tmp_path / ".teckochecker" / "state.db"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        states = dict(conn.execute("select name, state from tc_jobs"))
    assert states["waiting"] == "watching"
    assert states["done"] in ("firing", "completed")

    # Restart: the fired job resumes (following) but never starts again; the other keeps waiting.
    again = DaemonProcess(config, plugin_env, tmp_path)
    again.wait_for("teckochecker started")
    again.wait_for("job done: completed", timeout=30)
    code, _ = again.stop(signal.SIGINT)
    assert code == 0
    assert [e["job"] for e in read_ledger(ledger)] == ["done"]

    third = DaemonProcess(config, plugin_env, tmp_path)
    third.wait_for("1 scheduled")  # only "waiting" is scheduled: "done" is finished
    third.stop()
    assert len(read_ledger(ledger)) == 1
    out = run_cli("--config", str(config), "status", env=plugin_env, cwd=tmp_path)
    assert out.returncode == 0
    assert "done     completed" in out.stdout and "waiting  watching   0/1" in out.stdout


@pytest.mark.parametrize("point", ["after_check_commit", "after_intent_commit", "after_start_response"])
def test_sigkill_at_each_step_of_the_trigger_still_fires_exactly_once(
    tmp_path: Path, plugin_env: dict[str, str], point: str
) -> None:
    status, ledger = tmp_path / "status.json", tmp_path / "ledger.jsonl"
    status.write_text(json.dumps({"a": "succeeded", "b": "failed"}))
    config = write_config(tmp_path, job("j", status, ledger))
    crashing = DaemonProcess(config, {**plugin_env, "TECKOCHECKER_CRASHPOINT": point}, tmp_path)
    assert crashing.proc.wait(timeout=20) == -signal.SIGKILL, crashing.output
    after_crash = len(read_ledger(ledger))
    assert after_crash == (1 if point == "after_start_response" else 0)

    restarted = DaemonProcess(config, plugin_env, tmp_path)
    restarted.wait_for("job j: completed_with_failures", timeout=40)
    restarted.stop()
    assert len(read_ledger(ledger)) == 1
    shown = run_cli("--config", str(config), "show", "j", env=plugin_env, cwd=tmp_path).stdout
    assert "trigger_fired" in shown and shown.count("action_intent") == (1 if point != "after_intent_commit" else 2)


def test_invalid_config_starts_nothing(tmp_path: Path, plugin_env: dict[str, str]) -> None:
    config = write_config(
        tmp_path, "  - name: x\n    source: {type: nope, targets: [a]}\n    actions: [{type: record, ledger: l}]\n"
    )
    out = run_cli("--config", str(config), "run", env=plugin_env, cwd=tmp_path)
    assert out.returncode == 1
    assert f"{config}:8:12: jobs[0].source.type: unknown source type 'nope'" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / ".teckochecker").exists()


def test_unreadable_secret_stops_the_start_with_its_name(tmp_path: Path, plugin_env: dict[str, str]) -> None:
    status = tmp_path / "s.json"
    config = write_config(tmp_path, job("j", status, tmp_path / "l"), extra="secrets:\n  tok: {env: TC_TEST_ABSENT}")
    out = run_cli("--config", str(config), "run", env=plugin_env, cwd=tmp_path)
    assert out.returncode == 2
    assert "secret 'tok': environment variable TC_TEST_ABSENT is not set" in out.stderr
    assert "Traceback" not in out.stderr


def test_second_daemon_on_the_same_sqlite_file_is_refused(tmp_path: Path, plugin_env: dict[str, str]) -> None:
    status = tmp_path / "s.json"
    config = write_config(tmp_path, job("j", status, tmp_path / "l"))
    first = DaemonProcess(config, plugin_env, tmp_path)
    first.wait_for("teckochecker started")
    second = run_cli("--config", str(config), "run", env=plugin_env, cwd=tmp_path)
    first.stop()
    assert second.returncode == 2
    assert "supports one daemon" in second.stderr


def test_a_second_daemon_on_the_same_file_through_a_symlink_is_refused(
    tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    real = tmp_path / "state" / "state.db"
    real.parent.mkdir()
    alias = tmp_path / "alias.db"
    alias.symlink_to(real)
    status = tmp_path / "s.json"
    first_dir, second_dir = tmp_path / "one", tmp_path / "two"
    first_dir.mkdir()
    second_dir.mkdir()
    first_config = write_config(
        first_dir, job("j", status, tmp_path / "l"), extra=f"state: {{url: 'sqlite:///{real}'}}"
    )
    second_config = write_config(
        second_dir, job("j", status, tmp_path / "l"), extra=f"state: {{url: 'sqlite:///{alias}'}}"
    )
    first = DaemonProcess(first_config, plugin_env, first_dir)
    first.wait_for("teckochecker started")
    second = run_cli("--config", str(second_config), "run", env=plugin_env, cwd=second_dir)
    first.stop()
    assert second.returncode == 2, second.stderr
    assert f"another teckochecker daemon already uses {real}" in second.stderr
    assert "supports one daemon" in second.stderr


def test_deleting_the_state_file_under_a_running_daemon_stops_it_acting(
    tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    status, ledger, checks = tmp_path / "status.json", tmp_path / "ledger.jsonl", tmp_path / "checks.jsonl"
    # A transient error with retry_after 1 s: the job is checked every second, so a tick follows the deletion soon.
    status.write_text(json.dumps({"__error__": "transient", "__retry_after__": 1}))
    config = write_config(
        tmp_path,
        job("j", status, ledger, targets=f"[a, b], check_log: {checks}"),  # the source logs each check
    )
    daemon = DaemonProcess(config, plugin_env, tmp_path)
    base = daemon.http_url()
    wait_for_lines(checks, 2)
    assert httpx.get(base + "/readyz").status_code == 200

    db = tmp_path / ".teckochecker" / "state.db"
    db.unlink()
    status.write_text(json.dumps({"a": "succeeded", "b": "succeeded"}))  # it would fire at its next check
    daemon.wait_for(
        f"ERROR teckochecker: the state store file {db} was deleted; stopped acting; "
        "restart the daemon after restoring it",
        timeout=20,
    )
    ready = httpx.get(base + "/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["state_store"] is False
    assert ready.json()["reason"] == f"the state store file {db} was deleted"
    checked = len(checks.read_text().splitlines())
    time.sleep(3)  # three of the job's 1 s retries: none may run, let alone fire
    code, _ = daemon.stop()
    assert code == 0
    assert read_ledger(ledger) == []
    assert len(checks.read_text().splitlines()) == checked
    assert daemon.output.count("was deleted; stopped acting") == 1
    assert not db.exists()  # and no new, empty store was made in its place


def wait_for_lines(path: Path, count: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() or len(path.read_text().splitlines()) < count:
        assert time.monotonic() < deadline, f"fewer than {count} lines in {path}"
        time.sleep(0.05)


def test_secret_files_others_can_read_are_warned_about_at_start_and_reload(
    tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    secret = tmp_path / "token"
    secret.write_text("CANARY-perm-0123456789\n")
    secret.chmod(0o644)
    status = tmp_path / "s.json"
    config = write_config(tmp_path, job("j", status, tmp_path / "l"), extra=f"secrets:\n  tok: {{file: {secret}}}")
    daemon = DaemonProcess(config, plugin_env, tmp_path)
    daemon.wait_for("teckochecker started")
    warning = (
        f"WARNING teckochecker: secret 'tok': file {secret} is readable or writable by group or others (mode 0644)"
    )
    assert daemon.output.count(warning) == 1
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for("config reloaded")
    daemon.stop()
    assert daemon.output.count(warning) == 2
    assert "CANARY-perm" not in daemon.output


def test_json_log_format_gives_one_object_per_line(tmp_path: Path, plugin_env: dict[str, str]) -> None:
    status, ledger = tmp_path / "status.json", tmp_path / "ledger.jsonl"
    status.write_text(json.dumps({"a": "succeeded", "b": "succeeded"}))
    config = write_config(tmp_path, job("j", status, ledger, action=", follow: false"))
    daemon = DaemonProcess(config, plugin_env, tmp_path, "--log-format", "json")
    daemon.wait_for('"job j: completed"')
    daemon.stop()
    records = [json.loads(line) for line in daemon.output.splitlines() if line.strip()]
    assert records and all({"ts", "level", "logger", "message"} <= r.keys() for r in records)
    assert any(r["message"] == "job j: trigger fired" and r["level"] == "info" for r in records)


def test_validate_config_touches_no_state_store(tmp_path: Path, plugin_env: dict[str, str]) -> None:
    config = write_config(tmp_path, job("j", tmp_path / "s.json", tmp_path / "l"))
    out = run_cli("validate-config", str(config), env=plugin_env, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip().endswith("OK: 1 job(s), 2 target(s), 0 secret(s)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teckochecker.yaml"]


def test_status_says_whether_the_daemon_runs(tmp_path: Path, plugin_env: dict[str, str]) -> None:
    status, ledger = tmp_path / "status.json", tmp_path / "ledger.jsonl"
    status.write_text(json.dumps({"a": "running"}))
    config = write_config(tmp_path, job("w", status, ledger, "[a]"))

    def cli(*args: str) -> str:
        out = run_cli("--config", str(config), *args, env=plugin_env, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        return out.stdout

    daemon = DaemonProcess(config, plugin_env, tmp_path)
    daemon.wait_for("teckochecker started")
    deadline = time.monotonic() + 20
    while not re.search(r"^w +watching +0/1 +in \d+s", running := cli("status"), re.M):
        assert time.monotonic() < deadline, running
        time.sleep(0.2)
    assert "daemon not running" not in running
    daemon.kill()  # no clean stop: the heartbeat stays, unmarked, and goes stale
    with sqlite3.connect(tmp_path / ".teckochecker" / "state.db") as conn:
        beat = json.loads(conn.execute("select value from tc_meta where key = 'heartbeat'").fetchone()[0])
    assert beat["pid"] == daemon.proc.pid and beat["stopped"] is False

    again = DaemonProcess(config, plugin_env, tmp_path)
    again.wait_for("teckochecker started")
    again.stop()
    stopped = cli("status")
    assert re.search(r"^w +watching +0/1 +no daemon", stopped, re.M), stopped
    assert re.search(r"^daemon not running \(last seen .*Z, \d+m?s ago; it stopped cleanly\)$", stopped, re.M), stopped
    assert "next check: daemon not running (last seen" in cli("show", "w")


def test_the_foreground_run_says_once_what_is_wrong_and_when_it_recovers(
    tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    status, ledger = tmp_path / "status.json", tmp_path / "ledger.jsonl"
    status.write_text(json.dumps({"__error__": "transient", "__message__": "could not reach https://vendor.test"}))
    checks = tmp_path / "checks.jsonl"
    config = write_config(
        tmp_path, job("j", status, ledger).replace("targets: [a, b]", f"check_log: {checks}, targets: [a, b]")
    )
    daemon = DaemonProcess(config, plugin_env, tmp_path)
    warning = "WARNING teckochecker: job j: could not check 2 of 2 target(s): could not reach https://vendor.test"
    daemon.wait_for(warning)
    deadline = time.monotonic() + 20
    while len(read_ledger(checks)) < 3:  # the first retries come within seconds (full-jitter back-off from 1 s)
        assert time.monotonic() < deadline, daemon.output
        time.sleep(0.1)
    status.write_text(json.dumps({"a": "running", "b": "running"}))
    daemon.wait_for("INFO teckochecker: job j: check recovered")
    daemon.stop()
    assert daemon.output.count("could not check") == 1, daemon.output
