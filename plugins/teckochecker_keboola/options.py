"""Options of the ``keboola_job`` action."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from teckochecker.plugin_api import Destination, Duration, OptionsModel, Origin, SecretName, http_url
from teckochecker_keboola.queue import guess_queue_url
from teckochecker_keboola.variables import RESERVED_VARIABLES

__all__ = ["KeboolaJobOptions"]


class KeboolaJobOptions(OptionsModel):
    token: SecretName
    # The stack's connection URL, e.g. https://connection.eu-central-1.keboola.com.
    stack_url: Destination
    # The Queue API's base URL, e.g. https://queue.keboola.com. Set, it is used as it is and the stack index is
    # not read; unset, the index names it, and a Queue API on another host than queue.<the stack's> must be
    # set here (or in the token's send_to) before the token is sent there.
    queue_url: Destination | None = None
    component: str = Field(min_length=1)
    config: str = Field(min_length=1)
    config_row_ids: list[str] = Field(default_factory=list)
    branch_id: str | None = Field(default=None, min_length=1)
    mode: Literal["run", "debug", "forceRun"] = "run"
    variables: dict[str, str] = Field(default_factory=dict)
    # Whether to follow the job to its end; if not, the action counts as succeeded once the job exists.
    follow: bool = True
    # Seconds a new job may be missing from /search/jobs (the index is eventually consistent).
    search_lag: Duration = Field(default=60.0, ge=0)
    # How often a running Keboola job is read while it is followed.
    follow_interval: Duration = Field(default=10.0, ge=1.0, le=3600.0)
    # Read timeout of the create call; connecting is always bounded by 5 s.
    timeout: Duration = Field(default=15.0, gt=0)
    # After a start that followed an in-doubt outcome, how long to keep searching for a duplicate job (0: off).
    duplicate_watch: Duration = Field(default=3600.0, ge=0, le=7 * 86400)
    # A duplicate still created/waiting is always cancelled; one that already runs only with "cancel".
    on_duplicate: Literal["report", "cancel"] = "report"

    @field_validator("stack_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return http_url(value, "https://connection.keboola.com")

    @field_validator("queue_url")
    @classmethod
    def _queue_http_url(cls, value: str | None) -> str | None:
        return None if value is None else http_url(value, "https://queue.keboola.com")

    def bound_origins(self) -> frozenset[Origin]:
        """The stack's origin, the Queue API's (``queue_url``), and the one guessed from the stack's host
        (``connection.X`` → ``queue.X``, where every Keboola stack has it)."""
        guess = guess_queue_url(self.stack_url)
        return super().bound_origins() | ({Origin.of(guess)} if guess is not None else set())

    @field_validator("config_row_ids")
    @classmethod
    def _non_empty_rows(cls, value: list[str]) -> list[str]:
        if any(not row for row in value):
            raise ValueError("row ids must not be empty")
        return value

    @field_validator("variables")
    @classmethod
    def _usable_variables(cls, value: dict[str, str]) -> dict[str, str]:
        for name, content in value.items():
            if not name:
                raise ValueError("a variable name must not be empty")
            if name in RESERVED_VARIABLES:
                raise ValueError(f"variable {name!r} is set by TeckoChecker itself; choose another name")
            if not content:
                # Keboola refuses a job with an empty variable value.
                raise ValueError(f"variable {name!r} has an empty value, which Keboola rejects")
        return value
