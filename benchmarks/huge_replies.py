"""Benchmark: how much does one huge answer cost the real daemon, on every path that reads one?

    .venv/bin/python benchmarks/huge_replies.py [--size-mb 400] [--only NAME]

For each path (a listing page, a single batch, each Keboola call, a webhook receiver's 2xx and 4xx answer)
the real daemon runs as a subprocess against the simulators, first answered sanely. Once it has read the
path once, its VmRSS is taken and its peak (VmHWM) reset (/proc/PID/clear_refs); then the fake answers that
path with a body of --size-mb (streamed, never built in memory), the daemon is made to ask (check-now, or
the batch finishes), and once it has logged the cap error VmHWM and VmRSS are read again. One line per path:
the rise of the peak over the RSS before; the target is < 20 MB. Not a test: it prints figures. Everything
stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the fakes as the tests set them up (tests/fakes)

from fakes import FakeAnthropic, FakeAzureOpenAI, FakeKeboola, FakeOpenAI, FakeWebhookReceiver  # noqa: E402

OPENAI_KEY = "sk-bench-openai-0123456789abcdef"
AZURE_KEY = "azure-bench-key-0123456789"
ANTHROPIC_KEY = "sk-ant-bench-0123456789abcdef"
KEBOOLA_TOKEN = "kbc-bench-token-0123456789"
HOOK_SECRET = "whsec_RdvaYFYUXuIFuEbvZHwMfYFhUf7aMYjYcmM24+Aj40c="
CONTROL_TOKEN = "control-bench-token-0123456789"
COMPONENT = "kds-team.app-custom-python"
CAP_ERROR = "larger than the limit of"
MB = 1024 * 1024


class Fakes:
    def __init__(self) -> None:
        self.openai = FakeOpenAI(api_key=OPENAI_KEY)
        self.azure = FakeAzureOpenAI(api_key=AZURE_KEY)
        self.anthropic = FakeAnthropic(api_key=ANTHROPIC_KEY)
        self.keboola = FakeKeboola(token=KEBOOLA_TOKEN)
        self.receiver = FakeWebhookReceiver(secret=HOOK_SECRET)
        self.all = (self.openai, self.azure, self.anthropic, self.keboola, self.receiver)

    def __enter__(self) -> Fakes:
        for fake in self.all:
            fake.start()
        self.keboola.add_config(COMPONENT, "101")
        return self

    def __exit__(self, *exc: object) -> None:
        for fake in self.all:
            fake.stop()


class Daemon:
    def __init__(self, workdir: Path, config: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TECKOCHECKER_")}
        env.update(
            OPENAI_API_KEY=OPENAI_KEY,
            AZURE_KEY=AZURE_KEY,
            ANTHROPIC_KEY=ANTHROPIC_KEY,
            KEBOOLA_TOKEN=KEBOOLA_TOKEN,
            HOOK=HOOK_SECRET,
            CONTROL=CONTROL_TOKEN,
        )
        # Beside the config directory, not in it: the daemon watches that directory for changes.
        self.log = workdir.parent / f"{workdir.name}.log"
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "teckochecker"), "--config", str(config), "run"],
            cwd=workdir,
            env=env,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def base(self) -> str:
        wait(lambda: "HTTP listening on" in self.output(), 60, "the API", self)
        return re.search(r"HTTP listening on (http://\S+)", self.output()).group(1)  # type: ignore[union-attr]

    def check_now(self) -> None:
        httpx.post(
            f"{self.base()}/api/v1/jobs/bench/check-now", headers={"Authorization": f"Bearer {CONTROL_TOKEN}"}
        ).raise_for_status()

    def memory_mb(self, field: str) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(rf"{field}:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]

    def reset_peak(self) -> None:
        # "5" resets VmHWM to the current RSS (Linux, for a process of the same user).
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def wait(predicate: Callable[[], object], timeout: float, what: str, daemon: Daemon) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if daemon.proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"no {what}:\n{daemon.output()[-3000:]}")
        time.sleep(0.05)


def requests_to(fake: object, method: str, path: str) -> int:
    return sum(1 for r in list(fake.requests) if r.method == method and r.path == path)  # type: ignore[attr-defined]


@dataclass
class Path_:
    """One path: the job that reads it, when it has been read sanely, how to make it huge and asked again."""

    name: str
    job: Callable[[Fakes, str], tuple[str, str]]  # (source, action) YAML for the batch id
    batch: Callable[[Fakes], str]
    read_once: Callable[[Fakes, str], bool]
    arm: Callable[[Fakes, str, int], None]
    ask: Callable[[Fakes, str, Daemon], None]


def openai_source(f: Fakes, batch: str, listing: bool) -> str:
    return (
        f'{{type: openai_batch, api_key: openai, base_url: "{f.openai.base_url}", targets: [{batch}], '
        f"list_batches: {str(listing).lower()}, list_max_age: 1s}}"
    )


def webhook_action(f: Fakes) -> str:
    return f'{{type: webhook, url: "{f.receiver.url}", secret: hook}}'


def keboola_action(f: Fakes) -> str:
    return (
        f'{{type: keboola_job, token: keboola, stack_url: "{f.keboola.stack_url}", component: {COMPONENT}, '
        'config: "101", timeout: 2s, search_lag: 1s, follow_interval: 1s, duplicate_watch: 0s}'
    )


def check_again(f: Fakes, batch: str, daemon: Daemon) -> None:
    time.sleep(1.1)  # past list_max_age: the check reads the listing again
    daemon.check_now()


def finish(f: Fakes, batch: str, daemon: Daemon) -> None:
    f.openai.set_status(batch, "completed", completed=10, failed=0)
    daemon.check_now()


def nothing(f: Fakes, batch: str, daemon: Daemon) -> None:
    pass


def running(f: Fakes) -> str:
    return f.openai.add_batch(status="in_progress")


def keboola_running(f: Fakes) -> str:
    f.keboola.set_outcome(COMPONENT, "101", processing_after_gets=1, finish_after_gets=1_000_000)
    return f.openai.add_batch(status="completed")


def keboola_in_doubt(f: Fakes) -> str:
    f.keboola.post_fault("create_then_503")  # created, then a 503: the daemon searches for it
    return f.openai.add_batch(status="in_progress")


PATHS = [
    Path_(
        "openai listing",
        lambda f, b: (openai_source(f, b, True), webhook_action(f)),
        running,
        lambda f, b: requests_to(f.openai, "GET", "/v1/batches") > 0,
        lambda f, b, size: f.openai.answer_huge("/v1/batches", size),
        check_again,
    ),
    Path_(
        "openai single batch",
        lambda f, b: (openai_source(f, b, False), webhook_action(f)),
        running,
        lambda f, b: requests_to(f.openai, "GET", f"/v1/batches/{b}") > 0,
        lambda f, b, size: f.openai.answer_huge(f"/v1/batches/{b}", size),
        check_again,
    ),
    Path_(
        "azure single batch",
        lambda f, b: (
            f'{{type: azure_openai_batch, endpoint: "{f.azure.endpoint}", api_version: "2024-10-21", '
            f"api_key: azure, targets: [{b}], list_batches: false}}",
            webhook_action(f),
        ),
        lambda f: f.azure.add_batch(status="in_progress"),
        lambda f, b: requests_to(f.azure, "GET", f"/openai/batches/{b}") > 0,
        lambda f, b, size: f.azure.answer_huge(f"/openai/batches/{b}", size),
        check_again,
    ),
    Path_(
        "anthropic listing",
        lambda f, b: (
            f'{{type: anthropic_batch, api_key: anthropic, base_url: "{f.anthropic.base_url}", targets: [{b}], '
            "list_max_age: 1s}",
            webhook_action(f),
        ),
        lambda f: f.anthropic.add_batch(),
        lambda f, b: requests_to(f.anthropic, "GET", "/v1/messages/batches") > 0,
        lambda f, b, size: f.anthropic.answer_huge("/v1/messages/batches", size),
        check_again,
    ),
    Path_(
        "anthropic single batch",
        lambda f, b: (
            f'{{type: anthropic_batch, api_key: anthropic, base_url: "{f.anthropic.base_url}", targets: [{b}], '
            "list_batches: false}",
            webhook_action(f),
        ),
        lambda f: f.anthropic.add_batch(),
        lambda f, b: requests_to(f.anthropic, "GET", f"/v1/messages/batches/{b}") > 0,
        lambda f, b, size: f.anthropic.answer_huge(f"/v1/messages/batches/{b}", size),
        check_again,
    ),
    Path_(
        "webhook receiver 2xx",
        lambda f, b: (openai_source(f, b, False), webhook_action(f)),
        running,
        lambda f, b: requests_to(f.openai, "GET", f"/v1/batches/{b}") > 0,
        lambda f, b, size: f.receiver.answer_huge("/hooks/teckochecker", size, status=200),
        finish,
    ),
    Path_(
        "webhook receiver 4xx",
        lambda f, b: (openai_source(f, b, False), webhook_action(f)),
        running,
        lambda f, b: requests_to(f.openai, "GET", f"/v1/batches/{b}") > 0,
        lambda f, b, size: f.receiver.answer_huge("/hooks/teckochecker", size, status=403),
        finish,
    ),
    Path_(
        "keboola stack index",
        lambda f, b: (openai_source(f, b, False), keboola_action(f)),
        running,
        lambda f, b: requests_to(f.openai, "GET", f"/v1/batches/{b}") > 0,
        lambda f, b, size: f.keboola.answer_huge("/v2/storage", size),
        finish,
    ),
    Path_(
        "keboola create",
        lambda f, b: (openai_source(f, b, False), keboola_action(f)),
        running,
        lambda f, b: requests_to(f.openai, "GET", f"/v1/batches/{b}") > 0,
        lambda f, b, size: f.keboola.answer_huge("/jobs", size, status=201, method="POST"),
        finish,
    ),
    Path_(
        "keboola token verify",
        lambda f, b: (openai_source(f, b, False), keboola_action(f)),
        keboola_in_doubt,
        lambda f, b: requests_to(f.openai, "GET", f"/v1/batches/{b}") > 0,
        lambda f, b, size: f.keboola.answer_huge("/v2/storage/tokens/verify", size),
        finish,
    ),
    Path_(
        "keboola search",
        lambda f, b: (openai_source(f, b, False), keboola_action(f)),
        keboola_in_doubt,
        lambda f, b: requests_to(f.openai, "GET", f"/v1/batches/{b}") > 0,
        lambda f, b, size: f.keboola.answer_huge("/search/jobs", size),
        finish,
    ),
    Path_(
        "keboola follow",
        lambda f, b: (openai_source(f, b, False), keboola_action(f)),
        keboola_running,
        lambda f, b: any(r.method == "GET" and r.path.startswith("/jobs/") for r in list(f.keboola.requests)),
        lambda f, b, size: f.keboola.answer_huge("/jobs/*", size, method="GET"),
        nothing,
    ),
]


def write_config(workdir: Path, source: str, action: str, queue_origin: str) -> Path:
    """The Keboola token may go to the fake queue the stack index names (send_to), so the index is read."""
    config = workdir / "teckochecker.yaml"
    config.write_text(
        textwrap.dedent("""\
        log_level: DEBUG
        http: {port: 0, api_token: control}
        secrets:
          openai: {env: OPENAI_API_KEY}
          azure: {env: AZURE_KEY}
          anthropic: {env: ANTHROPIC_KEY}
          keboola: {env: KEBOOLA_TOKEN, send_to: ["QUEUE_ORIGIN"]}
          hook: {env: HOOK}
          control: {env: CONTROL}
        defaults: {interval: 30s, startup_spread: 0s}
        jobs:
          - name: bench
        """).replace("QUEUE_ORIGIN", queue_origin)
        + f"    source: {source}\n    actions:\n      - {action}\n"
    )
    return config


def measure(path: Path_, size: int) -> str:
    with Fakes() as fakes, tempfile.TemporaryDirectory(prefix="tc-bench-") as tmp:
        batch = path.batch(fakes)
        source, action = path.job(fakes, batch)
        workdir = Path(tmp) / "config"
        workdir.mkdir()
        daemon = Daemon(workdir, write_config(workdir, source, action, fakes.keboola.queue_url))
        try:
            daemon.base()
            wait(lambda: path.read_once(fakes, batch), 60, "first sane read", daemon)
            time.sleep(1.0)  # let the first check's work settle
            before = daemon.memory_mb("VmRSS")
            errors = daemon.output().count(CAP_ERROR)
            daemon.reset_peak()
            path.arm(fakes, batch, size)
            path.ask(fakes, batch, daemon)
            wait(lambda: daemon.output().count(CAP_ERROR) > errors, 90, "cap error in the log", daemon)
            time.sleep(0.5)
            peak, after = daemon.memory_mb("VmHWM"), daemon.memory_mb("VmRSS")
            alive = daemon.proc.poll() is None
        finally:
            daemon.stop()
    return (
        f"{path.name:24} {size // MB} MB answer: RSS before {before:6.1f} MB, peak {peak:6.1f} MB "
        f"(+{peak - before:4.1f} MB), after {after:6.1f} MB; daemon {'up' if alive else 'DOWN'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=400, help="the huge answer's size (default 400)")
    parser.add_argument("--only", help="measure only the path with this name")
    args = parser.parse_args()
    print(f"nproc {os.cpu_count()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    for path in PATHS:
        if args.only in (None, path.name):
            print(measure(path, args.size_mb * MB), flush=True)


if __name__ == "__main__":
    main()
