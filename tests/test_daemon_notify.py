"""The daemon speaks sd_notify to systemd: this test plays systemd's side of $NOTIFY_SOCKET."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

from daemon import DaemonProcess
from test_daemon_process import job, write_config


def receive(sock: socket.socket, until: str, timeout: float = 20.0) -> list[str]:
    messages: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            messages.append(sock.recv(4096).decode())
        except TimeoutError:
            break
        if until in messages[-1]:
            return messages
    raise AssertionError(f"no {until!r} in {messages}")


def test_ready_reloading_watchdog_stopping(tmp_path: Path, plugin_env: dict[str, str]) -> None:
    status = tmp_path / "s.json"
    status.write_text(json.dumps({"a": "running"}))
    config = write_config(tmp_path, job("j", status, tmp_path / "l", "[a]"))
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        env = {**plugin_env, "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"}
        daemon = DaemonProcess(config, env, tmp_path)
        try:
            first = receive(sock, "READY=1")
            assert any(m.startswith("READY=1") for m in first)
            pings = receive(sock, "WATCHDOG=1") + receive(sock, "WATCHDOG=1")
            assert sum("WATCHDOG=1" in m for m in pings) >= 2  # every 0.2 s: half of WATCHDOG_USEC
            daemon.proc.send_signal(signal.SIGHUP)
            around = [m for m in receive(sock, "READY=1") if "WATCHDOG" not in m]
            assert around[0].startswith("RELOADING=1\nMONOTONIC_USEC=") and around[-1].startswith("READY=1")
            daemon.proc.send_signal(signal.SIGTERM)
            assert any(m.startswith("STOPPING=1") for m in receive(sock, "STOPPING=1"))
        finally:
            code, _ = daemon.stop()
        assert code == 0
