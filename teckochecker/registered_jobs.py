"""Jobs that did not come from a file: registered over the HTTP API (origin ``api``) or found by batch
metadata (origin ``discovered``), kept in the state store so they survive restarts and every replica sees
them.

The files stay the declarative source (Grafana's provisioning model): a file job is read-only through the
API, and when a name is both in a file and registered, the file wins and the conflict is reported (a
warning in the log, ``/api/v1/status``, and ``status`` through the state store), never silently dropped.

A registered body names a template from the files and sets its targets, variables and what the template
declares overridable (config/registered.py): the files say where requests go and with which credentials.
It is validated by the daemon's own validator against the running config's templates, secrets and
defaults. A stored row whose body sets more (stored before that rule) is held: reported, never run.
This module turns the stored rows into JobDefinitions, merges them with the file jobs, and decides what a
PUT or DELETE may do; ``app.Daemon`` applies the result through the same reload path as a file change, so
nothing restarts that did not change.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from teckochecker.clock import Clock
from teckochecker.config.diagnostics import format_path
from teckochecker.config.models import JOB_NAME, JOB_NAME_RULE, SECRET_KINDS
from teckochecker.config.validate import Config, JobDefinition, registered_shape_problems, validate_job_body
from teckochecker.control import Problem, Refusal
from teckochecker.metrics import Metrics
from teckochecker.offloop import run_off_loop
from teckochecker.plugins import PluginRegistry
from teckochecker.secrets.resolving import Redactor
from teckochecker.state.models import JobOrigin, JobSnapshot, JobState, PutOutcome, RegisteredJob, RegistryVersion
from teckochecker.state.store import CONFLICTS_META, StateStore
from teckochecker.state.worker import StoreWorker

# A job is a few levels deep; plugin options add a few more. The validator and the secret scan recurse.
MAX_BODY_DEPTH = 32


def place_of(definition: JobDefinition) -> str:
    """FILE:LINE of a file job: what a refused change names, so the operator knows where to edit."""
    return f"{definition.file}:{definition.line}"


def registered_place(origin: JobOrigin, name: str) -> str:
    """What a registered job has in place of a file (JobDefinition.file, shown in logs)."""
    return f"<{origin.value}:{name}>"


@dataclass(frozen=True)
class Conflict:
    """A name registered and also in a file: the file's job runs, the registered one does not."""

    name: str
    origin: JobOrigin
    file_place: str

    @property
    def message(self) -> str:
        return (
            f"job {self.name!r} is registered ({self.origin.value}) and also defined at {self.file_place}: "
            "the file's job runs; remove one of them"
        )


@dataclass(frozen=True)
class Assembly:
    """The job definitions the daemon runs: the file jobs plus the registered ones they do not shadow."""

    definitions: Mapping[str, JobDefinition]
    origins: Mapping[str, JobOrigin]
    conflicts: tuple[Conflict, ...] = ()
    # Stored rows that no longer validate against the running config (a template or secret was removed).
    invalid: Mapping[str, tuple[Problem, ...]] = field(default_factory=dict)
    # Those of them that are held: their body sets what a registered job may not (stored before that rule).
    held: frozenset[str] = frozenset()

    def counts(self) -> dict[JobOrigin, int]:
        counts = dict.fromkeys(JobOrigin, 0)
        for name in self.definitions:
            counts[self.origins.get(name, JobOrigin.FILE)] += 1
        return counts

    def notes(self) -> tuple[str, ...]:
        """What `status` and /api/v1/status show under the last reload: conflicts and stored jobs left out."""
        return (*(c.message for c in self.conflicts), *(self.note(name) for name in self.invalid))

    def note(self, name: str) -> str:
        """Why stored job ``name`` is not run, and for a held one what to do about it."""
        problems = self.invalid[name]
        first = f"{problems[0].path or 'body'}: {problems[0].message}"
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        if name in self.held:
            return (
                f"registered job {name!r} is held and not run: {first}{more}. To run it, PUT it again with a "
                f"body its template allows (or declare the field under the template's overridable:); "
                f"DELETE /api/v1/jobs/{name} removes it"
            )
        return f"registered job {name!r} no longer validates and is not run: {first}{more}"


class RegisteredDefinitions:
    """The stored rows, validated against one config. A row is validated again only when it or the
    config changed, so a periodic re-read of 10,000 rows costs one comparison each."""

    def __init__(self, plugins: PluginRegistry) -> None:
        self._plugins = plugins
        self._config: Config | None = None
        self._built: dict[str, _Built] = {}

    def build(
        self, rows: list[RegisteredJob], config: Config
    ) -> tuple[dict[str, JobDefinition], dict[str, tuple[Problem, ...]], frozenset[str]]:
        """The rows' definitions; the problems of those that do not validate; which of them are held."""
        if config is not self._config:
            self._config, self._built = config, {}
        built: dict[str, _Built] = {}
        for row in rows:
            cached = self._built.get(row.name)
            if cached is None or cached.fingerprint != row.fingerprint:
                # The row's name is the job's, whether or not its body repeats it.
                body = {**row.body, "name": row.name}
                held = held_problems(row.name, body, row.origin, config, self._plugins)
                if held:
                    cached = _Built(row.fingerprint, None, held, held=True)
                else:
                    definition, problems = validate_body(row.name, body, row.origin, config, self._plugins)
                    cached = _Built(row.fingerprint, definition, problems)
            built[row.name] = cached
        self._built = built
        definitions = {name: b.definition for name, b in built.items() if b.definition is not None}
        invalid = {name: b.problems for name, b in built.items() if b.definition is None}
        return definitions, invalid, frozenset(name for name, b in built.items() if b.held)


@dataclass(frozen=True)
class _Built:
    fingerprint: str
    definition: JobDefinition | None
    problems: tuple[Problem, ...]
    held: bool = False


def held_problems(
    name: str, body: Any, origin: JobOrigin, config: Config, plugins: PluginRegistry
) -> tuple[Problem, ...]:
    """What a stored body sets that a registered job may not: such a row is held, never run."""
    diagnostics = registered_shape_problems(body, config, plugins, where=registered_place(origin, name))
    return tuple(Problem(format_path(d.path), d.message) for d in diagnostics)


def validate_body(
    name: str, body: Any, origin: JobOrigin, config: Config, plugins: PluginRegistry
) -> tuple[JobDefinition | None, tuple[Problem, ...]]:
    definition, diagnostics = validate_job_body(body, config, plugins, where=registered_place(origin, name))
    return definition, tuple(Problem(format_path(d.path), _explained(body, d.path, d.message)) for d in diagnostics)


# What someone writes who tries to give a secret in a job: a value, or a whole secret declaration.
_SECRET_KEYS = frozenset({"value", *SECRET_KINDS})


def _explained(body: Any, path: tuple[str | int, ...], message: str) -> str:
    """A refused mapping that carries a secret's value or declaration gets a message that says so."""
    value = body
    for part in path:
        found = part in value if isinstance(value, dict) else _has_index(value, part)
        if not found:
            return message
        value = value[part]
    if isinstance(value, dict) and _SECRET_KEYS & set(value):
        return (
            "a body never gives a secret, neither its value nor its source: a job uses the secrets its template names"
        )
    return message


def assemble(
    file_jobs: Mapping[str, JobDefinition],
    rows: Mapping[str, RegisteredJob],
    registered: Mapping[str, JobDefinition],
    invalid: Mapping[str, tuple[Problem, ...]],
    held: frozenset[str] = frozenset(),
) -> Assembly:
    """File jobs first; a registered job joins unless a file job has its name (a conflict, reported)."""
    definitions = dict(file_jobs)
    origins: dict[str, JobOrigin] = {}
    conflicts = []
    for name, definition in registered.items():
        if name in file_jobs:
            conflicts.append(Conflict(name, rows[name].origin, place_of(file_jobs[name])))
            continue
        definitions[name] = definition
        origins[name] = rows[name].origin
    return Assembly(definitions, origins, tuple(conflicts), dict(invalid), held)


# ----- what the API may do -----


def body_problems(name: str, body: Any, redactor: Redactor) -> tuple[Problem, ...]:
    """What is wrong with a body before the validator sees it: its shape, its name, and secret values."""
    if not JOB_NAME.fullmatch(name):
        return (Problem("name", f"invalid job name in the URL: {JOB_NAME_RULE}"),)
    if not isinstance(body, dict):
        return (Problem("", "the body must be a JSON object: a template from the files and its targets"),)
    if _depth(body) > MAX_BODY_DEPTH:
        return (Problem("", f"nested deeper than {MAX_BODY_DEPTH} levels: no job is"),)
    problems = []
    if "name" in body and body["name"] != name:
        problems.append(Problem("name", "differs from the name in the URL (leave it out, or make them equal)"))
    if "secrets" in body:
        problems.append(
            Problem("secrets", "a job names secrets defined in the daemon's config; it never declares or carries them")
        )
    for path in _not_text(body, ()):
        # JSON's "\ud800" is half of a UTF-16 pair: Python holds it, nothing can store, log or send it (it was a 500).
        problems.append(Problem(path, "is not valid Unicode text (a lone surrogate)"))
    for path, text in _strings(body, ()):
        # A value the daemon resolved, or the shape of a token or an Authorization header: refused, not stored.
        if redactor.redact(text) != text:
            problems.append(Problem(path, "looks like a secret value: name a secret defined under 'secrets:'"))
    return tuple(problems)


def _has_index(value: Any, part: str | int) -> bool:
    return isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value)


def _depth(value: Any) -> int:
    """How deeply ``value`` nests, without recursion (a hostile body may nest thousands deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth <= MAX_BODY_DEPTH:
            children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
            stack.extend((child, depth + 1) for child in children)
    return deepest


def _strings(value: Any, path: tuple[str | int, ...]) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield format_path(path), value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, (*path, str(key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, (*path, index))


def _not_text(value: Any, path: tuple[str | int, ...]) -> Iterator[str]:
    """The paths of the keys and strings in ``value`` that cannot be encoded as UTF-8."""
    if isinstance(value, str) and not _encodable(value):
        yield format_path(path)
    elif isinstance(value, dict):
        for key, item in value.items():
            if not _encodable(str(key)):
                yield format_path((*path, str(key)))
            else:
                yield from _not_text(item, (*path, str(key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _not_text(item, (*path, index))


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class RegisteredJobs:
    """The daemon's view of the registered jobs: the rows last read, the assembly last applied, and the
    checks a PUT or DELETE must pass. Reads and writes go through the store worker."""

    def __init__(
        self,
        store: StateStore,
        worker: StoreWorker,
        plugins: PluginRegistry,
        redactor: Redactor,
        metrics: Metrics,
        logger: logging.Logger,
        clock: Clock,
    ) -> None:
        self._clock = clock
        self._store = store
        self._db = worker
        self._plugins = plugins
        self._redactor = redactor
        self._metrics = metrics
        self._log = logger
        self._definitions = RegisteredDefinitions(plugins)
        self._rows: dict[str, RegisteredJob] = {}
        self._version: RegistryVersion | None = None
        # The version of the rows the last assembly was built from: a PUT's read must not hide a change
        # another process made from the periodic check (needs_rebuild).
        self._assembled: RegistryVersion | None = None
        self._assembling: RegistryVersion | None = None
        self._reported: frozenset[str] = frozenset()
        # Updates of a watching job stored but not yet seen applied, with the row they replaced.
        self._replaced: dict[str, RegisteredJob] = {}
        self.assembly = Assembly({}, {})

    async def read_if_changed(self) -> bool:
        """Re-read the rows when the store's cheap version differs from the last one read; True if it did.
        Only rows whose fingerprint or update time moved are read with their bodies."""
        version = await self._db.run(self._store.registry_version)
        if version == self._version:
            return False
        stamps = await self._db.run(self._store.registered_stamps)
        known = self._rows
        moved = [n for n, stamp in stamps.items() if n not in known or _stamp(known[n]) != stamp]
        fresh = {r.name: r for r in await self._db.run(self._store.registered_jobs, moved)} if moved else {}
        # A row removed between the two reads is left out now; the next version check picks that up.
        self._rows = {n: fresh.get(n) or known[n] for n in sorted(stamps) if n in fresh or n in known}
        self._version = version
        return True

    async def needs_rebuild(self) -> bool:
        """True when the stored rows differ from those the running definitions were built from."""
        await self.read_if_changed()
        return self._version != self._assembled

    async def assemble(self, config: Config) -> Assembly:
        """The definitions to run with ``config``: its file jobs plus the registered rows last read.

        Validating is pure CPU work and, after a config change, covers every row: off the event loop, so
        /healthz and the ticks keep running. Only the reload loop calls this, one call at a time."""
        rows, self._assembling = list(self._rows.values()), self._version
        registered, invalid, held = await run_off_loop("registered-jobs", self._definitions.build, rows, config)
        assembly = assemble(config.jobs, self._rows, registered, invalid, held)
        self._report(assembly)
        return assembly

    async def applied(self, assembly: Assembly) -> None:
        """``assembly`` now runs: count it by origin, and tell `status` (through the store) about conflicts."""
        self.assembly, self._assembled = assembly, self._assembling
        for origin, count in assembly.counts().items():
            self._metrics.jobs_by_origin.labels(origin.value).set(count)
        self._metrics.registered_jobs_held.set(len(assembly.held))
        shadowed = json.dumps({"shadowed": sorted(c.name for c in assembly.conflicts), "notes": assembly.notes()})
        if await self._db.run(self._store.get_meta, CONFLICTS_META) != shadowed:
            await self._db.run(self._store.set_meta, CONFLICTS_META, shadowed)

    def held_note(self, name: str) -> str | None:
        """Why stored job ``name`` is held or no longer validates, if it is (GET /api/v1/jobs/NAME shows it)."""
        return self.assembly.note(name) if name in self.assembly.invalid else None

    def _report(self, assembly: Assembly) -> None:
        # Once per conflict or invalid row, not at every periodic re-read.
        current = frozenset(assembly.notes())
        for note in sorted(current - self._reported):
            self._log.warning("%s", note)
        self._reported = current

    # ----- the API's PUT and DELETE -----

    async def put(self, name: str, body: Any, config: Config) -> PutOutcome | Refusal:
        """Validate and store; the caller then applies the change (Daemon.rebuild_registered)."""
        problems = body_problems(name, body, self._redactor)
        if problems:
            return Refusal(422, f"job {name!r} is not valid", problems)
        body = {"name": name, **body}
        await self.read_if_changed()  # another replica may have written this name since the last read
        if name in config.jobs:
            return _read_only(name, config.jobs[name])
        row = self._rows.get(name)
        if row is not None and row.origin is not JobOrigin.API:
            return _not_ours(name, row.origin, "replaced")
        definition, problems = validate_body(name, body, JobOrigin.API, config, self._plugins)
        if definition is None:
            return Refusal(422, f"job {name!r} is not valid", problems)
        job = await self._db.run(self._store.job, name)
        fired = _fired_with_another_definition(name, job, definition)
        if fired is not None:
            return Refusal(409, fired)
        outcome = await self._db.run(self._store.put_registered_job, name, JobOrigin.API, body, now=self._clock.now())
        if outcome is PutOutcome.UPDATED and row is not None and job is not None and job.state is JobState.WATCHING:
            self._replaced[name] = row
        return outcome

    async def fired_meanwhile(self, name: str) -> Refusal | None:
        """After an update was applied: if the job fired between the PUT's check and the rebuild, the fired
        definition finishes as it is, so the update did not apply. The previous body is stored back (the
        caller rebuilds again) and the answer says so, instead of claiming an update that never ran."""
        previous = self._replaced.pop(name, None)
        if previous is None:
            return None
        job = await self._db.run(self._store.job, name)
        if job is None or job.state is JobState.WATCHING:
            return None
        await self._db.run(self._store.put_registered_job, name, previous.origin, previous.body, now=self._clock.now())
        return Refusal(
            409,
            f"job {name!r} fired (state {job.state.value}) before this change was applied; the fired definition "
            "finishes as it is and the stored job was put back. Register the new one under another name",
        )

    async def remove(self, name: str, config: Config) -> bool | Refusal:
        """False if no job of that name is registered over the API."""
        await self.read_if_changed()
        row = self._rows.get(name)
        if row is None and name in config.jobs:
            return _read_only(name, config.jobs[name])
        if row is not None and row.origin is not JobOrigin.API:
            return _not_ours(name, row.origin, "removed")
        job = await self._db.run(self._store.job, name) if row is not None else None
        if job is not None and job.state is JobState.FIRING:
            # Its actions are still being started or followed: a restart or failover without the row would
            # leave them unfinished (an in-doubt start never reconciled, a Keboola job not followed).
            return Refusal(
                409,
                f"job {name!r} is firing: it can be removed once its actions have finished "
                f"(see GET /api/v1/jobs/{name})",
            )
        return await self._db.run(self._store.remove_registered_job, name)


def _fired_with_another_definition(name: str, job: JobSnapshot | None, definition: JobDefinition) -> str | None:
    # A removed job keeps its state: registering it again under a changed definition would never fire.
    if job is None or job.state is JobState.WATCHING or job.fingerprint == definition.fingerprint:
        return None
    return (
        f"job {name!r} already fired (state {job.state.value}); its definition cannot change. "
        "Register the new one under another name"
    )


def _stamp(row: RegisteredJob) -> tuple[str, dt.datetime]:
    return row.fingerprint, row.updated_at


def _not_ours(name: str, origin: JobOrigin, verb: str) -> Refusal:
    return Refusal(409, f"job {name!r} was {origin.value}, not registered over the API; it is not {verb} here")


def _read_only(name: str, definition: JobDefinition) -> Refusal:
    return Refusal(409, f"job {name!r} is defined at {place_of(definition)} and is read-only through the API")
