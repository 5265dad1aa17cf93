"""The revisions, oldest first by revision id. Alembic skips this file when it reads the directory."""
