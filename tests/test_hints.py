"""RunningJobs.hint in process, with the real ticker: a hint that comes while the job's tick runs is taken
by that tick (no skipped tick, no overlap), and checks only the named target; a hint that can let its job
fire goes ahead of hints that cannot."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import textwrap
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from teckotest_plugin import StatusFileSource

from teckochecker.clock import SystemClock
from teckochecker.config.validate import Config, load_config
from teckochecker.crashpoints import CrashPoints
from teckochecker.metrics import Metrics
from teckochecker.plugin_api import CheckReport, PluginContext
from teckochecker.plugins import PluginRegistry
from teckochecker.running_jobs import RunningJobs
from teckochecker.secrets.resolving import Redactor, SecretResolver
from teckochecker.services import TickServices
from teckochecker.state.guard import StoreGuard
from teckochecker.state.store import StateStore
from teckochecker.state.worker import StoreWorker

WAIT = 10.0


def test_a_hint_during_a_tick_is_taken_by_that_tick(
    tmp_path: Path, registry: PluginRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    status, config = _one_job(tmp_path, registry, ["a", "b"])
    checked: list[list[str]] = []
    gate = asyncio.Event()
    original = StatusFileSource.check

    async def held_check(self: StatusFileSource, targets: Sequence[str]) -> CheckReport:
        report = await original(self, targets)  # what the vendor said, before the tick is held
        checked.append(list(targets))
        if len(checked) == 1:
            await gate.wait()
        return report

    monkeypatch.setattr(StatusFileSource, "check", held_check)
    monkeypatch.setattr(StatusFileSource, "push_channel", "test")

    async def scenario() -> None:
        async with _running(tmp_path, config) as (store, metrics, clock, jobs):
            await _until(lambda: len(checked) == 1)
            status.write_text(json.dumps({"a": "succeeded", "b": "running"}))
            assert jobs.hint("test", "a", clock.monotonic()) == 1
            assert jobs.hint("test", "nobody-watches-this", clock.monotonic()) == 0
            assert jobs.hint("other-channel", "a", clock.monotonic()) == 0
            gate.set()
            await _until(lambda: len(checked) == 2)
            await jobs.flush()
            snap = store.job("j")
            assert snap is not None and {t.target: t.state.value for t in snap.targets}["a"] == "succeeded"
            assert metrics.scheduler_skipped_ticks._value.get() == 0
            # The job's next poll stays where its interval puts it: about 15 minutes away.
            next_run = jobs.next_run("j")
            assert next_run is not None and (next_run - clock.now()).total_seconds() > 600

    asyncio.run(scenario())
    assert checked == [["a", "b"], ["a"]]


def test_a_hint_that_can_fire_its_job_goes_ahead_of_those_that_cannot(
    tmp_path: Path, registry: PluginRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    import teckochecker.running_jobs

    status = tmp_path / "status.json"
    running = {t: "running" for t in ("a1", "b1", "a2", "b2", "a3")}
    status.write_text(json.dumps(running))
    config_path = tmp_path / "tc.yaml"
    jobs_yaml = "".join(
        f"  - name: {name}\n    source: {{type: status_file, path: {status}, targets: {targets}}}\n"
        f"    actions: [{{type: record, ledger: {tmp_path / 'ledger.jsonl'}}}]\n"
        for name, targets in (("j1", "[a1, b1]"), ("j2", "[a2, b2]"), ("j3", "[a3]"))
    )
    config_path.write_text("defaults: {interval: 15m}\njobs:\n" + jobs_yaml)
    config = load_config(config_path, registry)
    checked: list[list[str]] = []
    gate = asyncio.Event()
    original = StatusFileSource.check

    async def held_check(self: StatusFileSource, targets: Sequence[str]) -> CheckReport:
        report = await original(self, targets)
        checked.append(list(targets))
        if list(targets) == ["a1"]:
            await gate.wait()
        return report

    monkeypatch.setattr(StatusFileSource, "check", held_check)
    monkeypatch.setattr(StatusFileSource, "push_channel", "test")
    monkeypatch.setattr(teckochecker.running_jobs, "DEFERRED_HINT_TICKS", 1)

    async def scenario() -> None:
        async with _running(tmp_path, config) as (store, _metrics, clock, jobs):
            await _until(lambda: len(checked) == 3)  # each job's first poll
            # ... written, and kept in the watch cache: what hint() knows of a job's pending targets.
            await _until(lambda: all(jobs._runner.pending_targets(n) is not None for n in ("j1", "j2", "j3")))
            status.write_text(json.dumps(running | {"a1": "succeeded", "a2": "succeeded", "a3": "succeeded"}))
            assert jobs.hint("test", "a1", clock.monotonic()) == 1  # j1 still waits for b1: deferred, run (1 at a time)
            await _until(lambda: ["a1"] in checked)
            assert jobs.hint("test", "a2", clock.monotonic()) == 1  # deferred, and the one place is taken
            assert jobs.hint("test", "a3", clock.monotonic()) == 1  # j3's last target: checked at once
            await _until(lambda: ["a3"] in checked)
            await _until(lambda: store.job("j3").state.value != "watching")  # type: ignore[union-attr]
            assert ["a2"] not in checked
            gate.set()  # j1's check ends; j2's deferred hint is checked next
            await _until(lambda: ["a2"] in checked)

    asyncio.run(scenario())
    assert checked[3:] == [["a1"], ["a3"], ["a2"]]


def test_a_hinted_target_still_unfinished_is_checked_again_a_few_times_then_left_to_the_poll(
    tmp_path: Path, registry: PluginRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenAI's batch events are about ended batches; a fresh read still showing one running lags the event."""
    import teckochecker.running_jobs

    status, config = _one_job(tmp_path, registry, ["a", "b"])
    checked = _counted_checks(monkeypatch)
    monkeypatch.setattr(teckochecker.running_jobs, "RECHECK_DELAYS", (0.2, 0.2))

    async def scenario() -> None:
        async with _running(tmp_path, config) as (_store, _metrics, clock, jobs):
            await _until(lambda: jobs._runner.pending_targets("j") is not None)  # the first poll, kept
            assert jobs.hint("test", "a", clock.monotonic()) == 1
            await _until(lambda: checked.count(["a"]) == 3)  # the hinted check, and two more
            await asyncio.sleep(0.6)  # three times the delay: nothing more is asked
            assert checked.count(["a"]) == 3
            # A later event for it is checked again, and this time the read has caught up.
            status.write_text(json.dumps({"a": "succeeded", "b": "running"}))
            assert jobs.hint("test", "a", clock.monotonic()) == 1
            await _until(lambda: checked.count(["a"]) == 4)
            await asyncio.sleep(0.6)
            assert checked.count(["a"]) == 4  # seen finished: not checked again
            next_run = jobs.next_run("j")
            assert next_run is not None and (next_run - clock.now()).total_seconds() > 600

    asyncio.run(scenario())
    assert checked[0] == ["a", "b"] and ["b"] not in checked


def test_a_recheck_outlives_another_tick_and_counts_towards_firing_the_job(
    tmp_path: Path, registry: PluginRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tick run for another hint puts the job's next poll an interval away: the re-check waiting for a
    target is brought forward again. And a last hint with a re-check still waiting may fire the job: both
    are checked together, at once."""
    import teckochecker.running_jobs

    status, config = _one_job(tmp_path, registry, ["a", "b", "c"])
    checked = _counted_checks(monkeypatch)
    monkeypatch.setattr(teckochecker.running_jobs, "RECHECK_DELAYS", (0.3, 30.0, 30.0))

    async def scenario() -> None:
        async with _running(tmp_path, config) as (store, _metrics, clock, jobs):
            await _until(lambda: jobs._runner.pending_targets("j") is not None)
            assert jobs.hint("test", "a", clock.monotonic()) == 1  # still shown running: re-checked later
            await _until(lambda: ["a"] in checked)
            status.write_text(json.dumps({"a": "running", "b": "running", "c": "succeeded"}))
            assert jobs.hint("test", "c", clock.monotonic()) == 1  # another tick, before a's re-check
            await _until(lambda: ["c"] in checked)
            await _until(lambda: checked.count(["a"]) == 2)  # a's re-check still came
            # Its next re-check is 30 s away; b's event names the last other target: both now, and it fires.
            status.write_text(json.dumps({"a": "succeeded", "b": "succeeded", "c": "succeeded"}))
            assert jobs.hint("test", "b", clock.monotonic()) == 1
            await _until(lambda: ["a", "b"] in checked)
            await _until(lambda: store.job("j").state.value != "watching")  # type: ignore[union-attr]

    asyncio.run(scenario())
    assert checked[0] == ["a", "b", "c"] and ["b"] not in checked


def test_webhook_to_action_ends_when_the_first_action_started(
    tmp_path: Path, registry: PluginRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Timed from the hint that let the job fire to its recorded start: what the tick does after the start
    (here a second action and a slow finished-job check) is not counted, and a hint that does not fire the job
    observes nothing."""
    status, config = _one_job(tmp_path, registry, ["a", "b"], actions=2)
    checked = _counted_checks(monkeypatch)
    finish_called: list[float] = []
    original_finish = StateStore.finish_job_if_done

    def slow_finish(self: StateStore, *args: object, **kwargs: object) -> object:
        finish_called.append(time.monotonic())
        time.sleep(0.3)
        return original_finish(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(StateStore, "finish_job_if_done", slow_finish)

    async def scenario() -> tuple[float, float, float]:
        async with _running(tmp_path, config) as (_store, metrics, clock, jobs):
            histogram = metrics.webhook_to_action
            await _until(lambda: jobs._runner.pending_targets("j") is not None)
            status.write_text(json.dumps({"a": "succeeded", "b": "running"}))
            assert jobs.hint("test", "a", clock.monotonic()) == 1
            await _until(lambda: ["a"] in checked)
            await jobs.flush()
            assert _samples(histogram, "_count") == 0  # checked, not fired
            status.write_text(json.dumps({"a": "succeeded", "b": "succeeded"}))
            notified = clock.monotonic()
            assert jobs.hint("test", "b", notified) == 1
            await _until(lambda: bool(finish_called) and _samples(histogram, "_count") > 0)
            assert _samples(histogram, "_count") == 1  # one job fired, though two actions started
            return notified, finish_called[0], _samples(histogram, "_sum")

    notified, finish_started, observed = asyncio.run(scenario())
    assert 0 < observed <= finish_started - notified


def _samples(histogram: object, suffix: str) -> float:
    return next(s.value for m in histogram.collect() for s in m.samples if s.name.endswith(suffix))  # type: ignore[attr-defined]


def _one_job(tmp_path: Path, registry: PluginRegistry, targets: list[str], actions: int = 1) -> tuple[Path, Config]:
    """Job ``j`` watching ``targets`` (all running) in a status file, polled every 15 min, with ``actions``
    record actions."""
    status = tmp_path / "status.json"
    status.write_text(json.dumps(dict.fromkeys(targets, "running")))
    config_path = tmp_path / "tc.yaml"
    config_path.write_text(
        textwrap.dedent(f"""\
        jobs:
          - name: j
            interval: 15m
            source: {{type: status_file, path: {status}, targets: [{", ".join(targets)}]}}
            actions: [{", ".join([f"{{type: record, ledger: {tmp_path / 'ledger.jsonl'}}}"] * actions)}]
        """)
    )
    return status, load_config(config_path, registry)


def _counted_checks(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every check's targets, in order; the status file source answers on the push channel "test"."""
    checked: list[list[str]] = []
    original = StatusFileSource.check

    async def counted_check(self: StatusFileSource, targets: Sequence[str]) -> CheckReport:
        checked.append(list(targets))
        return await original(self, targets)

    monkeypatch.setattr(StatusFileSource, "check", counted_check)
    monkeypatch.setattr(StatusFileSource, "push_channel", "test")
    return checked


@contextlib.asynccontextmanager
async def _running(
    tmp_path: Path, config: Config
) -> AsyncIterator[tuple[StateStore, Metrics, SystemClock, RunningJobs]]:
    """The config's jobs running on a fresh SQLite store, stopped and closed afterwards."""
    store, worker, metrics, clock = (
        StateStore.open(f"sqlite:///{tmp_path / 'state.db'}"),
        StoreWorker(),
        Metrics(),
        SystemClock(),
    )
    jobs = _running_jobs(store, worker, metrics, clock)
    try:
        await jobs.start(config.jobs, 0.0)
        yield store, metrics, clock, jobs
    finally:
        await jobs.stop(1.0)
        await jobs.aclose()
        worker.close()
        store.close()


def _running_jobs(store: StateStore, worker: StoreWorker, metrics: Metrics, clock: SystemClock) -> RunningJobs:
    log = logging.getLogger("test_hints")
    services = TickServices(store, worker, clock, CrashPoints({}), log, metrics, random.Random(1))
    context = PluginContext(http=None, clock=clock, secret=SecretResolver({}, {}, Redactor()), logger=log)  # type: ignore[arg-type]
    return RunningJobs(
        services,
        context,
        StoreGuard(None, log, lambda: None),
        stopping=lambda: False,
        metrics=metrics,
        logger=log,
        clock=clock,
        rng=random.Random(1),
    )


async def _until(predicate, timeout: float = WAIT) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)
