"""tc_registered_jobs: jobs registered over the HTTP API (origin "api") or discovered by batch metadata.

Revision 0002, after 0001 (issue 11). The body is the job as it would be written in the YAML, secrets by
name only; details holds the origin's bookkeeping (a discovered group's template, expected count, sightings).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tc_registered_jobs",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("body", sa.JSON, nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("details", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("tc_registered_jobs")
