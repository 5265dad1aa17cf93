"""``teckochecker demo``: the real daemon against simulated OpenAI and Keboola servers on loopback.

No credentials and no network: the simulators are the ones the tests use (teckochecker.simulators). The
demo writes a config into a scratch directory, starts ``teckochecker run`` on it as a child process, and
plays a short story on the simulators while the user watches the status page:

* ``reviews-classify``: three batches make progress and complete; one Keboola job is started and followed
  to success.
* ``weekly-summaries``: one batch completes, one fails validation, one expires; the Keboola job is started
  with the failed and expired batches listed as failed.
* ``late-batch``: a batch that is still running when the story ends; the job keeps watching.

Polling stays at the daemon's minimum interval (30 s); to keep the story short the demo presses
``check-now`` through the daemon's own API every few seconds, as an operator could.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

from teckochecker.simulators import FakeKeboola, FakeOpenAI

COMPONENT = "kds-team.app-custom-python"
# Seconds of the story at --speed 1: the last batch event happens at STORY_END.
STORY_END = 55.0
CHECK_NOW_EVERY = 4.0
READY_TIMEOUT = 30.0
DONE_JOBS = ("reviews-classify", "weekly-summaries")
JOB_NAMES = (*DONE_JOBS, "late-batch")
FINAL_STATES = frozenset({"completed", "completed_with_failures", "failed"})


@dataclass
class _Batch:
    """One simulated batch and the moments (story seconds) it changes."""

    batch_id: str
    total: int
    # (story second, status, fraction of requests completed, fraction failed)
    events: list[tuple[float, str, float, float]] = field(default_factory=list)
    applied: int = 0


@dataclass
class DemoWorld:
    """The simulators, the batches of the story and the files the daemon runs on."""

    openai: FakeOpenAI
    keboola: FakeKeboola
    batches: dict[str, list[_Batch]]
    workdir: Path

    @property
    def config_path(self) -> Path:
        return self.workdir / "teckochecker.yaml"


def run_demo(
    *,
    keep: bool,
    speed: float,
    exit_when_done: bool,
    port: int | None,
    out: TextIO,
    workdir: Path | None = None,
) -> int:
    """Run the story; returns the exit code. Ctrl-C stops the daemon and the simulators and cleans up."""
    openai_key = "sk-demo-" + secrets.token_hex(16)
    keboola_token = "kbc-demo-" + secrets.token_hex(16)
    api_token = secrets.token_urlsafe(24)
    scratch = workdir or Path(tempfile.mkdtemp(prefix="teckochecker-demo-"))
    port = port or _free_port()
    with (
        FakeOpenAI(api_key=openai_key, record_requests=False) as openai,
        FakeKeboola(token=keboola_token, search_lag=1.0, record_requests=False) as keboola,
    ):
        world = DemoWorld(openai, keboola, _plant_story(openai, keboola), scratch)
        world.config_path.write_text(_config(world, port))
        env = {
            **os.environ,
            "DEMO_OPENAI_API_KEY": openai_key,
            "DEMO_KEBOOLA_TOKEN": keboola_token,
            "DEMO_API_TOKEN": api_token,
        }
        daemon = subprocess.Popen(
            [sys.executable, "-m", "teckochecker", "--config", str(world.config_path), "run"],
            env=env,
            stdout=(scratch / "daemon.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        base_url = f"http://127.0.0.1:{port}"
        # `kill` and a closing terminal stop the demo like Ctrl-C: the daemon and the simulators go too.
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            return _play(world, daemon, base_url, api_token, speed=speed, exit_when_done=exit_when_done, out=out)
        except KeyboardInterrupt:
            print("\nstopping…", file=out)
            return 0
        finally:
            signal.signal(signal.SIGTERM, previous)
            _stop(daemon)
            _goodbye(world, keep=keep, out=out)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _play(
    world: DemoWorld,
    daemon: subprocess.Popen[bytes],
    base_url: str,
    api_token: str,
    *,
    speed: float,
    exit_when_done: bool,
    out: TextIO,
) -> int:
    with httpx.Client(base_url=base_url, timeout=5.0, trust_env=False) as api:
        if not _wait_ready(api, daemon):
            print(f"the daemon did not become ready; its log:\n{_tail(world.workdir / 'daemon.log')}", file=out)
            return 1
        _welcome(world, base_url, out)
        started = time.monotonic()
        shown: dict[str, str] = {}
        next_poke = 0.0
        while daemon.poll() is None:
            story_time = (time.monotonic() - started) * speed
            _advance(world, story_time)
            if time.monotonic() >= next_poke:
                _check_now(api, api_token)
                next_poke = time.monotonic() + CHECK_NOW_EVERY / max(speed, 1.0)
            states = _report_changes(api, shown, out)
            if all(states.get(name) in FINAL_STATES for name in DONE_JOBS) and story_time > STORY_END:
                print("\nThe story has played out. The status page stays up; Ctrl-C stops the demo.", file=out)
                if exit_when_done:
                    return 0 if _expected(states) else 1
                while daemon.poll() is None:
                    time.sleep(0.5)
                break
            time.sleep(0.5)
        print(f"the daemon exited ({daemon.returncode}); its log:\n{_tail(world.workdir / 'daemon.log')}", file=out)
        return 1


def _plant_story(openai: FakeOpenAI, keboola: FakeKeboola) -> dict[str, list[_Batch]]:
    keboola.add_config(COMPONENT, "demo-101")
    keboola.add_config(COMPONENT, "demo-202")
    keboola.add_config(COMPONENT, "demo-303")
    # Followed to its end: processing at the first read, success at the third.
    keboola.set_outcome(COMPONENT, "demo-101", "success", processing_after_gets=1, finish_after_gets=3)
    keboola.set_outcome(COMPONENT, "demo-202", "success", processing_after_gets=1, finish_after_gets=3)

    def batch(total: int, *events: tuple[float, str, float, float]) -> _Batch:
        return _Batch(openai.add_batch(status="in_progress", total=total), total, list(events))

    # Progress in steps, so the bars move on every check.
    def progress(until: float, end: float, *, step: float = 6.0) -> list[tuple[float, str, float, float]]:
        moments = [t for t in _frange(step, until, step)]
        return [(t, "in_progress", end * t / until, 0.0) for t in moments]

    return {
        "reviews-classify": [
            batch(200, *progress(40, 1.0), (44, "finalizing", 1.0, 0.0), (48, "completed", 0.98, 0.02)),
            batch(150, *progress(30, 1.0), (34, "finalizing", 1.0, 0.0), (38, "completed", 1.0, 0.0)),
            batch(120, *progress(46, 1.0), (50, "finalizing", 1.0, 0.0), (54, "completed", 1.0, 0.0)),
        ],
        "weekly-summaries": [
            batch(80, *progress(24, 1.0), (28, "completed", 1.0, 0.0)),
            batch(60, (12, "failed", 0.0, 0.0)),
            batch(90, *progress(42, 0.4), (STORY_END, "expired", 0.4, 0.0)),
        ],
        "late-batch": [batch(500, *progress(STORY_END, 0.3))],
    }


def _frange(start: float, stop: float, step: float) -> Iterator[float]:
    value = start
    while value <= stop:
        yield value
        value += step


def _advance(world: DemoWorld, story_time: float) -> None:
    for batches in world.batches.values():
        for batch in batches:
            while batch.applied < len(batch.events) and batch.events[batch.applied][0] <= story_time:
                _, status, done, failed = batch.events[batch.applied]
                batch.applied += 1
                if status == "failed":
                    errors = [{"code": "invalid_json_line", "message": "Line 3 is not valid JSON.", "line": 3}]
                    world.openai.set_status(batch.batch_id, "failed", errors=errors)
                else:
                    completed, failed_count = round(batch.total * done), round(batch.total * failed)
                    world.openai.set_status(batch.batch_id, status, completed=completed, failed=failed_count)


def _config(world: DemoWorld, port: int) -> str:
    def job(name: str, config_id: str) -> str:
        targets = ", ".join(b.batch_id for b in world.batches[name])
        return textwrap.indent(
            textwrap.dedent(f"""\
            - name: {name}
              template: demo
              source: {{targets: [{targets}]}}
              actions:
                - {{type: keboola_job, token: keboola, stack_url: "{world.keboola.stack_url}",
                    queue_url: "{world.keboola.queue_url}",
                    component: {COMPONENT}, config: "{config_id}", search_lag: 2s, follow_interval: 2s,
                    variables: {{pipeline: {name}}}}}
            """),
            "  ",
        )

    return (
        textwrap.dedent(f"""\
        # Written by `teckochecker demo`: the simulators behind these URLs live only while the demo runs.
        state: {{url: "sqlite:///{world.workdir / "state.db"}"}}
        http: {{listen: 127.0.0.1, port: {port}, api_token: api}}
        secrets:
          openai: {{env: DEMO_OPENAI_API_KEY}}
          keboola: {{env: DEMO_KEBOOLA_TOKEN}}
          api: {{env: DEMO_API_TOKEN}}
        defaults: {{interval: 30s, startup_spread: 0s}}
        templates:
          demo:
            source: {{type: openai_batch, api_key: openai, base_url: "{world.openai.base_url}", list_max_age: 1s}}
        jobs:
        """)
        + job("reviews-classify", "demo-101")
        + job("weekly-summaries", "demo-202")
        + job("late-batch", "demo-303")
    )


def _wait_ready(api: httpx.Client, daemon: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline and daemon.poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            if api.get("/readyz").status_code == 200:
                return True
        time.sleep(0.2)
    return False


def _check_now(api: httpx.Client, api_token: str) -> None:
    headers = {"Authorization": f"Bearer {api_token}"}
    for name in JOB_NAMES:
        # 409 for a job that already fired: nothing to check, which is fine.
        with contextlib.suppress(httpx.HTTPError):
            api.post(f"/api/v1/jobs/{name}/check-now", headers=headers)


def _report_changes(api: httpx.Client, shown: dict[str, str], out: TextIO) -> dict[str, str]:
    """Print one line per job whenever what it shows changes; returns each job's state."""
    try:
        jobs = api.get("/api/v1/jobs").json().get("jobs", [])
    except (httpx.HTTPError, ValueError, AttributeError):
        return {}
    states: dict[str, str] = {}
    for job in jobs:
        name, state = job.get("name"), job.get("state")
        if not isinstance(name, str) or not isinstance(state, str):
            continue
        states[name] = state
        line = _describe_job(job)
        if shown.get(name) != line:
            shown[name] = line
            print(f"{time.strftime('%H:%M:%S')}  {name:<17} {line}", file=out, flush=True)
    return states


def _describe_job(job: dict[str, Any]) -> str:
    targets = _dicts(job.get("targets"))
    counts = Counter(str(t.get("state")) for t in targets)
    batches = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    text = f"{job.get('state')}: batches {batches} ({_percent_done(targets)}% of requests done)"
    for run in _dicts(job.get("runs")):
        if run.get("external_id"):
            text += f"; Keboola job {run['external_id']} {run.get('vendor_status') or run.get('state')}"
    return text


def _percent_done(targets: list[dict[str, Any]]) -> int:
    total = done = 0
    # The API's "progress" is the store's one reading of the vendor's request_counts; not parsed again here.
    for target in targets:
        progress = target.get("progress")
        if isinstance(progress, dict):
            total += int(progress["total"])
            done += int(progress["completed"]) + int(progress["failed"])
    return round(100 * done / total) if total else 0


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _expected(states: dict[str, str]) -> bool:
    return states.get("reviews-classify") == "completed" and states.get("weekly-summaries") in FINAL_STATES


def _welcome(world: DemoWorld, base_url: str, out: TextIO) -> None:
    config = world.config_path
    print(
        textwrap.dedent(f"""\
        TeckoChecker demo: the real daemon, simulated OpenAI and Keboola on 127.0.0.1 (no credentials, no network).

          status page   {base_url}/          (refreshes itself: watch the bars)
          JSON API      {base_url}/api/v1/jobs
          metrics       {base_url}/metrics
          config        {config}
          daemon log    {world.workdir / "daemon.log"}

        In about a minute: reviews-classify finishes and starts one Keboola job, followed to success;
        weekly-summaries ends with a failed and an expired batch, and its Keboola job is told which;
        late-batch is still running when the story ends. In another shell, try:
          teckochecker --config {config} status
          teckochecker --config {config} show weekly-summaries
        (The demo presses check-now every few seconds so you need not wait for the 30 s interval.)
        Ctrl-C stops everything.
        """),
        file=out,
        flush=True,
    )


def _stop(daemon: subprocess.Popen[bytes]) -> None:
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
    try:
        daemon.wait(timeout=10)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait()


def _goodbye(world: DemoWorld, *, keep: bool, out: TextIO) -> None:
    if keep:
        print(
            f"kept {world.workdir}: explore it with\n"
            f"  teckochecker --config {world.config_path} status\n"
            f"  teckochecker --config {world.config_path} show reviews-classify",
            file=out,
        )
    else:
        shutil.rmtree(world.workdir, ignore_errors=True)
        print(f"removed {world.workdir}", file=out)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
