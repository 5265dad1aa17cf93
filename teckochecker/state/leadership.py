"""Leadership among replicas on one PostgreSQL: a lease row with a fencing epoch, and the fence itself.

One row of ``tc_leader`` says which replica leads, until when (``expires_at``, the database's clock), and
under which epoch. A replica takes over only a lease that has expired by the database's clock, and
increments the epoch in that same UPDATE. The leader renews the lease at least every third of its length.

Every write the state store commits is fenced (``Fence``): just before COMMIT, in the same transaction, the
leader's epoch row is read ``FOR SHARE``, and unless it still holds this replica's epoch and has not
expired, the commit is refused with ``Fenced`` and the transaction rolls back. The share lock makes a
takeover (an UPDATE of that row) wait for the commit, so no write of an old epoch lands after a new epoch
began. A replica paused past its lease (SIGSTOP, a VM freeze) therefore wakes up unable to write.

Why not a session advisory lock: a paused process keeps its connection, and the kernel answers TCP
keepalives for it, so the lock would be held for the whole pause and nobody would take over; it also
cannot pass through a transaction-mode pooler. The lease needs nothing but ordinary short transactions.

Writes that are not acting on jobs (the replica's own heartbeat row, the lease row, daemon-wide facts in
tc_meta) run with the ``UNFENCED`` execution option.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine

from teckochecker.errors import Fenced, StateStoreUnavailable
from teckochecker.state import schema
from teckochecker.state.heartbeat import FRESH_FOR

UNFENCED = "teckochecker_unfenced"
LEADER_ROW = 1
# A replica row not heard from for this long is forgotten (a replica named host:pid gets a new row per start).
FORGET_AFTER = dt.timedelta(hours=1)


class Role:
    LEADER = "leader"
    STANDBY = "standby"
    SINGLE = "single"  # SQLite: one process, no election
    STOPPED = "stopped"


@dataclass(frozen=True)
class Lease:
    epoch: int
    holder: str | None
    expires_at: dt.datetime | None


@dataclass(frozen=True)
class ReplicaInfo:
    name: str
    host: str
    pid: int
    role: str
    started_at: dt.datetime
    heartbeat_at: dt.datetime
    config_checksum: str
    epoch: int | None
    # The heartbeat's age by the database's clock, when it was read.
    age: float

    @property
    def alive(self) -> bool:
        """Beating: not stopped, and heard from as recently as a running daemon's heartbeat (state/heartbeat.py)."""
        return self.role != Role.STOPPED and self.age < FRESH_FOR.total_seconds()


class Fence:
    """Whether this process may commit a write, checked inside the transaction (installed on the store's engine).

    Thread-safe: the store's worker thread checks it while the event loop changes it."""

    def __init__(self, holder: str) -> None:
        self._holder = holder
        self._epoch: int | None = None
        self._lock = threading.Lock()
        # Called on the store's thread after each refusal (metrics, and waking the replica loop).
        self.on_refused: Callable[[], None] | None = None

    @property
    def epoch(self) -> int | None:
        with self._lock:
            return self._epoch

    def lead(self, epoch: int) -> None:
        with self._lock:
            self._epoch = epoch

    def drop(self) -> None:
        with self._lock:
            self._epoch = None

    def install(self, engine: Engine) -> None:
        event.listen(engine, "commit", self._before_commit)

    def _before_commit(self, conn: Connection) -> None:
        if conn.get_execution_options().get(UNFENCED):
            return
        epoch = self.epoch
        if epoch is None:
            self._refuse("this replica does not lead (standby): the leader runs the jobs and takes control requests")
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            # Raw DB-API: this runs inside SQLAlchemy's commit, where no new statement may be started through it.
            cursor.execute(
                "SELECT 1 FROM tc_leader WHERE id = %s AND epoch = %s AND holder = %s "
                "AND expires_at > clock_timestamp() FOR SHARE",
                (LEADER_ROW, epoch, self._holder),
            )
            held = cursor.fetchone() is not None
        except conn.dialect.loaded_dbapi.Error as exc:
            # The lease row could not be read (a lock or statement timeout, a dropped connection): the write is
            # refused and rolled back, but nothing says the lease passed, so the epoch is kept: the replica
            # loop decides that from its renewals (replicas.py).
            first_line = str(exc).strip().split("\n")[0]
            raise StateStoreUnavailable(f"write refused: the leader lease could not be read: {first_line}") from None
        finally:
            cursor.close()
        if not held:
            with self._lock:
                if self._epoch == epoch:
                    self._epoch = None
            self._refuse(f"leader epoch {epoch} is no longer this replica's (its lease passed or another took over)")

    def _refuse(self, why: str) -> None:
        if self.on_refused is not None:
            self.on_refused()
        raise Fenced(f"write refused: {why}")


class LeaderLease:
    """The lease row and the replica rows; every call is one short unfenced transaction on its own engine."""

    def __init__(self, engine: Engine, holder: str, lease: float) -> None:
        self._engine = engine
        self._holder = holder
        self._lease = lease

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self._engine.connect() as conn:
            conn = conn.execution_options(**{UNFENCED: True})
            with conn.begin():
                yield conn

    def _expiry(self) -> Any:
        return sa.func.clock_timestamp() + sa.func.make_interval(0, 0, 0, 0, 0, 0, self._lease)

    def ensure_row(self) -> None:
        t = schema.leader
        with self._tx() as conn:
            if conn.execute(sa.select(t.c.id).where(t.c.id == LEADER_ROW)).first() is None:
                conn.execute(
                    postgresql.insert(t).values(id=LEADER_ROW, epoch=0).on_conflict_do_nothing(index_elements=[t.c.id])
                )

    def current(self) -> Lease:
        t = schema.leader
        with self._tx() as conn:
            row = conn.execute(sa.select(t.c.epoch, t.c.holder, t.c.expires_at).where(t.c.id == LEADER_ROW)).one()
        return Lease(int(row.epoch), row.holder, row.expires_at)

    def try_acquire(self) -> tuple[int, str | None] | None:
        """Take over an expired (or never held) lease: (the new epoch, the previous holder), or None."""
        t = schema.leader
        now = sa.func.clock_timestamp()
        with self._tx() as conn:
            row = conn.execute(
                sa.select(t.c.epoch, t.c.holder).where(
                    t.c.id == LEADER_ROW, sa.or_(t.c.expires_at.is_(None), t.c.expires_at < now)
                )
            ).first()
            if row is None:
                return None
            taken = conn.execute(
                sa.update(t)
                .where(
                    t.c.id == LEADER_ROW,
                    t.c.epoch == row.epoch,
                    sa.or_(t.c.expires_at.is_(None), t.c.expires_at < now),
                )
                .values(
                    epoch=t.c.epoch + 1, holder=self._holder, acquired_at=now, renewed_at=now, expires_at=self._expiry()
                )
                .returning(t.c.epoch)
            ).first()
        return None if taken is None else (int(taken.epoch), row.holder)

    def renew(self, epoch: int) -> bool:
        """Extend our lease; False once the epoch is no longer ours (then we must stop acting)."""
        t = schema.leader
        with self._tx() as conn:
            renewed = conn.execute(
                sa.update(t)
                .where(t.c.id == LEADER_ROW, t.c.epoch == epoch, t.c.holder == self._holder)
                .values(renewed_at=sa.func.clock_timestamp(), expires_at=self._expiry())
                .returning(t.c.epoch)
            ).first()
        return renewed is not None

    def release(self, epoch: int) -> None:
        """On a clean stop: let a standby take over at once instead of after the lease."""
        t = schema.leader
        with self._tx() as conn:
            conn.execute(
                sa.update(t)
                .where(t.c.id == LEADER_ROW, t.c.epoch == epoch, t.c.holder == self._holder)
                .values(expires_at=sa.func.clock_timestamp())
            )

    # ----- replica rows -----

    def beat(self, **row: Any) -> None:
        """This replica's heartbeat row (the keyword arguments of beat_replica)."""
        beat_replica(self._engine, self._holder, **row)

    def replicas(self) -> list[ReplicaInfo]:
        return list_replicas(self._engine)


def beat_replica(
    engine: Engine,
    name: str,
    *,
    host: str,
    pid: int,
    role: str,
    started_at: dt.datetime,
    checksum: str,
    epoch: int | None,
) -> None:
    """Upsert this replica's row with the database's time; forget replicas silent for FORGET_AFTER."""
    r = schema.replicas
    values = {
        "host": host,
        "pid": pid,
        "role": role,
        "started_at": started_at,
        "heartbeat_at": sa.func.current_timestamp(),
        "config_checksum": checksum,
        "epoch": epoch,
    }
    with engine.connect() as conn:
        conn = conn.execution_options(**{UNFENCED: True})
        with conn.begin():
            if conn.execute(sa.update(r).where(r.c.name == name).values(**values)).rowcount == 0:
                conn.execute(sa.insert(r).values(name=name, **values))
            if role != Role.STOPPED:
                conn.execute(sa.delete(r).where(r.c.heartbeat_at < _db_now(conn) - FORGET_AFTER))


def list_replicas(engine: Engine) -> list[ReplicaInfo]:
    r = schema.replicas
    with engine.connect() as conn:
        now = _db_now(conn)
        rows = conn.execute(sa.select(r).order_by(r.c.name)).all()
    return [
        ReplicaInfo(
            name=row.name,
            host=row.host,
            pid=row.pid,
            role=row.role,
            started_at=row.started_at,
            heartbeat_at=row.heartbeat_at,
            config_checksum=row.config_checksum,
            epoch=row.epoch,
            age=max(0.0, (now - row.heartbeat_at).total_seconds()),
        )
        for row in rows
    ]


def _db_now(conn: Connection) -> dt.datetime:
    value = conn.execute(sa.select(sa.func.current_timestamp())).scalar_one()
    if isinstance(value, str):  # SQLite answers text in UTC
        value = dt.datetime.fromisoformat(value)
    assert isinstance(value, dt.datetime)
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def replica_to_json(info: ReplicaInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "host": info.host,
        "pid": info.pid,
        "role": info.role,
        "epoch": info.epoch,
        "started_at": info.started_at.isoformat(),
        "last_heartbeat": info.heartbeat_at.isoformat(),
        "heartbeat_age_seconds": round(info.age, 1),
        "alive": info.alive,
        "config_checksum": info.config_checksum,
    }
