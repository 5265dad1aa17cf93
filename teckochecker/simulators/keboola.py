"""A fake Keboola stack on 127.0.0.1: the connection host (service discovery) and the Queue API host.

Follows docs/vendors.md, Keboola. Given the Queue API OpenAPI document
(`openapi_spec`, tests/contracts/keboola-queue-openapi.yaml in the tests), it checks every queue request
against it with openapi-core; requests that do not validate are listed in `contract_violations`, and an
invalid POST /jobs body is also answered 400.

Lifecycle is scripted per configuration (`set_outcome`) and advanced by GET /jobs/{id}, so tests control
time by polling, not by sleeping. `jobs` is the ground-truth ledger of every job ever created.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import random
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._http import Hang, Latency, LoopbackFake, Outcome, RecordedRequest, Reply, Reset, json_reply

__all__ = [
    "FINISHED_STATUSES",
    "POST_FAULT_MODES",
    "FakeKeboola",
    "RecordedRequest",
    "response_violations",
    "spec_violations",
]

FINISHED_STATUSES = frozenset({"success", "warning", "error", "cancelled", "terminated"})
OUTCOME_STATUSES = frozenset({"success", "warning", "error"})
POST_FAULT_MODES = (
    "reject_400",
    "reject_401",
    "503_before_create",
    "create_then_503",
    "create_then_reset",
    "create_then_hang",
    "slow_create",
    "503_echo_token",
)  # plus "reject_<any 4xx/5xx code>" and "create_then_<any 4xx/5xx code>"
_BEFORE_CREATE = re.compile(r"^(reject_(\d{3})|503_before_create|503_echo_token)$")
_AFTER_CREATE = re.compile(r"^create_then_(\d{3})$")  # create_then_502 etc.: created, then that error
_JOB_PATH = re.compile(r"^/jobs/([^/]+)$")
_KILL_PATH = re.compile(r"^/jobs/([^/]+)/kill$")
_BRACKET_KEY = re.compile(r"^(.+?)\[\d*\]$")  # status[] and status[0] → status; componentProps[type] stays
_RELATIVE_TIME = re.compile(r"^([+-]?\d+)\s*(second|sec|minute|min|hour|day|week)s?(\s+ago)?$")
_DEFAULT_MESSAGES = {
    "success": "Component processing finished.",
    "warning": "One of the child jobs failed.",
    "error": "User error: the component failed.",
    "cancelled": "Job has been cancelled.",
    "terminated": "Job has been terminated.",
}


# ----- OpenAPI request validation ------------------------------------------------------------------


@functools.cache
def _openapi(path: Path) -> Any:
    """The compiled document, once per process (loading it takes ~0.4 s; requests then take ~2 ms).

    openapi-core is a test dependency: only a simulator given the document imports it."""
    import yaml
    from openapi_core import OpenAPI

    spec = yaml.safe_load(path.read_text())
    # The document lists the real queue hosts as servers; a relative server matches our loopback host.
    spec["servers"] = [{"url": "/"}]
    return OpenAPI.from_dict(spec)


class _SpecRequest:
    """The request shape openapi-core validates (its Request protocol)."""

    def __init__(self, request: RecordedRequest, host_url: str) -> None:
        from openapi_core.datatypes import RequestParameters
        from werkzeug.datastructures import Headers, ImmutableMultiDict

        self.host_url = host_url
        self.path = request.path
        self.method = request.method.lower()
        self.body = request.body
        self.content_type = request.headers.get("content-type", "").lower()
        # PHP-style array keys (k[] and k[0]) are the documented way to send arrays, so validate them as k.
        # The deprecated aliases share their successor's schema; renaming them avoids openapi-core's
        # DeprecationWarning (its per-request warning is noise, and the aliases are still valid).
        query = [
            (_ALIASES.get(name, name), v)
            for k, values in request.query.items()
            for name in (_plain_key(k),)
            for v in values
        ]
        self.parameters = RequestParameters(query=ImmutableMultiDict(query), header=Headers(request.headers))


def _plain_key(key: str) -> str:
    match = _BRACKET_KEY.match(key)
    return match.group(1) if match else key


def _describe(error: Exception) -> str:
    """One readable line: the jsonschema messages when there are any, else the error itself."""
    schema_errors = getattr(error.__cause__, "schema_errors", None)
    if not schema_errors:
        return f"{type(error).__name__}: {error}"
    where = "request body" if "Body" in type(error).__name__ else str(error)
    details = "; ".join(f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in schema_errors)
    return f"{type(error).__name__}: {where}: {details}"


def spec_violations(spec: Path, request: RecordedRequest, host_url: str) -> list[str]:
    """Every way `request` breaks the Queue API document `spec` (empty when it conforms)."""
    return [_describe(e) for e in _openapi(spec).iter_request_errors(_SpecRequest(request, host_url))]


# Where the document and the real API (as the contract records it) disagree, responses follow the real API.
# `response_violations` forgives exactly these, so everything else in a response is still checked:
_OBJECT_FIELDS = ("configData", "result", "backend", "metrics", "variableValuesData")  # PHP sends [] for {}


def _as_documented(job: dict[str, Any]) -> dict[str, Any]:
    job = {k: ({} if k in _OBJECT_FIELDS and v == [] else v) for k, v in job.items()}
    if job.get("branchId") is None:
        job.pop("branchId", None)  # "Jobs from the main branch will have branchId = null" but not nullable
    if job.get("mode") == "forceRun":
        job["mode"] = "run"  # the Job schema's mode enum omits forceRun; PHPCLI's DTO has it
    return job


def response_violations(spec: Path, request: RecordedRequest, host_url: str, status: int, payload: Any) -> list[str]:
    """How a queue response breaks the document, after forgiving the documented PHP-isms above."""
    from openapi_core.testing import MockResponse

    if isinstance(payload, list):
        payload = [_as_documented(j) for j in payload]
    elif isinstance(payload, dict) and "component" in payload:
        payload = _as_documented(payload)
    response = MockResponse(json.dumps(payload).encode(), status_code=status)
    errors = _openapi(spec).iter_response_errors(_SpecRequest(request, host_url), response)
    return [_describe(e) for e in errors]


# ----- small helpers -------------------------------------------------------------------------------


def _iso(epoch: float) -> str:
    """The real API's format: "2022-01-25T16:34:40+00:00"."""
    return dt.datetime.fromtimestamp(int(epoch), dt.UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def _exception_id() -> str:
    return "exception-" + hashlib.md5(secrets.token_bytes(16)).hexdigest()


def error_body(message: str, code: int) -> dict[str, Any]:
    """Keboola's error envelope: always these five keys (contract §5)."""
    return {"error": message, "code": code, "exceptionId": _exception_id(), "status": "error", "context": []}


def _error(code: int, message: str) -> Reply:
    return json_reply(code, error_body(message, code))


def _parse_time(text: str, now: float) -> float:
    """ISO 8601 (with or without offset/time) or the simple PHP relative forms ("-8 hours", "today")."""
    text = text.strip()
    lowered = text.lower()
    if lowered == "now":
        return now
    if lowered in ("today", "yesterday"):
        midnight = dt.datetime.fromtimestamp(now, dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        return midnight.timestamp() - (86400 if lowered == "yesterday" else 0)
    match = _RELATIVE_TIME.match(lowered)
    if match:
        unit = {"second": 1, "sec": 1, "minute": 60, "min": 60, "hour": 3600, "day": 86400, "week": 604800}
        amount = int(match.group(1)) * unit[match.group(2)]
        return now - amount if match.group(3) else now + amount
    parsed = dt.datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


# ----- state ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Script:
    status: str = "success"
    processing_after_gets: int = 1
    finish_after_gets: int = 2
    message: str | None = None


@dataclass
class _Fault:
    mode: str
    times: int
    delay: float


@dataclass
class _JobState:
    """What the fake knows about a job beyond the job object."""

    job: dict[str, Any]
    seq: int
    created_mono: float
    created_epoch: float
    lock_key: tuple[str, str, str | None] | None  # component, config, branch; None = no config lock
    script: _Script
    not_before: float | None = None  # delayed start (epoch)
    started_epoch: float | None = None
    gets: int = 0  # GETs counted toward the script (only while the job may run)


class FakeKeboola(LoopbackFake):
    """Fake connection host (`stack_url`) + Queue API host (`queue_url`). See the module docstring."""

    def __init__(
        self,
        *,
        token: str = "kbc-test-token",
        token_id: str = "4242",
        search_lag: float = 0.0,
        openapi_spec: Path | None = None,
        token_description: str = "teckochecker@example.com",
        project_id: str = "7150",
        project_name: str = "TeckoChecker Fake",
        record_requests: bool = True,
        latency: Latency | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """``latency``: every answer is held this long (mean ± jitter, drawn from ``rng``), as across a WAN."""
        super().__init__(("stack", "queue"), record_requests=record_requests, latency=latency, rng=rng)
        # Token value → its Storage record (id, description); a job records the id of the token that made it.
        self._tokens: dict[str, dict[str, str]] = {token: {"id": token_id, "description": token_description}}
        self._project = {"id": project_id, "name": project_name}
        self.search_lag = search_lag
        # Whether /search/jobs results leave out variableValuesData (unconfirmed for the real index).
        self.search_omits_variables = False
        # Given the Queue API document, every queue request is checked against it (tests do; the demo does not).
        self.openapi_spec = openapi_spec
        self.jobs: list[dict[str, Any]] = []
        self.contract_violations: list[str] = []
        self._states: dict[str, _JobState] = {}
        self._configs: dict[tuple[str, str], dict[str, Any]] = {}
        self._scripts: dict[tuple[str, str], _Script] = {}
        self._faults: list[_Fault] = []
        self._next_id = 1_000_000_000
        if openapi_spec is not None:
            _openapi(openapi_spec)  # compile now, not inside the first request's timeout

    # ----- test-facing API -------------------------------------------------------------------------

    @property
    def stack_url(self) -> str:
        return self._url("stack")

    @property
    def queue_url(self) -> str:
        return self._url("queue")

    def add_token(self, token: str, token_id: str, description: str) -> None:
        """Another valid Storage token of the project (e.g. a person's, running a job by hand)."""
        with self._lock:
            self._tokens[token] = {"id": token_id, "description": description}

    def add_config(self, component: str, config_id: str, *, disabled: bool = False, tag: str | None = None) -> None:
        with self._lock:
            self._configs[(component, config_id)] = {"disabled": disabled, "tag": tag}

    def set_outcome(
        self,
        component: str,
        config_id: str,
        status: str = "success",
        *,
        processing_after_gets: int = 1,
        finish_after_gets: int = 2,
        message: str | None = None,
    ) -> None:
        """Script jobs of this config: `processing` at the Nth counted GET, `status` at the Mth."""
        if status not in OUTCOME_STATUSES:
            raise ValueError(f"outcome must be one of {sorted(OUTCOME_STATUSES)}, not {status!r}")
        if not 0 <= processing_after_gets <= finish_after_gets:
            raise ValueError("need 0 <= processing_after_gets <= finish_after_gets")
        with self._lock:
            self._scripts[(component, config_id)] = _Script(status, processing_after_gets, finish_after_gets, message)

    def finish_job(self, job_id: str, status: str, message: str | None = None) -> None:
        if status not in FINISHED_STATUSES:
            raise ValueError(f"status must be one of {sorted(FINISHED_STATUSES)}, not {status!r}")
        with self._lock:
            self._finish(self._states[job_id], status, message)

    def post_fault(self, mode: str, *, times: int = 1, delay: float = 0.0) -> None:
        """The next `times` POST /jobs (with a valid token and body) misbehave; see POST_FAULT_MODES."""
        if mode not in POST_FAULT_MODES and not _BEFORE_CREATE.match(mode) and not _AFTER_CREATE.match(mode):
            raise ValueError(f"unknown POST fault mode {mode!r}; known: {POST_FAULT_MODES}")
        with self._lock:
            self._faults.append(_Fault(mode, times, delay))

    def jobs_for(self, component: str, config_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [j for j in self.jobs if j["component"] == component and j["config"] == config_id]

    def job(self, job_id: str) -> dict[str, Any]:
        """The live job dict (the ledger entry)."""
        with self._lock:
            return self._states[job_id].job

    # ----- HTTP side -------------------------------------------------------------------------------

    def handle(self, request: RecordedRequest) -> Outcome:
        if request.service == "stack":
            return self._stack(request)
        return self._queue(request)

    def _stack(self, request: RecordedRequest) -> Reply:
        if request.method == "GET" and request.path in ("/v2/storage", "/v2/storage/"):
            return json_reply(200, self._index(request.query.get("exclude", [""])[-1]))
        if request.method == "GET" and request.path.rstrip("/") == "/v2/storage/tokens/verify":
            return self._verify(request.headers.get("x-storageapi-token", ""))
        return _error(404, f'Route "{request.method} {request.path}" not found')

    def _verify(self, token: str) -> Reply:
        """Storage's "who am I" (contract §4a): the token's record, including the full token value."""
        with self._lock:
            record = self._tokens.get(token)
        if record is None:
            return _error(401, "Invalid access token")
        return json_reply(
            200,
            {
                "id": record["id"],
                "token": token,
                "description": record["description"],
                "uri": f"{self.stack_url}/v2/storage/tokens/{record['id']}",
                "isMasterToken": False,
                "canManageBuckets": False,
                "canManageTokens": False,
                "canReadAllFileUploads": False,
                "canPurgeTrash": False,
                "created": "2026-01-01T00:00:00+0000",
                "refreshed": "2026-01-01T00:00:00+0000",
                "expires": None,
                "isExpired": False,
                "isDisabled": False,
                "dailyCapacity": 0,
                "bucketPermissions": {},
                "owner": {"id": int(self._project["id"]), "name": self._project["name"], "features": [], "limits": {}},
                "organization": {"id": "1"},
            },
        )

    def _index(self, exclude: str) -> dict[str, Any]:
        # The queue is deliberately not the first service: clients must pick it by id.
        index: dict[str, Any] = {
            "host": self.stack_url.removeprefix("http://"),
            "api": "storage",
            "version": "v2",
            "revision": "fake",
            "documentation": "https://keboola.docs.apiary.io/",
            "components": [],
            "services": [
                {"id": "encryption", "url": self.stack_url + "/encryption"},
                {"id": "queue", "url": self.queue_url},
                {"id": "sync-actions", "url": self.stack_url + "/sync-actions"},
            ],
            "features": [],
            "urlTemplates": {
                "orchestrationJob": "/admin/projects/{projectId}/orchestrations/{orchestrationId}/jobs/{jobId}"
            },
        }
        if "components" in exclude.split(","):
            del index["components"]
        else:
            with self._lock:
                names = sorted({component for component, _ in self._configs})
            index["components"] = [{"id": n, "type": "application", "name": n} for n in names]
        return index

    def _queue(self, request: RecordedRequest) -> Outcome:
        violations = (
            spec_violations(self.openapi_spec, request, self.queue_url) if self.openapi_spec is not None else []
        )
        if violations:
            line = f"{request.method} {request.path}: " + " | ".join(violations)
            with self._lock:
                self.contract_violations.append(line)
        if request.headers.get("x-storageapi-token") not in self._tokens:
            return _error(401, "Invalid access token")
        path = request.path.rstrip("/") or "/"
        if request.method == "POST" and path == "/jobs":
            if violations:
                return _error(400, "Invalid request: " + " | ".join(violations))
            return self._create(request)
        return self._route_read(request, path)

    def _route_read(self, request: RecordedRequest, path: str) -> Reply:
        job_match, kill_match = _JOB_PATH.match(path), _KILL_PATH.match(path)
        if request.method == "GET" and path in ("/search/jobs", "/jobs"):  # GET /jobs: the deprecated list
            return self._search(request.query)
        if request.method == "GET" and job_match:
            return self._get(job_match.group(1))
        if request.method == "POST" and kill_match:
            return self._kill(kill_match.group(1))
        return _error(404, f'Route "{request.method} {request.path}" not found')

    # ----- POST /jobs ------------------------------------------------------------------------------

    def _create(self, request: RecordedRequest) -> Outcome:
        fault = self._take_fault()
        if fault is not None and fault.delay > 0 and self._stopping.wait(fault.delay):
            return Hang()  # stopped while "slow": nothing created, connection closed
        if fault is not None:
            before = self._before_create(fault.mode, request)
            if before is not None:
                return before
        try:
            body = json.loads(request.body or b"{}")
        except ValueError:
            return _error(400, "Request body is not valid JSON.")
        with self._lock:
            created = self._create_job(body if isinstance(body, dict) else None, request.headers)
            if isinstance(created, Reply):
                return created
            reply = json_reply(201, created.job)
        return _after_create(fault.mode if fault else None, reply)

    def _take_fault(self) -> _Fault | None:
        with self._lock:
            if not self._faults:
                return None
            fault = self._faults[0]
            fault.times -= 1
            if fault.times <= 0:
                self._faults.pop(0)
            return fault

    def _before_create(self, mode: str, request: RecordedRequest) -> Reply | None:
        match = _BEFORE_CREATE.match(mode)
        if match is None:
            return None
        if mode == "503_before_create":
            return _error(503, "Service Unavailable")
        if mode == "503_echo_token":
            # A careless proxy quoting the request it failed on: the token, Python-quoted (\t → \\t).
            return _error(
                503, f"upstream failed on the request with token {request.headers.get('x-storageapi-token')!r}"
            )
        code = int(match.group(2))
        if code == 401:
            return _error(401, "Invalid access token")
        if code == 400:
            component = _component_of(request.body)
            return _error(400, f'The component "{component}" is not runnable.')
        return _error(code, f"Fake rejection with HTTP {code}.")

    def _create_job(self, body: dict[str, Any] | None, headers: dict[str, str]) -> _JobState | Reply:
        problem = self._business_problem(body)
        if problem is not None:
            return _error(400, problem)
        assert body is not None
        self._next_id += 1
        job_id = str(self._next_id)
        state = self._new_state(job_id, body, headers.get("x-kbc-runid"), headers.get("x-storageapi-token", ""))
        self._states[job_id] = state
        self.jobs.append(state.job)
        return state

    def _business_problem(self, body: dict[str, Any] | None) -> str | None:
        """The checks the real queue makes at creation (INTERNAL NewJobDefinition / JobRuntimeResolver)."""
        if body is None:
            return "Request body must be a JSON object."
        component = body.get("component")
        if not isinstance(component, str) or not component:
            return 'The child config "component" under "job" must be configured.'
        if body.get("mode", "run") not in ("run", "debug", "forceRun"):
            return 'Mode must be one of "run", "forceRun" or "debug".'
        data = body.get("variableValuesData")
        values = data.get("values") if isinstance(data, dict) else None
        if body.get("variableValuesId") and values:
            return 'Provide either "variableValuesId" or "variableValuesData", but not both.'
        values_problem = _values_problem(values)
        if values_problem is not None:
            return values_problem
        delay_problem = _delay_problem(body.get("delay"), body.get("delayedStartTime"))
        if delay_problem is not None:
            return delay_problem
        return self._config_problem(component, body.get("config"), body.get("mode", "run"))

    def _config_problem(self, component: str, config: Any, mode: str) -> str | None:
        if config in (None, ""):
            return None
        settings = self._configs.get((component, str(config)))
        if settings is None:
            return f'Cannot resolve job parameters: Configuration "{config}" not found'
        if settings["disabled"] and mode != "forceRun":
            return f'Configuration "{config}" of component "{component}" is disabled.'
        return None

    def _new_state(self, job_id: str, body: dict[str, Any], parent_run_id: str | None, token: str) -> _JobState:
        now_epoch, component = time.time(), body["component"]
        config = str(body["config"]) if body.get("config") not in (None, "") else None
        branch = str(body["branchId"]) if body.get("branchId") is not None else None
        not_before = _not_before(body, now_epoch)
        job = self._job_object(job_id, body, parent_run_id, now_epoch, config, branch, not_before)
        job["token"] = dict(self._tokens[token])  # the creator's id and description, never its value
        return _JobState(
            job=job,
            seq=self._next_id,
            created_mono=time.monotonic(),
            created_epoch=now_epoch,
            lock_key=(component, config, branch) if config is not None else None,
            script=self._scripts.get((component, config or ""), _Script()),
            not_before=not_before,
        )

    def _job_object(
        self,
        job_id: str,
        body: dict[str, Any],
        parent_run_id: str | None,
        now_epoch: float,
        config: str | None,
        branch: str | None,
        not_before: float | None,
    ) -> dict[str, Any]:
        """A Job exactly like the contract's example create response (keys in that order)."""
        component = body["component"]
        settings = self._configs.get((component, config or ""), {})
        return {
            "id": job_id,
            "runId": f"{parent_run_id}.{job_id}" if parent_run_id else job_id,
            "parentRunId": parent_run_id or "",
            "project": dict(self._project),
            "token": {},  # set by _new_state to the creating token's record
            "status": "created",
            "desiredStatus": "processing",
            "mode": body.get("mode", "run"),
            "component": component,
            "config": config,
            "configData": body.get("configData", []),  # PHP serialises an empty array as []
            "configRowIds": list(body.get("configRowIds") or []),
            "tag": body.get("tag") or settings.get("tag") or "1.2.3",
            "createdTime": _iso(now_epoch),
            "startTime": None,
            "endTime": None,
            "durationSeconds": 0,
            "result": [],
            "usageData": [],
            "isFinished": False,
            "url": f"{self.queue_url}/jobs/{job_id}",
            "branchId": branch,
            "variableValuesId": body.get("variableValuesId"),
            "variableValuesData": body.get("variableValuesData") or {"values": []},
            "backend": body.get("backend") or {},
            "executor": body.get("executor", "dind"),
            "metrics": [],
            "behavior": {"onError": None},
            "parallelism": body.get("parallelism"),
            "type": "standard",
            "orchestrationJobId": None,
            "orchestrationTaskId": None,
            "onlyOrchestrationTaskIds": None,
            "previousJobId": None,
            "delayedStartTime": _iso(not_before) if not_before else None,
        }

    # ----- GET /jobs/{id}, kill, lifecycle ---------------------------------------------------------

    def _get(self, job_id: str) -> Reply:
        with self._lock:
            state = self._states.get(job_id)
            if state is None:
                return _error(404, f'Job "{job_id}" not found')
            self._advance(state, counted_get=True)
            return json_reply(200, state.job)

    def _kill(self, job_id: str) -> Reply:
        with self._lock:
            state = self._states.get(job_id)
            if state is None:
                return _error(404, f'Job "{job_id}" not found')
            job = state.job
            if job["isFinished"]:
                return _error(400, f'Job "{job_id}" is already finished and cannot be killed.')
            self._advance(state, counted_get=False)
            job["desiredStatus"] = "terminating"
            # Like the real queue (INTERNAL functional test), the answer still shows the current status;
            # the fake's "daemon" then acts at once: created/waiting → cancelled, processing → terminating.
            reply = json_reply(202, job)
            if job["status"] in ("created", "waiting"):
                self._finish(state, "cancelled", None)
            elif job["status"] == "processing":
                job["status"] = "terminating"
            return reply

    def _blocked(self, state: _JobState) -> bool:
        """Config lock: an older unfinished job of the same component + config + branch holds it."""
        if state.lock_key is None:
            return False
        return any(
            other.lock_key == state.lock_key and other.seq < state.seq and not other.job["isFinished"]
            for other in self._states.values()
        )

    def _advance(self, state: _JobState, *, counted_get: bool) -> None:
        """Apply the config lock, delayed start and the script. Only GET /jobs/{id} counts toward it."""
        job = state.job
        if job["isFinished"]:
            return
        if job["status"] == "terminating":
            if counted_get:
                self._finish(state, "terminated", None)
            return
        if job["status"] in ("created", "waiting"):
            if self._blocked(state):
                job["status"] = "waiting"
                return
            if state.not_before is not None and time.time() < state.not_before:
                return
        if counted_get:
            state.gets += 1
        script = state.script
        if state.gets >= script.finish_after_gets:
            self._finish(state, script.status, script.message)
        elif state.gets >= script.processing_after_gets and job["status"] != "processing":
            self._start(state)

    def _start(self, state: _JobState) -> None:
        state.started_epoch = time.time()
        state.job["status"] = "processing"
        state.job["startTime"] = _iso(state.started_epoch)

    def _finish(self, state: _JobState, status: str, message: str | None) -> None:
        job, now = state.job, time.time()
        if status in OUTCOME_STATUSES and state.started_epoch is None:
            self._start(state)  # it ran, so it started
        job["status"] = status
        job["isFinished"] = True
        job["endTime"] = _iso(now)
        job["durationSeconds"] = int(now - state.started_epoch) if state.started_epoch is not None else 0
        result: dict[str, Any] = {
            "message": message or _DEFAULT_MESSAGES[status],
            "configVersion": 1,
            "images": [],
            "input": {"tables": []},
            "output": {"tables": []},
        }
        if status == "error":
            result["error"] = {"type": "user", "exceptionId": _exception_id()}
        job["result"] = result

    # ----- search ----------------------------------------------------------------------------------

    def _search(self, query: dict[str, list[str]]) -> Reply:
        params = _normalise_query(query)
        try:
            predicate = _predicate(params, time.time())
            limit = int(params.get("limit", ["100"])[-1])
            offset = int(params.get("offset", ["0"])[-1])
        except ValueError as exc:
            return _error(400, f"Invalid search parameter: {exc}")
        sort_by = params.get("sortBy", ["id"])[-1]
        sort_order = params.get("sortOrder", ["desc"])[-1]
        if sort_by not in _SORTABLE or sort_order not in ("asc", "desc") or limit < 0 or offset < 0:
            return _error(400, "Invalid search parameter: sortBy, sortOrder, limit or offset out of range.")
        horizon = time.monotonic() - self.search_lag
        with self._lock:
            visible = [s for s in self._states.values() if s.created_mono <= horizon]
            for state in visible:
                self._advance(state, counted_get=False)
            found = [s.job for s in visible if predicate(s.job)]
            found.sort(key=_sort_key(sort_by), reverse=sort_order == "desc")
            page = found[offset : offset + limit]
            if self.search_omits_variables:
                page = [{k: v for k, v in job.items() if k != "variableValuesData"} for job in page]
            return json_reply(200, page)


def _after_create(mode: str | None, reply: Reply) -> Outcome:
    match = _AFTER_CREATE.match(mode or "")
    if match is not None:
        code = int(match.group(1))
        return _error(code, "Service Unavailable" if code == 503 else f"Fake error HTTP {code} after creating.")
    if mode == "create_then_reset":
        return Reset()
    if mode == "create_then_hang":
        return Hang()
    return reply  # no fault, or slow_create (its delay already happened)


def _component_of(raw: bytes) -> str:
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        return ""
    return str(body.get("component", "")) if isinstance(body, dict) else ""


def _values_problem(values: Any) -> str | None:
    """Each values[] item needs a non-empty string name and value (INTERNAL: isRequired, cannotBeEmpty)."""
    if values is not None and not isinstance(values, list):
        return 'Invalid type for path "job.variableValuesData.values". Expected "array".'
    for index, item in enumerate(values or []):
        if not isinstance(item, dict):
            return f'Invalid type for path "job.variableValuesData.values.{index}". Expected "array".'
        for key in ("name", "value"):
            value = item.get(key)
            if not isinstance(value, str) or value == "":
                return (
                    f'The path "job.variableValuesData.values.{index}.{key}" cannot contain an empty '
                    f"value, but got {json.dumps(value)}."
                )
    return None


def _delay_problem(delay: Any, delayed_start: Any) -> str | None:
    """The document's rules: delay is an integer >= 0, delayedStartTime a date-time, never both."""
    if delay is not None and delayed_start is not None:
        return 'Only one of "delay" and "delayedStartTime" can be used.'
    if delay is not None and (not isinstance(delay, int) or isinstance(delay, bool) or delay < 0):
        return '"delay" must be an integer greater than or equal to 0.'
    if delayed_start is not None:
        try:
            _parse_time(str(delayed_start), time.time())
        except ValueError:
            return f'"delayedStartTime" is not a valid date-time: {delayed_start!r}.'
    return None


def _not_before(body: dict[str, Any], now_epoch: float) -> float | None:
    if body.get("delay"):
        return now_epoch + int(body["delay"])
    if body.get("delayedStartTime"):
        return _parse_time(str(body["delayedStartTime"]), now_epoch)
    return None


# ----- search filters ------------------------------------------------------------------------------

_ALIASES = {"component": "componentId", "config": "configId"}
_FIELD_OF: dict[str, Callable[[dict[str, Any]], Any]] = {
    "id": lambda j: j["id"],
    "runId": lambda j: j["runId"],
    "tokenId": lambda j: j["token"]["id"],
    "tokenDescription": lambda j: j["token"]["description"],
    "componentId": lambda j: j["component"],
    "configId": lambda j: j["config"],
    "branchId": lambda j: "null" if j["branchId"] is None else j["branchId"],  # branchId[]=null: main only
    "status": lambda j: j["status"],
    "mode": lambda j: j["mode"],
    "type": lambda j: j["type"],
}
_TIME_FIELDS = {"createdTime": "createdTime", "startTime": "startTime", "endTime": "endTime"}
_SORT_ONLY_FIELDS: dict[str, Callable[[dict[str, Any]], Any]] = {"projectId": lambda j: j["project"]["id"]}
# The document's sortBy enum; anything else is a 400 (and a contract violation).
_SORTABLE = frozenset(
    {
        "id",
        "runId",
        "projectId",
        "branchId",
        "componentId",
        "configId",
        "tokenDescription",
        "status",
        "createdTime",
        "updatedTime",
        "startTime",
        "endTime",
        "durationSeconds",
    }
)


def _normalise_query(query: dict[str, list[str]]) -> dict[str, list[str]]:
    """Accept k=v, k[]=v and k[0]=v (repeated or mixed) and the deprecated component/config aliases."""
    params: dict[str, list[str]] = {}
    for key, values in query.items():
        name = _plain_key(key)
        params.setdefault(_ALIASES.get(name, name), []).extend(values)
    return params


def _predicate(params: dict[str, list[str]], now: float) -> Callable[[dict[str, Any]], bool]:
    """All filters ANDed; values of one filter ORed. Raises ValueError for an unparseable value."""
    checks: list[Callable[[dict[str, Any]], bool]] = []
    for name, getter in _FIELD_OF.items():
        if name in params:
            checks.append(_member_check(getter, frozenset(params[name])))
    if "configRowIds" in params:
        rows = frozenset(params["configRowIds"])
        checks.append(lambda j: bool(rows.intersection(j["configRowIds"] or [])))

    def parse_time(text: str) -> float:
        return _parse_time(text, now)

    for prefix, field in _TIME_FIELDS.items():
        checks.extend(_range_checks(params, prefix, _time_of(field), parse_time))
    checks.extend(_range_checks(params, "durationSeconds", lambda j: j["durationSeconds"], float))
    return lambda job: all(check(job) for check in checks)


def _member_check(getter: Callable[[dict[str, Any]], Any], wanted: frozenset[str]) -> Callable[[dict[str, Any]], bool]:
    return lambda job: getter(job) in wanted


def _time_of(field: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda job: _epoch(job[field])


def _range_checks(
    params: dict[str, list[str]], prefix: str, value_of: Callable[[dict[str, Any]], Any], parse: Callable[[str], float]
) -> Iterable[Callable[[dict[str, Any]], bool]]:
    """Inclusive From/To bounds; a job without the value (e.g. no endTime yet) does not match."""
    if prefix + "From" in params:
        low = parse(params[prefix + "From"][-1])
        yield lambda j: (v := value_of(j)) is not None and v >= low
    if prefix + "To" in params:
        high = parse(params[prefix + "To"][-1])
        yield lambda j: (v := value_of(j)) is not None and v <= high


def _epoch(iso: str | None) -> float | None:
    return dt.datetime.fromisoformat(iso).timestamp() if iso else None


def _sort_key(sort_by: str) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """Ids are numeric strings, so they sort as numbers; everything ties on the id."""
    if sort_by == "id":
        return lambda j: (int(j["id"]),)
    getter = _FIELD_OF.get(sort_by) or _SORT_ONLY_FIELDS.get(sort_by) or (lambda j: j.get(sort_by))
    return lambda j: ((v := getter(j)) is not None, v if v is not None else "", int(j["id"]))
