"""The webhook half of benchmarks/pipeline.py (`--webhooks`): batch completion → Keboola POST with OpenAI
webhooks versus polling, in one run of the real daemon.

Two groups of N jobs × M batches watch the same fake OpenAI through two secret names (so two accounts, two
listings): group `hooked` polls every 15 minutes and its batches are announced by signed webhooks from the
fake; group `polled` polls every 30 s and its batches send none. After a warm-up, the hooked group's jobs
finish at random moments spread over `--spread` seconds (each job's batches within 30 s before its last), then
the polled group's the same way. For each job
the delay is from its last batch's completion (in the fake) to its Keboola POST (received by the fake).
Not a test: it prints figures. Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from fakes import FakeKeboola, FakeOpenAI
from pipeline import (
    COMPONENT,
    KEBOOLA_TOKEN,
    OPENAI_KEY,
    counter,
    cpu_seconds,
    free_port,
    histogram_quantiles,
    peak_rss_mb,
    quantile,
    scrape,
    wait_for,
)

HOOK_SECRET = "whsec_" + "QmVuY2htYXJrV2ViaG9va1NpZ25pbmdLZXkwMDAwMDA="
# group → (interval, list_max_age): the hooked group follows the README's advice for webhook jobs.
GROUPS = {"hooked": ("15m", "5m"), "polled": ("30s", "10s")}


def main(args: argparse.Namespace) -> int:
    rng = random.Random(7)
    with (
        tempfile.TemporaryDirectory(prefix="tc-bench-hooks-") as tmp,
        FakeOpenAI(api_key=OPENAI_KEY, record_requests=False) as openai,
        FakeKeboola(token=KEBOOLA_TOKEN, search_lag=1.0) as keboola,
    ):
        workdir = Path(tmp)
        groups = {g: _setup(openai, keboola, g, args.jobs, args.batches) for g in GROUPS}
        port, hook_port = free_port(), free_port()
        config = _write_config(workdir, openai, keboola, groups, port, hook_port, args.state_url, args.concurrency)
        total = args.jobs * args.batches
        print(
            f"2 groups of {args.jobs} jobs × {args.batches} batches ({2 * total} batches): 'hooked' polls every 15m "
            f"with webhooks, 'polled' every 30s without; completions spread over {args.spread:.0f}s",
            flush=True,
        )
        env = {**os.environ, "OPENAI_API_KEY": OPENAI_KEY, "KEBOOLA_STORAGE_TOKEN": KEBOOLA_TOKEN, "HOOK": HOOK_SECRET}
        log = (workdir / "daemon.log").open("wb")
        daemon = subprocess.Popen(
            [str(Path(sys.executable).parent / "teckochecker"), "--config", str(config), "run"],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            metrics_url = f"http://127.0.0.1:{port}/metrics"
            wait_for(lambda: scrape(metrics_url) is not None, 180, "the daemon's HTTP listener", daemon)
            openai.send_webhooks(f"http://127.0.0.1:{hook_port}/webhooks/openai", HOOK_SECRET, workers=8)
            print("ready; warming up for 70 s (two 30 s intervals)", flush=True)
            time.sleep(70)
            results = {}
            for group in ["hooked"] if args.hooked_only else GROUPS:
                before = cpu_seconds(daemon.pid)
                delays = _complete_and_measure(openai, keboola, groups[group], group, args, rng, daemon)
                results[group] = (delays, cpu_seconds(daemon.pid) - before)
            _report(results, scrape(metrics_url) or "", daemon, openai, keboola, args)
            return 0
        except SystemExit:
            print((workdir / "daemon.log").read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
                daemon.wait(timeout=30)
            log.close()


def _setup(openai: FakeOpenAI, keboola: FakeKeboola, group: str, jobs: int, per_job: int) -> list[list[str]]:
    hooked = group == "hooked"
    out = []
    for j in range(jobs):
        keboola.add_config(COMPONENT, f"{group}{j}")
        out.append([openai.add_batch(status="in_progress", webhooks=hooked) for _ in range(per_job)])
    return out


def _write_config(
    workdir: Path,
    openai: FakeOpenAI,
    keboola: FakeKeboola,
    groups: dict[str, list[list[str]]],
    port: int,
    hook_port: int,
    state_url: str | None,
    concurrency: int,
) -> Path:
    """The main file with one template per group, and one drop-in file of jobs per group (each under 1 MiB)."""
    state = f"state: {{url: '{state_url}'}}\n" if state_url else ""
    templates = "".join(
        f"  {group}:\n    interval: {interval}\n"
        f"    source: {{type: openai_batch, api_key: openai_{group}, base_url: '{openai.base_url}', "
        f"list_max_age: {max_age}}}\n"
        for group, (interval, max_age) in GROUPS.items()
    )
    main = (
        textwrap.dedent(f"""\
        {state}http: {{port: {port}}}
        webhooks: {{port: {hook_port}, secrets: [hook]}}
        log_level: WARNING
        secrets:
          openai_hooked: {{env: OPENAI_API_KEY}}
          openai_polled: {{env: OPENAI_API_KEY}}
          keboola: {{env: KEBOOLA_STORAGE_TOKEN}}
          hook: {{env: HOOK}}
        defaults: {{startup_spread: 30s, concurrency: {concurrency}}}
        include: [jobs.d/*.yaml]
        templates:
        """)
        + templates
    )
    (workdir / "jobs.d").mkdir()
    for group, batches in groups.items():
        lines = ["jobs:\n"]
        for j, targets in enumerate(batches):
            lines.append(
                f"  - name: {group}{j}\n    template: {group}\n    source: {{targets: [{', '.join(targets)}]}}\n"
                f"    actions: [{{type: keboola_job, token: keboola, stack_url: '{keboola.stack_url}',"
                f" queue_url: '{keboola.queue_url}', "
                f"component: {COMPONENT}, config: {group}{j}, search_lag: 2s, follow_interval: 5s}}]\n"
            )
        (workdir / "jobs.d" / f"{group}.yaml").write_text("".join(lines))
    path = workdir / "teckochecker.yaml"
    path.write_text(main)
    return path


def _complete_and_measure(
    openai: FakeOpenAI,
    keboola: FakeKeboola,
    batches: list[list[str]],
    group: str,
    args: argparse.Namespace,
    rng: random.Random,
    daemon: subprocess.Popen[bytes],
) -> list[float]:
    """Complete every batch of the group; per job, last completion → POST. Jobs finish at moments spread
    evenly over ``--spread``; a job's other batches finish in the 30 s before its last (batches submitted
    together finish together), so webhooks arrive all along, not in one burst at the end."""
    plan = []
    for j, group_batches in enumerate(batches):
        last = rng.uniform(0, args.spread)
        plan.append((last, j, group_batches[-1]))
        plan += [(rng.uniform(max(0.0, last - 30), last), j, b) for b in group_batches[:-1]]
    plan.sort()
    done_at: dict[int, float] = {}
    start = time.monotonic()
    print(f"{group}: completing {len(plan)} batches over {args.spread:.0f}s", flush=True)
    for offset, job, batch in plan:
        pause = start + offset - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        openai.set_status(batch, "completed", completed=10, failed=0)
        done_at[job] = time.monotonic()
    names = {f"{group}{j}" for j in range(len(batches))}

    def posted() -> dict[str, float]:
        seen: dict[str, float] = {}
        for r in list(keboola.requests):
            if r.method == "POST" and r.path == "/jobs":
                config = str(r.json().get("config"))
                if config in names:
                    seen.setdefault(config, r.at)
        return seen

    wait_for(lambda: len(posted()) >= len(batches), 30 * 3 + 120, f"every {group} Keboola job", daemon)
    by_job = posted()
    return [by_job[f"{group}{j}"] - done_at[j] for j in range(len(batches))]


def _report(
    results: dict[str, tuple[list[float], float]],
    metrics: str,
    daemon: subprocess.Popen[bytes],
    openai: FakeOpenAI,
    keboola: FakeKeboola,
    args: argparse.Namespace,
) -> None:
    print()
    for group, (delays, cpu) in results.items():
        how = "webhooks, polling every 15 min" if group == "hooked" else "polling every 30 s, no webhooks"
        print(
            f"{group:7} completion → Keboola POST: p50 {statistics.median(delays):.2f} s, "
            f"p99 {quantile(delays, 0.99):.2f} s, max {max(delays):.2f} s  ({how}; daemon CPU {cpu:.1f} s)"
        )
    deliveries = {
        outcome: counter(metrics, f'teckochecker_webhook_deliveries_total{{outcome="{outcome}"}}')
        for outcome in ("accepted", "duplicate", "bad_signature", "stale", "malformed", "unwatched")
    }
    print(f"webhook deliveries by outcome: {deliveries}")
    sender = openai.webhooks
    if sender is not None:
        print(f"webhook attempts by the fake: {len(sender.attempts)}, delivered {len(sender.delivered())}")
    p50, p99 = histogram_quantiles(metrics, "teckochecker_webhook_to_action_seconds", (0.5, 0.99))
    print(f"daemon's own delivery → end of Keboola start p50 / p99: {p50:.3f} s / {p99:.3f} s  (histogram estimate)")
    for name in ("teckochecker_source_check_duration_seconds", "teckochecker_action_duration_seconds"):
        q50, q99 = _quantiles(metrics, name)
        print(f"{name} p50 / p99: {q50:.3f} s / {q99:.3f} s  (histogram estimate, whole run)")
    skipped = counter(metrics, "teckochecker_scheduler_skipped_ticks_total")
    print(f"skipped ticks: {skipped:.0f}; peak RSS {peak_rss_mb(daemon.pid):.0f} MB")
    expected = args.jobs * (1 if args.hooked_only else 2)
    print(f"Keboola jobs: {len(keboola.jobs)} for {expected} triggers")


def _quantiles(metrics: str, name: str) -> tuple[float, ...]:
    """Like pipeline.histogram_quantiles, summed over the histogram's labels."""
    buckets: dict[str, float] = {}
    for le, value in re.findall(rf'^{name}_bucket{{.*?le="([^"]+)".*?}} (\S+)$', metrics, re.M):
        buckets[le] = buckets.get(le, 0.0) + float(value)
    text = "".join(f'{name}_bucket{{le="{le}"}} {v}\n' for le, v in buckets.items())
    return histogram_quantiles(text, name, (0.5, 0.99))
