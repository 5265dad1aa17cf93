"""Benchmark: the real daemon watching N jobs × M batches against the fake OpenAI and Keboola servers.

    .venv/bin/python benchmarks/pipeline.py --jobs 1000 --batches 10

It starts the fakes (in this process) and `teckochecker run` (its own process), lets the daemon poll
for a while, completes every batch at once, waits for every Keboola job, and prints:
CPU seconds of the daemon per 1000 batch checks, peak RSS, requests per batch per interval, scheduler
lag (p50/p99), completion-to-Keboola-POST delay (p50/p99) and Keboola jobs per fired trigger.
Not a test: it prints figures. Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from fakes import FakeKeboola, FakeOpenAI  # noqa: E402

OPENAI_KEY = "sk-bench-0123456789abcdefghij"
KEBOOLA_TOKEN = "kbc-bench-token-0123456789"
COMPONENT = "kds-team.app-custom-python"
RECORD = bool(os.environ.get("BENCH_RECORD"))
CLK_TCK = os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--interval", type=int, default=30, help="poll interval in seconds (30..3600)")
    parser.add_argument("--measure", type=float, default=90.0, help="seconds of steady polling to measure")
    parser.add_argument("--state-url", help="state store URL (default: SQLite in a temp dir)")
    parser.add_argument(
        "--webhooks", action="store_true", help="completion → POST with webhooks vs polling (pipeline_webhooks.py)"
    )
    parser.add_argument("--spread", type=float, default=60.0, help="--webhooks: seconds over which batches complete")
    parser.add_argument("--concurrency", type=int, default=10, help="--webhooks: defaults.concurrency")
    args = parser.parse_args()
    if args.webhooks:
        import pipeline_webhooks

        return pipeline_webhooks.main(args)

    with (
        tempfile.TemporaryDirectory(prefix="tc-bench-") as tmp,
        FakeOpenAI(api_key=OPENAI_KEY, record_requests=RECORD) as openai,
        FakeKeboola(token=KEBOOLA_TOKEN, search_lag=1.0) as keboola,
    ):
        workdir = Path(tmp)
        batches = setup_fakes(openai, keboola, args.jobs, args.batches)
        port = free_port()
        config = write_config(workdir, openai, keboola, batches, args.interval, port, args.state_url)
        print(
            f"{args.jobs} jobs × {args.batches} batches = {args.jobs * args.batches} batches, "
            f"interval {args.interval}s; daemon on 127.0.0.1:{port}",
            flush=True,
        )
        env = {**os.environ, "OPENAI_API_KEY": OPENAI_KEY, "KEBOOLA_STORAGE_TOKEN": KEBOOLA_TOKEN}
        log = (workdir / "daemon.log").open("wb")
        started = time.monotonic()
        daemon = subprocess.Popen(
            [str(Path(sys.executable).parent / "teckochecker"), "--config", str(config), "run"],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            return run(args, daemon, port, openai, keboola, batches, started, workdir)
        finally:
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
                daemon.wait(timeout=30)
            log.close()


def run(
    args: argparse.Namespace,
    daemon: subprocess.Popen[bytes],
    port: int,
    openai: FakeOpenAI,
    keboola: FakeKeboola,
    batches: list[list[str]],
    started: float,
    workdir: Path,
) -> int:
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    wait_for(lambda: scrape(metrics_url) is not None, 120, "the daemon's HTTP listener", daemon)
    print(f"ready after {time.monotonic() - started:.1f}s; warming up for two intervals", flush=True)
    time.sleep(2 * args.interval + 10)

    before_cpu, before_metrics, before_requests = cpu_seconds(daemon.pid), scrape(metrics_url), openai.request_count()
    t0 = time.monotonic()
    time.sleep(args.measure)
    window = time.monotonic() - t0
    after_cpu, after_metrics, after_requests = cpu_seconds(daemon.pid), scrape(metrics_url), openai.request_count()
    assert before_metrics and after_metrics

    skipped_steady = counter(after_metrics, "teckochecker_scheduler_skipped_ticks_total") - counter(
        before_metrics, "teckochecker_scheduler_skipped_ticks_total"
    )
    job_checks = counter(after_metrics, "teckochecker_source_checks_total") - counter(
        before_metrics, "teckochecker_source_checks_total"
    )
    batch_checks = job_checks * args.batches
    requests = after_requests - before_requests
    total_batches = args.jobs * args.batches
    cpu = after_cpu - before_cpu
    print(
        f"measured {window:.0f}s: {job_checks:.0f} job checks = {batch_checks:.0f} batch checks, "
        f"{requests} OpenAI requests, daemon CPU {cpu:.2f}s",
        flush=True,
    )

    completed_at = time.monotonic()
    for group in batches:
        for batch in group:
            openai.set_status(batch, "completed", completed=10, failed=0)
    print("all batches completed; waiting for the Keboola jobs", flush=True)
    wait_for(lambda: len(keboola.jobs) >= args.jobs, args.interval * 3 + 120, "every Keboola job", daemon)
    time.sleep(5)  # anything extra would show up now
    posts = sorted(r.at for r in keboola.requests if r.method == "POST" and r.path == "/jobs")
    delays = [p - completed_at for p in posts]
    final_metrics = scrape(metrics_url) or ""
    lag_p50, lag_p99 = histogram_quantiles(final_metrics, "teckochecker_scheduler_lag_seconds", (0.5, 0.99))
    skipped = counter(final_metrics, "teckochecker_scheduler_skipped_ticks_total")

    print()
    print(
        f"CPU per 1000 batch checks:       {1000 * cpu / max(batch_checks, 1):.3f} s  "
        f"({1e6 * cpu / max(batch_checks, 1):.0f} µs per check)"
    )
    print(f"peak RSS:                        {peak_rss_mb(daemon.pid):.0f} MB")
    print(f"requests per batch per interval: {requests / total_batches / (window / args.interval):.3f}")
    print(
        f"checks per batch per interval:   {batch_checks / total_batches / (window / args.interval):.3f}  "
        "(1.0 = never behind schedule)"
    )
    print(
        f"scheduler lag p50 / p99:         {lag_p50:.3f} s / {lag_p99:.3f} s  (histogram estimate); "
        f"skipped ticks {skipped_steady:.0f} while polling, {skipped:.0f} in all"
    )
    print(
        f"completion → Keboola POST:       p50 {statistics.median(delays):.1f} s, "
        f"p99 {quantile(delays, 0.99):.1f} s  (polling every {args.interval}s)"
    )
    if RECORD:
        lists = sum(1 for r in openai.requests if r.path == "/v1/batches")
        print(f"OpenAI requests overall:         {lists} list pages, {len(openai.requests) - lists} others")
    for line in final_metrics.splitlines():
        if line.startswith(("teckochecker_source_checks_total", "teckochecker_http_requests_total")):
            print("   ", line)
    print(
        f"Keboola jobs per fired trigger:  {len(keboola.jobs) / args.jobs:.3f}  ({len(keboola.jobs)} jobs, "
        f"{len(posts)} POSTs, {args.jobs} triggers)"
    )
    return 0


def setup_fakes(openai: FakeOpenAI, keboola: FakeKeboola, jobs: int, per_job: int) -> list[list[str]]:
    groups = []
    for j in range(jobs):
        keboola.add_config(COMPONENT, f"cfg{j}")
        groups.append([openai.add_batch(status="in_progress") for _ in range(per_job)])
    return groups


def write_config(
    workdir: Path,
    openai: FakeOpenAI,
    keboola: FakeKeboola,
    batches: list[list[str]],
    interval: int,
    port: int,
    state_url: str | None,
) -> Path:
    state = f"state: {{url: '{state_url}'}}\n" if state_url else ""
    head = textwrap.dedent(f"""\
        {state}http: {{port: {port}}}
        log_level: WARNING
        secrets:
          openai: {{env: OPENAI_API_KEY}}
          keboola: {{env: KEBOOLA_STORAGE_TOKEN}}
        defaults: {{interval: {interval}s, startup_spread: {interval}s}}
        templates:
          bench:
            source: {{type: openai_batch, api_key: openai, base_url: "{openai.base_url}"}}
        jobs:
        """)
    lines = [head]
    for j, group in enumerate(batches):
        lines.append(
            f"  - name: job{j}\n    template: bench\n    source: {{targets: [{', '.join(group)}]}}\n"
            f"    actions: [{{type: keboola_job, token: keboola, stack_url: '{keboola.stack_url}', "
            f"component: {COMPONENT}, config: cfg{j}, search_lag: 2s, follow_interval: 5s}}]\n"
        )
    path = workdir / "teckochecker.yaml"
    path.write_text("".join(lines))
    return path


def scrape(url: str) -> str | None:
    try:
        return httpx.get(url, timeout=10).text
    except httpx.HTTPError:
        return None


def counter(text: str, name: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def histogram_quantiles(text: str, name: str, qs: tuple[float, ...]) -> tuple[float, ...]:
    buckets = sorted(
        (float("inf") if le == "+Inf" else float(le), float(v))
        for le, v in re.findall(rf'^{name}_bucket{{le="([^"]+)"}} (\S+)$', text, re.M)
    )
    total = buckets[-1][1] if buckets else 0
    out = []
    for q in qs:
        rank, prev_le, prev_count = q * total, 0.0, 0.0
        value = 0.0
        for le, count in buckets:
            if count >= rank:
                # Linear within the bucket, as Prometheus's histogram_quantile does.
                value = (
                    prev_le
                    if le == float("inf")
                    else prev_le + (le - prev_le) * ((rank - prev_count) / max(count - prev_count, 1e-9))
                )
                break
            prev_le, prev_count = le, count
        out.append(value)
    return tuple(out)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def peak_rss_mb(pid: int) -> float:
    match = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) / 1024 if match else float("nan")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate, timeout: float, what: str, daemon: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if daemon.poll() is not None:
            raise SystemExit(f"the daemon exited ({daemon.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
