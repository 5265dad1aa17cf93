"""The shipped Prometheus files: the real promtool accepts the scrape config and the rules, the rules'
unit tests pass, and every metric the rules name is one the daemon exports."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from metric_names import SUFFIXES, exported_sample_names
from prometheus_client.metrics import MetricWrapperBase

from teckochecker.metrics import Metrics

PROMETHEUS_DIR = Path(__file__).resolve().parent.parent / "config" / "prometheus"
SCRAPE_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES = PROMETHEUS_DIR / "teckochecker.rules.yml"
RULE_TESTS = PROMETHEUS_DIR / "teckochecker.rules.test.yml"
METRIC_NAME = re.compile(r"\bteckochecker_[a-z_]+")
# The sample names each metric type exposes, beyond the family name itself.


def stored_label_names() -> dict[str, set[str]]:
    """Sample name → its label names as Prometheus stores them (plus the scrape's job and instance)."""
    stored: dict[str, set[str]] = {}
    for metric in vars(Metrics()).values():
        if not isinstance(metric, MetricWrapperBase) or metric._type == "info":
            continue
        # _labelnames/_name/_type are private, but the only way to see the labels of a metric with no
        # children yet; they have been stable across prometheus_client releases.
        labels = {name for name in metric._labelnames}
        for suffix in SUFFIXES[str(metric._type)]:
            stored[metric._name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return stored


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing in CI; .ci/install-tools should have installed it")
        pytest.skip("promtool not installed")
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60, cwd=PROMETHEUS_DIR)


def alerting_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_exported_names_include_suffixed_samples() -> None:
    # Guards the helper the other tests rely on.
    names = exported_sample_names()
    assert {
        "teckochecker_actions_total",
        "teckochecker_scheduler_lag_seconds_bucket",
        "teckochecker_build_info",
        "teckochecker_jobs",
    } <= names


def test_promtool_check_config() -> None:
    result = promtool("check", "config", SCRAPE_CONFIG.name)
    assert result.returncode == 0, result.stdout + result.stderr
    # The rule file is found through the config's relative rule_files entry.
    assert "1 rule files found" in result.stdout


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules() -> None:
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_scrape_config() -> None:
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    assert config["rule_files"] == [RULES.name]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "teckochecker"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:9718"]
    assert not job.get("honor_labels", False)


def test_every_rule_metric_is_exported() -> None:
    exported = exported_sample_names()
    used = {name for rule in alerting_rules() for name in METRIC_NAME.findall(rule["expr"])}
    assert used, "no teckochecker metrics found in the rules"
    assert used - exported == set(), f"exported: {sorted(exported)}"


def test_rule_test_series_look_like_real_scrapes() -> None:
    # The promtool tests prove the rules only if their input series carry the labels a real scrape has.
    stored = stored_label_names()
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for entry in test["input_series"]:
            match = re.fullmatch(r"(\w+)\{(.*)\}", entry["series"])
            assert match, entry["series"]
            name, labels = match.groups()
            keys = set(re.findall(r"(\w+)=", labels))
            assert {"job", "instance"} <= keys, entry["series"]
            if name != "up":
                assert keys - {"job", "instance"} == stored[name], entry["series"]


def test_every_alert_is_complete() -> None:
    rules = alerting_rules()
    assert {rule["alert"] for rule in rules} >= {
        "TeckoCheckerDown",
        "TeckoCheckerConfigReloadFailed",
        "TeckoCheckerJobPastDeadline",
        "TeckoCheckerTriggerFailures",
        "TeckoCheckerDownstreamJobFailed",
        "TeckoCheckerSchedulerBehind",
        "TeckoCheckerSourceErrors",
    }
    for rule in rules:
        assert "for" in rule, rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"].get("summary") and rule["annotations"].get("description"), rule["alert"]


def test_every_alert_has_a_firing_and_a_quiet_test_case() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    for rule in alerting_rules():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case["exp_alerts"] for case in mine), f"{rule['alert']} never tested firing"
        assert any(not case["exp_alerts"] for case in mine), f"{rule['alert']} never tested quiet"
