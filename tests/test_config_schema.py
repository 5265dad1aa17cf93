"""`teckochecker config schema`: a JSON Schema (2020-12) from the validator's own models and the plugins'
Options. It accepts what the validator accepts (the example, every test config), refuses the usual
mistakes, and the copies committed in config/ are what the command prints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from config_literals import config_literals
from daemon import run_cli

from teckochecker.config.schema import (
    COMMITTED_DROP_IN_SCHEMA,
    COMMITTED_SCHEMA,
    REGENERATE,
    config_schema,
    drop_in_schema,
    render,
)
from teckochecker.config.validate import load_config
from teckochecker.errors import ConfigError
from teckochecker.plugins import PluginRegistry, load_builtin_plugins

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "teckochecker.yaml.example"


def validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def problems(schema: dict[str, Any], data: object) -> list[str]:
    """Each error as 'path: message', path like jobs/0/source/api_key."""
    return sorted(
        "/".join(str(p) for p in e.absolute_path) + ": " + e.message for e in validator(schema).iter_errors(data)
    )


def test_the_committed_copies_are_what_the_command_prints() -> None:
    builtins = load_builtin_plugins({})
    for committed, schema in [
        (COMMITTED_SCHEMA, config_schema(builtins)),
        (COMMITTED_DROP_IN_SCHEMA, drop_in_schema(builtins)),
    ]:
        assert (ROOT / committed).read_text() == render(schema), (
            f"{committed} is stale (a model or a built-in plugin's options changed); regenerate: {REGENERATE}"
        )


def test_the_example_starts_with_a_modeline_to_the_committed_copy_and_validates() -> None:
    first = EXAMPLE.read_text().splitlines()[0]
    assert first == f"# yaml-language-server: $schema=./{COMMITTED_SCHEMA}"
    schema = json.loads((EXAMPLE.parent / COMMITTED_SCHEMA).read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert problems(schema, yaml.safe_load(EXAMPLE.read_text())) == []


def test_every_test_config_the_validator_accepts_the_schema_accepts(tmp_path: Path, registry: PluginRegistry) -> None:
    schema = config_schema(registry)
    accepted: set[str] = set()
    for index, config in enumerate(config_literals(ROOT / "tests")):
        path = tmp_path / f"c{index}" / "tc.yaml"
        path.parent.mkdir()
        path.write_text(config.text)
        try:
            load_config(path, registry)
        except ConfigError:
            continue  # deliberately broken, or a fragment completed elsewhere
        assert problems(schema, used_templates_only(yaml.safe_load(config.text))) == [], (
            f"{config.where}:\n{config.text}"
        )
        accepted.add(config.where)
    # The collector must keep finding the tests' configs (25 literals in 9 files when this was written).
    assert len(accepted) >= 20, sorted(accepted)
    assert len({where.split(":")[0] for where in accepted}) >= 8, sorted(accepted)


def used_templates_only(config: dict[str, Any]) -> dict[str, Any]:
    """The validator checks a template only where a job uses it; the schema checks every template (an editor
    should flag a broken one before a job uses it). Compare them on the templates in use."""
    used = {job.get("template") for job in config.get("jobs") or [] if isinstance(job, dict)}
    templates = config.get("templates") or {}
    return {**config, "templates": {name: t for name, t in templates.items() if name in used}}


BROKEN = [
    # (what is changed in the example, the schema's complaint)
    (lambda c: c["jobs"][0].update(interval=2), "jobs/0/interval: 2 is not valid under any of the given schemas"),
    (lambda c: c["jobs"][0].update(interval="2 minutes"), "jobs/0/interval: '2 minutes' is not valid under any"),
    (lambda c: c["jobs"][0]["source"].update(type="openai_batches"), "jobs/0/source/type: "),
    (lambda c: c["jobs"][0]["source"].pop("targets"), "jobs/0/source: 'targets' is a required property"),
    (lambda c: c["jobs"][0]["source"].update(project=7), "jobs/0/source/project: 7 is not valid under any"),
    (lambda c: c["jobs"][0]["actions"][0].update(follw=True), "jobs/0/actions/0: Additional properties are not"),
    (lambda c: c["jobs"][0]["actions"][0].update(mode="fast"), "jobs/0/actions/0/mode: 'fast' is not one of"),
    (lambda c: c["jobs"][0]["actions"][0].update(when="sometimes"), "jobs/0/actions/0/when: 'sometimes' is not one"),
    (lambda c: c["jobs"][0].update(name="no spaces"), "jobs/0/name: 'no spaces' does not match"),
    (lambda c: c["jobs"][0].update(actions=[]), "jobs/0/actions: [] should be non-empty"),
    (lambda c: c["http"].update(port=70000), "http/port: 70000 is greater than the maximum of 65535"),
    (lambda c: c.update(log_level="LOUD"), "log_level: 'LOUD' does not match"),
    (lambda c: c.update(jbos=[]), ": Additional properties are not allowed ('jbos' was unexpected)"),
    (lambda c: c.update(jbos=None), ": Additional properties are not allowed ('jbos' was unexpected)"),
    (lambda c: c["secrets"].update(openai="sk-pasted"), "secrets/openai: 'sk-pasted' is not of type 'object'"),
]


@pytest.mark.parametrize(("change", "complaint"), BROKEN)
def test_a_broken_config_fails_where_it_is_broken(change: Any, complaint: str, tmp_path: Path) -> None:
    schema = json.loads((ROOT / COMMITTED_SCHEMA).read_text())
    config = yaml.safe_load(EXAMPLE.read_text())
    change(config)
    found = problems(schema, config)
    assert any(p.startswith(complaint) for p in found), found
    # The validator refuses it too: the schema is no stricter than the real check here.
    path = tmp_path / "tc.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError):
        load_config(path, load_builtin_plugins({}))


def test_each_plugins_options_are_in_and_chosen_by_type(registry: PluginRegistry) -> None:
    schema = config_schema(registry)
    job = {"name": "j", "source": {"type": "status_file", "path": "/tmp/s", "targets": ["a"]}}
    ok = {**job, "actions": [{"type": "record", "ledger": "/tmp/l", "when": "any_failed"}]}
    assert problems(schema, {"jobs": [ok]}) == []
    # A key of the keboola_job action is wrong on a record action: only the record action's keys count.
    wrong = {**job, "actions": [{"type": "record", "ledger": "/tmp/l", "stack_url": "https://x"}]}
    assert problems(schema, {"jobs": [wrong]}) == [
        "jobs/0/actions/0: Additional properties are not allowed ('stack_url' was unexpected)"
    ]
    ghost = {**ok, "source": {**job["source"], "type": "ghost"}}
    assert problems(schema, {"jobs": [ghost]}) == [
        f"jobs/0/source/type: 'ghost' is not one of {sorted(registry.sources)}"
    ]
    assert set(schema["$defs"]) >= {"Source_openai_batch", "Source_status_file", "Action_keboola_job", "Action_record"}


def test_templates_drop_ins_and_empty_sections(registry: PluginRegistry) -> None:
    schema = config_schema(registry)
    config = {
        "state": None,  # a section with only comments in it
        "templates": {"std": {"interval": "1m", "source": {"type": "status_file", "path": "/tmp/s"}}},
        "jobs": [{"name": "a", "template": "std", "source": {"targets": ["b1"]}, "actions": [{"type": "record"}]}],
    }
    assert problems(schema, config) == [
        "jobs/0/actions/0: 'ledger' is a required property",
    ]
    drop_in = drop_in_schema(registry)
    assert problems(drop_in, {"jobs": [{"name": "a", "template": "std", "source": {"targets": ["x"]}}]}) == []
    assert problems(drop_in, {"secrets": {}, "jobs": []}) == [
        ": Additional properties are not allowed ('secrets' was unexpected)"
    ]


def test_the_command_prints_the_schema_of_the_loaded_plugins(plugin_env: dict[str, str], tmp_path: Path) -> None:
    out = run_cli("config", "schema", env=plugin_env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout)
    assert "Source_status_file" in printed["$defs"]
    builtin = run_cli("config", "schema", "--builtin-only", env=plugin_env, cwd=tmp_path)
    assert builtin.stdout == (ROOT / COMMITTED_SCHEMA).read_text()
    drop_in = run_cli("config", "schema", "--builtin-only", "--drop-in", env=plugin_env, cwd=tmp_path)
    assert drop_in.stdout == (ROOT / COMMITTED_DROP_IN_SCHEMA).read_text()
