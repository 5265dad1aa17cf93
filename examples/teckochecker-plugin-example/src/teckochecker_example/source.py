"""The ``json_status`` source: ``GET {base_url}/{target}`` answers JSON, one field of which is the state.

Shows what a source does with what the core hands it: a pooled HTTP client (``context.http``), a secret
read per request (``context.secret``, so a rotated value is used at once), the clock, the logger, and the
errors that tell the core how to go on.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from teckochecker.errors import PermanentError
from teckochecker.plugin_api import (
    CheckReport,
    Destination,
    Duration,
    Observation,
    OptionsModel,
    SecretName,
    Source,
    TargetState,
    http_url,
)
from teckochecker.retry import is_transient_status, parse_retry_after

if TYPE_CHECKING:
    # httpx at run time only where a request is made: validate-config, status and plugins import every
    # plugin and stay light (TeckoChecker's tests/test_import_graph.py holds them to it).
    import httpx

__all__ = ["JsonStatusOptions", "JsonStatusSource"]


class JsonStatusOptions(OptionsModel):
    # Each target is read from GET {base_url}/{target}. Typed Destination: the token below may be sent only
    # there, and only the config files may set it.
    base_url: Destination
    # Sent as "Authorization: Bearer <value>" when given.
    token: SecretName | None = None
    # The field of the JSON answer that holds the status.
    status_field: str = Field(default="status", min_length=1)
    # Status values per normalized state; any other value keeps the target running.
    succeeded: list[str] = Field(default_factory=lambda: ["succeeded", "completed", "done"])
    failed: list[str] = Field(default_factory=lambda: ["failed", "error"])
    cancelled: list[str] = Field(default_factory=lambda: ["cancelled", "canceled"])
    expired: list[str] = Field(default_factory=lambda: ["expired"])
    timeout: Duration = Field(default=10.0, gt=0)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return http_url(value, "https://status.example.com/exports")


class JsonStatusSource(Source):
    type_name = "json_status"
    Options = JsonStatusOptions
    options: JsonStatusOptions

    async def check(self, targets: Sequence[str]) -> CheckReport:
        client = self.context.http.client(
            f"json_status:{self.options.base_url}", base_url=self.options.base_url, timeout=self.options.timeout
        )
        # The daemon bounds concurrent requests across all jobs; asking for all targets at once is fine.
        results = await asyncio.gather(*(self._observe(client, target) for target in targets))
        observations = tuple(r for r in results if isinstance(r, Observation))
        transient = {target: r[0] for target, r in zip(targets, results, strict=True) if isinstance(r, tuple)}
        waits = [r[1] for r in results if isinstance(r, tuple) and r[1] is not None]
        return CheckReport(observations, transient, max(waits) if waits else None)

    async def _observe(self, client: httpx.AsyncClient, target: str) -> Observation | tuple[str, float | None]:
        """The target's observation, or (why it could not be observed now, seconds to wait or None)."""
        import httpx

        path = "/" + urllib.parse.quote(target, safe="")
        try:
            response = await client.get(path, headers=self._headers())
        except httpx.RequestError as exc:
            return f"cannot reach {self.options.base_url}: {type(exc).__name__}", None
        if response.status_code in (401, 403):
            # Every target of the job would fail the same way: stop the job and say why.
            raise PermanentError(f"{self.options.base_url} refused the token (HTTP {response.status_code})")
        if response.status_code == 404:
            return Observation(target, TargetState.ERROR, message=f"{target} not found at {self.options.base_url}")
        if is_transient_status(response.status_code):
            wait = parse_retry_after(response.headers, now=self.context.clock.now())
            return f"HTTP {response.status_code} from {self.options.base_url}", wait
        if response.status_code != 200:
            return Observation(target, TargetState.ERROR, message=f"HTTP {response.status_code} for {target}")
        return self._read(target, response)

    def _headers(self) -> dict[str, str]:
        if self.options.token is None:
            return {}
        return {"Authorization": f"Bearer {self.context.secret(self.options.token)}"}

    def _read(self, target: str, response: httpx.Response) -> Observation | tuple[str, float | None]:
        try:
            body = response.json()
        except ValueError:
            return f"the answer for {target} is not JSON", None
        status = body.get(self.options.status_field) if isinstance(body, dict) else None
        if not isinstance(status, str):
            return Observation(target, TargetState.UNKNOWN, message=f"no {self.options.status_field!r} string")
        return Observation(target, self._state(status), vendor_status=status, details={"status": status})

    def _state(self, status: str) -> TargetState:
        for state, values in (
            (TargetState.SUCCEEDED, self.options.succeeded),
            (TargetState.FAILED, self.options.failed),
            (TargetState.CANCELLED, self.options.cancelled),
            (TargetState.EXPIRED, self.options.expired),
        ):
            if status in values:
                return state
        return TargetState.RUNNING
