"""The shipped Grafana dashboard: importable JSON, every panel queries something, every query parses as
PromQL and names only metrics the daemon exports, and no data source is hard-coded."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from metric_names import exported_sample_names
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from teckochecker.metrics import Metrics
from teckochecker.plugin_api import TargetState
from teckochecker.state.models import JobSnapshot, JobState, TargetSnapshot

DASHBOARD = Path(__file__).resolve().parent.parent / "config" / "grafana" / "teckochecker-dashboard.json"
METRIC_NAME = re.compile(r"\bteckochecker_[a-z_]+")
# The only data source references an importable dashboard may carry: the import input, the template
# variable, and Grafana's built-in annotations.
ALLOWED_DATASOURCE_UIDS = {"${DS_PROMETHEUS}", "${datasource}", "-- Grafana --"}
# Grafana's range variables, replaced by a plain duration so promtool can parse the query.
GRAFANA_RANGES = re.compile(r"\$__(rate_interval|interval|range)|\$\{__(rate_interval|interval|range)\}")


def require_promtool() -> str:
    tool = shutil.which("promtool")
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing in CI; .ci/install-tools should have installed it")
        pytest.skip("promtool not installed")
    return tool


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def walk(node: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair anywhere in the JSON."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # panels inside collapsed rows
    return panels


def queries(dashboard: dict[str, Any]) -> list[str]:
    """Panel exprs and template variable queries."""
    exprs = [value for key, value in walk(dashboard["panels"]) if key == "expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def test_dashboard_header(dashboard: dict[str, Any]) -> None:
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["title"] and dashboard["uid"]
    assert dashboard["id"] is None, "an exported id would overwrite another dashboard on import"
    (ds_input,) = dashboard["__inputs"]
    assert ds_input["name"] == "DS_PROMETHEUS"
    assert (ds_input["type"], ds_input["pluginId"]) == ("datasource", "prometheus")


def test_template_variables(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["job"]["type"] == "query"
    assert "label_values(" in variables["job"]["definition"]
    # A TeckoChecker job's name is the `job_name` label; `job` is the scrape job's.
    assert "job_name" in variables["tc_job"]["definition"]
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_every_panel_has_a_title_and_queries(dashboard: dict[str, Any]) -> None:
    panels = all_panels(dashboard)
    assert len(panels) >= 10
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert panel.get("title"), panel
        if panel["type"] == "row":
            continue  # a row only groups panels
        assert panel.get("targets"), panel["title"]
        for target in panel["targets"]:
            assert target.get("expr") and target.get("refId"), panel["title"]
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_required_panels_exist(dashboard: dict[str, Any]) -> None:
    exprs_by_title = {
        panel["title"]: " ".join(target["expr"] for target in panel.get("targets", []))
        for panel in all_panels(dashboard)
    }
    everything = " ".join(exprs_by_title.values())
    for metric in (
        "teckochecker_jobs",
        "teckochecker_batch_requests",
        "teckochecker_targets",
        "teckochecker_trigger_delay_seconds_bucket",
        "teckochecker_source_checks_total",
        "teckochecker_downstream_jobs_total",
        "teckochecker_config_last_reload_successful",
        "teckochecker_config_last_reload_success_timestamp_seconds",
        "teckochecker_http_requests_total",
        "teckochecker_scheduler_lag_seconds_bucket",
        "teckochecker_scheduler_skipped_ticks_total",
    ):
        assert re.search(rf"\b{metric}\b", everything), f"no panel shows {metric}"
    trigger_delay = exprs_by_title["Trigger delay"]
    assert "histogram_quantile(0.5," in trigger_delay and "histogram_quantile(0.99," in trigger_delay


def test_every_metric_is_exported(dashboard: dict[str, Any]) -> None:
    exported = exported_sample_names()
    used = {name for expr in queries(dashboard) for name in METRIC_NAME.findall(expr)}
    assert used, "no teckochecker metrics found in the dashboard"
    assert used - exported == set(), f"exported: {sorted(exported)}"


def test_no_hard_coded_datasource(dashboard: dict[str, Any]) -> None:
    for key, value in walk(dashboard):
        if key == "datasource" and value is not None:
            uid = value.get("uid") if isinstance(value, dict) else value
            assert uid in ALLOWED_DATASOURCE_UIDS, f"hard-coded data source {value!r}"
    # An import substitutes ${DS_PROMETHEUS}; the data source variable is what the panels then follow.
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["current"]["value"] == "${DS_PROMETHEUS}"


def test_queries_parse_as_promql(tmp_path: Path, dashboard: dict[str, Any]) -> None:
    tool = require_promtool()
    # promtool has no offline "parse this query"; a recording rule per query gets the same parser.
    exprs = [GRAFANA_RANGES.sub("5m", expr) for expr in queries(dashboard) if "label_values(" not in expr]
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dashboard:query{index}", "expr": expr} for index, expr in enumerate(exprs)],
            }
        ]
    }
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run([tool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def busy_metrics() -> Metrics:
    """A registry after some activity: every metric has at least one labelled sample."""
    now = dt.datetime.now(dt.UTC)
    target = TargetSnapshot(
        target="batch_1",
        state=TargetState.RUNNING,
        vendor_status="in_progress",
        details={"request_counts": {"total": 10, "completed": 4, "failed": 1}},
        message=None,
        observed_at=now,
    )
    job = JobSnapshot(
        name="nightly",
        state=JobState.WATCHING,
        fingerprint="f",
        removed=False,
        paused=False,
        created_at=now,
        first_observed_at=now,
        deadline_at=now + dt.timedelta(hours=1),
        last_checked_at=now,
        next_check_at=now,
        finished_at=None,
        last_error=None,
        consecutive_failures=0,
        targets=(target,),
    )
    metrics = Metrics()
    metrics.observe_jobs([job])
    metrics.config_last_reload_successful.set(1)
    metrics.config_last_reload_success_timestamp.set(now.timestamp())
    metrics.config_reloads.labels("success").inc()
    metrics.job_deadline_exceeded.labels("weekly").inc()
    for outcome in ("ok", "transient_error"):
        metrics.source_checks.labels("openai_batch", outcome).inc()
    metrics.source_check_duration.labels("openai_batch").observe(0.3)
    metrics.http_requests.labels("api.openai.com", "2xx").inc()
    for outcome in ("started", "succeeded"):
        metrics.actions.labels("keboola_job", outcome).inc()
    metrics.action_duration.labels("keboola_job").observe(0.7)
    metrics.trigger_delay.observe(12)
    for status in ("success", "error"):
        metrics.downstream_jobs.labels("keboola_job", status).inc()
    metrics.duplicate_starts.labels("keboola_job").inc()
    metrics.scheduler_lag.observe(0.02)
    metrics.scheduler_skipped_ticks.inc()
    return metrics


def scraped_series(metrics: Metrics) -> list[dict[str, str]]:
    """promtool input series for the exposition as Prometheus stores it after a scrape: target labels
    added."""
    series = [{"series": 'up{job="teckochecker", instance="127.0.0.1:9718"}', "values": "1x30"}]
    exposition = generate_latest(metrics.registry).decode()
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            labels = {k: v for k, v in sample.labels.items()}
            labels.update(job="teckochecker", instance="127.0.0.1:9718")
            selector = ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(labels.items()))
            # Counters and histograms keep growing so rate() and increase() see activity.
            grows = family.type in ("counter", "histogram") and sample.value > 0
            values = f"{sample.value}+{sample.value}x30" if grows else f"{sample.value}x30"
            series.append({"series": f"{sample.name}{{{selector}}}", "values": values})
    return series


def as_non_empty_check(query: str) -> str:
    """A PromQL expression that yields {} 1 exactly when the query returns something."""
    query = GRAFANA_RANGES.sub("5m", query)
    query = re.sub(r"\$(job|instance|tc_job)\b", ".*", query)
    variable = re.fullmatch(r"label_values\((\w+)(?:\{(.*)\})?,\s*(\w+)\)", query)
    if variable:
        # A variable needs series that carry the label, not just the metric.
        metric, selector, label = variable.groups()
        matchers = [m for m in (selector, f'{label}!=""') if m]
        query = metric + "{" + ", ".join(matchers) + "}"
    return f"count({query}) > bool 0"


def test_every_query_returns_data_from_a_real_exposition(tmp_path: Path, dashboard: dict[str, Any]) -> None:
    """Catches label mistakes no parser can: `job` where `job_name` is meant, a misspelt
    `kind` or `outcome`. The series come from the daemon's real Metrics exposition."""
    tool = require_promtool()
    checks = [
        {"expr": as_non_empty_check(query), "eval_time": "20m", "exp_samples": [{"labels": "{}", "value": 1}]}
        for query in queries(dashboard)
    ]
    (tmp_path / "empty.rules.yml").write_text("groups: []\n")
    test_file = tmp_path / "dashboard.test.yml"
    test_file.write_text(
        yaml.safe_dump(
            {
                "rule_files": ["empty.rules.yml"],
                "evaluation_interval": "1m",
                "tests": [
                    {"interval": "1m", "input_series": scraped_series(busy_metrics()), "promql_expr_test": checks},
                ],
            },
            width=1000,
        )
    )
    result = subprocess.run(
        [tool, "test", "rules", test_file.name],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
