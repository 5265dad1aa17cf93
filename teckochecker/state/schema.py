"""Tables, and engines set up for a daemon: SQLite in WAL with synchronous=FULL and BEGIN IMMEDIATE
(docs/reliability.md, SQLite), PostgreSQL as is.

What the code reads and writes. A database gets there through the revisions in state/migrations/versions/:
change a table here, add a revision there (docs/architecture.md, "Schema changes")."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError

from teckochecker.config.models import DEFAULT_STORE_TIMEOUT, StateSettings, state_url_problem
from teckochecker.errors import StateStoreError

OPEN_RUN_STATES = ("sending", "in_doubt")


class UTCDateTime(sa.types.TypeDecorator[dt.datetime]):
    """Aware UTC datetimes in and out, also on SQLite (which forgets the zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the state store")
        return value.astimezone(dt.timezone.utc)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


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
    # Where the job came from (file, api, discovered), kept after it is removed: a registered job's row in
    # tc_registered_jobs is deleted with it, and its history must still say it was not a file's.
    sa.Column("origin", sa.String(16), nullable=False, server_default="file"),
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
# hid (triggering.py). Its own table, not new run columns: before schema revisions, create_all could add a
# missing table to an existing database, but never a missing column. armed_at is NULL until the next start;
# duplicates lists what was found and done, so a restart never counts or cancels one twice.
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

# Jobs that did not come from a file: registered over the HTTP API (origin "api") or found by batch
# metadata (origin "discovered"). The body is the job as it would be written in the YAML, secrets by name
# only; every replica builds its definitions from files plus these rows, the file winning a name in both.
registered_jobs = sa.Table(
    "tc_registered_jobs",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("origin", sa.String(16), nullable=False),
    sa.Column("body", sa.JSON, nullable=False),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    # Bookkeeping of the origin (a discovered group's template, expected count, first and last sighting).
    sa.Column("details", sa.JSON, nullable=False, default=dict),
)

# Several replicas on one PostgreSQL (state/leadership.py): one row, id 1. Each new leader increments the
# epoch in the transaction that takes over; every fenced write checks it. Times are the database's clock.
leader = sa.Table(
    "tc_leader",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("epoch", sa.BigInteger, nullable=False),
    sa.Column("holder", sa.String(255)),
    sa.Column("acquired_at", UTCDateTime),
    sa.Column("renewed_at", UTCDateTime),
    sa.Column("expires_at", UTCDateTime),
)

# One row per daemon process sharing the store: its heartbeat (database clock), role and the checksum of the
# job definitions it loaded, so `status` lists the replicas and they can notice they disagree.
replicas = sa.Table(
    "tc_replicas",
    metadata,
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("heartbeat_at", UTCDateTime, nullable=False),
    sa.Column("config_checksum", sa.String(64), nullable=False),
    sa.Column("epoch", sa.BigInteger),
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


@dataclass(frozen=True)
class StoreTimeouts:
    """PostgreSQL's lock_timeout and statement_timeout, in seconds, for every session (state.lock_timeout and
    state.statement_timeout). The server cancels the statement and aborts its transaction: nothing of it is
    committed, so the caller knows the outcome for certain and may retry (unlike a timeout on the client)."""

    lock: float = DEFAULT_STORE_TIMEOUT
    statement: float = DEFAULT_STORE_TIMEOUT

    @classmethod
    def of(cls, settings: StateSettings) -> StoreTimeouts:
        return cls(settings.lock_timeout, settings.statement_timeout)

    def options(self, given: str | None) -> str:
        """libpq's ``options`` with these settings; any the URL gives come after them, so they win."""
        ours = f"-c lock_timeout={round(self.lock * 1000)} -c statement_timeout={round(self.statement * 1000)}"
        return f"{ours} {given}" if given else ours


def create_engine(url: str, *, readonly: bool = False, timeouts: StoreTimeouts | None = None) -> Engine:
    """Raises StateStoreError (one line) for a URL with no driver here: every command that opens the store
    comes through here, whether its URL came from a config file or --state-url."""
    if (problem := state_url_problem(url)) is not None:
        raise StateStoreError(problem)
    try:
        if url.startswith("sqlite"):
            engine = sa.create_engine(url, connect_args={"timeout": 10.0})
            _configure_sqlite(engine, "BEGIN" if readonly else "BEGIN IMMEDIATE")
            return engine
        # A server that vanished without closing the connection (a host lost, a partition) must surface as an
        # error within seconds, not after the kernel's default two hours, or a leader's step would hang on it.
        given = sa.engine.make_url(url).query.get("options")
        options = (timeouts or StoreTimeouts()).options(given if isinstance(given, str) else None)
        return sa.create_engine(url, pool_pre_ping=True, connect_args={**POSTGRES_CONNECT_ARGS, "options": options})
    except ImportError as exc:  # the driver is not installed
        raise StateStoreError(f"cannot load the state store's driver ({url.partition(':')[0]}): {exc}") from None
    except ArgumentError:
        # Not the exception: its text quotes the whole URL, password and all.
        raise StateStoreError(f"the state store URL ({url.partition(':')[0]}) is not a valid SQLAlchemy URL") from None


# libpq settings for every PostgreSQL connection: give up connecting after 10 s, and notice a dead peer on
# an idle connection after about 25 s (TCP keepalives).
POSTGRES_CONNECT_ARGS = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


def _configure_sqlite(engine: Engine, begin: str) -> None:
    # Python 3.11's sqlite3 runs in legacy transaction mode; take BEGIN into our hands (SQLAlchemy recipe).
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL, not NORMAL: a committed trigger intent must survive power loss (docs/reliability.md, SQLite).
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Writers must not start deferred: upgrading a read to a write fails at once with SQLITE_BUSY.
        connection.exec_driver_sql(begin)
