"""The README stays true: its commands, its metrics table and its plugin guide match the code."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import generate_latest

from teckochecker import hookspecs
from teckochecker.metrics import Metrics

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


def test_the_readme_test_command_is_what_ci_runs() -> None:
    commands = re.findall(r"^    \$ (\.venv/bin/pytest)\s*$", README, re.M)
    assert commands, "the README gives no test command"
    assert commands[0] in (ROOT / ".ci" / "run").read_text().splitlines()[-1]


def test_the_readme_run_command_uses_the_example_config() -> None:
    (run,) = [line for line in README.splitlines() if "teckochecker --config teckochecker.yaml.example run" in line]
    assert "pip install -e '.[test]'" in run and (ROOT / "teckochecker.yaml.example").exists()


def test_every_exported_metric_is_documented_and_every_documented_one_exists() -> None:
    metrics = Metrics()
    metrics.observe_jobs([])
    exposition = generate_latest(metrics.registry).decode()
    # prometheus-client adds a `_created` companion to unlabelled counters and histograms: not ours to document.
    exported = {n for n in re.findall(r"^# TYPE (teckochecker_\w+) ", exposition, re.M) if not n.endswith("_created")}
    section = README.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(teckochecker_\w+)` \|", section, re.M))
    assert documented == exported


def test_every_hook_is_in_the_plugin_guide() -> None:
    hooks = [name for name in vars(hookspecs) if name.startswith("teckochecker_")]
    assert hooks and all(name in README for name in hooks)
