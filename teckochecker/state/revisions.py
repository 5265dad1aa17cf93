"""Which schema revision a state store is at, and bringing it to the head with Alembic (configured in code).

The revisions live in state/migrations/versions/. A store made before there were revisions (by a release
that ran create_all and wrote tc_meta 'schema' = 1) has no alembic_version table: it is recognised by that
mark and stamped with the revision its tables match, then upgraded like any other. A store at a revision
this code does not know was upgraded by a newer release and is refused: running old code on a newer
schema could write rows the newer code misreads.

An upgrade runs in one transaction that holds a lock for its whole length: on PostgreSQL an advisory
transaction lock on MIGRATION_LOCK_KEY, so replicas starting together upgrade one after the other and the
later ones find nothing to do; on SQLite the write lock of BEGIN IMMEDIATE (and, for the daemon and
`db upgrade`, the one-process flock beside the file).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from teckochecker import __version__
from teckochecker.errors import StateStoreError

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

SCRIPT_LOCATION = "teckochecker.state:migrations"
# Fixed, so every replica and every `db upgrade` meet on it; "teckomig" in ASCII, a positive bigint.
MIGRATION_LOCK_KEY = 0x7465636B6F6D6967
UPGRADE_COMMAND = "teckochecker db upgrade"

# What pre-Alembic releases wrote, and refuse to run on when it differs ("schema version 2; this release
# uses 1"): a store with revisions gets "2", so such a release stops with that message instead of using it.
LEGACY_MARK_KEY = "schema"
LEGACY_MARK = "1"
NOT_FOR_LEGACY_RELEASES = "2"
# The tables every pre-Alembic store has. Revision 0001 also has tc_duplicate_watches, which create_all added
# to older stores at start: stamping adds it the same way. A store made at the very end of that era may have
# revision 0002's table too (defined in schema.py one commit before the revisions existed).
LEGACY_TABLES = frozenset({"tc_meta", "tc_jobs", "tc_targets", "tc_action_runs", "tc_events"})
LEGACY_ADDED_AT_START = "tc_duplicate_watches"
LEGACY_LATE_TABLES = {"tc_registered_jobs": "0002"}


class SchemaState(enum.Enum):
    EMPTY = "empty"  # no TeckoChecker tables yet
    LEGACY = "legacy"  # made before revisions; is stamped, then upgraded
    BEHIND = "behind"  # at a known revision older than the head
    CURRENT = "current"  # at the head


@dataclass(frozen=True)
class SchemaStatus:
    state: SchemaState
    # The revision in alembic_version; for a legacy store, the one it will be stamped with; None when empty.
    revision: str | None
    head: str

    @property
    def up_to_date(self) -> bool:
        return self.state is SchemaState.CURRENT

    def describe(self) -> str:
        if self.state is SchemaState.EMPTY:
            return f"no schema yet (head is {self.head})"
        if self.state is SchemaState.LEGACY:
            return f"made before schema revisions; matches {self.revision}, not yet stamped (head is {self.head})"
        if self.state is SchemaState.BEHIND:
            return f"{self.revision}, behind the head {self.head}"
        return f"{self.revision} (head)"


@dataclass(frozen=True)
class Upgrade:
    before: SchemaStatus
    after: SchemaStatus

    @property
    def changed(self) -> bool:
        return self.before != self.after

    def describe(self) -> str:
        before, head = self.before, self.after.revision
        if not self.changed:
            return f"already at {head} (head); nothing to do"
        if before.state is SchemaState.EMPTY:
            return f"created at {head} (head)"
        if before.state is SchemaState.LEGACY:
            stamped = f"stamped {before.revision} (made before schema revisions)"
            return f"{stamped}, the head" if before.revision == head else f"{stamped} and upgraded to {head} (head)"
        return f"upgraded from {before.revision} to {head} (head)"


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's settings in code: the script directory inside the package, the caller's connection."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.attributes["connection"] = connection
    return config


def _scripts() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    head = _scripts().get_current_head()
    assert head is not None, "the package ships at least one revision"
    return head


def status(conn: Connection) -> SchemaStatus:
    """Where the store is; a revision this code does not know, or tables it cannot place, raise StateStoreError."""
    scripts = _scripts()
    head = scripts.get_current_head()
    assert head is not None, "the package ships at least one revision"
    tables = set(sa.inspect(conn).get_table_names())
    revisions = _stamped(conn, tables)
    if len(revisions) > 1:
        raise StateStoreError(f"the state store is at several schema revisions at once ({', '.join(revisions)})")
    if revisions:
        (revision,) = revisions
        if revision not in {script.revision for script in scripts.walk_revisions()}:
            raise StateStoreError(
                f"the state store is at schema revision {revision}, which TeckoChecker {__version__} does not know "
                f"(its newest is {head}): a newer release upgraded it. Run that release, or restore the backup "
                "taken before the upgrade"
            )
        return SchemaStatus(SchemaState.CURRENT if revision == head else SchemaState.BEHIND, revision, head)
    if not any(name.startswith("tc_") for name in tables):
        return SchemaStatus(SchemaState.EMPTY, None, head)
    return SchemaStatus(SchemaState.LEGACY, _legacy_revision(conn, tables), head)


def _stamped(conn: Connection, tables: set[str]) -> list[str]:
    if "alembic_version" not in tables:
        return []
    return sorted(str(v) for (v,) in conn.execute(sa.text("SELECT version_num FROM alembic_version")))


def _legacy_revision(conn: Connection, tables: set[str]) -> str:
    """The revision a pre-Alembic store's tables match, after checking it really is one."""
    mark = None
    if "tc_meta" in tables:
        mark = conn.execute(sa.text("SELECT value FROM tc_meta WHERE key = :k"), {"k": LEGACY_MARK_KEY}).scalar()
    if mark != LEGACY_MARK:
        found = "no schema mark" if mark is None else f"schema mark {mark!r}"
        raise StateStoreError(
            f"the state store has TeckoChecker tables but no schema revision and {found}; it was not made by "
            "a TeckoChecker release this one can upgrade"
        )
    missing = sorted(LEGACY_TABLES - tables)
    if missing:
        raise StateStoreError(
            f"the state store was made before schema revisions but lacks the table(s) {', '.join(missing)}; "
            "it cannot be upgraded; restore a backup of it"
        )
    late = [revision for table, revision in LEGACY_LATE_TABLES.items() if table in tables]
    return max(late, default="0001")


@contextmanager
def migration_transaction(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that holds the migration lock, and on SQLite has foreign keys off.

    SQLite alters most things by copying the table and dropping the old one (Alembic's batch operations);
    with foreign keys on, that DROP would delete every row that references the table through ON DELETE
    CASCADE. SQLite ignores the pragma inside a transaction, so it is set first, and the keys are checked
    before the commit instead (the procedure of SQLite's "Making Other Kinds Of Table Schema Changes").
    """
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        if sqlite:
            raw.execute("PRAGMA foreign_keys=OFF")  # type: ignore[union-attr]
        try:
            with conn.begin():
                if engine.dialect.name == "postgresql":
                    # A schema upgrade may wait for another replica's and rewrite big tables: no session timeout.
                    conn.execute(sa.text("SET LOCAL lock_timeout = 0"))
                    conn.execute(sa.text("SET LOCAL statement_timeout = 0"))
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
                yield conn
                if sqlite:
                    _check_foreign_keys(conn)
        finally:
            if sqlite:
                raw.execute("PRAGMA foreign_keys=ON")  # type: ignore[union-attr]


def _check_foreign_keys(conn: Connection) -> None:
    broken = conn.execute(sa.text("PRAGMA foreign_key_check")).fetchall()
    if broken:
        tables = sorted({str(row[0]) for row in broken})
        raise StateStoreError(f"the schema upgrade would break references in {', '.join(tables)}; nothing was changed")


def upgrade(engine: Engine) -> Upgrade:
    """Bring the store to the head revision under the migration lock; a store already there is not written."""
    from alembic import command

    with migration_transaction(engine) as conn:
        before = status(conn)
        if before.up_to_date:
            return Upgrade(before, before)
        if before.state is SchemaState.LEGACY:
            _adopt_legacy(conn, before)
        command.upgrade(alembic_config(conn), "head")
        _mark_for_legacy_releases(conn)
        after = status(conn)
    return Upgrade(before, after)


def _adopt_legacy(conn: Connection, found: SchemaStatus) -> None:
    from alembic.operations import Operations
    from alembic.runtime.migration import MigrationContext

    assert found.revision is not None
    context = MigrationContext.configure(conn)
    scripts = _scripts()
    if not sa.inspect(conn).has_table(LEGACY_ADDED_AT_START):
        first = scripts.get_revision("0001")
        assert first is not None
        with Operations.context(context):
            first.module.create_duplicate_watches()
    context.stamp(scripts, found.revision)


def _mark_for_legacy_releases(conn: Connection) -> None:
    values = {"k": LEGACY_MARK_KEY, "v": NOT_FOR_LEGACY_RELEASES}
    if conn.execute(sa.text("UPDATE tc_meta SET value = :v WHERE key = :k"), values).rowcount == 0:
        conn.execute(sa.text("INSERT INTO tc_meta (key, value) VALUES (:k, :v)"), values)


def current(engine: Engine) -> SchemaStatus:
    with engine.connect() as conn:
        return status(conn)


def require_current(engine: Engine) -> SchemaStatus:
    """For a daemon told not to upgrade on start: the store must already be at the head."""
    found = current(engine)
    if not found.up_to_date:
        raise StateStoreError(
            f"the state store's schema is not current: {found.describe()}. state.upgrade_on_start is off: "
            f"back up the store, run '{UPGRADE_COMMAND}', then start the daemon"
        )
    return found
