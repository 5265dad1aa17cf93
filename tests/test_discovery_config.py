"""A template's discover: section as the one validator reads it: checked, located, and no part of jobs."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from teckochecker.config.validate import load_config
from teckochecker.errors import ConfigError
from teckochecker.plugins import PluginRegistry

CONFIG = """\
secrets:
  openai: {env: OPENAI_API_KEY}
templates:
  classify:
    source: {type: openai_batch, api_key: openai}
    actions:
      - {type: record, ledger: /tmp/ledger.jsonl}
    discover:
%s
jobs:
  - name: by-hand
    template: classify
    source: {targets: [batch_1]}
"""
GOOD = """\
      match: {teckochecker_template: classify}
      group_by: teckochecker_job
      count_key: teckochecker_batches
      deadline: 2h
"""


def load(tmp_path: Path, registry: PluginRegistry, discover: str, config: str = CONFIG):
    path = tmp_path / "tc.yaml"
    path.write_text(config % textwrap.indent(textwrap.dedent(discover), "      ").rstrip("\n"))
    return load_config(path, registry)


def problems(tmp_path: Path, registry: PluginRegistry, discover: str, config: str = CONFIG) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, registry, discover, config)
    return [str(d) for d in info.value.diagnostics]


def test_a_template_with_discover_loads_and_its_jobs_do_not_carry_it(tmp_path: Path, registry: PluginRegistry) -> None:
    config = load(tmp_path, registry, GOOD)
    found = config.discoveries["classify"]
    assert found.rule.group_by == "teckochecker_job" and found.rule.deadline == 7200.0
    assert found.rule.max_pages == 5 and found.rule.quiet is None
    assert found.source.type == "openai_batch"
    assert config.jobs["by-hand"].source.targets == ("batch_1",)


def test_a_bad_discover_section_is_located_in_the_template(tmp_path: Path, registry: PluginRegistry) -> None:
    found = problems(tmp_path, registry, "match: {teckochecker_template: classify}\ngroup_by: teckochecker_job\n")
    assert found == [
        f"{tmp_path / 'tc.yaml'}:8:5: templates.classify.discover: "
        "say how a group is known to be complete: count_key (a metadata key), quiet, or both"
    ]
    found = problems(tmp_path, registry, GOOD.replace("deadline: 2h", "deadline: 2h\n      max_pages: 500"))
    assert found == [
        f"{tmp_path / 'tc.yaml'}:13:7: templates.classify.discover.max_pages: input should be less than or equal to 100"
    ]


def test_a_template_that_cannot_make_a_job_is_refused_at_load(tmp_path: Path, registry: PluginRegistry) -> None:
    no_actions = CONFIG.replace("    actions:\n      - {type: record, ledger: /tmp/ledger.jsonl}\n", "")
    found = problems(tmp_path, registry, GOOD, no_actions)
    assert any("templates.classify.actions: required key is missing" in p for p in found), found


def test_only_a_source_with_a_listing_can_discover(tmp_path: Path, registry: PluginRegistry) -> None:
    status_file = CONFIG.replace("{type: openai_batch, api_key: openai}", "{type: status_file, path: /tmp/s.json}")
    found = problems(tmp_path, registry, GOOD, status_file)
    assert found == [
        f"{tmp_path / 'tc.yaml'}:5:14: templates.classify.source.type: "
        "source type 'status_file' cannot discover batches (it has no listing to read)"
    ]
