"""The ``openai_batch`` source: observes each watched batch through a shared listing of the account's
batches (``GET {base_url}/batches``, see directory.py), and ``GET {base_url}/batches/{id}`` for any batch
the listing did not show.

Works with any OpenAI-compatible endpoint (Azure v1, proxies) through ``base_url``. The core is the only
retry layer: a check never retries, it reports what failed and how long the vendor asked us to wait.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import Field, field_validator

from teckochecker.errors import PermanentError
from teckochecker.plugin_api import (
    CheckReport,
    Duration,
    Observation,
    OptionsModel,
    SecretName,
    Source,
    TargetState,
    http_url,
)
from teckochecker.retry import is_transient_status, parse_retry_after
from teckochecker_openai.directory import PAGE_SIZE, BatchDirectory
from teckochecker_openai.statuses import TIMESTAMP_FIELDS, batch_state

__all__ = ["OpenAIBatchOptions", "OpenAIBatchSource"]

# The SDK's connect timeout; the read timeout is the user's ``timeout``.
CONNECT_TIMEOUT = 5.0


class OpenAIBatchOptions(OptionsModel):
    api_key: SecretName
    organization: str | None = Field(default=None, min_length=1)
    project: str | None = Field(default=None, min_length=1)
    base_url: str = "https://api.openai.com/v1"
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
    """One target that could not be observed this time, and how long the vendor asked us to wait."""

    target: str
    message: str
    retry_after: float | None = None


class OpenAIBatchSource(Source):
    type_name = "openai_batch"
    Options = OpenAIBatchOptions
    options: OpenAIBatchOptions

    async def check(self, targets: Sequence[str]) -> CheckReport:
        if not targets:
            return CheckReport()
        client = self._client()
        # Read the key once per check, and per request rather than into the pooled client, so a
        # rotated secret is picked up without rebuilding the pool.
        headers = {"Authorization": f"Bearer {self.context.secret(self.options.api_key)}"}
        unique = list(dict.fromkeys(targets))
        listed = await self._listed(client, headers, unique)
        results: list[Observation | _Unobserved] = [
            self._observe_batch(target, f"{self.options.base_url}/batches", batch) for target, batch in listed.items()
        ]
        outcomes = await asyncio.gather(
            *(self._check_one(client, target, headers) for target in unique if target not in listed),
            return_exceptions=True,
        )
        # Wait for every request before raising, so no task is left with an unretrieved exception.
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
            results.append(outcome)
        return _report(results)

    async def _listed(
        self, client: httpx.AsyncClient, headers: Mapping[str, str], targets: Sequence[str]
    ) -> dict[str, Mapping[str, Any]]:
        if not self.options.list_batches:
            return {}

        async def list_page(after: str | None) -> Mapping[str, Any]:
            params = {"limit": str(PAGE_SIZE), **({"after": after} if after else {})}
            response = await client.get("batches", params=params, headers=headers, timeout=self._timeout())
            response.raise_for_status()
            page = response.json()
            if not isinstance(page, dict):
                raise ValueError("the list response is not an object")
            return page

        try:
            return await self._directory().lookup(targets, list_page)
        except (httpx.HTTPError, ValueError) as exc:
            # One by one still works (and classifies a rejected key or a 429 properly); just say why.
            self.context.logger.debug(
                "listing batches at %s/batches failed (%s); fetching one by one", self.options.base_url, _describe(exc)
            )
            return {}

    def _directory(self) -> BatchDirectory:
        options = self.options
        key = f"openai-directory:{options.base_url}:{options.api_key}:{options.organization}:{options.project}"
        return self.context.shared.get(
            key, lambda: BatchDirectory(self.context.clock.monotonic, self.options.list_max_age)
        )

    def _client(self) -> httpx.AsyncClient:
        options = self.options
        key = f"openai:{options.base_url}:{options.api_key}:{options.organization}:{options.project}"
        headers = {"Accept": "application/json"}
        if options.organization:
            headers["OpenAI-Organization"] = options.organization
        if options.project:
            headers["OpenAI-Project"] = options.project
        return self.context.http.client(key, base_url=options.base_url, headers=headers, timeout=self._timeout())

    def _timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.options.timeout, connect=min(CONNECT_TIMEOUT, self.options.timeout))

    async def _check_one(
        self, client: httpx.AsyncClient, target: str, headers: Mapping[str, str]
    ) -> Observation | _Unobserved:
        # Quote the id: a configured "id" with "/" or "?" must not reach another endpoint.
        path = f"batches/{urllib.parse.quote(target, safe='')}"
        url = f"{self.options.base_url}/{path}"
        try:
            response = await client.get(path, headers=headers, timeout=self._timeout())
        except httpx.RequestError as exc:
            return _Unobserved(target, f"could not reach {url}: {_describe(exc)}")
        if response.status_code == 200:
            return self._observe(target, url, response)
        return self._classify_error(target, url, response)

    def _observe(self, target: str, url: str, response: httpx.Response) -> Observation | _Unobserved:
        try:
            batch = response.json()
        except ValueError:
            return _Unobserved(target, f"unexpected response from {url}: the body is not JSON")
        if isinstance(batch, dict) and self.options.list_batches:
            self._directory().learn(batch)
        return self._observe_batch(target, url, batch)

    def _observe_batch(self, target: str, url: str, batch: Any) -> Observation | _Unobserved:
        if not isinstance(batch, dict) or not isinstance(batch.get("id"), str):
            return _Unobserved(target, f"unexpected response from {url}: no batch 'id' in the body")
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

    def _classify_error(self, target: str, url: str, response: httpx.Response) -> Observation | _Unobserved:
        code = response.status_code
        error = _error_body(response, self.context.secret(self.options.api_key))
        if code == 401:
            raise PermanentError(f"OpenAI rejected the API key (HTTP 401) at {url}: {error.message or 'no message'}")
        if code == 429 and "insufficient_quota" in (error.code, error.type):
            # Waiting does not refill a quota: someone has to change the plan or the billing.
            raise PermanentError(
                f"OpenAI quota exhausted (HTTP 429 insufficient_quota) at {url}: "
                f"{error.message or 'no message'}; check the plan and billing of the API key's project"
            )
        if is_transient_status(code):
            retry_after = parse_retry_after(response.headers, now=self.context.clock.now())
            detail = f": {error.message}" if error.message else ""
            return _Unobserved(target, f"HTTP {code} from {url}{detail}", retry_after)
        if 400 <= code < 500:
            # The batch itself cannot be observed (unknown id, forbidden, ...): stop polling it.
            return Observation(
                target=target,
                state=TargetState.ERROR,
                vendor_status=None,
                details={"http_status": code, "url": url, "error_code": error.code, "error_type": error.type},
                message=error.message or f"HTTP {code} from {url}",
            )
        return _Unobserved(target, f"unexpected response from {url}: HTTP {code}")


@dataclass(frozen=True)
class _ErrorBody:
    message: str | None = None
    code: str | None = None
    type: str | None = None


def _error_body(response: httpx.Response, secret: str) -> _ErrorBody:
    """The ``{"error": {...}}`` envelope, or nothing for HTML gateway pages and other non-JSON bodies."""
    try:
        body = response.json()
    except ValueError:
        return _ErrorBody()
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, str):
        return _ErrorBody(message=_redact(error, secret))
    if not isinstance(error, dict):
        return _ErrorBody()
    message = error.get("message")
    return _ErrorBody(
        message=_redact(message, secret) if isinstance(message, str) and message else None,
        code=error.get("code") if isinstance(error.get("code"), str) else None,
        type=error.get("type") if isinstance(error.get("type"), str) else None,
    )


def _redact(text: str, secret: str) -> str:
    # The real API masks the key in its messages; a proxy or a compatible endpoint may not.
    return text.replace(secret, "***") if secret else text


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _details(batch: Mapping[str, Any]) -> dict[str, Any]:
    details: dict[str, Any] = {
        "status": batch.get("status"),
        "endpoint": batch.get("endpoint"),
        "model": batch.get("model"),
        "request_counts": batch.get("request_counts"),
        # Some clients see "" for "no file" (llm-batch-apis.md §6); the action must never send "" on.
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
    )
