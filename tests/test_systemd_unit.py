"""The shipped systemd unit: systemd's own verifier accepts it, and the settings operations rely on
(notify, reload by SIGHUP, watchdog, credentials, sandbox) are there."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "config" / "teckochecker.service"
SHIPPED_EXEC = "/opt/teckochecker/venv/bin/teckochecker"
CREDENTIALS = ("openai_api_key", "keboola_token", "control_api_token", "teckochecker_master_key")


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Section → key → every value in order (systemd keys repeat, so configparser will not do)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if stripped.startswith("[") and stripped.endswith("]"):
            current = sections.setdefault(stripped[1:-1], {})
            continue
        assert current is not None, f"line {number} outside any section: {line!r}"
        assert "=" in stripped, f"line {number} is not KEY=VALUE: {line!r}"
        key, value = stripped.split("=", 1)
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing in CI; .ci/install-tools should have installed it")
        pytest.skip(f"{name} not installed")
    return path


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text())["Service"]


def _only(service: dict[str, list[str]], key: str) -> str:
    values = service.get(key, [])
    assert len(values) == 1, f"{key}= expected once, found {values}"
    return values[0]


def test_no_trailing_comments() -> None:
    # systemd would keep a trailing "# ..." as part of the value.
    for number, line in enumerate(UNIT.read_text().splitlines(), 1):
        if line.strip() and not line.lstrip().startswith(("#", ";")):
            assert "#" not in line, f"line {number}: comments go on their own line: {line!r}"
        # A trailing backslash joins the next line; after a comment it could swallow a setting.
        assert not line.rstrip().endswith("\\"), f"line {number} continues onto the next: {line!r}"


def test_install_steps_are_documented_at_the_top() -> None:
    head = UNIT.read_text().split("[Unit]")[0]
    for step in ("/opt/teckochecker/venv", "credentials", "daemon-reload", "systemctl reload", "journalctl"):
        assert step in head


def test_notify_reload_and_restart(service: dict[str, list[str]]) -> None:
    assert _only(service, "Type") == "notify"
    assert _only(service, "ExecStart") == f"{SHIPPED_EXEC} --config /etc/teckochecker/teckochecker.yaml run"
    assert _only(service, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert _only(service, "NotifyAccess") == "main"
    assert _only(service, "WatchdogSec") == "30s"
    assert _only(service, "Restart") == "on-failure"
    assert _only(service, "RestartSec") == "5s"
    assert _only(service, "TimeoutStopSec") == "30s"
    assert "PYTHONUNBUFFERED=1" in service["Environment"]


def test_identity_and_state(service: dict[str, list[str]]) -> None:
    assert _only(service, "DynamicUser") == "yes"
    assert _only(service, "StateDirectory") == "teckochecker"
    assert _only(service, "StateDirectoryMode") == "0700"
    assert _only(service, "ConfigurationDirectory") == "teckochecker"
    assert _only(service, "UMask") == "0077"


def test_credentials(service: dict[str, list[str]]) -> None:
    loaded = dict(value.split(":", 1) for value in service["LoadCredential"])
    assert loaded == {name: f"/etc/teckochecker/credentials/{name}" for name in CREDENTIALS}
    # Secrets never travel in the environment.
    assert not any(re.search(r"(?i)key|token|secret", value) for value in service.get("Environment", []))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("NoNewPrivileges", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ProtectClock", "yes"),
        ("ProtectHostname", "yes"),
        ("ProtectProc", "invisible"),
        ("ProcSubset", "pid"),
        ("RestrictNamespaces", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("LockPersonality", "yes"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("SystemCallArchitectures", "native"),
        ("SystemCallFilter", "@system-service"),
        ("SystemCallErrorNumber", "EPERM"),
        ("DevicePolicy", "closed"),
    ],
)
def test_hardening(service: dict[str, list[str]], key: str, value: str) -> None:
    assert _only(service, key) == value


def test_no_outbound_ip_filter(service: dict[str, list[str]]) -> None:
    # IPAddressDeny= filters egress too; the daemon must reach OpenAI, Keboola and the database.
    assert "IPAddressDeny" not in service


def _local_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this venv's script, which verify requires to exist."""
    script = Path(sys.executable).parent / "teckochecker"
    assert script.exists(), f"{script} missing: is the project installed in this venv?"
    text = UNIT.read_text()
    assert SHIPPED_EXEC in text
    copy = tmp_path / "teckochecker.service"
    copy.write_text(text.replace(SHIPPED_EXEC, str(script)))
    return copy


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = require_tool("systemd-analyze")
    copy = _local_copy(tmp_path)
    result = subprocess.run(
        [tool, "verify", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0"},
    )
    lines = (result.stdout + result.stderr).splitlines()
    # Only lines about our unit count: some hosts have broken units of their own that verify mentions.
    ours = [line for line in lines if "teckochecker" in line or str(tmp_path) in line]
    assert ours == [], "\n".join(lines)
    assert result.returncode == 0 or lines, f"verify exited {result.returncode} without saying why"


def test_systemd_analyze_security_exposure(tmp_path: Path) -> None:
    # docs/reliability.md (systemd hardening): exposure below 2.0 (verify prints 0-10; --threshold counts tenths).
    tool = require_tool("systemd-analyze")
    copy = _local_copy(tmp_path)
    result = subprocess.run(
        [tool, "security", "--offline=yes", "--threshold=20", "--no-pager", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0"},
    )
    summary = [line for line in result.stdout.splitlines() if "Overall exposure" in line]
    assert result.returncode == 0, "\n".join(summary) or result.stderr
