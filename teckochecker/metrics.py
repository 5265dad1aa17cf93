"""Every Prometheus metric the daemon exports, on a registry the daemon owns (never the global one).

Naming follows Prometheus conventions: base units, ``_total`` for counters, ``_seconds`` for durations.
The job name (label ``job_name``: ``job`` belongs to Prometheus's scrape) is the only unbounded
label; batch IDs never become labels.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from teckochecker import __version__
from teckochecker.state.models import PROGRESS_KINDS, JobGauges, JobSnapshot, JobState

PREFIX = "teckochecker"
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_DELAY_BUCKETS = (0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 900, 3600)
_LAG_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.build_info = Info(f"{PREFIX}_build", "TeckoChecker version.", registry=r)
        self.build_info.info({"version": __version__})
        self.config_last_reload_successful = Gauge(
            f"{PREFIX}_config_last_reload_successful", "1 if the last config (re)load succeeded, else 0.", registry=r
        )
        self.config_last_reload_success_timestamp = Gauge(
            f"{PREFIX}_config_last_reload_success_timestamp_seconds",
            "When the config was last loaded successfully.",
            registry=r,
        )
        self.config_reloads = Counter(
            f"{PREFIX}_config_reloads",
            "Config reloads by result (success, failure, restart_required).",
            ["result"],
            registry=r,
        )
        self.jobs = Gauge(f"{PREFIX}_jobs", "Configured jobs by state.", ["state"], registry=r)
        self.jobs_by_origin = Gauge(
            f"{PREFIX}_jobs_by_origin",
            "Jobs the daemon runs, by where their definition came from (file, api, discovered).",
            ["origin"],
            registry=r,
        )
        self.registered_jobs_held = Gauge(
            f"{PREFIX}_registered_jobs_held",
            "Stored registered jobs held, not run: their body sets a field a registered job may not set.",
            registry=r,
        )
        self.targets = Gauge(
            f"{PREFIX}_targets",
            "Watched targets (batches) by job and normalized state.",
            ["job_name", "state"],
            registry=r,
        )
        self.batch_requests = Gauge(
            f"{PREFIX}_batch_requests",
            "Requests inside a job's batches by kind (total, completed, failed).",
            ["job_name", "kind"],
            registry=r,
        )
        self.job_deadline = Gauge(
            f"{PREFIX}_job_deadline_timestamp_seconds",
            "When an unfinished job gives up waiting.",
            ["job_name"],
            registry=r,
        )
        self.job_deadline_exceeded = Counter(
            f"{PREFIX}_job_deadline_exceeded",
            "Jobs that ended failed because their deadline passed.",
            ["job_name"],
            registry=r,
        )
        self.source_checks = Counter(
            f"{PREFIX}_source_checks",
            "Source checks by source type and outcome (ok, transient_error, permanent_error).",
            ["source_type", "outcome"],
            registry=r,
        )
        self.source_check_duration = Histogram(
            f"{PREFIX}_source_check_duration_seconds",
            "How long one source check of one job took.",
            ["source_type"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.http_requests = Counter(
            f"{PREFIX}_http_requests",
            "Outbound HTTP requests by host and status class (2xx … 5xx, error).",
            ["host", "status_class"],
            registry=r,
        )
        self.secret_refusals = Counter(
            f"{PREFIX}_secret_refusals",
            "Outbound requests refused before sending because they carried the named secret to an origin the "
            "config files do not bind it to.",
            ["secret"],
            registry=r,
        )
        self.actions = Counter(
            f"{PREFIX}_actions",
            "Action steps by type and outcome (started, adopted, not_started, in_doubt, rejected, "
            "succeeded, succeeded_with_warnings, failed, skipped).",
            ["action_type", "outcome"],
            registry=r,
        )
        self.action_duration = Histogram(
            f"{PREFIX}_action_duration_seconds",
            "How long one action start call took.",
            ["action_type"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.trigger_delay = Histogram(
            f"{PREFIX}_trigger_delay_seconds",
            "From a job's last target observed finished to its action start.",
            buckets=_DELAY_BUCKETS,
            registry=r,
        )
        self.downstream_jobs = Counter(
            f"{PREFIX}_downstream_jobs",
            "Downstream (Keboola) jobs by final status.",
            ["action_type", "status"],
            registry=r,
        )
        self.duplicate_starts = Counter(
            f"{PREFIX}_duplicate_starts",
            "Downstream starts found for a trigger beyond the one followed.",
            ["action_type"],
            registry=r,
        )
        self.scheduler_lag = Histogram(
            f"{PREFIX}_scheduler_lag_seconds",
            "How late a tick ran after its scheduled time.",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.scheduler_skipped_ticks = Counter(
            f"{PREFIX}_scheduler_skipped_ticks",
            "Ticks skipped because the previous one was still running or missed.",
            registry=r,
        )

        # Replicas on PostgreSQL (replicas.py).
        self.replica_leader = Gauge(
            f"{PREFIX}_replica_leader", "1 while this replica leads (runs the jobs), else 0.", registry=r
        )
        self.replica_epoch = Gauge(
            f"{PREFIX}_replica_epoch", "The leader epoch this replica last held (fencing token).", registry=r
        )
        self.leadership_changes = Counter(
            f"{PREFIX}_leadership_changes",
            "Leadership changes of this replica (acquired, took_over from another replica, lost).",
            ["change"],
            registry=r,
        )
        self.fenced_writes = Counter(
            f"{PREFIX}_fenced_writes",
            "State writes refused because this replica did not hold the current leader epoch.",
            registry=r,
        )
        self.replicas = Gauge(
            f"{PREFIX}_replicas",
            "Live replicas sharing the state store, by role, as this replica sees them.",
            ["role"],
            registry=r,
        )
        self.replica_config_mismatch = Gauge(
            f"{PREFIX}_replica_config_mismatch",
            "Live replicas whose loaded job definitions differ from this replica's (checksum).",
            registry=r,
        )
        self.discovery_pages = Counter(
            f"{PREFIX}_discovery_pages",
            "Pages of a source's listing shown to a template's discovery (bounded per sweep by discover.max_pages).",
            ["template"],
            registry=r,
        )
        self.discovery_sweeps = Counter(
            f"{PREFIX}_discovery_sweeps",
            "Discovery sweeps by template and outcome (ok, transient_error, permanent_error).",
            ["template", "outcome"],
            registry=r,
        )
        self.discovery_groups = Counter(
            f"{PREFIX}_discovery_groups",
            "Discovered groups by template and outcome (discovered, complete, failed, refused).",
            ["template", "outcome"],
            registry=r,
        )
        self.webhook_deliveries = Counter(
            f"{PREFIX}_webhook_deliveries",
            "Webhook deliveries by outcome (accepted, duplicate, bad_signature, stale, malformed, unwatched).",
            ["outcome"],
            registry=r,
        )
        self.webhook_to_action = Histogram(
            f"{PREFIX}_webhook_to_action_seconds",
            "From receiving the webhook that let a job fire to the end of its first action start (the Keboola POST).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    def observe_jobs(self, snapshots: Iterable[JobSnapshot]) -> None:
        """Refresh the state gauges from job snapshots."""
        self.observe(JobGauges.from_snapshots(snapshots))

    def observe(self, gauges: JobGauges) -> None:
        """Refresh the state gauges (the daemon reads these counts from its store every few seconds)."""
        self.targets.clear()
        self.batch_requests.clear()
        self.job_deadline.clear()
        for state in JobState:
            self.jobs.labels(state.value).set(gauges.jobs.get(state.value, 0))
        for (job, target_state), count in gauges.targets.items():
            self.targets.labels(job, target_state).set(count)
        for job, values in gauges.requests.items():
            for kind, value in zip(PROGRESS_KINDS, values, strict=True):
                self.batch_requests.labels(job, kind).set(value)
        for job, deadline in gauges.deadlines.items():
            self.job_deadline.labels(job).set(deadline)


def status_class(status_code: int | None) -> str:
    return "error" if status_code is None else f"{status_code // 100}xx"
