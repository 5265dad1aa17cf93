"""The ``openai_batch`` source: observes each watched batch through a shared listing of the account's
batches (``GET {base_url}/batches``, see directory.py), and ``GET {base_url}/batches/{id}`` for a batch
the listing cannot reach (rate-limited there), or for every batch with ``list_batches: false``.

Works with any OpenAI-compatible endpoint (Azure v1, proxies) through ``base_url``. The core is the only
retry layer: a check never retries, it reports what failed and how long to wait. Rate limits are the
account's: a 429, a 5xx or no answer puts every job of the account into one back-off (throttle.py), and
while it lasts a check reports its targets as waiting without sending anything.

Answers are checked, not trusted: a batch object must name the batch asked for, and only OpenAI's own
error envelope (envelope.py) is a verdict about a batch or a key; anything else is transient.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

from teckochecker.errors import PermanentError, TransientError
from teckochecker.plugin_api import (
    CheckReport,
    Destination,
    Duration,
    ListedTarget,
    ListingListener,
    Observation,
    OptionsModel,
    ReplyKind,
    SecretName,
    Source,
    TargetState,
    http_url,
)
from teckochecker.retry import is_transient_status, parse_retry_after
from teckochecker.vendor_replies import describe, json_object
from teckochecker_openai.directory import PAGE_SIZE, BatchDirectory, Lookup
from teckochecker_openai.envelope import VendorError, vendor_error
from teckochecker_openai.statuses import TIMESTAMP_FIELDS, batch_state
from teckochecker_openai.throttle import AccountThrottle

if TYPE_CHECKING:
    import httpx  # at run time only where a request is made: validate-config and status load this module

__all__ = ["OpenAIBatchOptions", "OpenAIBatchSource"]

# The SDK's connect timeout; the read timeout is the user's ``timeout``.
CONNECT_TIMEOUT = 5.0


class OpenAIBatchOptions(OptionsModel):
    api_key: SecretName
    organization: str | None = Field(default=None, min_length=1)
    project: str | None = Field(default=None, min_length=1)
    base_url: Destination = Destination("https://api.openai.com/v1")
    timeout: Duration = Field(default=30.0, gt=0)
    # Read batches from the account's list (100 per request, shared by all jobs of the account) and fetch
    # one by one only what the list did not show. false: always one request per batch.
    list_batches: bool = True
    # How old a listing may be before a check lists again.
    list_max_age: Duration = Field(default=10.0, ge=1.0, le=3600.0)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return http_url(value, "https://api.openai.com/v1")


@dataclass(frozen=True)
class _Unobserved:
    """One target that could not be observed this time, and how long to wait before asking again."""

    target: str
    message: str
    retry_after: float | None = None
    excerpt: str | None = None  # what the vendor said, kept out of the message (plugin_api.CheckReport)


@dataclass(frozen=True)
class _Failure:
    """An error response that is no verdict about the batch: a later try may get a real answer."""

    message: str
    retry_after: float | None = None
    # A rate limit or an outage concerns the whole account, not the one request that met it.
    account_wide: bool = True
    excerpt: str | None = None


class _AccountWaits(Exception):
    """The listing failed; the account's throttle already knows, and every check of the account waits."""


# What a refused listing stands for: nothing seen, so every wanted batch is fetched on its own.
_EMPTY_PAGE: Mapping[str, Any] = {"object": "list", "data": [], "has_more": False}


class OpenAIBatchSource(Source):
    type_name = "openai_batch"
    Options = OpenAIBatchOptions
    options: OpenAIBatchOptions
    supports_discovery = True
    vendor = "OpenAI"  # in messages about the account

    def listen(self, listener: ListingListener) -> Callable[[], None]:
        def on_page(number: int, batches: Sequence[Mapping[str, Any]]) -> bool:
            return listener(number, [target for batch in batches if (target := _listed(batch)) is not None])

        return self._directory().listen(on_page)

    async def sweep(self) -> None:
        """The account's listing, now unless a fresh one exists (even with list_batches: false: discovery
        has no other way to see new batches). Its pages go to the listeners, and to the jobs' lookups."""
        throttle = self._throttle()
        if throttle.remaining() is not None:
            raise TransientError(self._waiting_message(throttle), retry_after=throttle.remaining())
        client = self._client()
        headers = self._auth_headers()

        async def list_page(after: str | None) -> Mapping[str, Any]:
            return await self._list_page(client, headers, throttle, after)

        try:
            await self._directory().refresh(list_page)
        except _AccountWaits as exc:
            raise TransientError(str(exc), retry_after=throttle.remaining()) from None

    # OpenAI's batch.* webhooks name the batch; the daemon's receiver is POST /webhooks/openai.
    push_channel = "openai"

    async def describe(self, target: str) -> ListedTarget | None:
        """One ``GET /batches/{id}``: a webhook named a batch no job watches; discovery reads its metadata."""
        throttle = self._throttle()
        if throttle.remaining() is not None:
            raise TransientError(self._waiting_message(throttle), retry_after=throttle.remaining())
        url = f"{self.options.base_url}/{self._batch_path(target)}"
        async with throttle.in_flight:
            response = await self._get_batch(self._client(), target, self._auth_headers(), throttle)
        if isinstance(response, _Unobserved):
            raise TransientError(response.message, retry_after=response.retry_after)
        if response.status_code != 200:
            answer = self._answer(target, url, response, throttle)  # judged as a check would (back-off included)
            if isinstance(answer, _Unobserved):
                raise TransientError(answer.message, retry_after=answer.retry_after)
            return None  # OpenAI's answer: no such batch for this key (another project's, say)
        throttle.succeeded()
        try:
            batch = response.json()
        except ValueError:
            raise TransientError(f"unexpected response from {url}: the body is not JSON") from None
        if not isinstance(batch, dict) or batch.get("id") != target:
            raise TransientError(f"unexpected response from {url}: not batch {target!r}")
        return _listed(batch)

    async def check(self, targets: Sequence[str]) -> CheckReport:
        if not targets:
            return CheckReport()
        unique = list(dict.fromkeys(targets))
        throttle = self._throttle()
        if throttle.remaining() is not None:
            return self._waiting(unique, throttle)
        client = self._client()
        # Read the key once per check, and per request rather than into the pooled client, so a
        # rotated secret is picked up without rebuilding the pool.
        headers = self._auth_headers()
        try:
            lookup = await self._lookup(client, headers, unique)
        except _AccountWaits:
            # Fetching every batch on its own instead would multiply the requests of an account that just
            # failed to answer one (300 watched batches: 301 requests in the same second after one 429).
            return self._waiting(unique, throttle)
        results: list[Observation | _Unobserved] = [
            self._observe_batch(target, f"{self.options.base_url}/batches", batch)
            for target, batch in lookup.listed.items()
        ]
        # The rest is neither observed nor in error: the listing has not reached it yet (a start, a new job).
        return await self._fetch_each(client, headers, throttle, lookup.fetch, results)

    async def check_fresh(self, targets: Sequence[str]) -> CheckReport:
        """One ``GET /batches/{id}`` per target, never the shared listing: a webhook said these changed, and
        a listing read seconds ago would still show them running."""
        if not targets:
            return CheckReport()
        unique = list(dict.fromkeys(targets))
        throttle = self._throttle()
        if throttle.remaining() is not None:
            return self._waiting(unique, throttle)
        return await self._fetch_each(self._client(), self._auth_headers(), throttle, unique, [])

    async def _fetch_each(
        self,
        client: httpx.AsyncClient,
        headers: Mapping[str, str],
        throttle: AccountThrottle,
        targets: Sequence[str],
        results: list[Observation | _Unobserved],
    ) -> CheckReport:
        outcomes = await asyncio.gather(
            *(self._check_one(client, target, headers, throttle) for target in targets),
            return_exceptions=True,
        )
        # Wait for every request before raising, so no task is left with an unretrieved exception.
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
            results.append(outcome)
        return _report(results)

    def _waiting(self, targets: Sequence[str], throttle: AccountThrottle) -> CheckReport:
        message = self._waiting_message(throttle)
        return CheckReport(transient_errors=dict.fromkeys(targets, message), retry_after=throttle.remaining())

    def _waiting_message(self, throttle: AccountThrottle) -> str:
        return f"not asked: the {self.vendor} account at {self.options.base_url} is backing off after {throttle.reason}"

    async def _lookup(self, client: httpx.AsyncClient, headers: Mapping[str, str], targets: Sequence[str]) -> Lookup:
        """The listing's copies of ``targets``, and which to fetch one by one (all of them without a listing)."""
        if not self.options.list_batches:
            return Lookup(fetch=list(targets))
        throttle = self._throttle()

        async def list_page(after: str | None) -> Mapping[str, Any]:
            return await self._list_page(client, headers, throttle, after)

        return await self._directory().lookup(targets, list_page)

    async def _list_page(
        self, client: httpx.AsyncClient, headers: Mapping[str, str], throttle: AccountThrottle, after: str | None
    ) -> Mapping[str, Any]:
        """One page of the listing. Every failure makes the whole account wait (the listing is its one shared
        request: whatever stops it stops every job's view), except OpenAI's own refusal of the listing."""
        import httpx

        url = f"{self.options.base_url}/batches"
        params = {**self._query(), "limit": str(PAGE_SIZE), **({"after": after} if after else {})}
        try:
            response = await client.get(
                "batches",
                params=params,
                headers=headers,
                timeout=self._timeout(),
                extensions=ReplyKind.LISTING.extensions,
            )
        except httpx.RequestError as exc:
            raise _account_waits(throttle, _Failure(f"could not reach {url}: {describe(exc)}")) from None
        if response.status_code != 200:
            judged = self._judge(url, response)
            if isinstance(judged, _Failure):
                if judged.excerpt:  # a failed listing names no target to carry the excerpt: logged here
                    self.context.logger.info("%s; the answer began: %r", judged.message, judged.excerpt)
                raise _account_waits(throttle, judged) from None
            # OpenAI refused the listing itself (an endpoint without it, a key without that permission):
            # fetch one by one, as with list_batches: false, until the next sweep tries again.
            throttle.succeeded()
            self.context.logger.warning(
                "OpenAI refused listing batches at %s (HTTP %s: %s); fetching them one by one "
                "(set list_batches: false to stop trying)",
                url,
                response.status_code,
                judged.message,
            )
            return _EMPTY_PAGE
        page = _list_envelope(response)
        if page is None:
            raise _account_waits(throttle, _Failure(f"unexpected response from {url}: not a list of batches"))
        throttle.succeeded()
        return page

    def _auth_headers(self) -> dict[str, str]:
        """The credential headers of one check. A subclass (Azure) may send the key another way."""
        return {"Authorization": f"Bearer {self.context.secret(self.options.api_key)}"}

    def _query(self) -> dict[str, str]:
        """Query parameters every request carries (Azure's classic API needs its api-version)."""
        return {}

    def _account_key(self) -> str:
        options = self.options
        # The secret's name, never its value: one account per endpoint, key, organization and project.
        return f"{options.base_url}:{options.api_key}:{options.organization}:{options.project}"

    def _directory(self) -> BatchDirectory:
        return self.context.shared.get(
            f"openai-directory:{self._account_key()}",
            lambda: BatchDirectory(self.context.clock.monotonic, self.options.list_max_age),
        )

    def _throttle(self) -> AccountThrottle:
        return self.context.shared.get(
            f"openai-throttle:{self._account_key()}", lambda: AccountThrottle(self.context.clock.monotonic)
        )

    def _client(self) -> httpx.AsyncClient:
        options = self.options
        headers = {"Accept": "application/json"}
        if options.organization:
            headers["OpenAI-Organization"] = options.organization
        if options.project:
            headers["OpenAI-Project"] = options.project
        return self.context.http.client(
            f"openai:{self._account_key()}", base_url=options.base_url, headers=headers, timeout=self._timeout()
        )

    def _timeout(self) -> httpx.Timeout:
        import httpx

        return httpx.Timeout(self.options.timeout, connect=min(CONNECT_TIMEOUT, self.options.timeout))

    async def _check_one(
        self, client: httpx.AsyncClient, target: str, headers: Mapping[str, str], throttle: AccountThrottle
    ) -> Observation | _Unobserved:
        url = f"{self.options.base_url}/{self._batch_path(target)}"
        async with throttle.in_flight:
            response = await self._get_batch(client, target, headers, throttle)
            if isinstance(response, _Unobserved):
                return response
            # Judged before the slot is given up, so the next request already sees a back-off this one caused.
            return self._answer(target, url, response, throttle)

    @staticmethod
    def _batch_path(target: str) -> str:
        # Quote the id: a configured "id" with "/" or "?" must not reach another endpoint.
        return f"batches/{urllib.parse.quote(target, safe='')}"

    async def _get_batch(
        self, client: httpx.AsyncClient, target: str, headers: Mapping[str, str], throttle: AccountThrottle
    ) -> httpx.Response | _Unobserved:
        """``GET /batches/{id}``, unless the account waits (checked again here: a 429 met by an earlier request
        of the same check stops the rest)."""
        import httpx

        waiting = throttle.remaining()
        if waiting is not None:
            return _Unobserved(target, self._waiting_message(throttle), waiting)
        path = self._batch_path(target)
        try:
            return await client.get(
                path,
                params=self._query(),
                headers=headers,
                timeout=self._timeout(),
                extensions=ReplyKind.OBJECT.extensions,
            )
        except httpx.RequestError as exc:
            message = f"could not reach {self.options.base_url}/{path}: {describe(exc)}"
            return _Unobserved(target, message, throttle.failed(message))

    def _answer(
        self, target: str, url: str, response: httpx.Response, throttle: AccountThrottle
    ) -> Observation | _Unobserved:
        if response.status_code == 200:
            throttle.succeeded()
            return self._observe(target, url, response)
        judged = self._judge(url, response)
        if isinstance(judged, _Failure):
            wait = throttle.failed(judged.message, judged.retry_after) if judged.account_wide else judged.retry_after
            return _Unobserved(target, judged.message, wait, judged.excerpt)
        throttle.succeeded()
        # OpenAI's own answer that the batch cannot be observed (unknown id, forbidden, ...): stop polling it.
        # Its words go under "excerpt", apart from the message (see plugin_api.CheckReport).
        return Observation(
            target=target,
            state=TargetState.ERROR,
            vendor_status=None,
            details={
                "http_status": response.status_code,
                "url": url,
                "error_code": judged.code,
                "error_type": judged.type,
                "excerpt": judged.message,
            },
            message=f"OpenAI refused to show the batch (HTTP {response.status_code} {judged.code or judged.type})",
        )

    def _observe(self, target: str, url: str, response: httpx.Response) -> Observation | _Unobserved:
        try:
            batch = response.json()
        except ValueError:
            return _Unobserved(target, f"unexpected response from {url}: the body is not JSON")
        observed = self._observe_batch(target, url, batch)
        if isinstance(observed, Observation) and self.options.list_batches:
            self._directory().learn(batch)
        return observed

    def _observe_batch(self, target: str, url: str, batch: Any) -> Observation | _Unobserved:
        if not isinstance(batch, dict) or not isinstance(batch.get("id"), str):
            return _Unobserved(target, f"unexpected response from {url}: no batch 'id' in the body")
        if batch["id"] != target:
            # A cache or a proxy mixing up answers must not decide this batch's fate with another's.
            return _Unobserved(
                target, f"unexpected response from {url}: the answer is about another batch ({batch['id']!r})"
            )
        status = batch.get("status")
        if not isinstance(status, str):
            return _Unobserved(target, f"unexpected response from {url}: no batch 'status' in the body")
        state = batch_state(status)
        if state is TargetState.UNKNOWN:
            # Keep polling: a new vendor status must not stop a job, but someone should map it.
            self.context.logger.warning(
                "OpenAI returned the undocumented batch status %r for %s at %s", status, target, url
            )
        return Observation(
            target=target,
            state=state,
            vendor_status=status,
            details=_details(batch),
            message=_message(state, status, batch),
        )

    def _judge(self, url: str, response: httpx.Response) -> VendorError | _Failure:
        """An error response: OpenAI's verdict about the request (a ``VendorError``), or a ``_Failure`` that a
        later try may change. Raises ``PermanentError`` when no job of the account can go on."""
        code = response.status_code
        retry_after = parse_retry_after(response.headers, now=self.context.clock.now())
        error = vendor_error(response, self.context.secret(self.options.api_key))
        if error is None:
            # An HTML 403 or 401 from a proxy is not OpenAI saying the key or the batch is bad: only the
            # vendor's own envelope is a verdict. A rate-limit or 5xx status still makes the account wait.
            message = f"HTTP {code} from {url} without OpenAI's error body (a proxy or gateway answered?)"
            return _Failure(message, retry_after, account_wide=is_transient_status(code))
        # OpenAI's words (error.message) go apart from the messages, as the excerpt (see errors.TeckoCheckerError).
        if code == 401:
            raise PermanentError(f"OpenAI rejected the API key (HTTP 401) at {url}", excerpt=error.message)
        if code == 429 and "insufficient_quota" in (error.code, error.type):
            # Waiting does not refill a quota: someone has to change the plan or the billing.
            raise PermanentError(
                f"OpenAI quota exhausted (HTTP 429 insufficient_quota) at {url}; "
                "check the plan and billing of the API key's project",
                excerpt=error.message,
            )
        if is_transient_status(code):
            return _Failure(f"HTTP {code} from {url}", retry_after, excerpt=error.message)
        if 400 <= code < 500:
            return error
        return _Failure(f"unexpected response from {url}: HTTP {code}", account_wide=False)


def _account_waits(throttle: AccountThrottle, failure: _Failure) -> _AccountWaits:
    throttle.failed(failure.message, failure.retry_after)
    return _AccountWaits(failure.message)


def _list_envelope(response: httpx.Response) -> Mapping[str, Any] | None:
    """The list envelope, or None: a page without ``data`` and ``has_more`` would look like "no batches" and
    send every watched batch to be fetched on its own."""
    page = json_object(response)
    if page is not None and isinstance(page.get("data"), list) and isinstance(page.get("has_more"), bool):
        return page
    return None


def _listed(batch: Mapping[str, Any]) -> ListedTarget | None:
    """What discovery reads of a listed batch; metadata that is not string to string is left out."""
    status, created, metadata = batch.get("status"), batch.get("created_at"), batch.get("metadata")
    if not isinstance(status, str):
        return None
    pairs = metadata if isinstance(metadata, dict) else {}
    return ListedTarget(
        target=batch["id"],
        state=batch_state(status),
        vendor_status=status,
        metadata={k: v for k, v in pairs.items() if isinstance(k, str) and isinstance(v, str)},
        created_at=_timestamp(created),
    )


def _timestamp(value: Any) -> dt.datetime | None:
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    try:
        return dt.datetime.fromtimestamp(value, dt.timezone.utc)
    except (OverflowError, OSError, ValueError):  # vendor data: a timestamp out of any sane range
        return None


def _details(batch: Mapping[str, Any]) -> dict[str, Any]:
    details: dict[str, Any] = {
        "status": batch.get("status"),
        "endpoint": batch.get("endpoint"),
        "model": batch.get("model"),
        "request_counts": batch.get("request_counts"),
        # Some clients see "" for "no file" (docs/vendors.md, OpenAI batches); the action must never send "" on.
        "output_file_id": batch.get("output_file_id") or None,
        "error_file_id": batch.get("error_file_id") or None,
        "errors": _error_list(batch),
    }
    details.update({name: batch.get(name) for name in TIMESTAMP_FIELDS})
    return details


def _error_list(batch: Mapping[str, Any]) -> list[Any] | None:
    errors = batch.get("errors")
    data = errors.get("data") if isinstance(errors, dict) else None
    if isinstance(data, dict):  # Azure's spec types errors.data as one object.
        return [data]
    return data if isinstance(data, list) else None


def _message(state: TargetState, status: str, batch: Mapping[str, Any]) -> str | None:
    if state is TargetState.FAILED:
        for error in _error_list(batch) or ():
            if isinstance(error, dict) and error.get("message"):
                return str(error["message"])
        return "the batch failed without an error message"
    if state is TargetState.UNKNOWN:
        return f"undocumented batch status {status!r}"
    counts = batch.get("request_counts")
    if state is TargetState.SUCCEEDED and isinstance(counts, dict) and counts.get("failed"):
        # "completed" only means the batch ended; say so when some or all requests failed.
        return f"{counts['failed']} of {counts.get('total')} requests failed"
    return None


def _report(outcomes: Sequence[Observation | _Unobserved]) -> CheckReport:
    observations = tuple(o for o in outcomes if isinstance(o, Observation))
    unobserved = [o for o in outcomes if isinstance(o, _Unobserved)]
    waits = [o.retry_after for o in unobserved if o.retry_after is not None]
    return CheckReport(
        observations=observations,
        transient_errors={o.target: o.message for o in unobserved},
        retry_after=max(waits) if waits else None,
        excerpts={o.target: o.excerpt for o in unobserved if o.excerpt},
    )
