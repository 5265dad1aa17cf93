"""A source and an action for tests, registered through pluggy like any plugin (TECKOCHECKER_PLUGINS).

`status_file` reads target states from a JSON file the test edits; `record` appends every start to a
JSON-lines ledger (the ground truth of how often an action really ran) and can search it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from teckochecker import hookimpl
from teckochecker.errors import InDoubt, NotStarted, PermanentError, Rejected, TransientError
from teckochecker.plugin_api import (
    Action,
    ActionOutcome,
    ActionRequest,
    ActionResult,
    CheckReport,
    Duration,
    Observation,
    OptionsModel,
    PluginContext,
    SecretName,
    Source,
    TargetState,
)


class StatusFileOptions(OptionsModel):
    path: str
    token: SecretName | None = None
    # Every check appends a line here, so tests can count checks.
    check_log: str | None = None


class StatusFileSource(Source):
    """File content: {"target": "succeeded" | {"state": ..., "status": ...} | {"error": "cannot see it"},
    "__error__": "transient"|"permanent", "__message__": "the transient error's text"}."""

    type_name = "status_file"
    Options = StatusFileOptions

    async def check(self, targets: Sequence[str]) -> CheckReport:
        options: StatusFileOptions = self.options  # type: ignore[assignment]
        if options.token:
            self.context.secret(options.token)
        if options.check_log:
            _append(Path(options.check_log), {"targets": list(targets)})
        try:
            data = json.loads(Path(options.path).read_text())
        except FileNotFoundError:
            data = {}
        error = data.get("__error__")
        if error == "transient":
            message = data.get("__message__", "status file says: try later")
            raise TransientError(message, retry_after=data.get("__retry_after__"))
        if error == "permanent":
            raise PermanentError("status file says: credentials rejected")
        observations, unobserved = [], {}
        for target in targets:
            entry = data.get(target, "pending")
            if entry == "unseen":  # not observed yet, and no error either (a listing that has not reached it)
                continue
            if isinstance(entry, str):
                entry = {"state": entry, "status": entry}
            if "error" in entry:
                unobserved[target] = entry["error"]
                continue
            details = {"seen": True, **entry.get("details", {})}
            observations.append(Observation(target, TargetState(entry["state"]), entry.get("status"), details))
        return CheckReport(tuple(observations), unobserved)


class RecordOptions(OptionsModel):
    ledger: str
    outcome: Literal["succeeded", "failed", "running"] = "succeeded"
    fault: Literal["none", "not_started", "in_doubt_created", "in_doubt_not_created", "reject"] = "none"
    searchable: bool = True
    target: str = "default"
    # False: the action is done as soon as it started (nothing to follow).
    follow: bool = True
    # While this file exists, the downstream system is unreachable: starts are not sent, follows and
    # searches fail; the file's text is the error.
    outage: str | None = None
    # After a start that followed searches that found nothing: how long to look for a duplicate.
    duplicate_watch: Duration = 3600.0


class RecordAction(Action):
    type_name = "record"
    Options = RecordOptions

    def __init__(self, options: OptionsModel, context: PluginContext) -> None:
        super().__init__(options, context)
        self.duplicate_watch = self.options.duplicate_watch  # type: ignore[attr-defined]

    @property
    def target_key(self) -> str:
        return f"record:{self.options.target}"  # type: ignore[attr-defined]

    async def start(self, request: ActionRequest) -> ActionResult:
        options: RecordOptions = self.options  # type: ignore[assignment]
        if outage := _outage(options):
            raise NotStarted(outage)
        if options.fault == "not_started":
            raise NotStarted("connection refused (test)")
        if options.fault == "reject":
            raise Rejected("downstream said 400 (test)")
        if options.fault == "in_doubt_not_created":
            raise InDoubt("read timeout (test)")
        entry = {
            "id": uuid.uuid4().hex[:12],
            "trigger_id": request.trigger_id,
            "job": request.job_name,
            "targets": {o.target: o.state.value for o in request.targets},
            "at": self.context.clock.now().isoformat(),
        }
        _append(Path(options.ledger), entry)
        if options.fault == "in_doubt_created":
            raise InDoubt("connection reset after sending (test)")
        if not options.follow:
            return ActionResult(entry["id"], ActionOutcome(options.outcome), options.outcome)
        return ActionResult(entry["id"], ActionOutcome.RUNNING, "created")

    async def find_started(self, request: ActionRequest, since: dt.datetime) -> Sequence[ActionResult] | None:
        if not self.options.searchable:  # type: ignore[attr-defined]
            return None
        if outage := _outage(self.options):  # type: ignore[arg-type]
            raise TransientError(outage)
        return [
            ActionResult(e["id"], ActionOutcome.RUNNING, "created")
            for e in _read(Path(self.options.ledger))  # type: ignore[attr-defined]
            if e["trigger_id"] == request.trigger_id
        ]

    async def follow(self, started: ActionResult) -> ActionResult:
        if outage := _outage(self.options):  # type: ignore[arg-type]
            raise TransientError(outage)
        outcome = ActionOutcome(self.options.outcome)  # type: ignore[attr-defined]
        return ActionResult(started.external_id, outcome, outcome.value, message=f"test outcome {outcome.value}")


def _outage(options: RecordOptions) -> str | None:
    if options.outage is None:
        return None
    try:
        return Path(options.outage).read_text().strip() or "unreachable (test)"
    except FileNotFoundError:
        return None


def _append(path: Path, entry: dict[str, object]) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _read(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@hookimpl
def teckochecker_source_types() -> list[type[Source]]:
    return [StatusFileSource]


@hookimpl
def teckochecker_action_types() -> list[type[Action]]:
    return [RecordAction]
