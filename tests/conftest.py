"""Shared fixtures: test plugins, state stores on SQLite and on a real PostgreSQL, a controllable clock."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

SUPPORT = Path(__file__).parent / "support"
sys.path.insert(0, str(SUPPORT))

from teckochecker.plugins import PluginRegistry, load_plugins  # noqa: E402

POSTGRES_URL = os.environ.get("TECKOCHECKER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TEST_PLUGINS = {"TECKOCHECKER_PLUGINS": "teckotest_plugin"}


@pytest.fixture
def registry() -> PluginRegistry:
    return load_plugins(TEST_PLUGINS)


@pytest.fixture
def plugin_env(tmp_path: Path) -> dict[str, str]:
    """Environment for a daemon subprocess that loads the test plugins."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TECKOCHECKER_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SUPPORT), env.get("PYTHONPATH")]))
    env.update(TEST_PLUGINS)
    env.pop("STATE_DIRECTORY", None)
    return env


def _postgres_admin_url() -> str:
    return POSTGRES_URL.replace("postgresql+psycopg://", "postgresql://")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh database on the real PostgreSQL server; skipped (or failed, in CI) when there is none."""
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(_postgres_admin_url(), autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        if os.environ.get("TECKOCHECKER_REQUIRE_POSTGRES"):
            pytest.fail(f"PostgreSQL is required but not reachable: {exc}")
        pytest.skip(f"no PostgreSQL at {POSTGRES_URL}: {exc}")
    name = f"tc_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = POSTGRES_URL.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return request.getfixturevalue("postgres_url")
