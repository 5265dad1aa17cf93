"""tc_leader and tc_replicas: several daemons on one PostgreSQL (issue 12).

Revision 0003, after 0002. tc_leader is the single lease row (epoch, holder, expiry on the database clock)
that fences every write; the code inserts the row itself. tc_replicas holds one heartbeat row per daemon
with its role and the checksum of the job definitions it loaded. On SQLite both stay unused (one process).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tc_leader",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("holder", sa.String(255)),
        sa.Column("acquired_at", sa.DateTime(timezone=True)),
        sa.Column("renewed_at", sa.DateTime(timezone=True)),
        sa.Column("expires_at", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "tc_replicas",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("config_checksum", sa.String(64), nullable=False),
        sa.Column("epoch", sa.BigInteger),
    )


def downgrade() -> None:
    op.drop_table("tc_replicas")
    op.drop_table("tc_leader")
