"""Registered jobs without a process: http.tokens in the config, a body validated against the config, the
file winning a name in both, and re-validating only what changed."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import textwrap
from pathlib import Path

import pytest
from clock import FakeClock

from teckochecker.config.models import TokenScope
from teckochecker.config.validate import Config, load_config
from teckochecker.errors import ConfigError
from teckochecker.metrics import Metrics
from teckochecker.plugins import PluginRegistry
from teckochecker.registered_jobs import (
    RegisteredDefinitions,
    RegisteredJobs,
    assemble,
    body_problems,
    validate_body,
)
from teckochecker.secrets.resolving import Redactor
from teckochecker.state.models import JobOrigin, RegisteredJob
from teckochecker.state.store import StateStore, body_fingerprint
from teckochecker.state.worker import StoreWorker

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
CONFIG = """\
secrets:
  reg: {env: TC_REG}
  vendor: {env: TC_VENDOR}
http:
  api_token: reg
  tokens: [{secret: reg, scopes: [register]}]
templates:
  std:
    source: {type: status_file, path: /tmp/s.json}
    actions: [{type: record, ledger: /tmp/l.jsonl}]
jobs:
  - {name: filed, template: std, source: {targets: [a]}}
"""


@pytest.fixture
def config(tmp_path: Path, registry: PluginRegistry) -> Config:
    path = tmp_path / "tc.yaml"
    path.write_text(CONFIG)
    return load_config(path, registry)


def row(name: str, body: dict[str, object], origin: JobOrigin = JobOrigin.API) -> RegisteredJob:
    body = {"name": name, **body}
    return RegisteredJob(name, origin, body, body_fingerprint(body), T0, T0)


def test_tokens_name_defined_secrets_and_known_scopes(tmp_path: Path, registry: PluginRegistry) -> None:
    def shown(tokens: str) -> list[str]:
        path = tmp_path / "tc.yaml"
        path.write_text(f"secrets: {{reg: {{env: TC_REG}}}}\nhttp:\n  tokens:\n{textwrap.indent(tokens, '    ')}")
        with pytest.raises(ConfigError) as raised:
            load_config(path, registry)
        return [str(d).removeprefix(f"{path}:") for d in raised.value.diagnostics]

    assert shown("- {secret: nope, scopes: [register]}\n") == [
        "4:8: http.tokens[0].secret: secret 'nope' is not defined under 'secrets:' (defined: reg)"
    ]
    assert shown("- {secret: reg, scopes: [admin]}\n- {secret: reg, scopes: []}\n") == [
        "4:30: http.tokens[0].scopes[0]: input should be 'register' or 'control'",
        "5:21: http.tokens[1].scopes: list should have at least 1 item after validation, not 0",
    ]


def test_api_token_is_a_token_with_both_scopes(config: Config) -> None:
    tokens = config.http.bearer_tokens()
    assert [(t.secret, set(t.scopes)) for t in tokens] == [
        ("reg", {TokenScope.REGISTER, TokenScope.CONTROL}),
        ("reg", {TokenScope.REGISTER}),
    ]


def test_a_body_validates_like_a_job_in_the_file(config: Config, registry: PluginRegistry) -> None:
    definition, problems = validate_body(
        "api1", {"name": "api1", "template": "std", "source": {"targets": ["a"]}}, JobOrigin.API, config, registry
    )
    assert problems == () and definition is not None
    assert definition.source.targets == ("a",) and definition.file == "<api:api1>"

    _, problems = validate_body(
        "api2",
        {"name": "api2", "template": "std", "source": {"targets": ["a", "a"], "token": "sk-lookslikeavalue"}},
        JobOrigin.API,
        config,
        registry,
    )
    by_path = {p.path: p.message for p in problems}
    assert by_path["source.targets"] == "target 'a' is listed twice"
    assert "sk-lookslikeavalue" not in by_path["source.token"]


def test_body_problems_before_validation() -> None:
    redactor = Redactor()
    redactor.register("vendor-secret-value")
    assert [p.path for p in body_problems("bad name", {}, redactor)] == ["name"]
    assert [p.path for p in body_problems("ok", [], redactor)] == [""]
    found = body_problems("ok", {"name": "other", "secrets": {}, "x": ["vendor-secret-value"]}, redactor)
    assert [p.path for p in found] == ["name", "secrets", "x[0]"]


def test_the_file_wins_a_name_in_both(config: Config, registry: PluginRegistry) -> None:
    rows = [
        row("filed", {"template": "std", "source": {"targets": ["b"]}}),
        row("api1", {"template": "std", "source": {"targets": ["c"]}}),
    ]
    built, invalid, _ = RegisteredDefinitions(registry).build(rows, config)
    assembly = assemble(config.jobs, {r.name: r for r in rows}, built, invalid)
    assert assembly.definitions["filed"] is config.jobs["filed"]
    assert set(assembly.definitions) == {"filed", "api1"}
    assert assembly.origins == {"api1": JobOrigin.API}
    assert assembly.counts() == {JobOrigin.FILE: 1, JobOrigin.API: 1, JobOrigin.DISCOVERED: 0}
    [conflict] = assembly.conflicts
    assert conflict.file_place == f"{config.file}:12"
    note = f"job 'filed' is registered (api) and also defined at {config.file}:12: the file's job runs"
    assert assembly.notes() == (f"{note}; remove one of them",)


def test_a_row_body_without_a_name_takes_the_rows(config: Config, registry: PluginRegistry) -> None:
    body = {"template": "std", "source": {"targets": ["c"]}}
    nameless = RegisteredJob("group-7", JobOrigin.DISCOVERED, body, body_fingerprint(body), T0, T0)
    built, invalid, _ = RegisteredDefinitions(registry).build([nameless], config)
    assert invalid == {} and built["group-7"].name == "group-7"


def test_a_stored_row_that_no_longer_validates_is_left_out_and_reported(
    config: Config, registry: PluginRegistry
) -> None:
    rows = [row("old", {"template": "removed-since", "source": {"targets": ["c"]}})]
    built, invalid, _ = RegisteredDefinitions(registry).build(rows, config)
    assembly = assemble(config.jobs, {r.name: r for r in rows}, built, invalid)
    assert "old" not in assembly.definitions
    assert assembly.notes()[0].startswith("registered job 'old' no longer validates and is not run: template: unknown")


def test_rows_are_validated_again_only_when_they_or_the_config_change(
    config: Config, registry: PluginRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    import teckochecker.registered_jobs as module

    calls: list[str] = []
    real = module.validate_body

    def counting(name, *args, **kwargs):
        calls.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(module, "validate_body", counting)
    definitions = RegisteredDefinitions(registry)
    rows = [row(f"j{i}", {"template": "std", "source": {"targets": [f"t{i}"]}}) for i in range(3)]
    definitions.build(rows, config)
    definitions.build(rows, config)
    assert calls == ["j0", "j1", "j2"]
    rows[1] = row("j1", {"template": "std", "source": {"targets": ["t1", "t9"]}})
    definitions.build(rows, config)
    assert calls[3:] == ["j1"]


def test_a_reread_fetches_only_the_rows_that_changed(tmp_path: Path, registry: PluginRegistry) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    store, other = StateStore.open(url), StateStore.open(url)
    worker = StoreWorker()
    fetched: list[list[str] | None] = []
    real = store.registered_jobs

    def spying(names=None):
        fetched.append(None if names is None else list(names))
        return real(names)

    store.registered_jobs = spying  # type: ignore[method-assign]
    jobs = RegisteredJobs(store, worker, registry, Redactor(), Metrics(), logging.getLogger("t"), FakeClock(T0))
    body = {"template": "std", "source": {"targets": ["a"]}}
    try:
        for name in ("a", "b", "c"):
            other.put_registered_job(name, JobOrigin.API, {"name": name, **body}, now=T0)
        assert asyncio.run(jobs.read_if_changed()) is True
        assert asyncio.run(jobs.read_if_changed()) is False  # nothing changed: one small query, no rows
        assert fetched == [["a", "b", "c"]]
        # Another process changes one, removes one and adds one.
        later = T0 + dt.timedelta(seconds=1)
        other.put_registered_job("a", JobOrigin.API, {"name": "a", **body, "interval": "45s"}, now=later)
        other.remove_registered_job("b")
        other.put_registered_job("d", JobOrigin.API, {"name": "d", **body}, now=later)
        assert asyncio.run(jobs.read_if_changed()) is True
        assert fetched[-1] == ["a", "d"]
        assert asyncio.run(jobs.needs_rebuild()) is True  # read, but never assembled
    finally:
        worker.close()
        store.close()
        other.close()
