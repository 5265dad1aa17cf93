"""Benchmark: the real daemon watching N jobs × M batches against the fake OpenAI and Keboola servers.

    .venv/bin/python benchmarks/pipeline.py --jobs 1000 --batches 10
    .venv/bin/python benchmarks/pipeline.py --jobs 1000 --batches 10 --latency 300ms±200ms
    .venv/bin/python benchmarks/pipeline.py --jobs 1 --batches 1 --measure 60    # what an idle daemon costs
    .venv/bin/python benchmarks/pipeline.py --jobs 1000 --batches 10 \
        --state-url postgresql+psycopg://postgres@127.0.0.1:5432/test --replicas 2

It starts the fakes (in this process) and `teckochecker run` (its own process), lets the daemon poll
for a while, completes every batch at once, waits for every Keboola job, and prints:
CPU seconds of the daemon per 1000 batch checks, its CPU as a share of one core, peak RSS, requests per
batch per interval (list pages and single GETs, during the start and steady), scheduler lag (p50/p99),
completion-to-Keboola-POST delay (p50/p99) and Keboola jobs per fired trigger.
With a PostgreSQL ``--state-url`` the run uses a fresh database created beside the one named (dropped
afterwards), and ``--replicas N`` starts N daemons on it (one leads, the others stand by); CPU and RSS are
then given per replica, each replica's CPU divided by all the batch checks done.
Not a test: it prints figures. Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
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
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from fakes import FakeKeboola, FakeOpenAI, Latency  # noqa: E402

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
    parser.add_argument("--replicas", type=int, default=1, help="daemons sharing a PostgreSQL --state-url")
    parser.add_argument(
        "--latency",
        type=latency_arg,
        default=Latency(0.0),
        help="time the fake OpenAI takes per request, mean±jitter (uniform), e.g. 300ms±200ms (default 0)",
    )
    parser.add_argument(
        "--webhooks", action="store_true", help="completion → POST with webhooks vs polling (pipeline_webhooks.py)"
    )
    parser.add_argument("--spread", type=float, default=60.0, help="--webhooks: seconds over which batches complete")
    parser.add_argument("--concurrency", type=int, default=10, help="--webhooks: defaults.concurrency")
    parser.add_argument(
        "--hooked-only",
        action="store_true",
        help="--webhooks: complete only the hooked group's batches (the polled group still polls beside it)",
    )
    args = parser.parse_args()
    if args.webhooks:
        import pipeline_webhooks

        return pipeline_webhooks.main(args)
    postgres = bool(args.state_url and args.state_url.startswith("postgresql"))
    if args.replicas > 1 and not postgres:
        parser.error("--replicas above 1 needs a PostgreSQL --state-url (SQLite allows one daemon)")

    with (
        tempfile.TemporaryDirectory(prefix="tc-bench-") as tmp,
        FakeOpenAI(api_key=OPENAI_KEY, record_requests=RECORD, latency=args.latency) as openai,
        FakeKeboola(token=KEBOOLA_TOKEN, search_lag=1.0) as keboola,
        fresh_database(args.state_url if postgres else None) as state_url,
    ):
        workdir = Path(tmp)
        batches = setup_fakes(openai, keboola, args.jobs, args.batches)
        ports = [free_port() for _ in range(args.replicas)]
        print(
            f"{args.jobs} jobs × {args.batches} batches = {args.jobs * args.batches} batches, "
            f"interval {args.interval}s, OpenAI latency {args.latency}; "
            f"{args.replicas} daemon(s) on 127.0.0.1:{', '.join(map(str, ports))}",
            flush=True,
        )
        env = {**os.environ, "OPENAI_API_KEY": OPENAI_KEY, "KEBOOLA_STORAGE_TOKEN": KEBOOLA_TOKEN}
        started = time.monotonic()
        daemons: list[Daemon] = []
        try:
            for i, port in enumerate(ports, 1):
                name = f"r{i}" if args.replicas > 1 else None
                config = write_config(
                    workdir, openai, keboola, batches, args.interval, port, state_url or args.state_url, name
                )
                daemons.append(Daemon.start(config, env, workdir, port))
            return run(args, daemons, openai, keboola, batches, started)
        finally:
            for d in daemons:
                d.stop()


class Daemon:
    """One `teckochecker run` process of the benchmark, with its own port and log."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: BinaryIO) -> None:
        self.proc, self.port, self._log = proc, port, log
        self.metrics_url = f"http://127.0.0.1:{port}/metrics"

    @classmethod
    def start(cls, config: Path, env: dict[str, str], workdir: Path, port: int) -> Daemon:
        log = (workdir / f"daemon-{port}.log").open("wb")
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "teckochecker"), "--config", str(config), "run"],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return cls(proc, port, log)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
        self._log.close()


@contextlib.contextmanager
def fresh_database(url: str | None) -> Iterator[str | None]:
    """A new database on the server of a PostgreSQL ``url`` (dropped afterwards): runs never share state."""
    if url is None:
        yield None
        return
    import psycopg

    base, _, _ = url.rpartition("/")
    name = f"tc_bench_{os.getpid()}_{int(time.time())}"
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"{base}/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(
    args: argparse.Namespace,
    daemons: list[Daemon],
    openai: FakeOpenAI,
    keboola: FakeKeboola,
    batches: list[list[str]],
    started: float,
) -> int:
    daemon = daemons[0].proc  # exits of the others are caught by their scrapes
    for d in daemons:
        wait_for(lambda d=d: scrape(d.metrics_url) is not None, 120, "the daemons' HTTP listeners", d.proc)
    print(f"ready after {time.monotonic() - started:.1f}s; warming up for two intervals", flush=True)
    time.sleep(2 * args.interval + 10)
    warm_kinds = openai.request_kinds()

    before_cpus = [cpu_seconds(d.proc.pid) for d in daemons]
    before_metrics, before_requests = scrape_all(daemons), openai.request_count()
    t0 = time.monotonic()
    time.sleep(args.measure)
    window = time.monotonic() - t0
    after_cpus = [cpu_seconds(d.proc.pid) for d in daemons]
    after_metrics, after_requests = scrape_all(daemons), openai.request_count()
    assert before_metrics and after_metrics
    steady_kinds = {k: v - warm_kinds[k] for k, v in openai.request_kinds().items()}
    skipped_warm = counter(before_metrics, "teckochecker_scheduler_skipped_ticks_total")

    skipped_steady = counter(after_metrics, "teckochecker_scheduler_skipped_ticks_total") - counter(
        before_metrics, "teckochecker_scheduler_skipped_ticks_total"
    )
    job_checks = counter(after_metrics, "teckochecker_source_checks_total") - counter(
        before_metrics, "teckochecker_source_checks_total"
    )
    batch_checks = job_checks * args.batches
    requests = after_requests - before_requests
    total_batches = args.jobs * args.batches
    cpus = [a - b for a, b in zip(after_cpus, before_cpus, strict=True)]
    cpu = sum(cpus)
    print(
        f"measured {window:.0f}s: {job_checks:.0f} job checks = {batch_checks:.0f} batch checks, "
        f"{requests} OpenAI requests, daemon CPU {cpu:.2f}s",
        flush=True,
    )
    print(
        f"start and warm-up ({t0 - started:.0f}s): {warm_kinds['list']} list pages, "
        f"{warm_kinds['retrieve']} single GETs, {skipped_warm:.0f} skipped ticks; steady: "
        f"{steady_kinds['list']} list pages, {steady_kinds['retrieve']} single GETs",
        flush=True,
    )

    completed_at = time.monotonic()
    for group in batches:
        for batch in group:
            openai.set_status(batch, "completed", completed=10, failed=0)
    print("all batches completed; waiting for the Keboola jobs", flush=True)
    # A slow listing takes longer to pass every batch: allow two whole sweeps of it on top.
    sweep = total_batches / 100 * (args.latency.mean + 0.05)
    wait_for(lambda: len(keboola.jobs) >= args.jobs, args.interval * 3 + 120 + 2 * sweep, "every Keboola job", daemon)
    time.sleep(5)  # anything extra would show up now
    posts = sorted(r.at for r in keboola.requests if r.method == "POST" and r.path == "/jobs")
    delays = [p - completed_at for p in posts]
    final_metrics = scrape_all(daemons)
    lag_p50, lag_p99 = histogram_quantiles(final_metrics, "teckochecker_scheduler_lag_seconds", (0.5, 0.99))
    skipped = counter(final_metrics, "teckochecker_scheduler_skipped_ticks_total")

    print()
    print(
        f"CPU per 1000 batch checks:       {1000 * cpu / max(batch_checks, 1):.3f} s  "
        f"({1e6 * cpu / max(batch_checks, 1):.0f} µs per check)"
    )
    print(
        f"daemon CPU while polling:        {', '.join(f'{100 * c / window:.2f}' for c in cpus)} % of a core  "
        f"({cpu:.2f} s of CPU in {window:.0f} s, from /proc/PID/stat)"
    )
    print(f"peak RSS:                        {', '.join(f'{peak_rss_mb(d.proc.pid):.0f}' for d in daemons)} MB")
    if len(daemons) > 1:
        for d, used in zip(daemons, cpus, strict=True):
            role = (
                "leader"
                if re.search(r"^teckochecker_replica_leader 1", scrape(d.metrics_url) or "", re.M)
                else "standby"
            )
            print(
                f"  replica :{d.port} ({role}, at the end): CPU {used:.2f} s = "
                f"{1e6 * used / max(batch_checks, 1):.1f} µs per batch check"
            )
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
        f"p99 {quantile(delays, 0.99):.1f} s, max {max(delays, default=float('nan')):.1f} s  "
        f"(polling every {args.interval}s); {sum(d <= 150 for d in delays)} of {args.jobs} jobs within 150 s"
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


def latency_arg(text: str) -> Latency:
    try:
        return Latency.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (a latency is written like 300ms±200ms, 1s or 0)") from None


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
    replica: str | None = None,
) -> Path:
    name = f", replica_name: {replica}" if replica else ""
    state = f"state: {{url: '{state_url}'{name}}}\n" if state_url else ""
    # The state line goes in after dedent: inserted inside, its newline would leave the rest indented.
    head = state + textwrap.dedent(f"""\
        http: {{port: {port}}}
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
            f"    actions: [{{type: keboola_job, token: keboola, stack_url: '{keboola.stack_url}',"
            f" queue_url: '{keboola.queue_url}', "
            f"component: {COMPONENT}, config: cfg{j}, search_lag: 2s, follow_interval: 5s}}]\n"
        )
    path = workdir / f"teckochecker-{port}.yaml"
    path.write_text("".join(lines))
    return path


def scrape_all(daemons: list[Daemon]) -> str:
    """Every replica's metrics, one after the other: counters sum over replicas (only the leader counts checks)."""
    return "\n".join(scrape(d.metrics_url) or "" for d in daemons)


def scrape(url: str) -> str | None:
    try:
        return httpx.get(url, timeout=10).text
    except httpx.HTTPError:
        return None


def counter(text: str, name: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def histogram_quantiles(text: str, name: str, qs: tuple[float, ...]) -> tuple[float, ...]:
    summed: dict[float, float] = {}  # several replicas' histograms add up bucket by bucket
    for le, v in re.findall(rf'^{name}_bucket{{le="([^"]+)"}} (\S+)$', text, re.M):
        key = float("inf") if le == "+Inf" else float(le)
        summed[key] = summed.get(key, 0.0) + float(v)
    buckets = sorted(summed.items())
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
