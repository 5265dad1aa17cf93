"""`teckochecker demo`: the real daemon against the simulators, run to its end as a user would."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from daemon import TECKOCHECKER


def demo_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TECKOCHECKER_")}
    env["TMPDIR"] = str(tmp_path)  # the scratch directory goes here, so the test can look at it
    return env


def scratch_dirs(tmp_path: Path) -> list[Path]:
    return sorted(tmp_path.glob("teckochecker-demo-*"))


def test_demo_plays_the_story_to_its_end_and_keeps_state(tmp_path: Path) -> None:
    done = subprocess.run(
        [TECKOCHECKER, "demo", "--speed", "5", "--exit-when-done", "--keep"],
        env=demo_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    port = re.search(r"status page\s+http://127\.0\.0\.1:(\d+)/", out)
    assert port, out
    assert re.search(r"reviews-classify\s+completed: batches 3 succeeded .*Keboola job \d+ success", out), out
    assert re.search(
        r"weekly-summaries\s+completed_with_failures: batches 1 expired, 1 failed, 1 succeeded "
        r".*Keboola job \d+ success",
        out,
    ), out
    # The bars moved: the same job was reported at more than one level of progress.
    levels = set(re.findall(r"reviews-classify\s+watching: .*\((\d+)% of requests done\)", out))
    assert len(levels) >= 2, out
    assert "Traceback" not in out + done.stderr

    (scratch,) = scratch_dirs(tmp_path)
    config = scratch / "teckochecker.yaml"
    assert f"kept {scratch}" in out
    status = subprocess.run(
        [TECKOCHECKER, "--config", str(config), "status"],
        env=demo_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stdout + status.stderr
    for name in ("reviews-classify", "weekly-summaries", "late-batch"):
        assert name in status.stdout
    shown = subprocess.run(
        [TECKOCHECKER, "--config", str(config), "show", "weekly-summaries"],
        env=demo_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0 and "expired" in shown.stdout and "failed" in shown.stdout, shown.stdout


def test_ctrl_c_stops_the_daemon_and_removes_the_scratch_directory(tmp_path: Path) -> None:
    log = (tmp_path / "demo.out").open("w+")
    demo = subprocess.Popen([TECKOCHECKER, "demo"], env=demo_env(tmp_path), cwd=tmp_path, stdout=log, text=True)
    deadline = time.monotonic() + 60
    while "watching" not in (tmp_path / "demo.out").read_text():
        assert demo.poll() is None and time.monotonic() < deadline, (tmp_path / "demo.out").read_text()
        time.sleep(0.1)
    (scratch,) = scratch_dirs(tmp_path)
    demo.send_signal(signal.SIGINT)
    assert demo.wait(timeout=30) == 0
    out = (tmp_path / "demo.out").read_text()
    assert f"removed {scratch}" in out and not scratch.exists()
    # No daemon of the demo is left behind.
    leftovers = [p for p in Path("/proc").glob("[0-9]*") if _cmdline(p).find(str(scratch)) >= 0]
    assert leftovers == []


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
