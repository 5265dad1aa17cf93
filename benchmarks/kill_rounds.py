"""Randomized kill test: does a trigger start exactly one Keboola job when the daemon is SIGKILLed mid-start?

    .venv/bin/python benchmarks/kill_rounds.py --rounds 100 --jobs 3 --seed 1

Each round starts the fake OpenAI and Keboola servers (in this process) with a few jobs whose batches are
already complete, plants "foreign" Keboola jobs by hand (same component and config, no variables: not
ours), queues random in-doubt answers for the create calls (5xx after create, a lost answer, a timeout),
gives the search index a random lag, starts the real `teckochecker run`, SIGKILLs it at a random moment
of the trigger window, starts it again and waits (bounded) until every job is final. Everything is
measured from the outside: the fake's ledger of jobs and kill requests, and the daemon's state store.

Per round and in total it prints: triggers fired, Keboola jobs created per trigger (by the marker
variable), duplicates created / cancelled by the daemon / left running, triggers left without a job,
foreign jobs touched (killed or adopted; must be 0) and jobs stuck unfinished. Exit status 1 when a
round broke an invariant. Not a timed test; everything stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from fakes import FakeKeboola, FakeOpenAI  # noqa: E402

OPENAI_KEY = "sk-kill-rounds-0123456789abcdef"
KEBOOLA_TOKEN = "kbc-kill-rounds-token-0123456789"
COMPONENT = "kds-team.app-custom-python"
MARKER = "teckochecker_trigger_id"  # the variable that makes a Keboola job ours
FINAL_JOB_STATES = frozenset({"completed", "completed_with_failures", "failed"})
KILLED_STATUSES = frozenset({"cancelled", "terminating", "terminated"})  # "terminating": kill accepted
_KILL_PATH = re.compile(r"^/jobs/([^/]+)/kill/?$")
# The in-doubt answers a create call can get. slow_create with a delay past the action's timeout is the
# "timeout" case (the job appears after the client gave up); with delay 0 it is a clean answer.
IN_DOUBT_MODES = ("create_then_503", "create_then_reset", "create_then_hang", "slow_timeout", "503_before_create")


@dataclass(frozen=True)
class RoundSettings:
    jobs: int = 3
    # SIGKILL lands this many seconds (uniform) after the first create call of the round.
    kill_window: float = 3.0
    # How long the restarted daemon gets to finish every job before the rest count as stuck.
    settle_timeout: float = 20.0
    create_timeout: float = 1.0  # the action's `timeout` (read timeout of the create call)
    search_lag: float = 1.0  # the action's `search_lag`: what the daemon assumes of the index
    max_index_lag: float = 3.5  # the fake index's real lag is uniform in [0, this]: often > 2 x search_lag
    fault_rate: float = 0.5  # share of create calls that get an in-doubt answer
    foreign_rate: float = 0.5  # share of configs that get a hand-started job just before ours
    foreign_after_rate: float = 0.5  # chance of one more hand-started job during the trigger window
    duplicate_window: float = 5.0  # used only when the action has a duplicate-search window option


@dataclass
class RoundResult:
    round: int
    seed: int
    index_lag: float
    faults: list[str]
    kill_after: float | None  # seconds after the first create call; None: no create call was seen
    triggers_fired: int = 0
    jobs_per_trigger: list[int] = field(default_factory=list)
    duplicates_created: int = 0
    duplicates_cancelled: int = 0
    duplicates_left_running: int = 0
    triggers_without_job: int = 0
    foreign_jobs: int = 0
    foreign_touched: int = 0
    stuck_jobs: int = 0
    seconds: float = 0.0

    @property
    def broken(self) -> bool:
        return bool(
            self.foreign_touched or self.duplicates_left_running or self.triggers_without_job or self.stuck_jobs
        )


# ----- one round -----------------------------------------------------------------------------------


def run_round(number: int, seed: int, settings: RoundSettings, workdir: Path) -> RoundResult:
    """One round in `workdir` (its own directory: config, state store, daemon logs)."""
    rng = random.Random(seed)
    started = time.monotonic()
    index_lag = round(rng.uniform(0.0, settings.max_index_lag), 2)
    faults = [_pick_fault(rng, settings) for _ in range(2 * settings.jobs)]
    result = RoundResult(number, seed, index_lag, [f for f in faults if f != "ok"], None)
    with (
        FakeOpenAI(api_key=OPENAI_KEY, record_requests=False) as openai,
        FakeKeboola(token=KEBOOLA_TOKEN, search_lag=index_lag) as keboola,
        ForeignOperator(keboola, finish_after=rng.uniform(1.0, 4.0)) as operator,
    ):
        configs = [f"cfg{j}" for j in range(settings.jobs)]
        batches = {cfg: [openai.add_batch(status="completed") for _ in range(rng.randint(1, 2))] for cfg in configs}
        for cfg in configs:
            keboola.add_config(COMPONENT, cfg)
            if rng.random() < settings.foreign_rate:
                operator.start_job(cfg)  # before any fault is queued, so it is a clean create
        for mode in faults:
            _queue_fault(keboola, mode, settings)
        config = write_config(workdir, openai, keboola, batches, settings)
        env = daemon_env()
        with Daemon(config, env, workdir) as first:
            first_post = wait_for_first_create(keboola, first, timeout=60)
            if first_post is not None:
                result.kill_after = round(rng.uniform(0.0, settings.kill_window), 2)
                if rng.random() < settings.foreign_after_rate:
                    operator.start_job_later(rng.uniform(0.0, settings.kill_window), rng.choice(configs))
                _sleep_until(first_post + result.kill_after)
            first.kill()
        with Daemon(config, env, workdir) as second:
            # Each in-doubt answer costs the daemon a mandated wait before it may start again (its create timeout,
            # the 5 s connect bound and two searches spaced by search_lag): several on one trigger add up.
            in_doubt_wait = settings.create_timeout + 5.0 + 2 * settings.search_lag
            deadline = time.monotonic() + settings.settle_timeout + in_doubt_wait * len(result.faults)
            wait_until(lambda: all_final(workdir, settings.jobs), deadline)
            if duplicate_window_option() is not None and first_post is not None:
                # The daemon keeps looking for late duplicates this long after a start; give it the time.
                _sleep_until(min(deadline, first_post + settings.kill_window + settings.duplicate_window + 2))
            time.sleep(1.0)  # a late duplicate or kill would show up now
            second.stop()
        operator.stop()
        _measure(result, keboola, read_store(workdir), settings)
    result.seconds = round(time.monotonic() - started, 1)
    return result


def _pick_fault(rng: random.Random, settings: RoundSettings) -> str:
    return rng.choice(IN_DOUBT_MODES) if rng.random() < settings.fault_rate else "ok"


def _queue_fault(keboola: FakeKeboola, mode: str, settings: RoundSettings) -> None:
    """Faults apply to the next create calls in order; "ok" takes a slot with a clean answer."""
    if mode == "ok":
        keboola.post_fault("slow_create", delay=0.0)
    elif mode == "slow_timeout":
        keboola.post_fault("slow_create", delay=settings.create_timeout + 1.0)
    else:
        keboola.post_fault(mode)


def _measure(result: RoundResult, keboola: FakeKeboola, store: StoreView, settings: RoundSettings) -> None:
    ledger = [dict(job) for job in keboola.jobs]
    killed = {m.group(1) for r in keboola.requests if r.method == "POST" and (m := _KILL_PATH.match(r.path))}
    by_trigger: dict[str, list[dict[str, Any]]] = {trigger: [] for trigger in store.trigger_ids}
    foreign = []
    for job in ledger:
        marker = marker_of(job)
        if marker is None:
            foreign.append(job)
        else:
            by_trigger.setdefault(marker, []).append(job)
    result.triggers_fired = len(by_trigger)
    result.jobs_per_trigger = sorted(len(jobs) for jobs in by_trigger.values())
    for jobs in by_trigger.values():
        cancelled = [j for j in jobs if j["id"] in killed and j["status"] in KILLED_STATUSES]
        alive = len(jobs) - len(cancelled)
        result.duplicates_created += max(0, len(jobs) - 1)
        result.duplicates_cancelled += min(len(cancelled), max(0, len(jobs) - 1))
        result.duplicates_left_running += max(0, alive - 1)
        result.triggers_without_job += alive == 0
    result.foreign_jobs = len(foreign)
    result.foreign_touched = sum(1 for j in foreign if j["id"] in killed or j["id"] in store.external_ids)
    result.stuck_jobs = settings.jobs - store.final_jobs


def marker_of(job: dict[str, Any]) -> str | None:
    data = job.get("variableValuesData")
    values = data.get("values") if isinstance(data, dict) else None
    for value in values or []:
        if isinstance(value, dict) and value.get("name") == MARKER:
            return str(value.get("value"))
    return None


# ----- the outside world: a person starting jobs by hand -------------------------------------------


class ForeignOperator:
    """Starts Keboola jobs by hand (no variables) and watches them in the UI: its GETs are what moves a
    fake job along, so a foreign job ends `finish_after` seconds after it was created, as a real one would,
    instead of holding the config lock for ever."""

    def __init__(self, keboola: FakeKeboola, *, finish_after: float) -> None:
        self._keboola = keboola
        self._finish_after = finish_after
        self._started: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._client = httpx.Client(timeout=httpx.Timeout(3.0), headers={"X-StorageApi-Token": KEBOOLA_TOKEN})
        self._thread = threading.Thread(target=self._watch, name="foreign-operator", daemon=True)
        self._timers: list[threading.Timer] = []

    def __enter__(self) -> ForeignOperator:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
        self._client.close()

    def stop(self) -> None:
        self._stop.set()
        for timer in self._timers:
            timer.cancel()
            timer.join(timeout=10)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def start_job(self, config: str) -> None:
        """POST a job like a person in the UI would. A queued fault may hit it; the ledger tells."""
        if self._stop.is_set():
            return
        before = {j["id"] for j in self._keboola.jobs}
        with contextlib.suppress(httpx.HTTPError):
            self._client.post(
                f"{self._keboola.queue_url}/jobs", json={"component": COMPONENT, "config": config, "mode": "run"}
            )
        now = time.monotonic()
        with self._lock:
            for job in self._keboola.jobs:
                if job["id"] not in before and marker_of(job) is None and job["config"] == config:
                    self._started.setdefault(job["id"], now)

    def start_job_later(self, delay: float, config: str) -> None:
        timer = threading.Timer(delay, self.start_job, (config,))
        self._timers.append(timer)
        timer.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.3):
            with self._lock:
                due = [jid for jid, at in self._started.items() if time.monotonic() - at >= self._finish_after]
            for job_id in due:
                if self._keboola.job(job_id)["isFinished"]:
                    continue
                with contextlib.suppress(httpx.HTTPError):
                    self._client.get(f"{self._keboola.queue_url}/jobs/{job_id}")


# ----- the daemon process --------------------------------------------------------------------------


class Daemon:
    """`teckochecker run` in its own process, logging to a file in the round's directory."""

    def __init__(self, config: Path, env: dict[str, str], cwd: Path) -> None:
        self.log_path = cwd / f"daemon-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "teckochecker"), "--config", str(config), "run"],
            cwd=cwd,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *_: object) -> None:
        self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


def daemon_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TECKOCHECKER_") and k != "STATE_DIRECTORY"}
    return {**env, "OPENAI_API_KEY": OPENAI_KEY, "KEBOOLA_STORAGE_TOKEN": KEBOOLA_TOKEN}


def duplicate_window_option() -> str | None:
    """The action's option for how long to keep searching for duplicates, if this version has one."""
    from teckochecker_keboola.options import KeboolaJobOptions

    for name, spec in KeboolaJobOptions.model_fields.items():
        # A duration (float seconds) named after duplicates; `on_duplicate`-like choices are left at defaults.
        if ("duplicate" in name or "dedup" in name) and spec.annotation in (float, float | None):
            return name
    return None


def write_config(
    workdir: Path, openai: FakeOpenAI, keboola: FakeKeboola, batches: dict[str, list[str]], settings: RoundSettings
) -> Path:
    window = duplicate_window_option()
    extra = f", {window}: {settings.duplicate_window:g}s" if window else ""
    lines = [
        textwrap.dedent(f"""\
            log_level: INFO
            http: {{port: 0}}
            secrets:
              openai: {{env: OPENAI_API_KEY}}
              keboola: {{env: KEBOOLA_STORAGE_TOKEN}}
            defaults: {{interval: 30s, startup_spread: 0s}}
            templates:
              chaos:
                source: {{type: openai_batch, api_key: openai, base_url: "{openai.base_url}"}}
            jobs:
            """)
    ]
    for cfg, group in batches.items():
        lines.append(
            f"  - name: job-{cfg}\n    template: chaos\n    source: {{targets: {json.dumps(group)}}}\n"
            f"    actions: [{{type: keboola_job, token: keboola, stack_url: '{keboola.stack_url}',"
            f" queue_url: '{keboola.queue_url}', "
            f"component: {COMPONENT}, config: {cfg}, search_lag: {settings.search_lag:g}s, "
            f"timeout: {settings.create_timeout:g}s, follow_interval: 1s{extra}}}]\n"
        )
    path = workdir / "teckochecker.yaml"
    path.write_text("".join(lines))
    return path


def wait_for_first_create(keboola: FakeKeboola, daemon: Daemon, *, timeout: float) -> float | None:
    """The monotonic time the daemon's first create call arrived (ours carry the marker)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and daemon.proc.poll() is None:
        for request in list(keboola.requests):
            if request.method == "POST" and request.path.rstrip("/") == "/jobs" and MARKER.encode() in request.body:
                return request.at
        time.sleep(0.02)
    return None


# ----- the daemon's state store, read from outside --------------------------------------------------


@dataclass(frozen=True)
class StoreView:
    trigger_ids: frozenset[str]
    external_ids: frozenset[str]
    final_jobs: int


def _connect(workdir: Path) -> sqlite3.Connection | None:
    path = workdir / ".teckochecker" / "state.db"
    if not path.exists():
        return None
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)


def read_store(workdir: Path) -> StoreView:
    connection = _connect(workdir)
    if connection is None:
        return StoreView(frozenset(), frozenset(), 0)
    with contextlib.closing(connection):
        runs = connection.execute("SELECT trigger_id, external_id FROM tc_action_runs").fetchall()
        states = [s for (s,) in connection.execute("SELECT state FROM tc_jobs WHERE NOT removed")]
    return StoreView(
        frozenset(t for t, _ in runs),
        frozenset(e for _, e in runs if e),
        sum(1 for s in states if s in FINAL_JOB_STATES),
    )


def all_final(workdir: Path, jobs: int) -> bool:
    try:
        return read_store(workdir).final_jobs >= jobs
    except sqlite3.Error:  # the tables may not exist yet
        return False


def wait_until(predicate: Callable[[], bool], deadline: float) -> bool:
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def _sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


# ----- many rounds ---------------------------------------------------------------------------------


def run_rounds(
    rounds: int, seed: int, settings: RoundSettings, report: Callable[[RoundResult], None] = lambda _: None
) -> list[RoundResult]:
    results = []
    for number in range(1, rounds + 1):
        with tempfile.TemporaryDirectory(prefix=f"tc-kill-{number}-") as tmp:
            result = run_round(number, seed * 100_003 + number, settings, Path(tmp))
        report(result)
        results.append(result)
    return results


def totals(results: Sequence[RoundResult]) -> dict[str, Any]:
    per_trigger = Counter(n for r in results for n in r.jobs_per_trigger)
    keys = (
        "triggers_fired",
        "duplicates_created",
        "duplicates_cancelled",
        "duplicates_left_running",
        "triggers_without_job",
        "foreign_jobs",
        "foreign_touched",
        "stuck_jobs",
    )
    summary: dict[str, Any] = {k: sum(getattr(r, k) for r in results) for k in keys}
    summary["rounds"] = len(results)
    summary["keboola_jobs"] = sum(sum(r.jobs_per_trigger) for r in results)
    summary["jobs_per_trigger"] = {str(n): per_trigger[n] for n in sorted(per_trigger)}
    summary["rounds_broken"] = sum(1 for r in results if r.broken)
    summary["seconds_per_round"] = round(sum(r.seconds for r in results) / max(len(results), 1), 1)
    return summary


def round_line(r: RoundResult) -> str:
    kill = f"+{r.kill_after:.2f}s" if r.kill_after is not None else "before any create"
    return (
        f"round {r.round:3d}: lag {r.index_lag:.2f}s, faults [{', '.join(r.faults) or '-'}], kill {kill} | "
        f"triggers {r.triggers_fired}, jobs/trigger {','.join(map(str, r.jobs_per_trigger)) or '-'}, "
        f"dup created {r.duplicates_created} cancelled {r.duplicates_cancelled} "
        f"left running {r.duplicates_left_running}, without job {r.triggers_without_job}, "
        f"foreign {r.foreign_jobs} touched {r.foreign_touched}, stuck {r.stuck_jobs} ({r.seconds:.1f}s)"
        + ("  <-- BROKEN" if r.broken else "")
    )


def total_lines(summary: dict[str, Any]) -> Iterator[str]:
    yield f"rounds:                          {summary['rounds']} ({summary['seconds_per_round']} s each)"
    yield f"triggers fired:                  {summary['triggers_fired']}"
    yield (
        f"Keboola jobs created per trigger: {summary['keboola_jobs'] / max(summary['triggers_fired'], 1):.3f} "
        f"(triggers by job count: {summary['jobs_per_trigger']})"
    )
    yield f"duplicates created:              {summary['duplicates_created']}"
    yield f"duplicates cancelled:            {summary['duplicates_cancelled']}"
    yield f"duplicates left running:         {summary['duplicates_left_running']}"
    yield f"triggers left without a job:     {summary['triggers_without_job']}"
    yield f"foreign jobs touched:            {summary['foreign_touched']} of {summary['foreign_jobs']} (must be 0)"
    yield f"jobs stuck unfinished:           {summary['stuck_jobs']}"
    yield f"rounds that broke an invariant:  {summary['rounds_broken']}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=3, help="jobs (triggers) per round")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    args = parser.parse_args()
    # Stopped with SIGTERM, unwind like on Ctrl-C so no daemon of a round is left running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    settings = RoundSettings(jobs=args.jobs)
    report = (lambda _: None) if args.json else (lambda r: print(round_line(r), flush=True))
    if not args.json:
        window = duplicate_window_option()
        print(f"{args.rounds} rounds × {args.jobs} jobs, seed {args.seed}; duplicate window option: {window}")
    results = run_rounds(args.rounds, args.seed, settings, report)
    summary = totals(results)
    if args.json:
        document = {
            "settings": {**asdict(settings), "duplicate_window_option": duplicate_window_option()},
            "rounds": [asdict(r) for r in results],
            "total": summary,
        }
        print(json.dumps(document, indent=2))
    else:
        print()
        for line in total_lines(summary):
            print(line)
    return 1 if summary["rounds_broken"] else 0


if __name__ == "__main__":
    sys.exit(main())
