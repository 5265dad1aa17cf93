"""Discovery: jobs made of the batches a pipeline created, found by their metadata in the listing the source
already reads (a template's ``discover:``; grouping.py decides, this module acts).

Per template with ``discover:``, one instance of the template's source listens to its account's shared
listing (every page read, whoever asked for it) and, every ``discover.interval``, asks for a sweep, which a
listing younger than the source's ``list_max_age`` answers without a request. After the sweep, the batches the
listener kept are grouped:

- a new group becomes a registered job (origin ``discovered``) at once, named ``name_prefix`` + group value,
  with the batches listed so far, waiting for its group: state/holds.py keeps its trigger from firing;
- a group that grows gets the new batches as targets;
- a complete group releases the trigger, and its job is checked at once;
- a failed group (bad metadata, or its deadline) ends its job failed with the reason; nothing fires.

Each change is one write of the job's row in tc_registered_jobs (body and group bookkeeping together), after
which the daemon rebuilds its job definitions. What must wait for that rebuild (an event in the job's log,
failing the job, the check at once) is kept and retried every second until the job is there.

The listing's order: OpenAI does not document it (docs/vendors.md: unconfirmed); it is newest first in every
example and in practice. A sweep reads pages while they hold batches created since the newest one an earlier
sweep saw, at most ``max_pages``. If the order were different, every batch on the pages read is still
grouped; only a batch beyond them would be found by a later sweep, or not at all — hence the page bound is a
setting, and the pages read are counted (teckochecker_discovery_pages_total).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from teckochecker.clock import Clock
from teckochecker.config.models import MAX_TARGETS_PER_JOB
from teckochecker.config.validate import DiscoveryDefinition, JobDefinition
from teckochecker.errors import Fenced, PermanentError, TransientError
from teckochecker.grouping import Group, GroupState, by_group, grow, job_name, settle, sighting, start
from teckochecker.metrics import Metrics
from teckochecker.plugin_api import ListedTarget, PluginContext, Source
from teckochecker.state.events import EventKind
from teckochecker.state.models import JobOrigin, JobSnapshot, JobState
from teckochecker.state.store import StateStore
from teckochecker.state.worker import StoreWorker

# How often work that waits for the daemon's rebuild (events, failing, checking at once) is retried.
FOLLOW_UP = 1.0
# Push notifications for batches no job watches (notified()): at most this many are remembered per template
# (the oldest go first; the listing still finds their batches), and at most this many read per pass.
NOTIFIED_MAX = 1_000
NOTIFIED_PER_PASS = 50
# A notification waiting for its discovered job to run with the batch is dropped after this long (a job that
# never gets there: removed with its template, say); the job's own poll still sees the batch.
HINT_WAIT = 600.0


@dataclass
class _Listening:
    """One template's discovery: its source, and what its listener kept since the last pass."""

    definition: DiscoveryDefinition
    source: Source
    stop_listening: Callable[[], None] = lambda: None
    # This template's batches listed since the last pass, by id (a batch on every sweep is kept once).
    kept: dict[str, ListedTarget] = field(default_factory=dict)
    # The newest creation time seen by earlier sweeps: pages older than this hold nothing new.
    horizon: dt.datetime | None = None
    sweep_horizon: dt.datetime | None = None
    pages: int = 0
    task: asyncio.Task[None] | None = None
    # Batches a push notification named that no job watches and no known group holds, to be read on their
    # own: id → the notification's monotonic receipt. Then, once read and kept for the pass, in ``described``.
    notified: dict[str, float] = field(default_factory=dict)
    described: dict[str, float] = field(default_factory=dict)

    # Whether reading the notified batches failed last time (logged once while it lasts).
    notified_failing: bool = False

    def remember(self, target: str, received: float) -> None:
        self.notified.setdefault(target, received)
        while len(self.notified) > NOTIFIED_MAX:
            del self.notified[next(iter(self.notified))]

    def take_oldest(self) -> tuple[str, float] | None:
        """The oldest notification, removed in the same step. Never keep a target across an await to remove it
        later: notifications keep arriving while a batch is read, and ``remember`` evicts the oldest, the very
        ones a pass is about to read (a list taken before the reads and popped after each was a KeyError)."""
        target = next(iter(self.notified), None)
        return None if target is None else (target, self.notified.pop(target))

    def on_page(self, number: int, targets: Sequence[ListedTarget], now: dt.datetime, metrics: Metrics) -> bool:
        rule = self.definition.rule
        if number == 0:
            self.pages, self.sweep_horizon = 0, self.horizon
        self.pages += 1
        metrics.discovery_pages.labels(self.definition.template).inc()
        created = [t.created_at for t in targets if t.created_at is not None]
        if created:
            self.horizon = max([*created, *([self.horizon] if self.horizon else [])])
        self.kept.update((t.target, t) for t in targets if sighting(rule, t) is not None)
        if not created or self.pages >= rule.max_pages:
            return False
        oldest = min(created)
        # Older than the group deadline: any group of it has ended already.
        recent = oldest >= now - dt.timedelta(seconds=rule.deadline)
        return recent and (self.sweep_horizon is None or oldest >= self.sweep_horizon)


@dataclass(frozen=True)
class _Note:
    name: str
    kind: EventKind
    message: str
    data: Mapping[str, Any]


class Discovery:
    """Every template's discovery in one daemon. Built and started by app.Daemon; ``apply`` after a reload."""

    def __init__(
        self,
        store: StateStore,
        worker: StoreWorker,
        context: PluginContext,
        *,
        clock: Clock,
        metrics: Metrics,
        logger: logging.Logger,
        rebuild: Callable[[], None],
        run_now: Callable[[str], bool],
        hint: Callable[[str, str, float], int],
        file_jobs: Callable[[], Mapping[str, JobDefinition]],
        autorun: bool = True,
    ) -> None:
        """``autorun=False``: no loop is started; the caller (a test) drives ``run_once``."""
        self._store = store
        self._db = worker
        self._context = context
        self._clock = clock
        self._metrics = metrics
        self._log = logger
        self._rebuild = rebuild
        self._run_now = run_now
        self._hint = hint
        self._file_jobs = file_jobs
        self._autorun = autorun
        self._listening: dict[str, _Listening] = {}
        self._groups: dict[str, Group] = {}
        self._refused: set[tuple[str, str]] = set()
        # Waiting for the rebuild to put the job in place.
        self._notes: list[_Note] = []
        self._to_fail: set[str] = set()
        self._to_check: set[str] = set()
        # Notifications to pass on to a discovered job once it is in place: name → target → (channel, receipt).
        self._to_hint: dict[str, dict[str, tuple[str, float]]] = {}
        # Which discovered job each batch of a known group belongs to.
        self._holders: dict[str, str] = {}

    async def start(self, discoveries: Mapping[str, DiscoveryDefinition]) -> None:
        """Restore the groups from the store, then listen and sweep for every template."""
        for row in await self._db.run(self._store.registered_jobs):
            if row.origin is not JobOrigin.DISCOVERED:
                continue
            try:
                group = Group.from_details(row.name, row.details)
            except (KeyError, TypeError, ValueError) as exc:
                # A row edited by hand must not stop the daemon; its job stays held (state/holds.py).
                self._log.warning("discovered job %s: its group cannot be read (%r); left as it is", row.name, exc)
                continue
            self._groups[row.name] = group
            self._holders.update(dict.fromkeys(group.targets, row.name))
            if group.state is GroupState.FAILED:
                self._to_fail.add(row.name)
        await self.apply(discoveries)

    async def apply(self, discoveries: Mapping[str, DiscoveryDefinition]) -> None:
        """Start, restart or stop templates' discovery to match ``discoveries`` (after a reload)."""
        for template, listening in list(self._listening.items()):
            if discoveries.get(template) != listening.definition:
                await self._stop(template)
        for template, definition in discoveries.items():
            if template not in self._listening:
                self._begin(definition)

    async def aclose(self) -> None:
        for template in list(self._listening):
            await self._stop(template)

    def notified(self, channel: str, target: str, received: float) -> bool:
        """A verified push notification on ``channel`` (received at monotonic ``received``) named ``target``,
        which no running job watches. Returns whether any template's source listens on that channel.

        A batch of a known group: its job is not running yet (the rebuild has not put it in place), or has
        ended. The notification is passed on to the job once it is in place, or dropped if it has ended.
        Any other batch may start or grow a group created since the last sweep: each such template reads
        it on its own (``Source.describe``, one request, whatever the listing's age) at once, and a job its
        pass puts it in gets the notification as a hint (a fresh check, as if the job had watched it)."""
        listening = [item for item in self._listening.values() if item.source.push_channel == channel]
        holder = self._holders.get(target)
        if listening and holder is not None:
            self._to_hint.setdefault(holder, {})[target] = (channel, received)
        elif listening:
            for item in listening:
                item.remember(target, received)
        return bool(listening)

    # ----- one template's loop -----

    def _begin(self, definition: DiscoveryDefinition) -> None:
        source = definition.source.cls(definition.source.options, self._context)
        listening = _Listening(definition, source)
        listening.stop_listening = source.listen(
            lambda number, targets: listening.on_page(number, targets, self._clock.now(), self._metrics)
        )
        if self._autorun:
            listening.task = asyncio.create_task(self._loop(listening), name=f"discover:{definition.template}")
        self._listening[definition.template] = listening

    async def _stop(self, template: str) -> None:
        listening = self._listening.pop(template)
        listening.stop_listening()
        if listening.task is not None:
            listening.task.cancel()
            await asyncio.gather(listening.task, return_exceptions=True)
        await listening.source.aclose()

    async def run_once(self, template: str, *, sweep: bool = True, read_until: float | None = None) -> None:
        """One sweep (unless ``sweep`` is False: only notified batches are read) and pass of ``template``'s
        discovery, and the follow-up that can be done now. ``read_until``: the monotonic time after which no
        more notified batches are read (the loop's next sweep: reading them one by one never delays it)."""
        listening = self._listening[template]
        await self._read_notified(listening, read_until)
        swept = sweep and await self._sweep(listening)
        # Batches read on their own are grouped even when the listing could not be read.
        if swept or listening.described:
            self._claim_described(listening, await self._pass(listening))
        await self._follow_up()

    async def _loop(self, listening: _Listening) -> None:
        template, interval = listening.definition.template, listening.definition.rule.interval
        while True:
            started = self._clock.monotonic()
            # The sweep is due: it waits for no notified batch (they are read in between, until the next one).
            await self._run_guarded(template, sweep=True, read_until=started)
            while self._clock.monotonic() - started < interval:
                await self._clock.sleep(min(FOLLOW_UP, interval - (self._clock.monotonic() - started)))
                if listening.notified:
                    # A notified batch may start or grow a group: read it now; the listing waits its interval.
                    await self._run_guarded(template, sweep=False, read_until=started + interval)
                elif self._pending_follow_up():
                    try:
                        await self._follow_up()
                    except Exception as exc:  # the store may be briefly down; retried within a second
                        self._log.debug("discovery follow-up failed: %s", exc)

    async def _run_guarded(self, template: str, *, sweep: bool, read_until: float) -> None:
        try:
            await self.run_once(template, sweep=sweep, read_until=read_until)
        except Fenced as exc:  # this replica no longer leads; it is standing down, which stops discovery
            self._log.warning("discovery for template %s stopped writing: %s", template, exc)
        except Exception:  # a bug or a store outage must not end discovery: the next interval tries again
            self._log.exception("discovery for template %s failed; it runs again later", template)

    async def _sweep(self, listening: _Listening) -> bool:
        template = listening.definition.template
        try:
            await listening.source.sweep()
        except TransientError as exc:
            self._metrics.discovery_sweeps.labels(template, "transient_error").inc()
            self._log.info("discovery for template %s waits: %s", template, exc)
            return False
        except PermanentError as exc:
            self._metrics.discovery_sweeps.labels(template, "permanent_error").inc()
            self._log.error("discovery for template %s cannot list: %s", template, exc)
            return False
        self._metrics.discovery_sweeps.labels(template, "ok").inc()
        return True

    async def _pass(self, listening: _Listening) -> dict[str, str]:
        """Group what the listener kept since the last pass, settle this template's groups, write changes.
        Returns the batches this pass put in a job: batch id → job name."""
        definition, rule = listening.definition, listening.definition.rule
        kept, listening.kept = listening.kept, {}
        now = self._clock.now()
        grown: dict[str, Group] = {}
        # Oldest first (the listing is newest first): a job's targets in the order the batches were created.
        listed = sorted(reversed(kept.values()), key=lambda t: t.created_at or now)
        for value, sightings in by_group(rule, listed).items():
            group = await self._group_for(definition, value, now)
            if group is not None:
                grown[group.job_name] = grow(group, rule, sightings, now)
        for name, group in self._groups.items():
            if group.template == definition.template:
                grown.setdefault(name, group)
        # Settled after the whole sweep is grouped: 4 batches announced as 3 fail, wherever the pages split.
        changes = 0
        added: dict[str, str] = {}
        for name, group in grown.items():
            before, after = self._groups.get(name), settle(group, rule, now)
            if after != before:
                await self._write(before, after, now)
                changes += 1
                added |= dict.fromkeys(set(after.targets) - set(before.targets if before else ()), name)
        if changes:
            self._rebuild()
        return added

    async def _read_notified(self, listening: _Listening, until: float | None) -> None:
        """``_describe_notified``, which never stops the sweep: a failure is logged once while it lasts."""
        try:
            await self._describe_notified(listening, until)
        except Exception:
            if not listening.notified_failing:
                template = listening.definition.template
                self._log.exception("discovery for template %s could not read notified batches; swept anyway", template)
            listening.notified_failing = True
        else:
            listening.notified_failing = False

    async def _describe_notified(self, listening: _Listening, until: float | None) -> None:
        """Read the notified batches on their own, oldest first, until ``until``; those of this template's
        groups go to the next pass."""
        rule, channel = listening.definition.rule, listening.source.push_channel
        for _ in range(NOTIFIED_PER_PASS):
            if until is not None and self._clock.monotonic() >= until:
                break
            taken = listening.take_oldest()
            if taken is None:
                break
            target, received = taken
            if target in self._holders:  # listed meanwhile: its job takes the notification
                self._to_hint.setdefault(self._holders[target], {})[target] = (channel or "", received)
                continue
            try:
                listed = await listening.source.describe(target)
            except Exception as exc:  # a plugin's error must not hold the sweeps up; the listing finds the batch
                self._log.info("discovery could not read notified batch %s now: %s", target, exc)
                continue
            if listed is not None and sighting(rule, listed) is not None:
                listening.kept[target] = listed
                listening.described[target] = received

    def _claim_described(self, listening: _Listening, added: Mapping[str, str]) -> None:
        """After a pass: the notification about a batch the pass put in a job is passed on to that job."""
        channel = listening.source.push_channel or ""
        described, listening.described = listening.described, {}
        for target, received in described.items():
            name = added.get(target)
            if name is not None:
                self._log.info("discovered job %s: checked at once, a notification named %s", name, target)
                self._to_hint.setdefault(name, {})[target] = (channel, received)

    async def _group_for(self, definition: DiscoveryDefinition, value: str, now: dt.datetime) -> Group | None:
        """The group of ``value``, a new one, or None when it cannot make a job (reported once)."""
        template = definition.template
        name = job_name(definition.rule, value)
        if name is None:
            self._refuse(template, value, f"{definition.rule.name_prefix}{value[:80]!r} is not a valid job name")
            return None
        group = self._groups.get(name)
        if group is not None:
            if group.template != template:
                self._refuse(template, value, f"job {name!r} was discovered by template {group.template!r}")
                return None
            return group
        taken = await self._name_taken(name)
        if taken is not None:
            self._refuse(template, value, taken)
            return None
        return start(template, value, name, now)

    async def _name_taken(self, name: str) -> str | None:
        file_job = self._file_jobs().get(name)
        if file_job is not None:
            return f"job {name!r} is defined in {file_job.file}"
        rows = await self._db.run(self._store.registered_jobs)
        if any(row.name == name for row in rows):
            return f"job {name!r} is already registered over the API"
        if await self._db.run(self._store.job, name) is not None:
            return f"a job named {name!r} ran before (its history is kept): choose another group value"
        return None

    def _refuse(self, template: str, value: str, reason: str) -> None:
        if (template, value) in self._refused:
            return
        self._refused.add((template, value))
        self._metrics.discovery_groups.labels(template, "refused").inc()
        self._log.warning("discovery for template %s: group %r makes no job: %s", template, value[:80], reason)

    async def _write(self, before: Group | None, after: Group, now: dt.datetime) -> None:
        body = {
            "name": after.job_name,
            "template": after.template,
            "source": {"targets": list(after.targets[:MAX_TARGETS_PER_JOB])},
        }
        await self._db.run(
            self._store.put_registered_job, after.job_name, JobOrigin.DISCOVERED, body, after.details(), now=now
        )
        self._groups[after.job_name] = after
        self._holders.update(dict.fromkeys(after.targets, after.job_name))
        self._tell(before, after)

    def _tell(self, before: Group | None, after: Group) -> None:
        """Log, count and queue the job's events for what changed in its group."""
        name, template = after.job_name, after.template
        data = {"group": after.value, "targets": list(after.targets[-20:]), "state": after.state.value}
        if before is None:
            self._metrics.discovery_groups.labels(template, "discovered").inc()
            self._log.info("discovered job %s (template %s): %s listed", name, template, after.describe())
            self._note(name, f"group {after.value!r} first listed: {after.describe()}", data)
        elif len(after.targets) > len(before.targets):
            self._note(name, f"group {after.value!r} grew to {after.describe()}", data)
        if after.late_count > (before.late_count if before else 0):
            self._note(name, f"{after.late_count} batch(es) listed after the group ended, not added", data)
        if after.state is GroupState.COMPLETE and (before is None or before.state is not GroupState.COMPLETE):
            self._metrics.discovery_groups.labels(template, "complete").inc()
            self._log.info("discovered job %s: its group is complete (%s)", name, after.describe())
            self._note(name, f"group {after.value!r} complete: {after.describe()}", data)
            self._to_check.add(name)
        elif after.state is GroupState.FAILED and (before is None or before.state is not GroupState.FAILED):
            self._metrics.discovery_groups.labels(template, "failed").inc()
            self._log.warning("discovered job %s fails: %s", name, after.reason)
            self._to_fail.add(name)
        elif before is None and after.state is GroupState.WAITING:
            self._note(name, "waiting for its group to be complete before it may fire", data)

    def _note(self, name: str, message: str, data: Mapping[str, Any]) -> None:
        self._notes.append(_Note(name, EventKind.GROUP_CHANGED, message, data))

    # ----- what waits for the rebuild -----

    def _pending_follow_up(self) -> bool:
        return bool(self._notes or self._to_fail or self._to_check or self._to_hint)

    async def _follow_up(self) -> None:
        now = self._clock.now()
        notes, self._notes = self._notes, []
        for index, note in enumerate(notes):
            if not await self._db.run(self._store.note, note.name, note.kind, note.message, note.data, now=now):
                # Not there yet: keep this and every later note, in order.
                self._notes = notes[index:] + self._notes
                break
        for name in sorted(self._to_fail):
            if await self._fail(name, now):
                self._to_fail.discard(name)
        for name in sorted(self._to_check):
            job = await self._db.run(self._store.job, name)
            if job is not None and (job.state.is_final or job.removed):
                self._to_check.discard(name)  # it ended (or went with its template) meanwhile: nothing to check
                continue
            if job is None or not self._targets_in_place(job):
                continue  # the rebuild has not put it in place yet
            if self._run_now(name):
                self._to_check.discard(name)
        for name in sorted(self._to_hint):
            notifications = self._to_hint.get(name)  # another template's loop may have passed them on meanwhile
            if notifications is not None:
                await self._pass_on(name, notifications)
            if not notifications and self._to_hint.get(name) is notifications:
                self._to_hint.pop(name, None)

    async def _pass_on(self, name: str, notifications: dict[str, tuple[str, float]]) -> None:
        """Give job ``name`` the notifications about its batches once it runs with them; drop them when it has
        ended, was removed, or its group failed (it fails, unchecked), and any that waited HINT_WAIT."""
        oldest = self._clock.monotonic() - HINT_WAIT
        for target in [t for t, (_, received) in notifications.items() if received < oldest]:
            del notifications[target]
        job = await self._db.run(self._store.job, name)
        if job is None:
            return
        if job.state.is_final or job.removed or self._groups[name].state is GroupState.FAILED:
            notifications.clear()
            return
        have = {t.target for t in job.targets}
        for target, (channel, received) in list(notifications.items()):
            if target in have and self._hint(channel, target, received):
                del notifications[target]

    async def _fail(self, name: str, now: dt.datetime) -> bool:
        """End the job failed once it exists; True when nothing more is to be done."""
        group = self._groups[name]
        job = await self._db.run(self._store.job, name)
        if job is None:
            return False
        if job.state is JobState.WATCHING:
            reason = f"bad group {group.value!r}: {group.reason}; no action was run"
            await self._db.run(self._store.fail_job, name, reason, now=now, kind=EventKind.GROUP_FAILED)
        return True

    def _targets_in_place(self, job: JobSnapshot) -> bool:
        have = {t.target for t in job.targets}
        return all(target in have for target in self._groups[job.name].targets)
