"""The append-only event log of a job: every status change, trigger, action result and error."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from teckochecker.state import schema


def append_event(
    conn: Connection, job_id: int, at: dt.datetime, kind: str, message: str, data: Mapping[str, Any] | None = None
) -> None:
    conn.execute(
        sa.insert(schema.events).values(job_id=job_id, at=at, kind=kind, message=message, data=dict(data or {}))
    )
