"""The third-party plugin in examples/teckochecker-plugin-example, installed through its own pyproject.toml
entry point (.ci/run does `pip install -e examples/teckochecker-plugin-example`), running end to end: the
real daemon, its json_status source against the fake OpenAI server, its json_file action on disk."""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib.metadata
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import DaemonProcess, run_cli
from fakes import FakeOpenAI
from plugin_context import Clients, FixedClock

from teckochecker.errors import PermanentError
from teckochecker.plugin_api import ActionRequest, Observation, PluginContext, SecretName, TargetState

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "teckochecker-plugin-example"
DISTRIBUTION = "teckochecker-plugin-example"
REQUIRE_ENV = "TECKOCHECKER_REQUIRE_EXAMPLE_PLUGIN"
KEY = "sk-example-0123456789abcdef"


@pytest.fixture(autouse=True)
def example_installed() -> None:
    """Skip where the example is not installed; fail in CI, which installs it (TECKOCHECKER_REQUIRE_EXAMPLE_PLUGIN)."""
    try:
        importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        message = f"{DISTRIBUTION} is not installed: pip install -e {EXAMPLE.relative_to(ROOT)}"
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(message)
        pytest.skip(message)
    import teckochecker_example

    # This repository's example, not a stale copy from somewhere else.
    assert Path(teckochecker_example.__file__).is_relative_to(EXAMPLE)


@pytest.fixture
def openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=KEY) as fake:
        yield fake


@pytest.fixture
def env() -> dict[str, str]:
    # No TECKOCHECKER_PLUGINS: the entry point alone must bring the plugin in.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TECKOCHECKER_")}
    clean.pop("STATE_DIRECTORY", None)
    return {**clean, "STATUS_API_TOKEN": KEY}


def write_config(tmp_path: Path, openai: FakeOpenAI, out: Path, targets: list[str]) -> Path:
    config = tmp_path / "teckochecker.yaml"
    config.write_text(
        f"""\
http: {{port: 0}}
secrets:
  status_api: {{env: STATUS_API_TOKEN}}
defaults: {{interval: 30s, startup_spread: 0s}}
jobs:
  - name: export
    source:
      type: json_status
      base_url: "{openai.base_url}/batches"
      token: status_api
      succeeded: [completed]
      failed: [failed]
      targets: {json.dumps(targets)}
    actions:
      - {{type: json_file, directory: "{out}"}}
"""
    )
    return config


def test_the_example_runs_on_the_real_daemon_against_the_fake(
    tmp_path: Path, openai: FakeOpenAI, env: dict[str, str]
) -> None:
    done, bad = openai.add_batch(status="completed"), openai.add_batch(status="failed")
    out = tmp_path / "finished"
    out.mkdir()
    config = write_config(tmp_path, openai, out, [done, bad])
    assert run_cli("validate-config", str(config), env=env, cwd=tmp_path).returncode == 0
    daemon = DaemonProcess(config, {**env, "TECKOCHECKER_TRACE_PLUGINS": "1"}, tmp_path)
    try:
        daemon.wait_for("job export: trigger fired")
        deadline = time.monotonic() + 20
        while not [p for p in out.iterdir() if not p.name.startswith(".")] and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        code, _ = daemon.stop()
    assert code == 0, daemon.output
    (written,) = out.iterdir()
    document = json.loads(written.read_text())
    assert written.name == f"{document['trigger_id']}.json"
    assert document["job"] == "export"
    assert {t["target"]: t["state"] for t in document["targets"]} == {done: "succeeded", bad: "failed"}
    gets = [r for r in openai.requests if r.method == "GET"]
    assert {r.path for r in gets} == {f"/v1/batches/{done}", f"/v1/batches/{bad}"}
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in gets)
    # The daemon traced its hook calls, the example's among them, and no secret reached its log.
    assert "plugin hook teckochecker_action_types() calling example" in daemon.output
    assert "returned [[teckochecker_example.action.JsonFileAction]]" in daemon.output
    assert KEY not in daemon.output and "Traceback" not in daemon.output


def test_plugins_and_config_schema_see_the_installed_example(tmp_path: Path, env: dict[str, str]) -> None:
    listing = run_cli("plugins", env=env, cwd=tmp_path)
    version = importlib.metadata.version(DISTRIBUTION)
    assert ["example", version, "json_status", "json_file"] in [line.split() for line in listing.stdout.splitlines()]
    schema = json.loads(run_cli("config", "schema", env=env, cwd=tmp_path).stdout)
    assert {"Source_json_status", "Action_json_file"} <= set(schema["$defs"])
    builtin = json.loads(run_cli("config", "schema", "--builtin-only", env=env, cwd=tmp_path).stdout)
    assert "Source_json_status" not in builtin["$defs"]


def context() -> PluginContext:
    return PluginContext(Clients(), FixedClock(), lambda name: {"status_api": KEY}[name], logging.getLogger("test"))


def test_the_example_source_waits_on_429_and_stops_on_a_refused_token(openai: FakeOpenAI) -> None:
    from teckochecker_example import JsonStatusOptions, JsonStatusSource

    batch = openai.add_batch(status="in_progress")
    options = JsonStatusOptions(base_url=f"{openai.base_url}/batches", token=SecretName("status_api"))
    openai.inject(429, headers={"Retry-After": "7"})

    async def scenario() -> None:
        source = JsonStatusSource(options, context())
        try:
            throttled = await source.check([batch])
            assert throttled.transient_errors == {batch: f"HTTP 429 from {options.base_url}"}
            assert throttled.retry_after == 7.0
            running = await source.check([batch])
            assert running.observations == (
                Observation(batch, TargetState.RUNNING, "in_progress", {"status": "in_progress"}),
            )
            refused = JsonStatusSource(
                options, PluginContext(source.context.http, FixedClock(), lambda n: "wrong", source.context.logger)
            )
            with pytest.raises(PermanentError, match=r"refused the token \(HTTP 401\)"):
                await refused.check([batch])
        finally:
            await source.context.http.aclose()  # type: ignore[attr-defined]

    asyncio.run(scenario())


def test_the_example_action_writes_once_and_finds_what_it_wrote(tmp_path: Path) -> None:
    from teckochecker_example import JsonFileAction, JsonFileOptions

    action = JsonFileAction(JsonFileOptions(directory=str(tmp_path)), context())
    fired = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    request = ActionRequest("export", "trig-1", fired, (Observation("b1", TargetState.SUCCEEDED),))

    async def scenario() -> None:
        assert await action.find_started(request, fired) == []
        first = await action.start(request)
        # A second start for the same trigger (after an in-doubt outcome) neither duplicates nor overwrites.
        (tmp_path / "trig-1.json").write_text("{}")
        second = await action.start(request)
        assert first == second and first.external_id == "trig-1.json"
        assert await action.find_started(request, fired) == [first]

    asyncio.run(scenario())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trig-1.json"]
    assert (tmp_path / "trig-1.json").read_text() == "{}"
