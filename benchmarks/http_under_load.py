"""Benchmark: does the real daemon keep answering /healthz while it works hard, and stop in time?

    .venv/bin/python benchmarks/http_under_load.py reload --jobs 10000
    .venv/bin/python benchmarks/http_under_load.py targets --targets 10000

reload:  start with one job, then SIGHUP with a drop-in of N more jobs; print how long the reload took and
         the /healthz latency (p50/p99/max, and failures) from the SIGHUP until 10 s after the reload ended.
targets: start with one job of N targets (10,000 is the per-job limit); print /healthz latency over the
         first checks, the time /api/v1/jobs takes, the peak RSS, and how long SIGTERM takes to end it.
The jobs use the test plugin's status_file source (tests/support), so only the daemon itself is measured.
Not a test: it prints figures. Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PROBE_EVERY = 0.05


class HealthProbe:
    """Asks /healthz over and over on a thread, each on a fresh connection; keeps (start time, latency)."""

    def __init__(self, base: str) -> None:
        self._base = base
        self.samples: list[tuple[float, float | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                ok = httpx.get(self._base + "/healthz", timeout=60).status_code == 200
                self.samples.append((started, time.monotonic() - started if ok else None))
            except httpx.HTTPError:
                self.samples.append((started, None))
            time.sleep(PROBE_EVERY)

    def report(self, label: str, since: float, until: float) -> None:
        window = [lat for at, lat in self.samples if since <= at <= until]
        good = sorted(lat for lat in window if lat is not None)
        failed = len(window) - len(good)
        if not good:
            print(f"{label}: no /healthz answer at all ({failed} failed)")
            return
        p99 = good[min(len(good) - 1, int(len(good) * 0.99))]
        print(
            f"{label}: /healthz {len(good)} answers, p50 {statistics.median(good) * 1000:.0f} ms, "
            f"p99 {p99 * 1000:.0f} ms, max {good[-1] * 1000:.0f} ms, {failed} failed"
        )


class Daemon:
    def __init__(self, workdir: Path, config: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TECKOCHECKER_")}
        env["PYTHONPATH"] = str(ROOT / "tests" / "support")
        env["TECKOCHECKER_PLUGINS"] = "teckotest_plugin"
        self.log = workdir / "daemon.log"
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "teckochecker"), "--config", str(config), "run"],
            cwd=workdir,
            env=env,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"daemon did not log {text!r}:\n{self.output()[-3000:]}")
            time.sleep(0.05)
        return time.monotonic()

    def base(self) -> str:
        self.wait_for("HTTP listening on", 60)
        return re.search(r"HTTP listening on (http://\S+)", self.output()).group(1)  # type: ignore[union-attr]

    def peak_rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]

    def stop(self) -> float:
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return time.monotonic() - started


def job_yaml(name: str, status: Path, ledger: Path, targets: list[str], interval: str = "60s") -> str:
    source = {"type": "status_file", "path": str(status), "targets": targets}
    action = {"type": "record", "ledger": str(ledger)}
    return json.dumps({"name": name, "interval": interval, "source": source, "actions": [action]})


def write_main(workdir: Path, first_job: str) -> Path:
    config = workdir / "teckochecker.yaml"
    config.write_text(
        f"http: {{port: 0}}\ndefaults: {{startup_spread: 0s}}\ninclude: [jobs.d/*.yaml]\njobs:\n  - {first_job}\n"
    )
    (workdir / "jobs.d").mkdir()
    return config


def bench_reload(jobs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="tc-bench-") as tmp:
        workdir = Path(tmp)
        status, ledger = workdir / "status.json", workdir / "ledger.jsonl"
        status.write_text("{}")  # every target pending: the jobs poll and never fire
        daemon = Daemon(workdir, write_main(workdir, job_yaml("first", status, ledger, ["t0"])))
        base = daemon.base()
        daemon.wait_for("teckochecker started", 60)
        # Drop-ins of 1,000 jobs each (a config file may be at most 1 MiB), written hidden, then renamed.
        hidden = []
        for start in range(0, jobs, 1000):
            lines = "".join(
                f"  - {job_yaml(f'j{i}', status, ledger, [f'b{i}'])}\n" for i in range(start, min(jobs, start + 1000))
            )
            path = workdir / "jobs.d" / f".many-{start}.yaml"
            path.write_text("jobs:\n" + lines)
            hidden.append(path)
        with HealthProbe(base) as probe:
            time.sleep(2)
            before = time.monotonic()
            for path in hidden:
                path.rename(path.with_name(path.name[1:]))
            daemon.proc.send_signal(signal.SIGHUP)
            done = daemon.wait_for("config reloaded:", 600)
            time.sleep(10)
        print(f"reload of {jobs} added jobs: {done - before:.1f} s from SIGHUP to applied")
        probe.report("  before the reload", 0, before)
        probe.report("  during the reload", before, done)
        probe.report("  10 s after it (first checks)", done, done + 10)
        print(f"  peak RSS {daemon.peak_rss_mb():.0f} MB; SIGTERM to exit {daemon.stop():.2f} s")


def bench_targets(targets: int, measure: float) -> None:
    with tempfile.TemporaryDirectory(prefix="tc-bench-") as tmp:
        workdir = Path(tmp)
        status, ledger = workdir / "status.json", workdir / "ledger.jsonl"
        names = [f"batch_{i:06d}" for i in range(targets)]
        status.write_text(json.dumps({n: {"state": "running", "status": "in_progress"} for n in names}))
        started = time.monotonic()
        daemon = Daemon(workdir, write_main(workdir, job_yaml("big", status, ledger, names, "30s")))
        base = daemon.base()
        ready = daemon.wait_for("teckochecker started", 120)
        print(f"one job of {targets} targets: started in {ready - started:.1f} s")
        with HealthProbe(base) as probe:
            time.sleep(measure)
            t = time.monotonic()
            body = httpx.get(base + "/api/v1/jobs", timeout=120)
            api = time.monotonic() - t
        probe.report(f"  first {measure:.0f} s (checks every 30 s)", ready, ready + measure + api)
        print(f"  /api/v1/jobs: {api:.2f} s, {len(body.content) / 1e6:.1f} MB, status {body.status_code}")
        time.sleep(1)
        rss = daemon.peak_rss_mb()
        # Stop in the middle of a check: the worst case for SIGTERM.
        daemon.wait_for("", 1)
        print(f"  peak RSS {rss:.0f} MB; SIGTERM to exit {daemon.stop():.2f} s (README promises 5 s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=["reload", "targets"])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--targets", type=int, default=10_000)
    parser.add_argument("--measure", type=float, default=65.0, help="seconds to probe in the targets scenario")
    args = parser.parse_args()
    if args.scenario == "reload":
        bench_reload(args.jobs)
    else:
        bench_targets(args.targets, args.measure)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
