"""Start the real `teckochecker run` as a subprocess and talk to it like an operator would."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
TECKOCHECKER = str(VENV_BIN / "teckochecker")


class DaemonProcess:
    def __init__(self, config: Path, env: dict[str, str], cwd: Path, *extra: str) -> None:
        self.log_path = cwd / f"daemon-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [TECKOCHECKER, "--config", str(config), "run", *extra],
            cwd=cwd,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output:
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited ({self.proc.returncode}) before {text!r}:\n{self.output}")
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {text!r}:\n{self.output}")

    def http_url(self, timeout: float = 20.0, listener: str = "HTTP") -> str:
        """A listener's base URL (the API's, or "webhook receiver"), once the daemon has logged it: jobs may
        fire before the listeners are up."""
        self.wait_for(f"{listener} listening on", timeout)
        match = re.search(rf"{listener} listening on (http://127\.0\.0\.1:\d+)", self.output)
        assert match is not None, self.output
        return match.group(1)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> tuple[int, float]:
        """Send ``sig``; return the exit code and how long the process took to exit."""
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._log.close()
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._log.close()


def run_cli(*args: str, env: dict[str, str], cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TECKOCHECKER, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60, input=stdin
    )


def read_ledger(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
