"""Benchmark: discovery under a flood of signed webhooks for batches no job watches, on the real daemon.

    .venv/bin/python benchmarks/discovery_flood.py [--seconds 40] [--per-minute 9000] [--interval 5s]

The fake OpenAI answers every request after about 100 ms (a vendor across a WAN). The webhook receiver gets
signed ``batch.completed`` events for batches nobody created, evenly spaced at ``--per-minute`` for
``--seconds``: every one is verified, none watched, so each goes to discovery's notified path, far more than
it remembers (1,000). Half-way through, a pipeline creates a group (one finished batch of two, which sends no
webhook): only a sweep can find it. Prints the deliveries answered, how long the group took to become a job
(the figure: within one ``--interval``, plus the sweep's own work), the sweeps made, and the daemon's CPU.
Not a test: it prints figures. Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import httpx
import openai

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "support"))

from daemon import DaemonProcess  # noqa: E402
from fakes import FakeOpenAI, Latency  # noqa: E402

from teckochecker.config.durations import parse_duration  # noqa: E402
from teckochecker.discovery import NOTIFIED_MAX  # noqa: E402
from teckochecker.simulators.openai_webhooks import WebhookSender, flood_unknown_batches  # noqa: E402

OPENAI_KEY = "sk-benchmark-discovery-flood-0123456789"
HOOK_SECRET = "whsec_" + "QmVuY2htYXJrV2ViaG9va1NpZ25pbmdLZXkwMDAwMDA="


def write_config(workdir: Path, oai: FakeOpenAI, interval: str) -> Path:
    path = workdir / "teckochecker.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        http: {{port: 0}}
        webhooks: {{port: 0, secrets: [hook]}}
        secrets:
          openai: {{env: OPENAI_API_KEY}}
          hook: {{env: HOOK}}
        templates:
          classify:
            source: {{type: openai_batch, api_key: openai, base_url: "{oai.base_url}", list_max_age: 1s}}
            actions: [{{type: webhook, url: "http://127.0.0.1:9/never", secret: hook}}]
            discover:
              match: {{teckochecker_template: classify}}
              group_by: teckochecker_job
              count_key: teckochecker_batches
              deadline: 1h
              interval: {interval}
        """)
    )
    return path


def counter(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    match = re.search(rf"^{name}\{{{re.escape(wanted)}\}} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--per-minute", type=float, default=9_000.0)
    parser.add_argument("--interval", default="5s", help="discover.interval (at least 5s)")
    args = parser.parse_args()
    interval = parse_duration(args.interval)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TECKOCHECKER_")}
    env.update({"OPENAI_API_KEY": OPENAI_KEY, "HOOK": HOOK_SECRET})
    with (
        tempfile.TemporaryDirectory(prefix="tc-bench-flood-") as tmp,
        FakeOpenAI(api_key=OPENAI_KEY, latency=Latency(0.1, 0.02), record_requests=False) as oai,
    ):
        daemon = DaemonProcess(write_config(Path(tmp), oai, args.interval), env, Path(tmp))
        sender: WebhookSender | None = None
        try:
            base = daemon.http_url()
            url = daemon.http_url(listener="webhook receiver") + "/webhooks/openai"
            sender = WebhookSender(url, HOOK_SECRET, workers=16, max_attempts=1)
            cpu_before = cpu_seconds(daemon.proc.pid)
            sent: list[int] = []
            flooding = threading.Thread(
                target=lambda: sent.append(
                    flood_unknown_batches(sender, per_minute=args.per_minute, seconds=args.seconds)  # type: ignore[arg-type]
                ),
                daemon=True,
            )
            started = time.monotonic()
            flooding.start()
            time.sleep(args.seconds / 2)
            client = openai.OpenAI(api_key=OPENAI_KEY, base_url=oai.base_url, max_retries=0)
            batch = client.batches.create(
                input_file_id="file-flood",
                endpoint="/v1/chat/completions",
                completion_window="24h",
                metadata={
                    "teckochecker_template": "classify",
                    "teckochecker_job": "run-1",
                    "teckochecker_batches": "2",
                },
            ).id
            created = time.monotonic()
            oai.set_status(batch, "completed", completed=10, failed=0)
            while httpx.get(f"{base}/api/v1/jobs/run-1", timeout=10).status_code != 200:
                if time.monotonic() - created > 10 * interval:
                    raise SystemExit(f"the group was not found within {10 * interval:.0f} s:\n{daemon.output[-3000:]}")
                time.sleep(0.05)
            found = time.monotonic() - created
            during = flooding.is_alive()
            flooding.join()
            while not sender.idle():
                time.sleep(0.1)
            elapsed = time.monotonic() - started
            cpu = cpu_seconds(daemon.proc.pid) - cpu_before
            metrics = httpx.get(base + "/metrics", timeout=10).text
        finally:
            if sender is not None:
                sender.stop()
            daemon.stop()
        delivered = len(sender.delivered()) if sender is not None else 0
        unwatched = counter(metrics, "teckochecker_webhook_deliveries_total", outcome="unwatched")
        sweeps = counter(metrics, "teckochecker_discovery_sweeps_total", outcome="ok", template="classify")
        print(
            f"flood: {sent[0]} signed unknown-batch events queued over {args.seconds:.0f} s ({args.per_minute:.0f}/min)"
        )
        print(
            f"answered 2xx: {delivered} ({delivered / elapsed * 60:.0f}/min over {elapsed:.1f} s); "
            f"unwatched: {unwatched:.0f}"
        )
        print(f"notifications remembered at most: {NOTIFIED_MAX}; fake OpenAI latency 100±20 ms")
        print(
            f"group created at {created - started:.1f} s, during the flood: {during}; "
            f"found as a job after {found:.2f} s (discover.interval {interval:.0f} s)"
        )
        print(f"discovery sweeps ok: {sweeps:.0f}; daemon CPU {cpu:.1f} s ({cpu / elapsed * 100:.0f} % of one core)")
        tracebacks = daemon.output.count("Traceback")
        print(f"tracebacks in the daemon's log: {tracebacks}")
        return 0 if during and found <= interval + 1.0 and tracebacks == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
