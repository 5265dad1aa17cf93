"""Benchmark: can slow clients starve the webhook receiver? Real signed deliveries during a slow-body attack.

    .venv/bin/python benchmarks/slow_clients.py                  # 200 slow connections, 40 deliveries

Starts the real daemon (`teckochecker run`, its own process) with the receiver on, one job watching
--deliveries batches in the fake OpenAI, and the receiver's default limits. Then opens --slow connections that
each send a delivery's headers and one byte of a 4 KiB body, one more byte a second, renewed every 8 s (the
attack: tests/support/slowclients.py; one that is cut is renewed on its schedule, or at once with --storm),
and, once they are all open, sends --deliveries real deliveries (one
per batch, signed like OpenAI's by simulators/openai_webhooks.py) from --workers threads, each on a fresh
connection with a 10 s timeout and no retry. Prints how many were accepted (2xx) and their latency, and how
the slow connections ended. Not a test: it prints figures. Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "support"))
from daemon import DaemonProcess  # noqa: E402
from fakes import FakeKeboola, FakeOpenAI  # noqa: E402
from slowclients import SlowClients  # noqa: E402

from teckochecker.simulators.openai_webhooks import batch_event, sign  # noqa: E402

OPENAI_KEY = "sk-bench-0123456789abcdefghij"
KEBOOLA_TOKEN = "kbc-bench-token-0123456789"
HOOK_SECRET = "whsec_" + "QmVuY2htYXJrV2ViaG9va1NpZ25pbmdLZXkwMDAwMDA="
COMPONENT = "kds-team.app-custom-python"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slow", type=int, default=200, help="slow connections held open")
    parser.add_argument("--deliveries", type=int, default=40, help="real signed deliveries sent")
    parser.add_argument("--workers", type=int, default=4, help="deliveries sent at once")
    parser.add_argument("--attack-first", type=float, default=10.0, help="seconds of attack before the deliveries")
    parser.add_argument("--storm", action="store_true", help="a slow connection that is cut reconnects at once")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TECKOCHECKER_")}
    env |= {"OPENAI_API_KEY": OPENAI_KEY, "KEBOOLA_STORAGE_TOKEN": KEBOOLA_TOKEN, "HOOK": HOOK_SECRET}
    with (
        tempfile.TemporaryDirectory(prefix="tc-bench-slow-") as tmp,
        FakeOpenAI(api_key=OPENAI_KEY, record_requests=False) as openai,
        FakeKeboola(token=KEBOOLA_TOKEN, search_lag=1.0) as keboola,
    ):
        workdir = Path(tmp)
        keboola.add_config(COMPONENT, "101")
        batches = [openai.add_batch(status="in_progress") for _ in range(args.deliveries)]
        daemon = DaemonProcess(_write_config(workdir, openai, keboola, batches), env, workdir)
        try:
            hook_url = daemon.http_url(listener="webhook receiver") + "/webhooks/openai"
            port = int(hook_url.split(":")[2].split("/")[0])
            storm = " (storm: a cut one reconnects at once)" if args.storm else ""
            print(f"nproc {os.cpu_count()}, {args.slow} slow connections{storm}, {args.deliveries} deliveries")
            with SlowClients("127.0.0.1", port, "/webhooks/openai", args.slow, storm=args.storm) as slow:
                time.sleep(args.attack_first)
                print(f"slow connections open before the deliveries: {slow.open}")
                for batch in batches:
                    openai.set_status(batch, "completed", completed=1, failed=0)
                results = _deliver(hook_url, batches, args.workers)
                print(f"slow connections open after: {slow.open}; ended so far: {dict(slow.outcomes)}")
            _report(results)
            if "Traceback" in daemon.output:
                print("the daemon logged a traceback:\n" + daemon.output)
                return 1
        finally:
            daemon.stop()
    return 0


def _write_config(workdir: Path, openai: FakeOpenAI, keboola: FakeKeboola, batches: list[str]) -> Path:
    path = workdir / "teckochecker.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        log_level: INFO
        http: {{port: 0}}
        webhooks: {{port: 0, secrets: [hook]}}
        secrets:
          openai: {{env: OPENAI_API_KEY}}
          keboola: {{env: KEBOOLA_STORAGE_TOKEN}}
          hook: {{env: HOOK}}
        defaults: {{interval: 15m, startup_spread: 0s}}
        jobs:
          - name: watched
            source: {{type: openai_batch, api_key: openai, base_url: "{openai.base_url}", targets: {batches}}}
            actions:
              - {{type: keboola_job, token: keboola, stack_url: "{keboola.stack_url}", component: {COMPONENT},
                  queue_url: "{keboola.queue_url}",
                  config: "101", search_lag: 1s, follow_interval: 1s}}
        """)
    )
    return path


def _deliver(url: str, batches: list[str], workers: int) -> list[tuple[int | None, float]]:
    def one(batch: str) -> tuple[int | None, float]:
        event = batch_event(batch, "completed", int(time.time()))
        headers = sign(HOOK_SECRET, event.message_id, int(time.time()), event.body)
        started = time.monotonic()
        try:
            status: int | None = httpx.post(url, content=event.body, headers=headers, timeout=10).status_code
        except httpx.HTTPError:
            status = None
        return status, time.monotonic() - started

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, batches))


def _report(results: list[tuple[int | None, float]]) -> None:
    accepted = sorted(latency for status, latency in results if status is not None and 200 <= status < 300)
    others = [status for status, _ in results if status is None or not 200 <= status < 300]
    print(f"accepted {len(accepted)}/{len(results)}" + (f"; the others: {others}" if others else ""))
    if accepted:
        p99 = accepted[min(len(accepted) - 1, int(len(accepted) * 0.99))]
        print(
            f"latency of the accepted: p50 {statistics.median(accepted) * 1000:.0f} ms, "
            f"p99 {p99 * 1000:.0f} ms, max {accepted[-1] * 1000:.0f} ms"
        )


if __name__ == "__main__":
    sys.exit(main())
