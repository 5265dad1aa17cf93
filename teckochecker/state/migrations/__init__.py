"""Alembic's script directory for the state store: env.py and one file per revision in versions/.

Every change to state/schema.py is a new revision here; tests/test_migrations.py fails while the head
revision's tables differ from schema.py's. state/revisions.py is what runs them.
"""
