"""The ``keboola_job`` action: start one Keboola Queue job per fired trigger, then follow it.

``POST /jobs`` has no idempotency key, so ``start`` classifies every failure by what it proves:
nothing sent (``NotStarted``, safe to try again), refused (``Rejected``), or unknown (``InDoubt``: the
core then calls ``find_started``, which looks for the job by the ``teckochecker_trigger_id`` variable).
Nothing here retries; the core is the one retry layer.

A job is ours only if it carries our trigger's marker variable: another run of the same configuration (by
hand, by another tool) is never adopted and never cancelled, however close in time it was created.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from teckochecker.errors import InDoubt, NotStarted, PermanentError, Rejected, TransientError
from teckochecker.plugin_api import (
    Action,
    ActionOutcome,
    ActionRequest,
    ActionResult,
    Cancellation,
    OptionsModel,
    Origin,
    PluginContext,
    ReplyKind,
)
from teckochecker.retry import is_transient_status, parse_retry_after
from teckochecker.vendor_replies import describe, json_object
from teckochecker_keboola.options import KeboolaJobOptions
from teckochecker_keboola.queue import (
    DiscoveryFailed,
    discover_queue_url,
    error_body,
    guess_queue_url,
    parse_time,
)
from teckochecker_keboola.statuses import job_outcome
from teckochecker_keboola.variables import MARKER_VARIABLE, job_variables

if TYPE_CHECKING:
    import httpx  # at run time only where a request is made: validate-config and status load this module

__all__ = ["KeboolaJobAction", "job_body"]

CONNECT_TIMEOUT = 5.0
# GETs (index, search, job detail) are cheap; the create call has its own, configurable read timeout.
READ_TIMEOUT = 30.0
SEARCH_PAGE = 100
# A trigger's search window holds a handful of jobs (the config lock serialises them); this only
# bounds a runaway loop.
SEARCH_MAX_PAGES = 10
# Storage API "who am I": its id narrows the search to jobs this token created (contract §4a). The response
# also holds the full token value, so nothing of it but the id is ever kept or shown.
TOKEN_VERIFY_PATH = "v2/storage/tokens/verify"
# Keboola statuses of a job that has not started work yet: cancelling it undoes it completely.
NOT_STARTED_STATUSES = frozenset({"created", "waiting"})
# Job ids read in full and found to carry no marker at all: variables never change, so never read again.
FOREIGN_CACHE_LIMIT = 10_000


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
        # The create call can take effect until it times out: connecting, then waiting for the answer.
        self.start_timeout = self.options.timeout + CONNECT_TIMEOUT
        self.duplicate_watch = self.options.duplicate_watch
        self._without_marker: set[str] = set()
        # Only a URL the stack index named is cached; a guessed one is re-checked on the next call.
        self._discovered_queue_url: str | None = None

    @property
    def target_key(self) -> str:
        o = self.options
        return f"keboola:{o.stack_url}:{o.component}:{o.config}:{o.branch_id or 'default'}"

    async def start(self, request: ActionRequest) -> ActionResult:
        import httpx

        queue_url = await self._queue_url()
        url = f"{queue_url}/jobs"
        try:
            response = await self._queue_client(queue_url).post(
                "jobs",
                json=job_body(self.options, request),
                headers={**self._auth(), "Content-Type": "application/json"},
                timeout=httpx.Timeout(self.options.timeout, connect=CONNECT_TIMEOUT),
                extensions=ReplyKind.OBJECT.extensions,
            )
        # Errors raised before a single byte of the request can have left: retrying cannot duplicate a job.
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol) as exc:
            raise NotStarted(f"could not connect to Keboola at {url}: {describe(exc)}") from exc
        except httpx.RequestError as exc:
            raise InDoubt(f"the job may or may not have been created at {url}: {describe(exc)} after sending") from exc
        return self._created(url, response)

    def _created(self, url: str, response: httpx.Response) -> ActionResult:
        code = response.status_code
        if 200 <= code < 300:
            job = json_object(response)
            if job is None or job.get("id") in (None, ""):
                raise InDoubt(f"Keboola answered HTTP {code} at {url} without a readable job; it may exist")
            return self._result(job)
        # Keboola's words go apart from the message (see errors.TeckoCheckerError): the log and readers with a
        # token see them, the status page only the status.
        excerpt = error_body(response, self._token()).message
        if code == 429:
            raise NotStarted(
                f"Keboola is rate limiting job creation (HTTP 429) at {url}",
                retry_after=parse_retry_after(response.headers, now=self.context.clock.now()),
                excerpt=excerpt,
            )
        if 400 <= code < 500 and not is_transient_status(code):
            raise Rejected(f"Keboola rejected the job (HTTP {code}) at {url}", excerpt=excerpt)
        # 5xx, 408, 409 and anything odd: the request arrived and its effect is unknown.
        raise InDoubt(f"the job may or may not have been created: HTTP {code} at {url}", excerpt=excerpt)

    async def find_started(self, request: ActionRequest, since: dt.datetime) -> Sequence[ActionResult]:
        queue_url = await self._queue_url()
        client = self._queue_client(queue_url)
        token_id = await self._token_id()
        # Whole seconds, rounded down: Keboola stores createdTime in seconds, and a wider window is safe.
        if since.tzinfo is None:  # the core passes aware UTC; a naive time is read as UTC, never local
            since = since.replace(tzinfo=dt.UTC)
        since = since.astimezone(dt.UTC).replace(microsecond=0)
        ours: dict[str, Mapping[str, Any]] = {}
        for page in range(SEARCH_MAX_PAGES):
            jobs = await self._search(client, queue_url, since, token_id, offset=page * SEARCH_PAGE)
            for job in jobs:
                carrying = await self._carrying_marker(client, queue_url, job, request.trigger_id)
                if carrying is not None:
                    ours[str(carrying["id"])] = carrying
            if len(jobs) < SEARCH_PAGE:
                break
        return sorted((self._result(job) for job in ours.values()), key=_oldest_first)

    async def _carrying_marker(
        self, client: httpx.AsyncClient, queue_url: str, job: Mapping[str, Any], trigger_id: str
    ) -> Mapping[str, Any] | None:
        """The job (as read from the primary store if the search did not show its variables) if it is this
        target's and carries ``trigger_id`` as its marker; else None."""
        if not _same_target(job, self.options):
            return None
        job_id = str(job["id"])
        if job_id in self._without_marker:
            return None
        values = _variable_values(job)
        if not values:
            # The search index may not echo variables (unconfirmed): only the job itself can tell.
            try:
                job = await self._read_job(client, queue_url, job_id)
            except Rejected as exc:
                self.context.logger.warning("Keboola job %s from the search cannot be read: %s", job_id, exc)
                return None
            values = _variable_values(job)
        marker = _marker(values)
        if marker is None and len(self._without_marker) < FOREIGN_CACHE_LIMIT:
            self._without_marker.add(job_id)
        return job if marker == trigger_id and _same_target(job, self.options) else None

    async def _search(
        self, client: httpx.AsyncClient, queue_url: str, since: dt.datetime, token_id: str, *, offset: int
    ) -> list[Mapping[str, Any]]:
        o = self.options
        # Array filters need the "[]" suffix: PHP keeps only the last of repeated plain keys. No branchId[]
        # filter: whether "null" matches the default branch is unconfirmed, so _same_target compares it here.
        params = {
            "componentId[]": o.component,
            "configId[]": o.config,
            "tokenId[]": token_id,
            "createdTimeFrom": since.isoformat(),
            "sortBy": "createdTime",
            "sortOrder": "asc",
            "limit": str(SEARCH_PAGE),
        }
        if offset:
            params["offset"] = str(offset)
        url = f"{queue_url}/search/jobs"
        jobs = await self._get_json(client, "search/jobs", url, params, kind=ReplyKind.LISTING)
        if not isinstance(jobs, list):
            raise TransientError(f"unexpected response from {url}: expected a JSON array of jobs")
        return [job for job in jobs if isinstance(job, dict) and job.get("id") not in (None, "")]

    async def _token_id(self) -> str:
        """The id of our Storage token (cached per stack and token value: it never changes)."""
        import httpx

        stack_url = self.options.stack_url
        token = self._token()
        known: dict[str, str] = self.context.shared.get("keboola-token-ids", dict)
        key = f"{stack_url}:{hashlib.sha256(token.encode()).hexdigest()}"
        if key in known:
            return known[key]
        url = f"{stack_url}/{TOKEN_VERIFY_PATH}"
        index = self.context.http.client(
            f"keboola-index:{stack_url}",
            base_url=stack_url,
            timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT),
        )
        body = await self._get_json(index, TOKEN_VERIFY_PATH, url)
        token_id = body.get("id") if isinstance(body, dict) else None
        if not isinstance(token_id, (str, int)) or isinstance(token_id, bool) or str(token_id) == "":
            raise TransientError(f"unexpected response from {url}: no token id")
        known[key] = str(token_id)
        return known[key]

    async def _read_job(self, client: httpx.AsyncClient, queue_url: str, job_id: str) -> Mapping[str, Any]:
        """One job from the primary store (GET /jobs/{id}), which is current, unlike the search index."""
        path = f"jobs/{urllib.parse.quote(job_id, safe='')}"
        url = f"{queue_url}/{path}"
        job = await self._get_json(client, path, url)
        if not isinstance(job, dict) or job.get("id") in (None, ""):
            raise TransientError(f"unexpected response from {url}: expected a job object")
        return job

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
        return self._result(await self._read_job(self._queue_client(queue_url), queue_url, started.external_id))

    async def cancel(self, request: ActionRequest, duplicate: ActionResult) -> Cancellation:
        queue_url = await self._queue_url()
        client = self._queue_client(queue_url)
        # Read it again right before killing: the marker (never cancel what is not ours) and the status now.
        job = await self._read_job(client, queue_url, duplicate.external_id)
        if _marker(_variable_values(job)) != request.trigger_id or not _same_target(job, self.options):
            return Cancellation(False, "it does not carry this trigger's marker, so it is not ours to cancel")
        status = job.get("status")
        if job.get("desiredStatus") == "terminating":
            return Cancellation(True, f"it was already being cancelled (status {status})")
        if job.get("isFinished") is True:
            return Cancellation(False, f"it had already ended with status {status}")
        if status not in NOT_STARTED_STATUSES and self.options.on_duplicate != "cancel":
            return Cancellation(
                False, f"it is already {status}, and on_duplicate is report: left running, a person must look"
            )
        return await self._kill(client, queue_url, duplicate.external_id, str(status))

    async def _kill(self, client: httpx.AsyncClient, queue_url: str, job_id: str, status: str) -> Cancellation:
        import httpx

        path = f"jobs/{urllib.parse.quote(job_id, safe='')}/kill"
        url = f"{queue_url}/{path}"
        try:
            response = await client.post(path, headers=self._auth(), extensions=ReplyKind.OBJECT.extensions)
        except httpx.RequestError as exc:
            # It may or may not have arrived; the next search reads the job again and sees which.
            raise TransientError(f"cancelling Keboola job at {url} failed: {describe(exc)}") from exc
        if response.status_code in (200, 202):
            what = "cancelled before it started" if status in NOT_STARTED_STATUSES else f"stopped while {status}"
            return Cancellation(True, f"{what} (POST {url})")
        message = error_body(response, self._token()).message or "no error message"
        if is_transient_status(response.status_code):
            raise TransientError(f"cancelling Keboola job at {url}: HTTP {response.status_code}", excerpt=message)
        return Cancellation(
            False, f"Keboola refused to cancel it (HTTP {response.status_code}) at {url}: {message}; a person must look"
        )

    async def _get_json(
        self,
        client: httpx.AsyncClient,
        path: str,
        url: str,
        params: Mapping[str, str] | None = None,
        *,
        kind: ReplyKind = ReplyKind.OBJECT,
    ) -> Any:
        import httpx

        try:
            response = await client.get(path, params=params, headers=self._auth(), extensions=kind.extensions)
        except httpx.RequestError as exc:
            raise TransientError(f"could not reach Keboola at {url}: {describe(exc)}") from exc
        code = response.status_code
        if code == 200:
            try:
                return response.json()
            except ValueError as exc:
                raise TransientError(f"unexpected response from {url}: the body is not JSON") from exc
        excerpt = error_body(response, self._token()).message
        if is_transient_status(code):
            retry_after = parse_retry_after(response.headers, now=self.context.clock.now())
            raise TransientError(f"HTTP {code} from Keboola at {url}", retry_after=retry_after, excerpt=excerpt)
        if 400 <= code < 500:
            raise Rejected(f"Keboola refused the request (HTTP {code}) at {url}", excerpt=excerpt)
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
        """The Queue API base URL; raises NotStarted (a TransientError) when it cannot be found, and
        PermanentError when the stack index names one the token may not be sent to."""
        import httpx

        if self.options.queue_url is not None:
            return self.options.queue_url
        if self._discovered_queue_url is not None:
            return self._discovered_queue_url
        stack_url = self.options.stack_url
        # One discovery per stack for the whole daemon, not one per job.
        known: dict[str, str] = self.context.shared.get("keboola-queue-urls", dict)
        index_url = f"{stack_url}/v2/storage?exclude=components"
        if stack_url in known:
            self._check_bound(known[stack_url], index_url)  # found for another job, maybe with another token
            self._discovered_queue_url = known[stack_url]
            return known[stack_url]
        index = self.context.http.client(
            f"keboola-index:{stack_url}",
            base_url=stack_url,
            timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT),
        )
        try:
            discovered = await discover_queue_url(index)
        except DiscoveryFailed as exc:
            reason = str(exc)
        else:
            self._check_bound(discovered, index_url)
            self._discovered_queue_url = known[stack_url] = discovered
            return discovered
        guess = guess_queue_url(stack_url)
        if guess is None:
            raise NotStarted(
                f"cannot find the Keboola Queue API: the stack index at {index_url} failed ({reason}) and "
                f"the host of {stack_url} does not start with 'connection.'; set stack_url to the "
                "connection URL of the stack, e.g. https://connection.keboola.com, or queue_url to its Queue API"
            )
        self.context.logger.warning(
            "Keboola stack index at %s failed (%s); guessing the Queue API at %s from the host name",
            index_url,
            reason,
            guess,
        )
        return guess

    def _check_bound(self, queue_url: str, index_url: str) -> None:
        """The index is a reply from the network: the token goes to the Queue API it names only if the files
        bind the token there (the stack's host, queue.<the stack's>, queue_url or the token's send_to)."""
        bound = self.context.secret_origins
        if bound is None:
            return  # a context built by hand; the daemon always knows the bindings
        origin = Origin.of(queue_url)
        if origin in bound(self.options.token):
            return
        raise PermanentError(
            f"the Keboola stack index at {index_url} names the Queue API at {origin}, where the config files do "
            f"not let secret {self.options.token!r} go; if that is the stack's Queue API, set queue_url: "
            f"{queue_url} on the action (or add {origin} to send_to of secret {self.options.token!r})"
        )

    def _queue_client(self, queue_url: str) -> httpx.AsyncClient:
        import httpx

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


def _variable_values(job: Mapping[str, Any]) -> list[Any]:
    # PHP serialises an empty object as [], so variableValuesData may be [], {"values": []} or missing.
    data = job.get("variableValuesData")
    values = data.get("values") if isinstance(data, dict) else None
    return values if isinstance(values, list) else []


def _marker(values: Sequence[Any]) -> str | None:
    for v in values:
        if isinstance(v, dict) and v.get("name") == MARKER_VARIABLE and isinstance(v.get("value"), str):
            return str(v["value"])
    return None


def _same_target(job: Mapping[str, Any], options: KeboolaJobOptions) -> bool:
    # The search filters by component and config already; checking again costs nothing. The branch is
    # compared only for a dev branch: a default-branch job may say null or the default branch's own id.
    if str(job.get("component", options.component)) != options.component:
        return False
    if str(job.get("config", options.config)) != options.config:
        return False
    return options.branch_id is None or str(job.get("branchId")) == options.branch_id


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
