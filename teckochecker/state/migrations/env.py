"""Alembic's entry point, run by every alembic command. Configured in code (state/revisions.py), no alembic.ini.

The caller hands over a connection already inside its transaction (and, on PostgreSQL, holding the
migration lock), so the revisions run in that transaction and commit or roll back with it. The target
metadata is only for autogenerate and the schema comparison test; no revision reads it.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from teckochecker.state import schema


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=schema.metadata,
        # SQLite's DDL is transactional too: one transaction for every revision and the version row.
        transactional_ddl=True,
        # SQLite cannot ALTER most things in place; batch operations copy the table (render for autogenerate).
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("run the migrations through teckochecker.state.revisions, which passes a connection")
_run(connection)
