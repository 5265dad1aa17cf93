"""Event kinds are an enum (state/events.EventKind): every writer names one, so `grep EventKind.X` finds every
place that writes an X, and a kind the log does not list cannot be written."""

from __future__ import annotations

import ast
import datetime as dt
from pathlib import Path

import pytest
import sqlalchemy as sa

from teckochecker.state.events import EventKind, append_event
from teckochecker.state.store import JobPlan, StateStore

PACKAGE = Path(__file__).resolve().parent.parent / "teckochecker"
T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)


def _kind_arguments() -> list[tuple[str, ast.expr]]:
    """The kind given to every append_event call and to every fail_job (direct or through the store worker)."""
    found: list[tuple[str, ast.expr]] = []
    for file in PACKAGE.rglob("*.py"):
        if "simulators" in file.parts:
            continue  # the fake vendors have their own "kind"s, not events
        for node in ast.walk(ast.parse(file.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            where = f"{file.relative_to(PACKAGE.parent)}:{node.lineno}"
            if name == "append_event" and len(node.args) > 3:
                found.append((where, node.args[3]))
            writes = name == "append_event" or "fail_job" in ast.unparse(node.func) + ast.unparse(node.args[:1])
            found.extend((where, k.value) for k in node.keywords if k.arg == "kind" and writes)
    return found


def test_every_event_writer_names_an_event_kind() -> None:
    arguments = _kind_arguments()
    assert len(arguments) >= 25, "the scan must see the writers"
    literal = [
        where
        for where, arg in arguments
        for part in ast.walk(arg)
        if isinstance(part, ast.JoinedStr) or (isinstance(part, ast.Constant) and isinstance(part.value, str))
    ]
    assert literal == [], f"write EventKind.X, not a string: {literal}"
    named = {
        arg.attr for _, arg in arguments if isinstance(arg, ast.Attribute) and ast.unparse(arg.value) == "EventKind"
    }
    assert named <= set(EventKind.__members__)


def test_the_stored_strings_are_the_enum_values(tmp_path: Path) -> None:
    store = StateStore.open(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        store.sync_jobs([JobPlan("j", "fp", ["a"])], T0)
        store.set_paused("j", True, now=T0)
        store.fail_job("j", "deadline", now=T0, kind=EventKind.DEADLINE_PASSED)
        assert [(e.kind, type(e.kind)) for e in store.events("j")] == [
            ("registered", str),
            ("paused", str),
            ("deadline_passed", str),
        ]
    finally:
        store.close()


def test_a_kind_not_listed_is_refused(tmp_path: Path) -> None:
    store = StateStore.open(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        store.sync_jobs([JobPlan("j", "fp", ["a"])], T0)
        engine: sa.Engine = store._engine
        with pytest.raises(ValueError, match="not_a_kind"), engine.begin() as conn:
            append_event(conn, 1, T0, "not_a_kind", "x")  # type: ignore[arg-type]
        assert [e.kind for e in store.events("j")] == ["registered"]
    finally:
        store.close()
