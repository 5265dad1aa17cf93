"""The daemon's HTTP face: /metrics, health probes, the JSON API and the status page.

Everything is read and done through DaemonControl; this module never touches the store or the scheduler.
Every answer, errors included, is JSON (the status page and /metrics aside): ``{"error": ..., "path": ...}``.
"""

from __future__ import annotations

import datetime as dt
import enum
import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from prometheus_client import make_asgi_app
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from teckochecker import __version__
from teckochecker.config.models import JOB_NAME, JOB_NAME_RULE
from teckochecker.control import BearerToken, DaemonControl, Problem, Refusal, reload_status_to_dict
from teckochecker.errors import StateStoreUnavailable, TeckoCheckerError
from teckochecker.metrics import Metrics
from teckochecker.secrets.resolving import Redactor
from teckochecker.state.models import (
    EXCERPT,
    Event,
    JobSnapshot,
    PutOutcome,
    RunSnapshot,
    TargetSnapshot,
    request_counts,
)
from teckochecker.web.statuspage import render_page

MAX_BODY_BYTES = 64 * 1024
# A registered job's body: room for about 5,000 batch IDs; a bigger job is better split (or put in a file).
MAX_JOB_BODY_BYTES = 256 * 1024
DEFAULT_EVENTS, MAX_EVENTS = 50, 1000
PAGE_EVENTS = 10  # per job on the status page: enough to see what happened lately, short enough to scan
_EVENTS_PARAM = re.compile(r"^[0-9]{1,4}$")
_ENABLE_HINT = (
    "the control endpoints are off: set http.api_token in the config to the name of a secret "
    "(declared under secrets:) that holds the bearer token, or list tokens with their scopes under "
    "http.tokens, then reload or restart the daemon"
)
REGISTER, CONTROL = "register", "control"
_JOB_PATH = re.compile(r"^/api/v1/jobs/[^/]+$")


def create_app(
    control: DaemonControl, metrics: Metrics, logger: logging.Logger, redactor: Redactor | None = None
) -> Starlette:
    """The whole HTTP app. No CORS middleware on purpose: browsers on other origins get nothing.

    ``redactor`` knows the daemon's secret values; without one, only secret-shaped strings are masked."""
    api = _Api(control, logger)
    routes = [
        Route("/", api.status_page),
        Route("/healthz", api.healthz),
        Route("/readyz", api.readyz),
        Route("/metrics", _MetricsEndpoint(metrics), methods=["GET"]),
        Route("/api/v1/status", api.status),
        Route("/api/v1/jobs", api.jobs),
        Route("/api/v1/jobs/{name}", api.job_resource, methods=["GET", "HEAD", "PUT", "DELETE"]),
        Route("/api/v1/jobs/{name}/pause", api.pause, methods=["POST"]),
        Route("/api/v1/jobs/{name}/resume", api.resume, methods=["POST"]),
        Route("/api/v1/jobs/{name}/check-now", api.check_now, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        # Outermost first: a bug anywhere below (including the body limit) still answers JSON.
        middleware=[
            Middleware(_CatchAll, logger=logger),
            Middleware(_RedactBodies, redactor=redactor or Redactor()),
            Middleware(_SecurityHeaders),
            Middleware(_BodyLimit, max_bytes=MAX_BODY_BYTES, job_max_bytes=MAX_JOB_BODY_BYTES),
        ],
        exception_handlers={
            HTTPException: _http_error,
            StateStoreUnavailable: _store_unavailable(logger),
            TeckoCheckerError: _daemon_unavailable(logger),
        },
    )
    # "/api/v1/jobs/" is a JSON 404, not Starlette's empty 307 to "/api/v1/jobs": that redirect is not JSON,
    # and its Location is built from the Host header, which the client chooses.
    app.router.redirect_slashes = False
    return app


class _Api:
    def __init__(self, control: DaemonControl, logger: logging.Logger) -> None:
        self._control = control
        self._logger = logger

    # ----- probes -----

    async def healthz(self, request: Request) -> Response:
        # Answering at all proves the process and its event loop are alive.
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        checks = {name: bool(ok) for name, ok in (await self._control.readiness()).items()}
        ready = bool(checks) and all(checks.values())
        body: dict[str, Any] = {"status": "ready" if ready else "not_ready", "checks": checks}
        if (problem := self._control.store_problem()) is not None:
            body["reason"] = problem
        if (replicas := self._control.replicas()) is not None:
            body["role"] = replicas["role"]
        return JSONResponse(body, status_code=200 if ready else 503)

    # ----- reading -----

    async def status(self, request: Request) -> Response:
        reload = reload_status_to_dict(self._control.reload_status())
        body: dict[str, Any] = {
            "version": __version__,
            "reload": reload,
            "registered": list(self._control.registry_notes()),
        }
        if (replicas := self._control.replicas()) is not None:
            body["replication"] = replicas
        return _json(body)

    async def jobs(self, request: Request) -> Response:
        jobs = await self._control.jobs()
        excerpts = self._has_token(request)
        return _json({"jobs": [job_to_json(job, self._control.next_run(job.name), excerpts=excerpts) for job in jobs]})

    async def job_resource(self, request: Request) -> Response:
        if request.method == "PUT":
            return await self.register(request)
        if request.method == "DELETE":
            return await self.unregister(request)
        return await self.job(request)

    async def job(self, request: Request) -> Response:
        limit = _events_limit(request)
        if isinstance(limit, Response):
            return limit
        name = request.path_params["name"]
        job = await self._control.job(name) if _could_be_a_job(name) else None
        # A stored registered job that is not run (held, or no longer valid) says why, run before or not.
        held = self._control.registry_note(name) if _could_be_a_job(name) else None
        if job is None:
            return error_response(404, f"no job named {name!r}" + (f" runs: {held}" if held else ""), _path(request))
        events = await self._control.events(name, limit)
        body = job_to_json(job, self._control.next_run(name), events, excerpts=self._has_token(request))
        if held is not None:
            body["held"] = held
        return _json(body)

    async def status_page(self, request: Request) -> Response:
        jobs = []
        for job in await self._control.jobs():
            events = await self._control.events(job.name, PAGE_EVENTS)
            jobs.append(job_to_json(job, self._control.next_run(job.name), events))
        reload = reload_status_to_dict(self._control.reload_status())
        reload["registered"] = list(self._control.registry_notes())
        page = render_page(jobs, reload, __version__, dt.datetime.now(dt.UTC))
        # No script runs on the page, so none may: a vendor message that slips past escaping stays inert.
        return HTMLResponse(
            page,
            headers={
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; "
                "form-action 'none'; frame-ancestors 'none'",
                "Cache-Control": "no-store",
            },
        )

    # ----- registration (mutating; scope "register") -----

    async def register(self, request: Request) -> Response:
        name, path = request.path_params["name"], _path(request)
        denied = self._authorize(request, REGISTER)
        if denied is not None:
            self._audit("register", name, request, f"denied ({denied.status_code})", logging.WARNING)
            return denied
        if not _could_be_a_job(name):
            self._audit("register", name, request, "refused (422: name)")
            return _refusal(Refusal(422, "invalid job name", (Problem("name", JOB_NAME_RULE),)), path)
        try:
            body = json.loads(await request.body(), object_pairs_hook=_without_duplicate_keys)
        except (ValueError, RecursionError) as exc:  # RecursionError: '[' nested past the parser's depth
            self._audit("register", name, request, "refused (400: not JSON)")
            return error_response(400, f"the body is not JSON: {str(exc)[:200]}", path)
        outcome = await self._control.register_job(name, body)
        if isinstance(outcome, Refusal):
            self._audit("register", name, request, f"refused ({outcome.status})")
            return _refusal(outcome, path)
        self._audit("register", name, request, outcome.value)
        status = 201 if outcome is PutOutcome.CREATED else 200
        return _json({"job": name, "origin": "api", "outcome": outcome.value}, status_code=status)

    async def unregister(self, request: Request) -> Response:
        name, path = request.path_params["name"], _path(request)
        denied = self._authorize(request, REGISTER)
        if denied is not None:
            self._audit("unregister", name, request, f"denied ({denied.status_code})", logging.WARNING)
            return denied
        removed = await self._control.unregister_job(name) if _could_be_a_job(name) else False
        if isinstance(removed, Refusal):
            self._audit("unregister", name, request, f"refused ({removed.status})")
            return _refusal(removed, path)
        if not removed:
            self._audit("unregister", name, request, "no such job")
            return error_response(404, f"no job named {name!r} is registered over the API", path)
        self._audit("unregister", name, request, "removed")
        return _json({"job": name, "removed": True})

    # ----- control (mutating; scope "control") -----

    async def pause(self, request: Request) -> Response:
        return await self._mutate(request, "pause", self._control.pause)

    async def resume(self, request: Request) -> Response:
        return await self._mutate(request, "resume", self._control.resume)

    async def check_now(self, request: Request) -> Response:
        return await self._mutate(request, "check-now", self._control.check_now)

    async def _mutate(self, request: Request, action: str, call: Callable[[str], Awaitable[bool]]) -> Response:
        name = request.path_params["name"]
        path = _path(request)
        denied = self._authorize(request, CONTROL)
        if denied is not None:
            self._audit(action, name, request, f"denied ({denied.status_code})", logging.WARNING)
            return denied
        job = await self._control.job(name) if _could_be_a_job(name) else None
        if job is None:
            self._audit(action, name, request, "no such job")
            return error_response(404, f"no job named {name!r}", path)
        if action == "check-now" and job.paused:
            # A paused job's ticks do nothing: a 200 here would claim a check that never happens.
            self._audit(action, name, request, "refused (paused)")
            return error_response(409, f"job {name!r} is paused; resume it first", path)
        if not await call(name):
            self._audit(action, name, request, "refused")
            if action == "check-now":  # the job exists but the scheduler has nothing to run for it
                message = f"job {name!r} is not scheduled (finished, paused or removed)"
                return error_response(409, message, path)
            return error_response(404, f"no job named {name!r}", path)  # removed between the two calls
        self._audit(action, name, request, "ok")
        return _json({"job": name, "action": action, "ok": True})

    def _authorize(self, request: Request, scope: str) -> Response | None:
        """None if the caller's token has ``scope``; else the 403/401 answer. Which error comes first
        matters: with no token configured nobody can be authorized, so say how to turn the endpoints on."""
        path = _path(request)
        if not self._control.bearer_tokens():
            return error_response(403, _ENABLE_HINT, path)
        matched = self._matching_tokens(request)
        if not matched:
            return error_response(
                401,
                "missing or wrong bearer token (Authorization: Bearer <token>)",
                path,
                headers={"WWW-Authenticate": 'Bearer realm="teckochecker"'},
            )
        if not any(scope in t.scopes for t in matched):
            return error_response(403, f"this token may not {scope} (its scopes are set under http.tokens)", path)
        return None

    def _matching_tokens(self, request: Request) -> list[BearerToken]:
        given = _bearer_token(request.headers.get("authorization"))
        # Every token is compared (constant time each), so the answer's timing says nothing about which matched.
        tokens = self._control.bearer_tokens()
        return [t for t in tokens if given is not None and hmac.compare_digest(given, t.value.encode("utf-8"))]

    def _has_token(self, request: Request) -> bool:
        """Whether the caller sent any configured token: only then do the reading endpoints show what a
        refusing server answered (its excerpt); without one they show the status and the host only."""
        return bool(self._matching_tokens(request))

    def _audit(self, action: str, name: str, request: Request, result: str, level: int = logging.INFO) -> None:
        # Never the token, not even a prefix; %r keeps a hostile job name on one line.
        remote = request.client.host if request.client else "-"
        self._logger.log(level, "audit: %s job=%r from %s: %s", action, name[:200], remote, result)


def _refusal(refusal: Refusal, path: str) -> Response:
    body: dict[str, Any] = {"error": refusal.message, "path": path}
    if refusal.problems:
        body["problems"] = [p.to_json() for p in refusal.problems]
    return _json(body, status_code=refusal.status)


def _could_be_a_job(name: str) -> bool:
    # The config only accepts names of this shape, so anything else is a 404 without asking the daemon.
    return JOB_NAME.fullmatch(name) is not None  # fullmatch: "$" alone would let "name\n" through


def _without_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A key given twice has no one meaning (the last wins for json, the first for some proxies): refused."""
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise ValueError(f"the key {key[:40]!r} appears twice in one object")
        found[key] = value
    return found


def _path(request: Request) -> str:
    # The raw scope path, not request.url: building a URL parses the Host header, which a client controls.
    return str(request.scope.get("path", ""))


def _bearer_token(header: str | None) -> bytes | None:
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    # ASGI headers are latin-1; going back to bytes keeps compare_digest total (str needs ASCII).
    return value.strip().encode("latin-1")


def _events_limit(request: Request) -> int | Response:
    raw = request.query_params.get("events")
    if raw is None:
        return DEFAULT_EVENTS
    if _EVENTS_PARAM.fullmatch(raw) and 1 <= int(raw) <= MAX_EVENTS:
        return int(raw)
    return error_response(400, f"events must be an integer from 1 to {MAX_EVENTS} (got {raw[:40]!r})", _path(request))


# ----- JSON shapes (the API contract; api_client.py reads them back) -----


def job_to_json(
    job: JobSnapshot, next_check: dt.datetime | None, events: list[Event] | None = None, *, excerpts: bool = False
) -> dict[str, Any]:
    """The job as the API shows it; ``excerpts``: with what refusing servers answered (readers with a token)."""
    totals = {"total": 0, "completed": 0, "failed": 0}
    for counts in filter(None, (request_counts(t.details) for t in job.targets)):
        for kind in totals:
            totals[kind] += getattr(counts, kind)
    body: dict[str, Any] = {
        "name": job.name,
        "origin": job.origin.value,
        "state": job.state.value,
        "final": job.state.is_final,
        "paused": job.paused,
        "removed": job.removed,
        "fingerprint": job.fingerprint,
        "created_at": _time(job.created_at),
        "first_observed_at": _time(job.first_observed_at),
        "deadline_at": _time(job.deadline_at),
        "last_checked_at": _time(job.last_checked_at),
        # The scheduler's plan, not the stored column: this is when the running daemon will look next.
        "next_check": _time(next_check),
        "finished_at": _time(job.finished_at),
        "last_error": job.last_error,
        "consecutive_failures": job.consecutive_failures,
        "targets_done": job.done_count,
        "targets_total": len(job.targets),
        "requests": totals,
        "targets": [target_to_json(t, excerpts=excerpts) for t in job.targets],
        "runs": [run_to_json(r, excerpts=excerpts) for r in job.runs],
    }
    if events is not None:
        body["events"] = [event_to_json(e, excerpts=excerpts) for e in events]
    return body


def target_to_json(target: TargetSnapshot, *, excerpts: bool = False) -> dict[str, Any]:
    counts = request_counts(target.details)
    return {
        "target": target.target,
        "state": target.state.value,
        "terminal": target.state.is_terminal,
        "vendor_status": target.vendor_status,
        "message": target.message,
        "observed_at": _time(target.observed_at),
        "progress": None
        if counts is None
        else {
            "total": counts.total,
            "completed": counts.completed,
            "failed": counts.failed,
            "label": counts.label,
        },
        "details": target.details if excerpts else _without_excerpt(target.details),
    }


def run_to_json(run: RunSnapshot, *, excerpts: bool = False) -> dict[str, Any]:
    return {
        "id": run.id,
        "action_index": run.action_index,
        "type": run.action_type,
        "state": run.state.value,
        "final": run.state.is_final,
        "trigger_id": run.trigger_id,
        "target_key": run.target_key,
        "attempt": run.attempt,
        "created_at": _time(run.created_at),
        "intent_at": _time(run.intent_at),
        "next_try_at": _time(run.next_try_at),
        "search_empty_count": run.search_empty_count,
        "external_id": run.external_id,
        "url": run.external_url,
        "vendor_status": run.vendor_status,
        "message": run.message,
        "details": run.details if excerpts else _without_excerpt(run.details),
        # Set only after a start that followed an in-doubt outcome: until when duplicates are searched for.
        "duplicate_watch_until": _time(run.watch.until) if run.watch and run.watch.armed_at else None,
        "duplicates": [
            {"external_id": d.external_id, "status": d.vendor_status, "cancelled": d.cancelled, "note": d.note}
            for d in (run.watch.duplicates if run.watch else ())
        ],
    }


def event_to_json(event: Event, *, excerpts: bool = False) -> dict[str, Any]:
    data = event.data if excerpts else _without_excerpt(event.data)
    return {"at": _time(event.at), "kind": event.kind, "message": event.message, "data": data}


def _without_excerpt(details: Mapping[str, Any]) -> Mapping[str, Any]:
    # A refusing server's words (state.models.EXCERPT) are for the log and for readers with a token: the
    # server may be anything a URL points at (a metadata service answering with credentials).
    return {key: value for key, value in details.items() if key != EXCERPT} if EXCERPT in details else details


def _time(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _json_default(value: object) -> object:
    # Snapshot details are read-only Mappings and vendor data may hold anything: never fail to encode.
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    return str(value)


class _JSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        text = json.dumps(content, default=_json_default, ensure_ascii=False, separators=(",", ":"))
        return text.encode("utf-8")


def _json(content: Any, status_code: int = 200) -> Response:
    return _JSON(content, status_code=status_code)


def error_response(status: int, message: str, path: str, headers: Mapping[str, str] | None = None) -> Response:
    return _JSON({"error": message, "path": path}, status_code=status, headers=dict(headers or {}))


# ----- errors -----


async def _http_error(request: Request, exc: Exception) -> Response:
    """404 for unknown routes, 405 for a wrong method (with Allow), and any other HTTPException."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"no such endpoint: {request.method} {_path(request)}"
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "-")
        message = f"method {request.method} not allowed here (allowed: {allowed})"
    else:
        message = str(exc.detail)
    return error_response(exc.status_code, message, _path(request), exc.headers)


def _daemon_unavailable(logger: logging.Logger) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def handler(request: Request, exc: Exception) -> Response:
        # The daemon could not answer (e.g. the state store is down): not a bug in this request, not a 500.
        logger.warning("HTTP %s %s: %s", request.method, _path(request), exc)
        return error_response(503, f"the daemon cannot answer right now: {exc}", _path(request))

    return handler


def _store_unavailable(logger: logging.Logger) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def handler(request: Request, exc: Exception) -> Response:
        # An outage, not a bug: no traceback, and the log's repeat limiter keeps a long outage to a few lines.
        logger.warning("HTTP %s %s: state store unavailable: %s", request.method, _path(request), exc)
        return error_response(503, f"state store unavailable: {exc}", _path(request))

    return handler


# ----- ASGI middleware and endpoints -----


async def _send_error(scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
    await error_response(status, message, scope.get("path", ""))(scope, receive, send)


class _CatchAll:
    """Real bugs: log with the traceback and answer a JSON 500; the exception stops here, so neither uvicorn
    nor the daemon's loop ever sees it."""

    def __init__(self, app: ASGIApp, logger: logging.Logger) -> None:
        self._app = app
        self._logger = logger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self._app(scope, receive, tracking_send)
        except ClientDisconnect:
            pass  # the client left while its body was read: no bug, and the listener has logged the line
        except Exception:
            self._logger.exception("HTTP %s %s failed (a bug)", scope.get("method"), scope.get("path"))
            if not started:
                await _send_error(scope, receive, send, 500, "internal error (logged by the daemon)")


class _RedactBodies:
    """Every text answer (API, status page, errors) passes the redactor, whatever put a secret in it: the
    stored messages come from vendors and libraries, and the API has no authentication for reading."""

    def __init__(self, app: ASGIApp, redactor: Redactor) -> None:
        self._app = app
        self._redactor = redactor

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") == "HEAD":  # HEAD: no body, and its length must stay
            await self._app(scope, receive, send)
            return
        start: Message | None = None
        body = b""

        async def redacting_send(message: Message) -> None:
            nonlocal start, body
            if message["type"] == "http.response.start":
                if not _redactable(message.get("headers", [])):
                    await send(message)
                    return
                start = message  # held back: the body's length changes when a value is masked
                return
            if message["type"] == "http.response.body" and start is not None:
                body += message.get("body", b"")
                if message.get("more_body"):
                    return
                # Values only: the shape patterns would also mask the API's own "Bearer <token>" advice.
                clean = self._redactor.redact_values(body.decode("utf-8", "replace")).encode("utf-8")
                headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                await send({**start, "headers": [*headers, (b"content-length", str(len(clean)).encode())]})
                await send({"type": "http.response.body", "body": clean, "more_body": False})
                return
            await send(message)

        await self._app(scope, receive, redacting_send)


def _redactable(headers: list[tuple[bytes, bytes]]) -> bool:
    # Compressed or binary bodies cannot be searched as text; ours never hold a message (metrics, gzip).
    found = {k.lower(): v.lower() for k, v in headers}
    kind = found.get(b"content-type", b"")
    return b"content-encoding" not in found and (kind.startswith(b"text/") or b"json" in kind)


class _SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                ]
            await send(message)

        await self._app(scope, receive, with_headers if scope["type"] == "http" else send)


class _BodyLimit:
    """413 for bodies over the cap, decided before any endpoint runs, so an oversized POST never acts.

    A declared Content-Length is checked up front; a chunked body is read (up to the cap) and replayed.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, job_max_bytes: int) -> None:
        self._app = app
        self._default_max = max_bytes
        self._job_max = job_max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        # A registered job's body may be larger than anything else the API accepts.
        registering = scope.get("method") == "PUT" and _JOB_PATH.match(scope.get("path", ""))
        limit = self._job_max if registering else self._default_max
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _send_error(scope, receive, send, 413, f"request body over {limit} bytes")
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # an incomplete request must not act, and nobody is left to answer
            body += message.get("body", b"")
            more = bool(message.get("more_body"))
            if len(body) > limit:
                await _send_error(scope, receive, send, 413, f"request body over {limit} bytes")
                return
        await self._app(scope, _replay(body, receive), send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for the disconnect as a server would

    return replay


class _MetricsEndpoint:
    """prometheus_client's ASGI app on the daemon's own registry. A scrape only reads the registry (the
    daemon refreshes its gauges itself), so /metrics answers even while the state store does not."""

    def __init__(self, metrics: Metrics) -> None:
        self._app = make_asgi_app(registry=metrics.registry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _utf8_inputs(scope):
            # prometheus_client decodes these as UTF-8 and would raise on anything else.
            await _send_error(scope, receive, send, 400, "query string and Accept headers must be UTF-8")
            return
        await self._app(scope, receive, send)


def _utf8_inputs(scope: Scope) -> bool:
    parts = [scope.get("query_string", b"")]
    parts += [value for name, value in scope.get("headers", []) if name.lower() in (b"accept", b"accept-encoding")]
    try:
        for part in parts:
            part.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
