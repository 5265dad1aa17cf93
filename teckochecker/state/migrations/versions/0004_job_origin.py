"""tc_jobs.origin: where a job came from (file, api, discovered), kept after the job is removed.

Revision 0004, after 0003. The origin was read from tc_registered_jobs only, whose row goes when a
registered job is removed, so that job's history said "file". Existing rows take the origin of their
registered row where one still exists, else "file" (what they showed before).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tc_jobs", sa.Column("origin", sa.String(16), nullable=False, server_default="file"))
    op.execute(
        "UPDATE tc_jobs SET origin = (SELECT r.origin FROM tc_registered_jobs r WHERE r.name = tc_jobs.name) "
        "WHERE name IN (SELECT name FROM tc_registered_jobs)"
    )


def downgrade() -> None:
    with op.batch_alter_table("tc_jobs") as batch:
        batch.drop_column("origin")
