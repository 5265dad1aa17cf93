"""The schema as it was before migrations: what every pre-Alembic release created with create_all.

Revision 0001, the first. A store made by such a release (tc_meta 'schema' = 1, no alembic_version) is
stamped with this revision instead of running it (state/revisions.py). Written out in op.* calls, never
from schema.py, so a later change to schema.py cannot change what this revision did.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

OPEN_RUN_STATES = ("sending", "in_doubt")


def _utc() -> sa.DateTime:
    # schema.UTCDateTime's column type; the zone handling is Python-side and needs nothing in the database.
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "tc_meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_table(
        "tc_jobs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("removed", sa.Boolean, nullable=False),
        sa.Column("paused", sa.Boolean, nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("updated_at", _utc(), nullable=False),
        sa.Column("first_observed_at", _utc()),
        sa.Column("deadline_at", _utc()),
        sa.Column("last_checked_at", _utc()),
        sa.Column("next_check_at", _utc()),
        sa.Column("finished_at", _utc()),
        sa.Column("last_error", sa.Text),
        sa.Column("consecutive_failures", sa.Integer, nullable=False),
    )
    op.create_table(
        "tc_targets",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.Integer, sa.ForeignKey("tc_jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("target", sa.String(255), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("vendor_status", sa.String(64)),
        sa.Column("details", sa.JSON, nullable=False),
        sa.Column("message", sa.Text),
        sa.Column("observed_at", _utc()),
        sa.Column("terminal_at", _utc()),
        sa.Column("requests_total", sa.Integer),
        sa.Column("requests_completed", sa.Integer),
        sa.Column("requests_failed", sa.Integer),
        sa.UniqueConstraint("job_id", "target", name="uq_target_per_job"),
    )
    op.create_table(
        "tc_action_runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.Integer, sa.ForeignKey("tc_jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("action_index", sa.Integer, nullable=False),
        sa.Column("action_type", sa.String(64), nullable=False),
        sa.Column("target_key", sa.String(512), nullable=False),
        sa.Column("trigger_id", sa.String(64), nullable=False, unique=True),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("updated_at", _utc(), nullable=False),
        sa.Column("intent_at", _utc()),
        sa.Column("next_try_at", _utc()),
        sa.Column("search_empty_count", sa.Integer, nullable=False),
        sa.Column("external_id", sa.String(255)),
        sa.Column("external_url", sa.Text),
        sa.Column("vendor_status", sa.String(64)),
        sa.Column("message", sa.Text),
        sa.Column("details", sa.JSON, nullable=False),
        sa.Column("finished_at", _utc()),
        sa.UniqueConstraint("job_id", "action_index", name="uq_run_per_action"),
    )
    open_run = sa.column("state").in_(OPEN_RUN_STATES)
    op.create_index(
        "uq_open_run_per_target",
        "tc_action_runs",
        ["target_key"],
        unique=True,
        sqlite_where=open_run,
        postgresql_where=open_run,
    )
    create_duplicate_watches()
    op.create_table(
        "tc_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.Integer, sa.ForeignKey("tc_jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("at", _utc(), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
    )
    op.create_index("ix_tc_events_job_id", "tc_events", ["job_id"])


def create_duplicate_watches() -> None:
    """Also called when a pre-Alembic store made before this table existed is stamped (state/revisions.py):
    create_all used to add it to such a store at start."""
    op.create_table(
        "tc_duplicate_watches",
        sa.Column("run_id", sa.Integer, sa.ForeignKey("tc_action_runs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("job_id", sa.Integer, sa.ForeignKey("tc_jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("armed_at", _utc()),
        sa.Column("until", _utc()),
        sa.Column("next_search_at", _utc()),
        sa.Column("searches", sa.Integer, nullable=False),
        sa.Column("closed_at", _utc()),
        sa.Column("duplicates", sa.JSON, nullable=False),
    )
    op.create_index("ix_tc_duplicate_watches_job_id", "tc_duplicate_watches", ["job_id"])


def downgrade() -> None:
    for table in ("tc_events", "tc_duplicate_watches", "tc_action_runs", "tc_targets", "tc_jobs", "tc_meta"):
        op.drop_table(table)
