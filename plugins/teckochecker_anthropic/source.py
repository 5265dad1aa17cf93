"""The ``anthropic_batch`` source: observes Anthropic Message Batches through one shared, newest-first
listing of the workspace's batches (``GET {base_url}/v1/messages/batches``, teckochecker.newest_first), and
``GET {base_url}/v1/messages/batches/{id}`` for any batch the listing did not show.

The core is the only retry layer: a check never retries. Rate limits are the workspace's (they count
retrieve and list calls too): a 429, a 529 overload, a 5xx or no answer puts every job of that key into one
back-off (teckochecker.account_throttle), for ``retry-after`` when given. A 200 that says the request limit
is used up (``anthropic-ratelimit-requests-remaining: 0``) makes the key wait until
``anthropic-ratelimit-requests-reset`` before the 429 comes.

Answers are checked, not trusted: a batch object must name the batch asked for, and only Anthropic's own
error envelope (envelope.py) is a verdict about a batch or a key; anything else is transient.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

from teckochecker.account_throttle import AccountThrottle
from teckochecker.errors import PermanentError
from teckochecker.newest_first import NewestFirstListing, Page
from teckochecker.plugin_api import (
    CheckReport,
    Destination,
    Duration,
    Observation,
    OptionsModel,
    Origin,
    ReplyKind,
    SecretName,
    Source,
    TargetState,
    http_url,
)
from teckochecker.retry import is_transient_status, parse_retry_after
from teckochecker.vendor_replies import describe, json_object
from teckochecker_anthropic.envelope import VendorError, vendor_error
from teckochecker_anthropic.statuses import TIMESTAMP_FIELDS, batch_state, request_counts

if TYPE_CHECKING:
    import httpx

__all__ = ["AnthropicBatchOptions", "AnthropicBatchSource"]

CONNECT_TIMEOUT = 5.0
# The API allows 1..1000 per page; list calls count against the request limit, so fewer, larger pages.
PAGE_SIZE = 1000
BATCHES_PATH = "v1/messages/batches"
# What a source reads of a batch; kept for thousands of batches between sweeps.
KEPT_FIELDS = frozenset({"id", "type", "processing_status", "request_counts", "results_url", *TIMESTAMP_FIELDS})
# A results_url is passed downstream (a Keboola variable); a real one is about 100 characters.
MAX_RESULTS_URL = 2048
# Codes inside a 429's error.details that waiting does not lift (the SDK's ErrorDetails union).
SPEND_LIMIT_CODES = frozenset(
    {"enforced_spend_limit_reached", "contract_spend_limit_reached", "linked_organization_spend_limit_reached"}
)


class AnthropicBatchOptions(OptionsModel):
    api_key: SecretName
    base_url: Destination = Destination("https://api.anthropic.com")
    # Sent as anthropic-version; 2023-06-01 is the version every SDK accepts.
    anthropic_version: str = Field(default="2023-06-01", pattern=r"^\d{4}-\d{2}-\d{2}$")
    timeout: Duration = Field(default=30.0, gt=0)
    # Read batches from the workspace's newest-first list (1000 per request, shared by all jobs of the key)
    # and fetch one by one only what the list did not show. false: always one request per batch.
    list_batches: bool = True
    list_max_age: Duration = Field(default=10.0, ge=1.0, le=3600.0)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return http_url(value, "https://api.anthropic.com")


@dataclass(frozen=True)
class _Unobserved:
    target: str
    message: str
    retry_after: float | None = None
    excerpt: str | None = None  # what the vendor said, kept out of the message (plugin_api.CheckReport)


@dataclass(frozen=True)
class _Failure:
    """An error response that is no verdict about the batch: a later try may get a real answer."""

    message: str
    retry_after: float | None = None
    account_wide: bool = True
    excerpt: str | None = None


class _AccountWaits(Exception):
    """The listing failed; the throttle already knows, and every check of the key waits."""


class AnthropicBatchSource(Source):
    type_name = "anthropic_batch"
    Options = AnthropicBatchOptions
    options: AnthropicBatchOptions

    async def check(self, targets: Sequence[str]) -> CheckReport:
        if not targets:
            return CheckReport()
        unique = list(dict.fromkeys(targets))
        throttle = self._throttle()
        if throttle.remaining() is not None:
            return self._waiting(unique, throttle)
        client = self._client()
        # Per request, not in the pooled client: a rotated key is used at once.
        headers = {"x-api-key": self._key()}
        try:
            listed = await self._listed(client, headers, unique)
        except _AccountWaits:
            return self._waiting(unique, throttle)
        results: list[Observation | _Unobserved] = [
            self._observe_batch(target, self._url(BATCHES_PATH), batch) for target, batch in listed.items()
        ]
        outcomes = await asyncio.gather(
            *(self._check_one(client, target, headers, throttle) for target in unique if target not in listed),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
            results.append(outcome)
        return _report(results)

    # ----- the shared listing ------------------------------------------------------------------------

    async def _listed(
        self, client: httpx.AsyncClient, headers: Mapping[str, str], targets: Sequence[str]
    ) -> dict[str, Mapping[str, Any]]:
        if not self.options.list_batches:
            return {}
        throttle = self._throttle()

        async def list_page(cursor: str | None) -> Page:
            return await self._list_page(client, headers, throttle, cursor)

        return await self._listing().lookup(targets, list_page)

    async def _list_page(
        self, client: httpx.AsyncClient, headers: Mapping[str, str], throttle: AccountThrottle, cursor: str | None
    ) -> Page:
        import httpx

        url = self._url(BATCHES_PATH)
        params = {"limit": str(PAGE_SIZE), **({"after_id": cursor} if cursor else {})}
        try:
            response = await client.get(
                BATCHES_PATH,
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
                self._log_excerpt(judged)
                raise _account_waits(throttle, judged) from None
            throttle.succeeded()
            self.context.logger.warning(
                "Anthropic refused listing batches at %s (HTTP %s: %s); fetching them one by one "
                "(set list_batches: false to stop trying)",
                url,
                response.status_code,
                judged.message,
            )
            return Page((), None)
        page = _list_envelope(response)
        if page is None:
            raise _account_waits(throttle, _Failure(f"unexpected response from {url}: not a list of batches"))
        throttle.succeeded()
        self._note_limits(response, throttle)
        return page

    def _listing(self) -> NewestFirstListing:
        return self.context.shared.get(
            f"anthropic-listing:{self._account_key()}",
            lambda: NewestFirstListing(
                self.context.clock.monotonic,
                self.options.list_max_age,
                page_size=PAGE_SIZE,
                created_at=_created_at,
                keep=lambda batch: {k: v for k, v in batch.items() if k in KEPT_FIELDS},
            ),
        )

    # ----- one batch ---------------------------------------------------------------------------------

    async def _check_one(
        self, client: httpx.AsyncClient, target: str, headers: Mapping[str, str], throttle: AccountThrottle
    ) -> Observation | _Unobserved:
        import httpx

        # Quote the id: a configured "id" with "/" or "?" must not reach another endpoint.
        path = f"{BATCHES_PATH}/{urllib.parse.quote(target, safe='')}"
        url = self._url(path)
        async with throttle.in_flight:
            waiting = throttle.remaining()
            if waiting is not None:
                return _Unobserved(target, self._waiting_message(throttle), waiting)
            try:
                response = await client.get(
                    path, headers=headers, timeout=self._timeout(), extensions=ReplyKind.OBJECT.extensions
                )
            except httpx.RequestError as exc:
                message = f"could not reach {url}: {describe(exc)}"
                return _Unobserved(target, message, throttle.failed(message))
            return self._answer(target, url, response, throttle)

    def _answer(
        self, target: str, url: str, response: httpx.Response, throttle: AccountThrottle
    ) -> Observation | _Unobserved:
        if response.status_code == 200:
            throttle.succeeded()
            self._note_limits(response, throttle)
            batch = json_object(response)
            observed = self._observe_batch(target, url, batch)
            if isinstance(observed, Observation) and batch is not None and self.options.list_batches:
                self._listing().learn(batch)
            return observed
        judged = self._judge(url, response)
        if isinstance(judged, _Failure):
            wait = throttle.failed(judged.message, judged.retry_after) if judged.account_wide else judged.retry_after
            return _Unobserved(target, judged.message, wait, judged.excerpt)
        throttle.succeeded()
        # Anthropic's own answer that the batch cannot be observed (unknown id, another workspace's, ...).
        # Its words go under "excerpt", apart from the message (see plugin_api.CheckReport).
        return Observation(
            target=target,
            state=TargetState.ERROR,
            details={
                "http_status": response.status_code,
                "url": url,
                "error_type": judged.type,
                "excerpt": judged.message,
            },
            message=f"Anthropic refused to show the batch (HTTP {response.status_code} {judged.type})",
        )

    def _observe_batch(self, target: str, url: str, batch: Mapping[str, Any] | None) -> Observation | _Unobserved:
        if batch is None or not isinstance(batch.get("id"), str):
            return _Unobserved(target, f"unexpected response from {url}: no batch 'id' in the body")
        if batch["id"] != target:
            return _Unobserved(
                target, f"unexpected response from {url}: the answer is about another batch ({batch['id']!r})"
            )
        status = batch.get("processing_status")
        if not isinstance(status, str):
            return _Unobserved(target, f"unexpected response from {url}: no 'processing_status' in the body")
        counts = request_counts(batch)
        state, message = batch_state(status, counts)
        if state is TargetState.UNKNOWN:
            self.context.logger.warning(
                "Anthropic returned the undocumented processing_status %r for %s at %s", status, target, url
            )
            message = f"undocumented processing_status {status!r}"
        details: dict[str, Any] = {
            "processing_status": status,
            "request_counts": counts,
            "results_url": self._results_url(target, batch.get("results_url")),
        }
        details.update({name: batch.get(name) for name in TIMESTAMP_FIELDS})
        return Observation(target=target, state=state, vendor_status=status, details=details, message=message)

    def _results_url(self, target: str, url: Any) -> str | None:
        """The batch's results_url, passed downstream only if it is where the source itself reads from: the
        configured base_url's host, over https (or base_url's own scheme and port), of a sane length."""
        if url is None or url == "":
            return None
        if isinstance(url, str) and len(url) <= MAX_RESULTS_URL:
            base = Origin.of(self.options.base_url)
            try:
                origin = Origin.of(url)
            except ValueError:
                origin = None
            if origin in (base, Origin("https", base.host, 443)):
                return url
        self.context.logger.warning(
            "Anthropic batch %s: its results_url is left out: it is not an https URL on %s of at most %d "
            "characters (a reply may not send the pipeline elsewhere)",
            target,
            Origin.of(self.options.base_url).host,
            MAX_RESULTS_URL,
        )
        return None

    # ----- answers -----------------------------------------------------------------------------------

    def _judge(self, url: str, response: httpx.Response) -> VendorError | _Failure:
        """An error response: Anthropic's verdict about the request, or a ``_Failure`` a later try may change.
        Raises ``PermanentError`` when no job of the key can go on."""
        code = response.status_code
        retry_after = parse_retry_after(response.headers, now=self.context.clock.now())
        if retry_after is None and code == 429:
            retry_after = self._until_reset(response)  # a 429 without retry-after still says when the window resets
        error = vendor_error(response, self._key())
        if error is None:
            message = f"HTTP {code} from {url} without Anthropic's error body (a proxy or gateway answered?)"
            return _Failure(message, retry_after, account_wide=is_transient_status(code))
        # Anthropic's words (error.message) go apart from the messages, as the excerpt (errors.TeckoCheckerError).
        if code == 401:
            raise PermanentError(f"Anthropic rejected the API key (HTTP 401) at {url}", excerpt=error.message)
        if code == 402 or error.type == "billing_error":
            raise PermanentError(f"Anthropic refused for billing (HTTP {code}) at {url}", excerpt=error.message)
        if code == 429 and error.detail_code in SPEND_LIMIT_CODES:
            raise PermanentError(
                f"Anthropic spend limit reached (HTTP 429 {error.detail_code}) at {url}; "
                "raise the workspace's spend limit",
                excerpt=error.message,
            )
        if is_transient_status(code):
            return _Failure(f"HTTP {code} from {url}: {error.type}", retry_after, excerpt=error.message)
        if 400 <= code < 500:
            return error
        return _Failure(f"unexpected response from {url}: HTTP {code}", account_wide=False)

    def _log_excerpt(self, failure: _Failure) -> None:
        # A failed listing stops every check of the key; its message names no target to carry the excerpt.
        if failure.excerpt:
            self.context.logger.info("%s; the answer began: %r", failure.message, failure.excerpt)

    def _note_limits(self, response: httpx.Response, throttle: AccountThrottle) -> None:
        """A 200 that used the last request of the window: wait for the reset instead of meeting a 429."""
        remaining = response.headers.get("anthropic-ratelimit-requests-remaining")
        wait = self._until_reset(response)
        if remaining is None or remaining.strip() != "0" or wait is None:
            return
        reset = response.headers["anthropic-ratelimit-requests-reset"]
        throttle.failed(f"the request limit is used up until {reset}", wait)

    def _until_reset(self, response: httpx.Response) -> float | None:
        """Seconds until ``anthropic-ratelimit-requests-reset``; None when absent, unreadable or past."""
        reset = _parse_time(response.headers.get("anthropic-ratelimit-requests-reset"))
        if reset is None:
            return None
        wait = (reset - self.context.clock.now()).total_seconds()
        return wait if wait > 0 else None

    # ----- plumbing ----------------------------------------------------------------------------------

    def _waiting(self, targets: Sequence[str], throttle: AccountThrottle) -> CheckReport:
        message = self._waiting_message(throttle)
        return CheckReport(transient_errors=dict.fromkeys(targets, message), retry_after=throttle.remaining())

    def _waiting_message(self, throttle: AccountThrottle) -> str:
        return f"not asked: the Anthropic API key at {self.options.base_url} is backing off after {throttle.reason}"

    def _account_key(self) -> str:
        # The secret's name, never its value.
        return f"{self.options.base_url}:{self.options.api_key}"

    def _throttle(self) -> AccountThrottle:
        return self.context.shared.get(
            f"anthropic-throttle:{self._account_key()}", lambda: AccountThrottle(self.context.clock.monotonic)
        )

    def _client(self) -> httpx.AsyncClient:
        headers = {"Accept": "application/json", "anthropic-version": self.options.anthropic_version}
        return self.context.http.client(
            f"anthropic:{self._account_key()}:{self.options.anthropic_version}",
            base_url=self.options.base_url,
            headers=headers,
            timeout=self._timeout(),
        )

    def _timeout(self) -> httpx.Timeout:
        import httpx

        return httpx.Timeout(self.options.timeout, connect=min(CONNECT_TIMEOUT, self.options.timeout))

    def _key(self) -> str:
        return self.context.secret(self.options.api_key)

    def _url(self, path: str) -> str:
        return f"{self.options.base_url}/{path}"


def _account_waits(throttle: AccountThrottle, failure: _Failure) -> _AccountWaits:
    throttle.failed(failure.message, failure.retry_after)
    return _AccountWaits(failure.message)


def _list_envelope(response: httpx.Response) -> Page | None:
    """The list envelope as a Page, or None when it is not one (it would read as "no batches")."""
    body = json_object(response)
    if body is None or not isinstance(body.get("data"), list) or not isinstance(body.get("has_more"), bool):
        return None
    batches = tuple(b for b in body["data"] if isinstance(b, dict) and isinstance(b.get("id"), str))
    if not body["has_more"] or not batches:
        return Page(batches, None)
    last_id = body.get("last_id")
    return Page(batches, last_id if isinstance(last_id, str) and last_id else batches[-1]["id"])


def _parse_time(value: Any) -> dt.datetime | None:
    """An RFC 3339 time ("2026-01-01T01:00:00.100435Z") as an aware datetime; None when it is not one."""
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def _created_at(batch: Mapping[str, Any]) -> float | None:
    created = _parse_time(batch.get("created_at"))
    return created.timestamp() if created is not None else None


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
