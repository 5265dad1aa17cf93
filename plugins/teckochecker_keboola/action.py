"""The ``keboola_job`` action: start one Keboola Queue job per fired trigger, then follow it.

``POST /jobs`` has no idempotency key, so ``start`` classifies every failure by what it proves:
nothing sent (``NotStarted``, safe to try again), refused (``Rejected``), or unknown (``InDoubt``: the
core then calls ``find_started``, which looks for the job by the ``teckochecker_trigger_id`` variable).
Nothing here retries; the core is the one retry layer.
"""

from __future__ import annotations

import datetime as dt
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from teckochecker.errors import InDoubt, NotStarted, Rejected, TransientError
from teckochecker.plugin_api import (
    Action,
    ActionOutcome,
    ActionRequest,
    ActionResult,
    OptionsModel,
    PluginContext,
)
from teckochecker.retry import is_transient_status, parse_retry_after
from teckochecker_keboola.options import KeboolaJobOptions
from teckochecker_keboola.queue import (
    DiscoveryFailed,
    describe,
    discover_queue_url,
    error_body,
    guess_queue_url,
    parse_time,
)
from teckochecker_keboola.statuses import job_outcome
from teckochecker_keboola.variables import MARKER_VARIABLE, job_variables

__all__ = ["KeboolaJobAction", "job_body"]

CONNECT_TIMEOUT = 5.0
# GETs (index, search, job detail) are cheap; the create call has its own, configurable read timeout.
READ_TIMEOUT = 30.0
SEARCH_PAGE = 100
# A trigger's search window holds a handful of jobs (the config lock serialises them); this only
# bounds a runaway loop.
SEARCH_MAX_PAGES = 10
# Errors raised before a single byte of the request can have left: retrying cannot duplicate a job.
_NOTHING_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


def job_body(options: KeboolaJobOptions, request: ActionRequest) -> dict[str, Any]:
    """The ``POST /jobs`` body, valid against the Queue API spec (no ``tag``: that is the image version)."""
    body: dict[str, Any] = {"component": options.component, "config": options.config, "mode": options.mode}
    if options.config_row_ids:
        body["configRowIds"] = list(options.config_row_ids)
    if options.branch_id:
        body["branchId"] = options.branch_id
    body["variableValuesData"] = {"values": job_variables(request, options.variables)}
    return body


class KeboolaJobAction(Action):
    type_name = "keboola_job"
    Options = KeboolaJobOptions
    options: KeboolaJobOptions

    def __init__(self, options: OptionsModel, context: PluginContext) -> None:
        super().__init__(options, context)
        self.search_lag = self.options.search_lag
        self.follow_interval = self.options.follow_interval
        # Only a URL the stack index named is cached; a guessed one is re-checked on the next call.
        self._discovered_queue_url: str | None = None

    @property
    def target_key(self) -> str:
        o = self.options
        return f"keboola:{o.stack_url}:{o.component}:{o.config}:{o.branch_id or 'default'}"

    async def start(self, request: ActionRequest) -> ActionResult:
        queue_url = await self._queue_url()
        url = f"{queue_url}/jobs"
        try:
            response = await self._queue_client(queue_url).post(
                "jobs",
                json=job_body(self.options, request),
                headers={**self._auth(), "Content-Type": "application/json"},
                timeout=httpx.Timeout(self.options.timeout, connect=CONNECT_TIMEOUT),
            )
        except _NOTHING_SENT as exc:
            raise NotStarted(f"could not connect to Keboola at {url}: {describe(exc)}") from exc
        except httpx.RequestError as exc:
            raise InDoubt(f"the job may or may not have been created at {url}: {describe(exc)} after sending") from exc
        return self._created(url, response)

    def _created(self, url: str, response: httpx.Response) -> ActionResult:
        code = response.status_code
        if 200 <= code < 300:
            job = _json_object(response)
            if job is None or job.get("id") in (None, ""):
                raise InDoubt(f"Keboola answered HTTP {code} at {url} without a readable job; it may exist")
            return self._result(job)
        message = error_body(response, self._token()).message or "no error message"
        if code == 429:
            raise NotStarted(
                f"Keboola is rate limiting job creation (HTTP 429) at {url}: {message}",
                retry_after=parse_retry_after(response.headers, now=self.context.clock.now()),
            )
        if 400 <= code < 500 and not is_transient_status(code):
            raise Rejected(f"Keboola rejected the job (HTTP {code}) at {url}: {message}")
        # 5xx, 408, 409 and anything odd: the request arrived and its effect is unknown.
        raise InDoubt(f"the job may or may not have been created: HTTP {code} at {url}: {message}")

    async def find_started(self, request: ActionRequest, since: dt.datetime) -> Sequence[ActionResult]:
        queue_url = await self._queue_url()
        client = self._queue_client(queue_url)
        # Whole seconds, rounded down: Keboola stores createdTime in seconds, and a wider window is safe.
        if since.tzinfo is None:  # the core passes aware UTC; a naive time is read as UTC, never local
            since = since.replace(tzinfo=dt.UTC)
        since = since.astimezone(dt.UTC).replace(microsecond=0)
        ours: dict[str, Mapping[str, Any]] = {}
        for page in range(SEARCH_MAX_PAGES):
            jobs = await self._search(client, queue_url, since, offset=page * SEARCH_PAGE)
            for job in jobs:
                if _is_ours(job, self.options, request.trigger_id, since):
                    ours[str(job["id"])] = job
            if len(jobs) < SEARCH_PAGE:
                break
        return sorted((self._result(job) for job in ours.values()), key=_oldest_first)

    async def _search(
        self, client: httpx.AsyncClient, queue_url: str, since: dt.datetime, *, offset: int
    ) -> list[Mapping[str, Any]]:
        o = self.options
        # Array filters need the "[]" suffix: PHP keeps only the last of repeated plain keys.
        params = {
            "componentId[]": o.component,
            "configId[]": o.config,
            "branchId[]": o.branch_id or "null",
            "createdTimeFrom": since.isoformat(),
            "sortBy": "createdTime",
            "sortOrder": "asc",
            "limit": str(SEARCH_PAGE),
        }
        if offset:
            params["offset"] = str(offset)
        url = f"{queue_url}/search/jobs"
        jobs = await self._get_json(client, "search/jobs", url, params)
        if not isinstance(jobs, list):
            raise TransientError(f"unexpected response from {url}: expected a JSON array of jobs")
        return [job for job in jobs if isinstance(job, dict) and job.get("id") not in (None, "")]

    async def follow(self, started: ActionResult) -> ActionResult:
        if not self.options.follow:
            return ActionResult(
                external_id=started.external_id,
                outcome=ActionOutcome.SUCCEEDED,
                vendor_status=started.vendor_status,
                url=started.url,
                created_at=started.created_at,
                details=started.details,
            )
        queue_url = await self._queue_url()
        path = f"jobs/{urllib.parse.quote(started.external_id, safe='')}"
        url = f"{queue_url}/{path}"
        job = await self._get_json(self._queue_client(queue_url), path, url)
        if not isinstance(job, dict) or job.get("id") in (None, ""):
            raise TransientError(f"unexpected response from {url}: expected a job object")
        return self._result(job)

    async def cancel(self, started: ActionResult) -> bool:
        try:
            queue_url = await self._queue_url()
        except TransientError as exc:
            self.context.logger.warning("cannot cancel Keboola job %s: %s", started.external_id, exc)
            return False
        path = f"jobs/{urllib.parse.quote(started.external_id, safe='')}/kill"
        url = f"{queue_url}/{path}"
        try:
            response = await self._queue_client(queue_url).post(path, headers=self._auth())
        except httpx.RequestError as exc:
            self.context.logger.warning("cancelling Keboola job at %s failed: %s", url, describe(exc))
            return False
        if response.status_code in (200, 202):
            return True
        message = error_body(response, self._token()).message or "no error message"
        self.context.logger.warning(
            "Keboola refused to cancel the job (HTTP %s) at %s: %s", response.status_code, url, message
        )
        return False

    async def _get_json(
        self, client: httpx.AsyncClient, path: str, url: str, params: Mapping[str, str] | None = None
    ) -> Any:
        try:
            response = await client.get(path, params=params, headers=self._auth())
        except httpx.RequestError as exc:
            raise TransientError(f"could not reach Keboola at {url}: {describe(exc)}") from exc
        code = response.status_code
        if code == 200:
            try:
                return response.json()
            except ValueError as exc:
                raise TransientError(f"unexpected response from {url}: the body is not JSON") from exc
        message = error_body(response, self._token()).message or "no error message"
        if is_transient_status(code):
            retry_after = parse_retry_after(response.headers, now=self.context.clock.now())
            raise TransientError(f"HTTP {code} from Keboola at {url}: {message}", retry_after=retry_after)
        if 400 <= code < 500:
            raise Rejected(f"Keboola refused the request (HTTP {code}) at {url}: {message}")
        raise TransientError(f"unexpected response from {url}: HTTP {code}")

    def _result(self, job: Mapping[str, Any]) -> ActionResult:
        """An ActionResult from a Job object (create response, search hit or job detail)."""
        status = job.get("status") if isinstance(job.get("status"), str) else None
        outcome = job_outcome(status, job.get("isFinished") is True)
        if outcome is None:
            self.context.logger.warning(
                "Keboola job %s has the undocumented status %r; treating it as still running",
                job["id"],
                status,
            )
            outcome = ActionOutcome.RUNNING
        message = _result_message(job)
        if outcome is ActionOutcome.FAILED and not message:
            message = f"the job ended with status {status!r}"
        return ActionResult(
            external_id=str(job["id"]),
            # With follow off, the job existing is all the action promises.
            outcome=outcome if self.options.follow else ActionOutcome.SUCCEEDED,
            vendor_status=status,
            url=job.get("url") if isinstance(job.get("url"), str) else None,
            created_at=parse_time(job.get("createdTime")),
            message=message,
            details=_job_details(job),
        )

    async def _queue_url(self) -> str:
        """The Queue API base URL; raises NotStarted (a TransientError) when it cannot be found."""
        if self._discovered_queue_url is not None:
            return self._discovered_queue_url
        stack_url = self.options.stack_url
        # One discovery per stack for the whole daemon, not one per job.
        known: dict[str, str] = self.context.shared.get("keboola-queue-urls", dict)
        if stack_url in known:
            self._discovered_queue_url = known[stack_url]
            return known[stack_url]
        index = self.context.http.client(
            f"keboola-index:{stack_url}",
            base_url=stack_url,
            timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT),
        )
        try:
            self._discovered_queue_url = known[stack_url] = await discover_queue_url(index)
            return self._discovered_queue_url
        except DiscoveryFailed as exc:
            reason = str(exc)
        index_url = f"{stack_url}/v2/storage?exclude=components"
        guess = guess_queue_url(stack_url)
        if guess is None:
            raise NotStarted(
                f"cannot find the Keboola Queue API: the stack index at {index_url} failed ({reason}) and "
                f"the host of {stack_url} does not start with 'connection.'; set stack_url to the "
                "connection URL of the stack, e.g. https://connection.keboola.com"
            )
        self.context.logger.warning(
            "Keboola stack index at %s failed (%s); guessing the Queue API at %s from the host name",
            index_url,
            reason,
            guess,
        )
        return guess

    def _queue_client(self, queue_url: str) -> httpx.AsyncClient:
        return self.context.http.client(
            f"keboola:{queue_url}:{self.options.token}",
            base_url=queue_url,
            headers={"Accept": "application/json"},
            timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT),
        )

    def _token(self) -> str:
        return self.context.secret(self.options.token)

    def _auth(self) -> dict[str, str]:
        # Per request rather than baked into the pooled client, so a rotated token is used at once.
        return {"X-StorageApi-Token": self._token()}


def _json_object(response: httpx.Response) -> Mapping[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _variable_values(job: Mapping[str, Any]) -> list[Any]:
    # PHP serialises an empty object as [], so variableValuesData may be [], {"values": []} or missing.
    data = job.get("variableValuesData")
    values = data.get("values") if isinstance(data, dict) else None
    return values if isinstance(values, list) else []


def _is_ours(job: Mapping[str, Any], options: KeboolaJobOptions, trigger_id: str, since: dt.datetime) -> bool:
    # The search already filters by component and config; checking again costs nothing.
    if str(job.get("component", options.component)) != options.component:
        return False
    if str(job.get("config", options.config)) != options.config:
        return False
    values = _variable_values(job)
    if values:
        return any(
            isinstance(v, dict) and v.get("name") == MARKER_VARIABLE and v.get("value") == trigger_id for v in values
        )
    # Our jobs always carry variables. If the API does not echo them back ([verify] in our notes), a job
    # with none created in the window is the best evidence we have; the core serialises starts per target.
    created = parse_time(job.get("createdTime"))
    return created is not None and created >= since


def _oldest_first(result: ActionResult) -> tuple[dt.datetime, int, str]:
    created = result.created_at or dt.datetime.max.replace(tzinfo=dt.UTC)
    # Job ids are increasing digit strings: compare them as numbers when the times tie.
    return created, len(result.external_id), result.external_id


def _result_section(job: Mapping[str, Any]) -> Mapping[str, Any]:
    result = job.get("result")
    return result if isinstance(result, dict) else {}  # [] until the job has a result


def _result_message(job: Mapping[str, Any]) -> str | None:
    message = _result_section(job).get("message")
    return message if isinstance(message, str) and message else None


def _job_details(job: Mapping[str, Any]) -> dict[str, Any]:
    project = job.get("project")
    error = _result_section(job).get("error")
    return {
        "runId": job.get("runId"),
        "project_id": project.get("id") if isinstance(project, dict) else None,
        "branchId": job.get("branchId"),
        "status": job.get("status"),
        "isFinished": job.get("isFinished"),
        "durationSeconds": job.get("durationSeconds"),
        "endTime": job.get("endTime"),
        "result_message": _result_message(job),
        "error_type": error.get("type") if isinstance(error, dict) else None,
    }
