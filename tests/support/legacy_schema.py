"""A frozen copy of the tables every pre-Alembic release created with create_all (schema.py before the
first revisions, tc_meta 'schema' = 1): the stores that revision 0001 must recognise, stamp and upgrade.

Never edit it to follow schema.py: it stands for databases that already exist.
"""

from __future__ import annotations

import sqlalchemy as sa

# What schema.UTCDateTime was in the database; its zone handling was Python-side.
UTCDateTime = sa.DateTime(timezone=True)

OPEN_RUN_STATES = ("sending", "in_doubt")
LEGACY_MARK = {"key": "schema", "value": "1"}

metadata = sa.MetaData()

meta_table = sa.Table(
    "tc_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

jobs = sa.Table(
    "tc_jobs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(128), nullable=False, unique=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("removed", sa.Boolean, nullable=False, default=False),
    sa.Column("paused", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("first_observed_at", UTCDateTime),
    sa.Column("deadline_at", UTCDateTime),
    sa.Column("last_checked_at", UTCDateTime),
    sa.Column("next_check_at", UTCDateTime),
    sa.Column("finished_at", UTCDateTime),
    sa.Column("last_error", sa.Text),
    sa.Column("consecutive_failures", sa.Integer, nullable=False, default=0),
)

targets = sa.Table(
    "tc_targets",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.Integer, sa.ForeignKey("tc_jobs.id", ondelete="CASCADE"), nullable=False),
    sa.Column("target", sa.String(255), nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("vendor_status", sa.String(64)),
    sa.Column("details", sa.JSON, nullable=False, default=dict),
    sa.Column("message", sa.Text),
    sa.Column("observed_at", UTCDateTime),
    sa.Column("terminal_at", UTCDateTime),
    # Request progress from the details (request_counts), as columns so gauges are one aggregate query.
    sa.Column("requests_total", sa.Integer),
    sa.Column("requests_completed", sa.Integer),
    sa.Column("requests_failed", sa.Integer),
    sa.UniqueConstraint("job_id", "target", name="uq_target_per_job"),
)

runs = sa.Table(
    "tc_action_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.Integer, sa.ForeignKey("tc_jobs.id", ondelete="CASCADE"), nullable=False),
    sa.Column("action_index", sa.Integer, nullable=False),
    sa.Column("action_type", sa.String(64), nullable=False),
    sa.Column("target_key", sa.String(512), nullable=False),
    sa.Column("trigger_id", sa.String(64), nullable=False, unique=True),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False, default=1),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("intent_at", UTCDateTime),
    sa.Column("next_try_at", UTCDateTime),
    sa.Column("search_empty_count", sa.Integer, nullable=False, default=0),
    sa.Column("external_id", sa.String(255)),
    sa.Column("external_url", sa.Text),
    sa.Column("vendor_status", sa.String(64)),
    sa.Column("message", sa.Text),
    sa.Column("details", sa.JSON, nullable=False, default=dict),
    sa.Column("finished_at", UTCDateTime),
    sa.UniqueConstraint("job_id", "action_index", name="uq_run_per_action"),
)
# Never two unresolved starts against one downstream target: a search window then only holds ours.
sa.Index(
    "uq_open_run_per_target",
    runs.c.target_key,
    unique=True,
    sqlite_where=runs.c.state.in_(OPEN_RUN_STATES),
    postgresql_where=runs.c.state.in_(OPEN_RUN_STATES),
)

# After a start that followed an in-doubt outcome, the run keeps searching for a duplicate the search index
# hid (triggering.py). Its own table, not new run columns: create_all adds a missing table to an existing
# database, but never a missing column. armed_at is NULL until the next start; duplicates lists what was
# found and done, so a restart never counts or cancels one twice.
duplicate_watches = sa.Table(
    "tc_duplicate_watches",
    metadata,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("tc_action_runs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("job_id", sa.Integer, sa.ForeignKey("tc_jobs.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("armed_at", UTCDateTime),
    sa.Column("until", UTCDateTime),
    sa.Column("next_search_at", UTCDateTime),
    sa.Column("searches", sa.Integer, nullable=False, default=0),
    sa.Column("closed_at", UTCDateTime),
    sa.Column("duplicates", sa.JSON, nullable=False, default=list),
)

events = sa.Table(
    "tc_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.Integer, sa.ForeignKey("tc_jobs.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("data", sa.JSON, nullable=False, default=dict),
)


def create(url: str) -> None:
    """A store as a pre-Alembic release made it: the tables, and the schema mark, no alembic_version."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            metadata.create_all(conn)
            conn.execute(sa.insert(meta_table).values(**LEGACY_MARK))
    finally:
        engine.dispose()
