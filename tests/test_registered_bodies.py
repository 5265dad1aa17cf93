"""What a registered body may set (config/registered.py) without a process: templates' overridable:, the
secrets only the daemon itself may use, the 422 problems of a body, held rows, export, and a watching job
that loses targets or changes its deadline in the state store."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from clock import FakeClock

from teckochecker.cli.registration import export_yaml
from teckochecker.config.validate import Config, load_config, validate_job_body
from teckochecker.control import Refusal
from teckochecker.errors import ConfigError
from teckochecker.metrics import Metrics
from teckochecker.plugin_api import CheckReport, Observation, TargetState
from teckochecker.plugins import PluginRegistry
from teckochecker.registered_jobs import RegisteredDefinitions, RegisteredJobs, assemble
from teckochecker.secrets.resolving import Redactor
from teckochecker.state.events import EventKind
from teckochecker.state.models import JobOrigin, JobState, PutOutcome, RegisteredJob
from teckochecker.state.store import JobPlan, StateStore, body_fingerprint
from teckochecker.state.worker import StoreWorker

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
KEBOOLA = "{type: keboola_job, token: kbc, stack_url: 'https://connection.keboola.com', component: c, config: '101'}"
HOOK = "{type: webhook, url: 'https://hooks.example.com/x', secret: hook}"
CONFIG = f"""\
secrets:
  openai: {{env: OPENAI}}
  kbc: {{env: KBC}}
  hook: {{env: HOOK}}
  operator: {{env: OPERATOR}}
  pipeline: {{env: PIPELINE}}
  whsec: {{env: WHSEC}}
http:
  api_token: operator
  tokens: [{{secret: pipeline, scopes: [register]}}]
webhooks: {{port: 9999, secrets: [whsec]}}
templates:
  classify:
    source: {{type: openai_batch, api_key: openai, base_url: 'https://api.openai.com/v1'}}
    actions:
      - {KEBOOLA}
      - {HOOK}
    overridable:
      - interval
      - {{path: "actions[0].config", one_of: ["101", "102"]}}
      - {{path: deadline, one_of: [2h, 1d]}}
  plain:
    source: {{type: openai_batch, api_key: openai}}
    actions: [{{type: record, ledger: /tmp/l.jsonl}}]
"""


def load(tmp_path: Path, registry: PluginRegistry, text: str = CONFIG) -> Config:
    path = tmp_path / "tc.yaml"
    path.write_text(text)
    return load_config(path, registry)


def problems_of(tmp_path: Path, registry: PluginRegistry, text: str) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, registry, text)
    return [str(d).removeprefix(f"{tmp_path / 'tc.yaml'}:") for d in raised.value.diagnostics]


@pytest.fixture
def config(tmp_path: Path, registry: PluginRegistry) -> Config:
    return load(tmp_path, registry)


def problems(body: dict[str, Any], config: Config, registry: PluginRegistry) -> dict[str, str]:
    definition, diagnostics = validate_job_body({"name": "j", **body}, config, registry, where="<api:j>")
    assert (definition is None) == bool(diagnostics)
    return {".".join(str(p) for p in d.path).replace(".0", "[0]").replace(".1", "[1]"): d.message for d in diagnostics}


def body(*targets: str, **more: Any) -> dict[str, Any]:
    return {"template": "classify", "source": {"targets": list(targets) or ["batch_1"]}, **more}


# ----- templates.X.overridable -----


def test_overridable_paths_are_checked_where_they_are_written(tmp_path: Path, registry: PluginRegistry) -> None:
    text = CONFIG.replace(
        """      - interval
""",
        """      - interval
      - "actions[0].stack_url"
      - "actions[0].token"
      - "actions[1].variables"
      - "actions[0].nope"
      - "actions[5].config"
      - source.base_url
      - {path: trigger}
      - interval
""",
    )
    assert problems_of(tmp_path, registry, text) == [
        "20:9: templates.classify.overridable[1]: a template cannot make a destination overridable: "
        "only the files say where requests go",
        "21:9: templates.classify.overridable[2]: a template cannot make a secret overridable: "
        "only the files name the credentials a job uses",
        "22:9: templates.classify.overridable[3]: variables need not be declared: a registered job may always "
        "set them (its top-level variables:)",
        "23:9: templates.classify.overridable[4]: the keboola_job action has no option 'nope' (options: branch_id, "
        "component, config, config_row_ids, duplicate_watch, follow, follow_interval, mode, on_duplicate, "
        "queue_url, search_lag, stack_url, timeout, token, variables)",
        "24:9: templates.classify.overridable[5]: the template has no action 5 (it has 2)",
        "25:9: templates.classify.overridable[6]: unknown path 'source.base_url': write interval, deadline, "
        "trigger or actions[N].OPTION",
        "26:9: templates.classify.overridable[7].one_of: must be a non-empty list of the values a registered "
        "job may choose",
        "27:9: templates.classify.overridable[8]: interval is listed twice",
    ]


def test_a_file_job_may_use_a_template_with_overridable(config: Config) -> None:
    # overridable: is how jobs are made of the template, no part of them (as discover: is).
    assert config.overridables["classify"].keys() == {"interval", "actions[0].config", "deadline"}
    assert config.overridables["plain"] == {}


# ----- the daemon's own credentials -----


def test_no_job_or_template_may_name_a_secret_holding_a_token_or_a_signing_secret(
    tmp_path: Path, registry: PluginRegistry
) -> None:
    text = (
        CONFIG.replace("api_key: openai, base_url", "api_key: operator, base_url")
        + f"""\
  leaky:
    source: {{type: openai_batch, api_key: openai}}
    actions: [{HOOK.replace("secret: hook", "secret: whsec")}]
jobs:
  - name: j1
    template: plain
    source: {{targets: [b], api_key: pipeline}}
"""
    )
    found = problems_of(tmp_path, registry, text)
    assert found == [
        "14:34: templates.classify.source.api_key: secret 'operator' holds a credential of the daemon itself "
        "(http.api_token); a job's plugin may never send it anywhere: give the job a secret of its own",
        "27:67: templates.leaky.actions[0].secret: secret 'whsec' holds a credential of the daemon itself "
        "(webhooks.secrets); a job's plugin may never send it anywhere: give the job a secret of its own",
        "31:28: jobs[0].source.api_key: secret 'pipeline' holds a credential of the daemon itself (http.tokens); "
        "a job's plugin may never send it anywhere: give the job a secret of its own",
    ]


# ----- a registered body -----


WHERE, CREDENTIALS = "the files say where requests go", "the files say which credentials a job uses"
NOT_LISTED = "template 'classify' does not list it under overridable:"


@pytest.mark.parametrize(
    ("sets", "path", "why"),
    [
        ({"source": {"targets": ["b"], "base_url": "http://127.0.0.1:1/v1"}}, "source.base_url", WHERE),
        ({"source": {"targets": ["b"], "api_key": "operator"}}, "source.api_key", CREDENTIALS),
        ({"actions": [{"stack_url": "http://127.0.0.1:1"}]}, "actions[0].stack_url", WHERE),
        ({"actions": [{"token": "operator"}]}, "actions[0].token", CREDENTIALS),
        ({"actions": [{}, {"url": "http://127.0.0.1:1/hook"}]}, "actions[1].url", WHERE),
        ({"actions": [{"follow": False}]}, "actions[0].follow", NOT_LISTED),
        ({"trigger": "all_succeeded"}, "trigger", NOT_LISTED),
        ({"secrets": {"x": {"env": "X"}}}, "secrets", NOT_LISTED),
    ],
)
def test_what_only_the_files_set_is_a_problem_naming_the_field(
    sets: dict[str, Any], path: str, why: str, config: Config, registry: PluginRegistry
) -> None:
    found = problems({**body(), **sets}, config, registry)
    assert list(found) == [path]
    assert found[path] == (
        f"a registered job may not set {path}: {why}. With this template it may set: name, template, "
        "source.targets, variables, interval, actions[0].config, deadline"
    )


def test_a_body_names_a_template(config: Config, registry: PluginRegistry) -> None:
    full = {"source": {"type": "openai_batch", "api_key": "openai", "targets": ["b"]}, "actions": []}
    assert problems(full, config, registry) == {
        "template": "a registered job names a template from the files (defined: classify, plain) and sets its targets"
    }


def test_overridable_fields_are_set_within_one_of_and_validated_as_in_a_file(
    config: Config, registry: PluginRegistry
) -> None:
    definition, diagnostics = validate_job_body(
        {"name": "j", **body(interval="45s", deadline="24h", actions=[{"config": "102"}])}, config, registry, where="x"
    )
    assert diagnostics == [] and definition is not None
    assert (definition.interval, definition.deadline) == (45.0, 86400.0)  # 24h is one of [2h, 1d]
    assert definition.actions[0].options.config == "102"  # type: ignore[attr-defined]
    assert str(definition.actions[0].options.stack_url) == "https://connection.keboola.com"  # type: ignore[attr-defined]
    assert problems(body(actions=[{"config": "999"}]), config, registry) == {
        "actions[0].config": "the template allows only: '101', '102'"
    }
    assert problems(body(deadline="3h"), config, registry) == {"deadline": "the template allows only: '2h', '1d'"}
    assert problems(body(interval="5s"), config, registry) == {"interval": "must be between 30s and 1h (got 5s)"}


def test_variables_merge_over_every_action_that_takes_them(config: Config, registry: PluginRegistry) -> None:
    text = CONFIG.replace("config: '101'}", "config: '101', variables: {team: a, run: x}}")
    path = Path(config.file)
    path.write_text(text)
    config = load_config(path, registry)
    definition, diagnostics = validate_job_body(
        {"name": "j", **body(variables={"run": "r7"})}, config, registry, where="x"
    )
    assert diagnostics == [] and definition is not None
    assert definition.actions[0].options.variables == {"team": "a", "run": "r7"}  # type: ignore[attr-defined]
    assert definition.actions[1].options.variables == {"run": "r7"}  # type: ignore[attr-defined]
    reserved = problems(body(variables={"batch_ids_failed": "[]"}), config, registry)
    assert reserved == {"variables": "variable 'batch_ids_failed' is set by TeckoChecker itself; choose another name"}
    plain = {"template": "plain", "source": {"targets": ["b"]}, "variables": {"run": "r7"}}
    assert problems(plain, config, registry) == {"variables": "no action of template 'plain' accepts variables"}


def test_every_problem_at_once(config: Config, registry: PluginRegistry) -> None:
    found = problems(body("a", "a", interval="5s", actions=[{"stack_url": "http://x"}]), config, registry)
    assert set(found) == {"actions[0].stack_url", "interval", "source.targets"}


# ----- stored rows -----


def row(name: str, content: dict[str, Any], origin: JobOrigin = JobOrigin.API) -> RegisteredJob:
    content = {"name": name, **content}
    return RegisteredJob(name, origin, content, body_fingerprint(content), T0, T0)


def test_a_stored_row_that_sets_more_is_held_with_what_to_do(config: Config, registry: PluginRegistry) -> None:
    old = row("old", body(source={"targets": ["b"], "base_url": "http://127.0.0.1:1/v1"}))
    fine = row("fine", body())
    nameless = row("bare", {"source": {"type": "openai_batch", "api_key": "openai", "targets": ["b"]}})
    gone = row("gone", {"template": "removed-since", "source": {"targets": ["b"]}})
    rows = [old, fine, nameless, gone]
    built, invalid, held = RegisteredDefinitions(registry).build(rows, config)
    assert set(built) == {"fine"} and held == {"old", "bare"} and set(invalid) == {"old", "bare", "gone"}
    assembly = assemble(config.jobs, {r.name: r for r in rows}, built, invalid, held)
    note = assembly.note("old")
    assert note.startswith("registered job 'old' is held and not run: source.base_url: a registered job may not set")
    assert note.endswith(
        "To run it, PUT it again with a body its template allows (or declare the field under the template's "
        "overridable:); DELETE /api/v1/jobs/old removes it"
    )
    assert "registered job 'bare' is held and not run: template: a registered job names a template" in assembly.note(
        "bare"
    )
    assert assembly.note("gone").startswith("registered job 'gone' no longer validates and is not run: template:")


def test_a_held_row_runs_once_its_template_declares_the_field(
    tmp_path: Path, config: Config, registry: PluginRegistry
) -> None:
    rows = [row("slow", {"template": "plain", "source": {"targets": ["b"]}, "interval": "10m"})]
    definitions = RegisteredDefinitions(registry)
    assert definitions.build(rows, config)[2] == {"slow"}
    declared = CONFIG.replace(
        "actions: [{type: record, ledger: /tmp/l.jsonl}]",
        "actions: [{type: record, ledger: /tmp/l.jsonl}]\n    overridable: [interval]",
    )
    built, invalid, held = definitions.build(rows, load(tmp_path, registry, declared))
    assert held == frozenset() and invalid == {} and built["slow"].interval == 600.0


def test_export_writes_the_file_job_a_body_stands_for(config: Config, registry: PluginRegistry) -> None:
    rows = [
        row("one", body(interval="45s", variables={"run": "r7"}, actions=[{"config": "102"}])),
        row("two", body()),
        row("found", body(), JobOrigin.DISCOVERED),
    ]
    text = export_yaml(rows, "sqlite:///x", T0, config, registry)
    exported = yaml.safe_load(text)["jobs"]
    assert [j["name"] for j in exported] == ["one", "two"]
    assert exported[1] == {"name": "two", **body()}
    assert exported[0]["actions"][0]["config"] == "102"
    assert exported[0]["actions"][0]["stack_url"] == "https://connection.keboola.com"
    assert exported[0]["actions"][1]["variables"] == {"run": "r7"}
    # As a file job, the same definition as the registered one.
    path = Path(config.file)
    path.write_text(path.read_text() + textwrap.indent(yaml.safe_dump({"jobs": exported}), ""))
    from_file = load_config(path, registry)
    for exported_row in rows[:2]:
        definition, _ = validate_job_body(exported_row.body, config, registry, where="x")
        assert definition is not None and from_file.jobs[exported_row.name].fingerprint == definition.fingerprint


# ----- what a changed definition does to a watching job's stored state -----


def test_a_watching_job_loses_the_targets_its_definition_no_longer_lists(state_url: str) -> None:
    store = StateStore.open(state_url)
    try:
        store.sync_jobs([JobPlan("j", "f1", ["p1", "p0"], 3600.0)], T0)
        report = CheckReport((Observation("p1", TargetState.FAILED), Observation("p0", TargetState.RUNNING)))
        store.record_check("j", report, now=T0, next_check_at=None, deadline=3600.0, rule="all_terminal", actions=[])
        store.sync_jobs([JobPlan("j", "f2", ["p0", "p2"], 7200.0)], T0)
        job = store.job("j")
        assert job is not None and [t.target for t in job.targets] == ["p0", "p2"]
        assert job.deadline_at == T0 + dt.timedelta(hours=2)  # from the first observation, as before
        removed = [e for e in store.events("j") if e.kind == EventKind.TARGETS_REMOVED]
        assert [(e.message, e.data) for e in removed] == [("1 target(s) removed", {"targets": ["p1"]})]
        # A job that fired keeps every target it fired with.
        store.fail_job("j", "stop", now=T0)
        store.sync_jobs([JobPlan("j", "f3", ["p2"], 60.0)], T0)
        job = store.job("j")
        assert job is not None and job.state is JobState.FAILED and [t.target for t in job.targets] == ["p0", "p2"]
    finally:
        store.close()


def test_an_update_that_lost_the_race_with_the_fire_is_put_back_and_refused(
    tmp_path: Path, registry: PluginRegistry
) -> None:
    path = tmp_path / "tc.yaml"
    path.write_text(
        "templates:\n  std:\n    source: {type: status_file, path: /tmp/s.json}\n"
        "    actions: [{type: record, ledger: /tmp/l.jsonl}]\n"
    )
    config = load_config(path, registry)
    store, worker = StateStore.open(f"sqlite:///{tmp_path / 'state.db'}"), StoreWorker()
    jobs = RegisteredJobs(store, worker, registry, Redactor(), Metrics(), logging.getLogger("t"), FakeClock(T0))
    first = {"template": "std", "source": {"targets": ["a"]}}
    second = {"template": "std", "source": {"targets": ["b"]}}

    async def race() -> tuple[object, object]:
        assert await jobs.put("j", first, config) is PutOutcome.CREATED
        store.sync_jobs([JobPlan("j", "f1", ["a"])], T0)  # the rebuild: the job watches
        assert await jobs.put("j", second, config) is PutOutcome.UPDATED
        store.fail_job("j", "the job ended before the rebuild", now=T0)  # as a fire between check and rebuild
        return await jobs.fired_meanwhile("j"), await jobs.fired_meanwhile("j")

    try:
        refused, again = asyncio.run(race())
        assert isinstance(refused, Refusal) and refused.status == 409
        assert refused.message.startswith("job 'j' fired (state failed) before this change was applied")
        assert again is None  # asked once per update
        [stored] = store.registered_jobs()
        assert stored.body == {"name": "j", **first}
    finally:
        worker.close()
        store.close()
