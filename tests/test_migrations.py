"""Schema revisions: the head equals schema.py, pre-Alembic stores are stamped and upgraded without loss,
newer ones are refused, the CLI and the daemon do what the README says, concurrent upgrades are safe."""

from __future__ import annotations

import datetime as dt
import subprocess
import time
from pathlib import Path
from typing import Any

import legacy_schema
import psycopg
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from daemon import TECKOCHECKER, DaemonProcess, run_cli

from teckochecker.config.models import Condition, TriggerRule
from teckochecker.errors import StateStoreError
from teckochecker.plugin_api import CheckReport, Observation, TargetState
from teckochecker.state import revisions, schema
from teckochecker.state.store import JobPlan, PlannedAction, StateStore

T0 = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.timezone.utc)
HEAD = revisions.head_revision()


def schema_differences(url: str, metadata: sa.MetaData = schema.metadata) -> list[Any]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    finally:
        engine.dispose()


def stamped(url: str) -> list[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [v for (v,) in conn.execute(sa.text("SELECT version_num FROM alembic_version"))]
    finally:
        engine.dispose()


def test_the_head_revision_builds_exactly_the_tables_of_schema_py(state_url: str) -> None:
    StateStore.open(state_url).close()
    assert stamped(state_url) == [HEAD]
    assert schema_differences(state_url) == []


def test_the_comparison_sees_a_schema_py_change_without_a_revision(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    StateStore.open(url).close()
    changed = sa.MetaData()
    for table in schema.metadata.tables.values():
        table.to_metadata(changed)
    changed.tables["tc_jobs"].append_column(sa.Column("owner", sa.String(64)))
    assert [d[0] for d in schema_differences(url, changed)] == ["add_column"]


# ----- stores made before the revisions -----


def fill_like_a_running_daemon(url: str) -> None:
    """Jobs, targets, a fired trigger's runs (one of them started) and their events, written by the store's
    own code on the legacy tables, as a daemon of the last pre-Alembic release would have written them."""
    engine = schema.create_engine(url)
    # Today's store code reads tc_registered_jobs (a discovered job's hold) while it records a check: lend it
    # the table for the fill and take it away again, so the store keeps the legacy shape.
    schema.registered_jobs.create(engine)
    # Likewise tc_jobs.origin (revision 0004), which sync_jobs writes.
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE tc_jobs ADD COLUMN origin VARCHAR(16) DEFAULT 'file' NOT NULL"))
    store = StateStore(engine)
    try:
        store.sync_jobs([JobPlan("fired", "fp1", ["a", "b"]), JobPlan("waiting", "fp2", ["c"])], T0)
        actions = [PlannedAction(0, "record", "record:x", Condition.ALWAYS)]
        for at, state in ((T0, "running"), (T0 + dt.timedelta(minutes=2), "succeeded")):
            report = CheckReport(tuple(Observation(t, TargetState(state), state, {"n": 1}) for t in ("a", "b")))
            next_check = at + dt.timedelta(seconds=60)
            rule = TriggerRule.ALL_TERMINAL
            store.record_check(
                "fired", report, now=at, next_check_at=next_check, deadline=3600, rule=rule, actions=actions
            )
        # Not store.job(): it reads tc_registered_jobs, which these legacy tables do not have yet.
        with store._engine.connect() as conn:
            run_id = conn.execute(sa.select(schema.runs.c.id)).scalar_one()
        assert store.begin_run(run_id, now=T0 + dt.timedelta(minutes=3))
        schema.registered_jobs.drop(engine)
        with engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE tc_jobs DROP COLUMN origin"))
    finally:
        store.close()


def rows(url: str) -> dict[str, list[tuple[Any, ...]]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return {
                name: [tuple(r) for r in conn.execute(sa.select(table).order_by(*table.primary_key.columns))]
                for name, table in legacy_schema.metadata.tables.items()
            }
    finally:
        engine.dispose()


def test_a_store_made_before_revisions_is_stamped_and_upgraded_and_nothing_is_lost(state_url: str) -> None:
    legacy_schema.create(state_url)
    fill_like_a_running_daemon(state_url)
    before = rows(state_url)
    assert all(before[t] for t in ("tc_jobs", "tc_targets", "tc_action_runs", "tc_events")), before

    store = StateStore.open(state_url)
    try:
        assert store.schema_upgrade is not None
        assert store.schema_upgrade.before.state is revisions.SchemaState.LEGACY
        assert store.schema_upgrade.after.revision == HEAD
        fired = store.job("fired")
        assert fired is not None and [t.target for t in fired.targets] == ["a", "b"]
        assert {"registered", "trigger_fired", "action_intent"} <= {e.kind for e in store.events("fired")}
    finally:
        store.close()

    after = rows(state_url)
    assert before.pop("tc_meta") == [("schema", "1")]
    # The mark a pre-Alembic release checks: it now refuses this store with a clear message.
    assert after.pop("tc_meta") == [("schema", "2")]
    assert after == before
    assert stamped(state_url) == [HEAD]
    assert schema_differences(state_url) == []


def test_a_store_made_before_the_duplicate_watch_gains_its_table(tmp_path: Path) -> None:
    # create_all added this table to such a store at start; being stamped does the same.
    url = f"sqlite:///{tmp_path / 'state.db'}"
    legacy_schema.create(url)
    fill_like_a_running_daemon(url)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE tc_duplicate_watches"))
    engine.dispose()
    StateStore.open(url).close()
    assert schema_differences(url) == []


def test_a_store_made_with_the_registered_jobs_table_is_stamped_at_that_revision(tmp_path: Path) -> None:
    # schema.py had tc_registered_jobs one commit before the revisions; create_all then made it too.
    url = f"sqlite:///{tmp_path / 'state.db'}"
    legacy_schema.create(url)
    engine = sa.create_engine(url)
    schema.registered_jobs.create(engine)
    engine.dispose()
    store = StateStore.open(url)
    store.close()
    assert store.schema_upgrade is not None and store.schema_upgrade.before.revision == "0002"
    assert stamped(url) == [HEAD]


def test_jobs_at_0003_take_the_origin_of_their_registered_row(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    engine = schema.create_engine(url)
    try:
        with revisions.migration_transaction(engine) as conn:
            command.upgrade(revisions.alembic_config(conn), "0003")
        with engine.begin() as conn:
            for name in ("nightly", "group_1", "from_file"):
                conn.execute(
                    sa.text(
                        "INSERT INTO tc_jobs (name, fingerprint, state, removed, paused, created_at, updated_at, "
                        "consecutive_failures) VALUES (:n, 'f', 'watching', false, false, :t, :t, 0)"
                    ),
                    {"n": name, "t": T0},
                )
            for name, origin in (("nightly", "api"), ("group_1", "discovered")):
                conn.execute(
                    sa.text(
                        "INSERT INTO tc_registered_jobs (name, origin, body, fingerprint, created_at, updated_at, "
                        "details) VALUES (:n, :o, '{}', 'f', :t, :t, '{}')"
                    ),
                    {"n": name, "o": origin, "t": T0},
                )
    finally:
        engine.dispose()
    store = StateStore.open(url)
    try:
        assert stamped(url) == [HEAD]
        store.remove_registered_job("nightly")
        store.sync_jobs([JobPlan("group_1", "f", []), JobPlan("from_file", "f", [])], T0)
        assert {job.name: job.origin.value for job in store.jobs()} == {
            "nightly": "api",
            "group_1": "discovered",
            "from_file": "file",
        }
    finally:
        store.close()


def test_tables_without_a_known_mark_are_refused_untouched(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    legacy_schema.create(url)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE tc_meta SET value = '7'"))
    engine.dispose()
    with pytest.raises(StateStoreError, match="no schema revision and schema mark '7'"):
        StateStore.open(url)
    assert "alembic_version" not in sa.inspect(sa.create_engine(url)).get_table_names()


# ----- newer than this code -----


def test_a_store_at_an_unknown_newer_revision_is_refused_with_a_message(state_url: str, tmp_path: Path) -> None:
    StateStore.open(state_url).close()
    engine = sa.create_engine(state_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0999'"))
    engine.dispose()
    message = "at schema revision 0999, which TeckoChecker .* does not know"
    for readonly in (False, True):
        with pytest.raises(StateStoreError, match=message):
            StateStore.open(state_url, readonly=readonly)
    with pytest.raises(StateStoreError, match=message):
        StateStore.open(state_url, upgrade=False)
    out = run_cli("db", "current", "--state-url", state_url, env={}, cwd=tmp_path)
    assert out.returncode == 2 and "schema revision 0999" in out.stderr and "Traceback" not in out.stderr
    assert stamped(state_url) == ["0999"]


# ----- the CLI and the daemon -----


def test_db_current_and_db_upgrade(plugin_env: dict[str, str], tmp_path: Path) -> None:
    db = tmp_path / "state" / "state.db"
    config = tmp_path / "teckochecker.yaml"
    config.write_text(f"state: {{url: 'sqlite:///{db}'}}\njobs: []\n")
    cli = ("--config", str(config), "db")

    out = run_cli(*cli, "current", env=plugin_env, cwd=tmp_path)
    assert out.returncode == 3 and "no state store at" in out.stdout and not db.exists(), out

    db.parent.mkdir()
    legacy_schema.create(f"sqlite:///{db}")
    out = run_cli(*cli, "current", env=plugin_env, cwd=tmp_path)
    assert out.returncode == 3 and "made before schema revisions; matches 0001" in out.stdout, out
    assert "teckochecker db upgrade" in out.stdout

    out = run_cli(*cli, "upgrade", env=plugin_env, cwd=tmp_path)
    assert out.returncode == 0 and f"to {HEAD} (head)" in out.stdout, out
    out = run_cli(*cli, "current", env=plugin_env, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip().endswith(f"{HEAD} (head)"), out
    out = run_cli(*cli, "upgrade", env=plugin_env, cwd=tmp_path)
    assert out.returncode == 0 and "nothing to do" in out.stdout, out


def test_db_upgrade_on_sqlite_waits_for_no_daemon(plugin_env: dict[str, str], tmp_path: Path) -> None:
    from teckochecker.state.location import SingleInstanceLock

    db = tmp_path / "state.db"
    legacy_schema.create(f"sqlite:///{db}")
    lock = SingleInstanceLock(db)
    lock.acquire()  # what a running daemon holds
    try:
        out = run_cli("db", "upgrade", "--state-url", f"sqlite:///{db}", env=plugin_env, cwd=tmp_path)
    finally:
        lock.release()
    assert out.returncode == 2 and "stop it before upgrading" in out.stderr, out
    assert "alembic_version" not in sa.inspect(sa.create_engine(f"sqlite:///{db}")).get_table_names()


def test_a_daemon_told_not_to_upgrade_refuses_and_names_the_command(plugin_env: dict[str, str], tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    legacy_schema.create(f"sqlite:///{db}")
    config = tmp_path / "teckochecker.yaml"
    config.write_text(f"state: {{url: 'sqlite:///{db}', upgrade_on_start: false}}\nhttp: {{port: 0}}\njobs: []\n")
    daemon = DaemonProcess(config, plugin_env, tmp_path)
    code = daemon.proc.wait(timeout=60)
    daemon.stop()
    assert code == 2, daemon.output
    assert "teckochecker db upgrade" in daemon.output and "Traceback" not in daemon.output
    assert "alembic_version" not in sa.inspect(sa.create_engine(f"sqlite:///{db}")).get_table_names()

    # Upgraded by hand, the same config starts.
    assert run_cli("--config", str(config), "db", "upgrade", env=plugin_env, cwd=tmp_path).returncode == 0
    daemon = DaemonProcess(config, plugin_env, tmp_path)
    daemon.wait_for("teckochecker started")
    assert daemon.stop()[0] == 0, daemon.output


def test_a_daemon_upgrades_a_store_made_before_revisions_on_start(plugin_env: dict[str, str], tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    legacy_schema.create(f"sqlite:///{db}")
    fill_like_a_running_daemon(f"sqlite:///{db}")
    config = tmp_path / "teckochecker.yaml"
    config.write_text(f"state: {{url: 'sqlite:///{db}'}}\nhttp: {{port: 0}}\njobs: []\n")
    daemon = DaemonProcess(config, plugin_env, tmp_path)
    daemon.wait_for("teckochecker started")
    assert daemon.stop()[0] == 0, daemon.output
    assert f"state store schema stamped 0001 (made before schema revisions) and upgraded to {HEAD} (head)" in (
        daemon.output
    )
    assert stamped(f"sqlite:///{db}") == [HEAD]


# ----- locking -----


def test_two_upgrades_at_once_on_postgresql_take_turns(postgres_url: str, plugin_env: dict[str, str], tmp_path: Path):
    legacy_schema.create(postgres_url)
    fill_like_a_running_daemon(postgres_url)
    before = rows(postgres_url)
    plain = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as holder:
        # Hold the migration lock, so both processes are inside their transaction, waiting, at the same time.
        holder.execute("SELECT pg_advisory_lock(%s)", (revisions.MIGRATION_LOCK_KEY,))
        procs = [
            subprocess.Popen(
                [TECKOCHECKER, "db", "upgrade", "--state-url", postgres_url],
                env=plugin_env,
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        wait_until(lambda: waiting_for_advisory_locks(holder) == 2, procs)
        holder.execute("SELECT pg_advisory_unlock(%s)", (revisions.MIGRATION_LOCK_KEY,))
        outcomes = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outcomes
    said = sorted("nothing to do" in out for out, _ in outcomes)
    assert said == [False, True], outcomes
    assert stamped(postgres_url) == [HEAD]
    after = rows(postgres_url)
    after.pop("tc_meta"), before.pop("tc_meta")
    assert after == before


def waiting_for_advisory_locks(conn: psycopg.Connection[Any]) -> int:
    query = (
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


def wait_until(condition: Any, procs: list[subprocess.Popen[str]], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        exited = [p.communicate() for p in procs if p.poll() is not None]
        assert not exited, exited
        assert time.monotonic() < deadline, "the upgrades never waited on the migration lock"
        time.sleep(0.05)


def test_sqlite_table_rebuilds_in_an_upgrade_keep_the_rows_that_reference_the_table(tmp_path: Path) -> None:
    """Batch operations copy a table and drop the old one; with foreign keys on, the drop would cascade."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    legacy_schema.create(url)
    fill_like_a_running_daemon(url)
    targets = len(rows(url)["tc_targets"])

    def rebuild_jobs(conn: sa.Connection) -> None:
        with Operations(MigrationContext.configure(conn)).batch_alter_table("tc_jobs", recreate="always") as batch:
            batch.add_column(sa.Column("owner", sa.String(64)))

    engine = schema.create_engine(url)
    try:
        with revisions.migration_transaction(engine) as conn:
            rebuild_jobs(conn)
        assert len(rows(url)["tc_targets"]) == targets
        # The same rebuild on an ordinary connection (foreign keys on) loses them: what the test guards.
        with engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE tc_jobs DROP COLUMN owner"))
            rebuild_jobs(conn)
        assert rows(url)["tc_targets"] == []
    finally:
        engine.dispose()
