"""Why a watching job may not fire yet although its rule holds: a discovered job whose group is not complete.

Read in the transaction that would fire (StateStore.record_check), from the discovered job's row in
tc_registered_jobs, so the answer is as durable as the firing itself: a restart, a rebuild that has not been
applied yet, or another replica cannot make a job fire with part of its group.
"""

from __future__ import annotations

from collections.abc import Collection

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from teckochecker.grouping import GroupState
from teckochecker.state import schema
from teckochecker.state.models import JobOrigin


def group_hold(conn: Connection, name: str, targets: Collection[str]) -> str | None:
    """The reason job ``name`` (watching ``targets``) must not fire now, or None when nothing holds it."""
    r = schema.registered_jobs
    details = conn.execute(
        sa.select(r.c.details).where(r.c.name == name, r.c.origin == JobOrigin.DISCOVERED.value)
    ).scalar()
    if details is None:
        return None
    state = details.get("state")
    if state == GroupState.FAILED.value:
        return f"its group failed: {details.get('reason')}"
    if state != GroupState.COMPLETE.value:
        return "waiting for its group to be complete"
    missing = [t for t in details.get("targets") or () if t not in targets]
    if missing:
        # The group's row is ahead of the job's targets until the rebuild adding them is applied.
        return f"waiting for {len(missing)} batch(es) of its group to be added"
    return None
