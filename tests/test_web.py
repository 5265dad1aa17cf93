"""The HTTP listener, in process and over real HTTP: probes, metrics, the JSON API, control endpoints, errors.

The app talks to a small DaemonControl backed by a real StateStore on a temporary SQLite file, populated
through the store's public methods, so the JSON is built from real snapshots.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import resource
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from daemon import run_cli

from teckochecker.cli.api_client import fetch_job, fetch_jobs
from teckochecker.cli.report import render_status
from teckochecker.config.models import Condition, TriggerRule
from teckochecker.control import BearerToken, Problem, Refusal, ReloadStatus
from teckochecker.errors import StateStoreError, TeckoCheckerError
from teckochecker.metrics import Metrics
from teckochecker.plugin_api import ActionOutcome, ActionResult, CheckReport, Observation, TargetState
from teckochecker.secrets.resolving import MASK, Redactor
from teckochecker.state.models import Event, JobOrigin, JobSnapshot, PutOutcome, RunState
from teckochecker.state.store import JobPlan, PlannedAction, StateStore
from teckochecker.state.worker import StoreWorker
from teckochecker.web.routes import MAX_BODY_BYTES, create_app
from teckochecker.web.server import MAX_CONNECTIONS, WebServer, connection_cap

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
TOKEN = "tc-canary-9f8e7d6c5b4a"  # a canary: it must never show up in a response or a log line
KEBOOLA = PlannedAction(0, "keboola_job", "keboola:transformation/123", Condition.ALWAYS)
WAIT = 10.0  # seconds: the bound on every wait in these tests
LOGGER = "teckochecker.test_web"


# ----- a populated state store and a DaemonControl over it (test_status_page.py uses these too) -----


def counts(total: int, completed: int, failed: int = 0) -> dict[str, Any]:
    return {"request_counts": {"total": total, "completed": completed, "failed": failed}}


def _check(store: StateStore, name: str, *observations: Observation, at: dt.datetime = T0) -> JobSnapshot:
    store.record_check(
        name,
        CheckReport(tuple(observations)),
        now=at,
        next_check_at=at + dt.timedelta(minutes=1),
        deadline=3600,
        rule=TriggerRule.ALL_TERMINAL,
        actions=[KEBOOLA],
    )
    return store.job(name)


def populate(store: StateStore, *extra: JobPlan) -> None:
    """Four jobs, one per interesting state.

    watching: batch_a running 7/10 (1 failed), batch_b validating (no counts yet)
    firing:   both batches done, Keboola job 4242 running
    done:     completed, Keboola job 777 succeeded
    late:     failed (deadline passed) before anything finished
    and ``extra`` jobs, just registered.
    """
    store.sync_jobs(
        [
            JobPlan("watching", "f1", ["batch_a", "batch_b"]),
            JobPlan("firing", "f2", ["batch_c", "batch_d"]),
            JobPlan("done", "f3", ["batch_e"]),
            JobPlan("late", "f4", ["batch_f"]),
            *extra,
        ],
        T0,
    )
    _check(
        store,
        "watching",
        Observation("batch_a", TargetState.RUNNING, "in_progress", counts(10, 7, 1)),
        Observation("batch_b", TargetState.PENDING, "validating", {}),
    )

    fired = _check(
        store,
        "firing",
        Observation("batch_c", TargetState.SUCCEEDED, "completed", counts(5, 5)),
        Observation("batch_d", TargetState.SUCCEEDED, "completed", counts(3, 2, 1), "1 of 3 requests failed"),
    )
    run = fired.runs[0]
    store.begin_run(run.id, now=T0)
    store.run_started(
        run.id,
        ActionResult("4242", ActionOutcome.RUNNING, "processing", url="https://queue.keboola.com/jobs/4242"),
        now=T0,
    )

    done = _check(store, "done", Observation("batch_e", TargetState.SUCCEEDED, "completed", counts(2, 2)))
    store.begin_run(done.runs[0].id, now=T0)
    store.run_started(done.runs[0].id, ActionResult("777", ActionOutcome.RUNNING, "created"), now=T0)
    store.run_progress(
        done.runs[0].id,
        ActionResult("777", ActionOutcome.SUCCEEDED, "success", url="https://queue.keboola.com/jobs/777"),
        now=T0,
    )
    store.finish_job_if_done("done", now=T0)

    _check(store, "late", Observation("batch_f", TargetState.RUNNING, "in_progress", counts(100, 3)))
    store.fail_job("late", "deadline passed before every batch finished", now=T0, kind="deadline_passed")


class StoreControl:
    """DaemonControl over a real StateStore; what the scheduler would say is set by the test."""

    def __init__(self, store: StateStore, token: str | None = TOKEN) -> None:
        self.store = store
        # As in the daemon: store calls go through the worker, which turns a failing store into one error.
        self.worker = StoreWorker()
        self.token = token
        self.ready = {"config_loaded": True, "state_store": True, "scheduler": True}
        self.reload = ReloadStatus(True, T0, (), ())
        self.next_runs: dict[str, dt.datetime] = {"watching": T0 + dt.timedelta(minutes=1)}
        self.checked_now: list[str] = []
        self.fail_with: Exception | None = None  # raised by jobs()/job(): a broken daemon or a bug
        self.problem: str | None = None  # the daemon's store_problem

    def _maybe_fail(self) -> None:
        if self.fail_with is not None:
            raise self.fail_with

    async def jobs(self) -> list[JobSnapshot]:
        self._maybe_fail()
        return await self.worker.run(self.store.jobs)

    async def job(self, name: str) -> JobSnapshot | None:
        self._maybe_fail()
        return await self.worker.run(self.store.job, name)

    async def events(self, name: str, limit: int) -> list[Event]:
        return await self.worker.run(self.store.events, name, limit=limit)

    def next_run(self, name: str) -> dt.datetime | None:
        return self.next_runs.get(name)

    async def readiness(self) -> dict[str, bool]:
        return dict(self.ready)

    def store_problem(self) -> str | None:
        return self.problem

    async def pause(self, name: str) -> bool:
        return await self.worker.run(self.store.set_paused, name, True, now=T0)

    async def resume(self, name: str) -> bool:
        return await self.worker.run(self.store.set_paused, name, False, now=T0)

    async def check_now(self, name: str) -> bool:
        if name not in self.next_runs:
            return False
        self.checked_now.append(name)
        return True

    def reload_status(self) -> ReloadStatus:
        return self.reload

    def api_token(self) -> str | None:
        return self.token

    def replicas(self) -> dict[str, Any] | None:
        return self.replication

    replication: dict[str, Any] | None = None  # what a replica on PostgreSQL answers (None: SQLite)

    def bearer_tokens(self) -> list[BearerToken]:
        return [BearerToken(self.token, frozenset({"register", "control"}))] if self.token else []

    def registry_note(self, name: str) -> str | None:
        return None

    def registry_notes(self) -> tuple[str, ...]:
        return ()

    async def register_job(self, name: str, body: object) -> PutOutcome | Refusal:
        # The real checks live in registered_jobs.py (tests/test_registration.py); here only what the store keeps.
        if not isinstance(body, dict):
            return Refusal(422, "not a job", (Problem("", "the body must be a JSON object"),))
        return await self.worker.run(self.store.put_registered_job, name, JobOrigin.API, body, now=T0)

    async def unregister_job(self, name: str) -> bool | Refusal:
        return await self.worker.run(self.store.remove_registered_job, name)


@contextlib.contextmanager
def serve_in_thread(
    control: Any, metrics: Metrics | None = None, redactor: Redactor | None = None, **limits: Any
) -> Iterator[str]:
    """The real WebServer on 127.0.0.1:0, in its own event loop on a thread, so tests (and subprocesses like
    the CLI or a browser) can talk to it synchronously. Yields the base URL."""
    logger = logging.getLogger(LOGGER)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="web-test-loop", daemon=True)
    thread.start()
    server = WebServer(create_app(control, metrics or Metrics(), logger, redactor), "127.0.0.1", 0, logger, **limits)
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(timeout=WAIT)
        yield f"http://127.0.0.1:{server.bound_port}"
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(timeout=WAIT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=WAIT)
        loop.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    store = StateStore.open(f"sqlite:///{tmp_path / 'state.db'}")
    populate(store)
    yield store
    store.close()


@pytest.fixture
def control(store: StateStore) -> StoreControl:
    return StoreControl(store)


@pytest.fixture
def url(control: StoreControl, caplog: pytest.LogCaptureFixture) -> Iterator[str]:
    caplog.set_level(logging.INFO, logger=LOGGER)
    with serve_in_thread(control) as base:
        yield base


@pytest.fixture
def client(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=WAIT, trust_env=False) as client:
        yield client


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_json_error(response: httpx.Response, status: int, path: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "path"} and body["path"] == path and body["error"]
    return body


# ----- probes and metrics -----


def test_healthz(client: httpx.Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_readyz_lists_every_check_and_answers_503_when_one_fails(client: httpx.Client, control: StoreControl) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "checks": {"config_loaded": True, "state_store": True, "scheduler": True},
    }
    control.ready["scheduler"] = False
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"] == {"config_loaded": True, "state_store": True, "scheduler": False}


def test_readyz_names_a_deleted_or_replaced_store_file(client: httpx.Client, control: StoreControl) -> None:
    control.ready["state_store"] = False
    control.problem = "the state store file /var/lib/teckochecker/state.db was deleted"
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "not_ready",
        "checks": {"config_loaded": True, "state_store": False, "scheduler": True},
        "reason": "the state store file /var/lib/teckochecker/state.db was deleted",
    }


def test_every_text_answer_passes_the_redactor(tmp_path: Path) -> None:
    """A secret already in the store (written before its value was known, or by an older release) is still
    masked in the API, the status page and error answers; the API needs no token to read."""
    secret = "kbc-CANARYweb\tTOKEN-0077"
    store = StateStore.open(f"sqlite:///{tmp_path / 'state.db'}")
    populate(store)
    store.fail_job("watching", f"Illegal header value {secret.encode()!r} (and {secret})", now=T0)
    redactor = Redactor()
    redactor.register(secret)
    try:
        with serve_in_thread(StoreControl(store), redactor=redactor) as base:
            answers = {path: httpx.get(base + path) for path in ("/api/v1/jobs", "/api/v1/jobs/watching", "/")}
            answers["404"] = httpx.get(base + f"/api/v1/jobs/{secret.replace(chr(9), '%09')}")
    finally:
        store.close()
    for path, response in answers.items():
        assert "CANARYweb" not in response.text, (path, response.text)
        assert int(response.headers["content-length"]) == len(response.content)
    assert MASK in answers["/api/v1/jobs/watching"].json()["last_error"]
    assert MASK in answers["/"].text


def test_metrics_exposition_on_the_app_registry(control: StoreControl, store: StateStore) -> None:
    metrics = Metrics()
    metrics.source_checks.labels("openai_batch", "ok").inc(3)
    metrics.observe_jobs(store.jobs())  # what the daemon's own gauge refresh does
    with serve_in_thread(control, metrics) as base, httpx.Client(base_url=base, trust_env=False) as client:
        response = client.get("/metrics")
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        text = response.text
        assert 'teckochecker_build_info{version="' in text
        assert 'teckochecker_source_checks_total{outcome="ok",source_type="openai_batch"} 3.0' in text
        assert 'teckochecker_jobs{state="watching"} 1.0' in text
        assert 'teckochecker_batch_requests{job_name="watching",kind="completed"} 7.0' in text
        # Nothing from the process-global registry: the daemon's registry is its own.
        assert "python_gc_objects_collected_total" not in text
        # prometheus_client's content negotiation is kept.
        openmetrics = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
        assert openmetrics.text.rstrip().endswith("# EOF")
        assert client.post("/metrics").status_code == 405


# ----- reading -----


def test_a_refusing_servers_words_are_shown_only_with_a_token(store: StateStore, client: httpx.Client) -> None:
    """The excerpt of a refusal lives in the run's details and the event's data: the views without a token
    leave it out; with any configured token it is there. The message says status and host either way."""
    store.sync_jobs([JobPlan("refused", "f9", ["batch_r"])], T0)
    refused = Observation(
        "batch_r", TargetState.ERROR, None, {"excerpt": "SECRET-EXCERPT of the vendor"}, "refused (HTTP 403 x)"
    )
    run = _check(store, "refused", refused).runs[0]
    store.begin_run(run.id, now=T0)
    excerpt = '{"AccessKeyId": "SECRET-EXCERPT"}'
    message = "the webhook at http://169.254.169.254/x refused the delivery (HTTP 403 Forbidden)"
    store.run_finished(run.id, RunState.REJECTED, message, now=T0, excerpt=excerpt)

    for path in ("/api/v1/jobs/refused?events=100", "/api/v1/jobs", "/", "/api/v1/jobs/refused"):
        for headers in ({}, auth("wrong")):
            answer = client.get(path, headers=headers)
            assert answer.status_code == 200 and "SECRET-EXCERPT" not in answer.text, path
            assert "HTTP 403 Forbidden" in answer.text, path
    shown = client.get("/api/v1/jobs/refused?events=100", headers=auth()).json()
    assert shown["runs"][0]["message"] == message and shown["runs"][0]["details"]["excerpt"] == excerpt
    assert [e["data"]["excerpt"] for e in shown["events"] if "excerpt" in e["data"]] == [excerpt]
    assert shown["targets"][0]["details"]["excerpt"] == "SECRET-EXCERPT of the vendor"
    listed = {job["name"]: job for job in client.get("/api/v1/jobs", headers=auth()).json()["jobs"]}
    assert listed["refused"]["runs"][0]["details"]["excerpt"] == excerpt


def test_a_new_message_without_an_excerpt_drops_the_old_excerpt(store: StateStore) -> None:
    store.sync_jobs([JobPlan("again", "f8", ["batch_x"])], T0)
    run = _check(store, "again", Observation("batch_x", TargetState.SUCCEEDED, "completed", {})).runs[0]
    store.begin_run(run.id, now=T0)
    store.run_not_started(run.id, "HTTP 503 from x", now=T0, next_try_at=T0, excerpt="busy, try later")
    assert store.job("again").runs[0].details == {"excerpt": "busy, try later"}  # type: ignore[union-attr]
    store.begin_run(run.id, now=T0)
    store.run_not_started(run.id, "could not connect", now=T0, next_try_at=T0)
    assert store.job("again").runs[0].details == {}  # type: ignore[union-attr]


def test_jobs_list_has_state_targets_progress_next_check_and_keboola_runs(client: httpx.Client) -> None:
    response = client.get("/api/v1/jobs")
    assert response.status_code == 200
    jobs = {job["name"]: job for job in response.json()["jobs"]}
    assert {name: job["state"] for name, job in jobs.items()} == {
        "done": "completed",
        "firing": "firing",
        "late": "failed",
        "watching": "watching",
    }

    watching = jobs["watching"]
    assert watching["next_check"] == "2026-01-01T12:01:00+00:00"
    assert watching["targets_done"] == 0 and watching["targets_total"] == 2
    assert watching["requests"] == {"total": 10, "completed": 7, "failed": 1}
    batch_a, batch_b = watching["targets"]
    assert (batch_a["target"], batch_a["state"], batch_a["vendor_status"]) == ("batch_a", "running", "in_progress")
    assert batch_a["progress"] == {"total": 10, "completed": 7, "failed": 1, "label": "7/10 (1 failed)"}
    assert batch_a["observed_at"] == "2026-01-01T12:00:00+00:00"
    assert batch_b["progress"] is None and batch_b["vendor_status"] == "validating"
    assert "events" not in watching  # only the single-job endpoint carries events

    (run,) = jobs["firing"]["runs"]
    assert {k: run[k] for k in ("type", "state", "external_id", "url", "vendor_status", "attempt")} == {
        "type": "keboola_job",
        "state": "running",
        "external_id": "4242",
        "url": "https://queue.keboola.com/jobs/4242",
        "vendor_status": "processing",
        "attempt": 1,
    }
    assert jobs["firing"]["next_check"] is None  # not in the scheduler's plan
    assert jobs["done"]["runs"][0]["state"] == "succeeded" and jobs["done"]["final"] is True
    assert jobs["late"]["last_error"] == "deadline passed before every batch finished"


def test_one_job_with_recent_events(client: httpx.Client, store: StateStore) -> None:
    body = client.get("/api/v1/jobs/firing").json()
    assert body["name"] == "firing" and body["state"] == "firing"
    kinds = [e["kind"] for e in body["events"]]
    assert kinds[0] == "registered" and "trigger_fired" in kinds and kinds[-1] == "action_started"
    assert len(kinds) == len(store.events("firing")) <= 50
    two = client.get("/api/v1/jobs/firing", params={"events": "2"}).json()["events"]
    assert [e["kind"] for e in two] == kinds[-2:]  # the most recent ones, oldest first
    assert len(client.get("/api/v1/jobs/firing", params={"events": "1000"}).json()["events"]) == len(kinds)


@pytest.mark.parametrize("value", ["0", "1001", "-1", "abc", "1e3", "", " 5", "5.0", "99999999999999999999", "%"])
def test_bad_events_parameter_is_400(client: httpx.Client, value: str) -> None:
    body = assert_json_error(client.get("/api/v1/jobs/firing", params={"events": value}), 400, "/api/v1/jobs/firing")
    assert "1 to 1000" in body["error"]


@pytest.mark.parametrize("name", ["nope", "x" * 200, "-dash", "a b", "ünï", "a%2Fb", "watching%0A", "watching%00"])
def test_unknown_job_is_404(client: httpx.Client, name: str) -> None:
    response = client.get(f"/api/v1/jobs/{name}")
    assert response.status_code == 404 and response.json()["error"]


def test_reload_status(client: httpx.Client, control: StoreControl) -> None:
    assert client.get("/api/v1/status").json()["reload"] == {
        "successful": True,
        "at": "2026-01-01T12:00:00+00:00",
        "errors": [],
        "restart_required": [],
    }
    control.reload = ReloadStatus(
        False, T0, ("tc.yaml:3:5: jobs[0].interval: must be between 30s and 1h",), ("http.port",)
    )
    body = client.get("/api/v1/status").json()
    assert body["reload"]["successful"] is False and body["reload"]["restart_required"] == ["http.port"]
    assert body["reload"]["errors"] == ["tc.yaml:3:5: jobs[0].interval: must be between 30s and 1h"]
    assert body["version"]


# ----- control endpoints -----


def test_control_endpoints_are_off_without_a_token(
    client: httpx.Client, control: StoreControl, store: StateStore
) -> None:
    control.token = None
    for action in ("pause", "resume", "check-now"):
        path = f"/api/v1/jobs/watching/{action}"
        body = assert_json_error(client.post(path, headers=auth()), 403, path)
        assert "http.api_token" in body["error"] and "secret" in body["error"]
    assert store.job("watching").paused is False and control.checked_now == []


@pytest.mark.parametrize(
    "headers",
    [
        {},
        auth("wrong"),
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer  x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": b"Bearer \xff\xfe\x80"},
        {"Authorization": "Bearer tc-canary-9f8e7d6c5b4a\u00e9".encode("latin-1")},
    ],
)
def test_wrong_or_missing_token_is_401(client: httpx.Client, store: StateStore, headers: dict[str, Any]) -> None:
    response = client.post("/api/v1/jobs/watching/pause", headers=headers)
    assert_json_error(response, 401, "/api/v1/jobs/watching/pause")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert store.job("watching").paused is False


def test_pause_resume_check_now_with_the_token(client: httpx.Client, control: StoreControl, store: StateStore) -> None:
    response = client.post("/api/v1/jobs/watching/pause", headers=auth())
    assert response.status_code == 200 and response.json() == {"job": "watching", "action": "pause", "ok": True}
    assert store.job("watching").paused is True
    assert client.get("/api/v1/jobs/watching").json()["paused"] is True
    assert client.post("/api/v1/jobs/watching/resume", headers=auth()).status_code == 200
    assert store.job("watching").paused is False
    # The scheme name is case-insensitive (RFC 7235).
    lower = {"Authorization": f"bearer {TOKEN}"}
    assert client.post("/api/v1/jobs/watching/check-now", headers=lower).status_code == 200
    assert control.checked_now == ["watching"]
    # A finished job has nothing to run now.
    assert_json_error(client.post("/api/v1/jobs/done/check-now", headers=auth()), 409, "/api/v1/jobs/done/check-now")


def test_unknown_job_is_404_only_after_authentication(client: httpx.Client) -> None:
    assert_json_error(client.post("/api/v1/jobs/nope/pause", headers=auth()), 404, "/api/v1/jobs/nope/pause")
    # Without the token the caller learns nothing about which jobs exist.
    assert client.post("/api/v1/jobs/nope/pause").status_code == 401


def test_audit_lines_and_the_token_never_leaks(client: httpx.Client, caplog: pytest.LogCaptureFixture) -> None:
    responses = [
        client.post("/api/v1/jobs/watching/pause", headers=auth()),
        client.post("/api/v1/jobs/watching/resume", headers=auth("wrong-token")),
        client.post("/api/v1/jobs/nope/check-now", headers=auth()),
    ]
    responses += [
        client.get(path)
        for path in ("/", "/api/v1/jobs", "/api/v1/jobs/watching", "/api/v1/status", "/metrics", "/readyz", "/nope")
    ]
    for response in responses:
        assert TOKEN not in response.text and TOKEN not in str(response.headers)
    audit = [r.getMessage() for r in caplog.records if r.getMessage().startswith("audit:")]
    assert audit == [
        "audit: pause job='watching' from 127.0.0.1: ok",
        "audit: resume job='watching' from 127.0.0.1: denied (401)",
        "audit: check-now job='nope' from 127.0.0.1: no such job",
    ]
    assert TOKEN not in caplog.text and "wrong-token" not in caplog.text


# ----- errors: always JSON, never 500 for bad input, never a crash -----


def test_unknown_route_and_wrong_method(client: httpx.Client) -> None:
    body = assert_json_error(client.get("/api/v2/jobs"), 404, "/api/v2/jobs")
    assert "no such endpoint" in body["error"]
    response = client.get("/api/v1/jobs/watching/pause")
    assert_json_error(response, 405, "/api/v1/jobs/watching/pause")
    assert response.headers["allow"] == "POST"
    assert_json_error(client.post("/api/v1/jobs", headers=auth()), 405, "/api/v1/jobs")
    assert_json_error(client.patch("/api/v1/jobs/watching", headers=auth()), 405, "/api/v1/jobs/watching")
    assert_json_error(client.put("/healthz"), 405, "/healthz")


def test_request_bodies_over_64_kib_are_413_and_do_not_act(client: httpx.Client, store: StateStore) -> None:
    path = "/api/v1/jobs/watching/pause"
    assert_json_error(client.post(path, headers=auth(), content=b"x" * (MAX_BODY_BYTES + 1)), 413, path)

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap is enforced while reading
        for _ in range(20):
            yield b"y" * 8192

    assert_json_error(client.post(path, headers=auth(), content=chunks()), 413, path)
    assert store.job("watching").paused is False
    assert client.post(path, headers=auth(), content=b"z" * MAX_BODY_BYTES).status_code == 200


def test_an_incomplete_body_does_not_act(url: str, store: StateStore) -> None:
    request = (
        b"POST /api/v1/jobs/watching/pause HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + TOKEN.encode()
        + b"\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"
    )
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=WAIT) as sock:
        sock.sendall(request)
        time.sleep(0.2)
    time.sleep(0.2)
    assert store.job("watching").paused is False


def raw_request(url: str, request: bytes) -> int | None:
    """Send bytes as they are (httpx would refuse or normalize them); the status code, or None if the
    server closed the connection without an answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=WAIT) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                return None
            data += chunk
    return int(data.split(b" ")[1])


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /metrics?name[]=\xff HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: \xff\xfe\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: \xff\r\n\r\n",
        b"GET /api/v1/jobs/%ff%fe HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /api/v1/jobs/a%00b HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /api/v1/jobs/\xc3\xbc HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /api/v1/jobs/watching?events=%ff HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /api/v1/jobs/watching?events=1&events=%00 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /api/v1/jobs HTTP/1.1\r\nHost: [::1\r\n\r\n",
        b"GET /api/v1/jobs/watching HTTP/1.1\r\nHost: a b c\r\n\r\n",
        b"GET //api/v1/jobs HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /api/v1/jobs/../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /api/v1/jobs/ HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /api/v1/jobs/watching/pause HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\r\n"
        b"Content-Length: 3\r\n\r\n{}}",
        b"POST /api/v1/jobs/watching/pause HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST /api/v1/jobs/watching/pause HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
        b"POST /api/v1/jobs/watching/pause HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer\r\n\r\n",
        b"BREW /api/v1/jobs HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 garbage that looks like TLS\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\n" + b"X-Long: " + b"a" * 100_000 + b"\r\n\r\n",
    ],
)
def test_malformed_input_never_gets_a_500(
    url: str, client: httpx.Client, request_bytes: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    status = raw_request(url, request_bytes)
    assert status is None or 200 <= status < 500, status
    assert client.get("/healthz").status_code == 200  # and the listener is still there
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_daemon_that_cannot_answer_is_503(client: httpx.Client, control: StoreControl) -> None:
    control.fail_with = StateStoreError("database is locked")
    body = assert_json_error(client.get("/api/v1/jobs"), 503, "/api/v1/jobs")
    assert "database is locked" in body["error"]
    # /metrics does not depend on the daemon answering.
    assert client.get("/metrics").status_code == 200


def test_a_bug_is_a_logged_json_500_and_the_listener_survives(
    client: httpx.Client, control: StoreControl, caplog: pytest.LogCaptureFixture
) -> None:
    control.fail_with = ZeroDivisionError("a bug")
    body = assert_json_error(client.get("/api/v1/jobs/watching"), 500, "/api/v1/jobs/watching")
    assert "a bug" not in body["error"]  # internals stay in the log
    (error,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert error.exc_info and error.exc_info[0] is ZeroDivisionError
    assert "GET /api/v1/jobs/watching" in error.getMessage()
    control.fail_with = None
    assert client.get("/api/v1/jobs/watching").status_code == 200


def test_no_cors(client: httpx.Client) -> None:
    response = client.get("/api/v1/jobs", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in response.headers
    preflight = client.options(
        "/api/v1/jobs/watching/pause",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 405 and "access-control-allow-origin" not in preflight.headers


# ----- the server: binding, logging, signals, stopping -----


def test_listening_line_and_port_zero(control: StoreControl, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    with serve_in_thread(control) as base:
        port = int(base.rsplit(":", 1)[1])
        assert port > 0
        assert f"HTTP listening on http://127.0.0.1:{port}" in [r.getMessage() for r in caplog.records]


def test_port_in_use_is_a_clear_error(control: StoreControl) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = WebServer(
            create_app(control, Metrics(), logging.getLogger(LOGGER)), "127.0.0.1", port, logging.getLogger(LOGGER)
        )
        with pytest.raises(TeckoCheckerError) as info:
            asyncio.run(asyncio.wait_for(server.start(), WAIT))
    assert str(info.value) == (
        f"cannot listen on 127.0.0.1:{port}: address already in use (is another teckochecker running? change http.port)"
    )


def test_sigterm_stays_the_daemons(control: StoreControl) -> None:
    """Serving from the daemon's loop in the main thread, uvicorn must not take SIGTERM over."""
    assert threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        got_sigterm = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, got_sigterm.set)  # what the daemon does
        handler = signal.getsignal(signal.SIGTERM)
        server = WebServer(
            create_app(control, Metrics(), logging.getLogger(LOGGER)), "127.0.0.1", 0, logging.getLogger(LOGGER)
        )
        await server.start()
        try:
            assert signal.getsignal(signal.SIGTERM) is handler  # uvicorn installed nothing
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(got_sigterm.wait(), WAIT)
            await asyncio.sleep(0.3)  # uvicorn's loop ticks every 0.1 s: it would have stopped by now
            async with httpx.AsyncClient(base_url=server.url, timeout=WAIT, trust_env=False) as client:
                assert (await client.get("/healthz")).status_code == 200
        finally:
            await server.stop()
            assert signal.getsignal(signal.SIGTERM) is handler  # and nothing re-raised or restored on stop
            loop.remove_signal_handler(signal.SIGTERM)

    asyncio.run(asyncio.wait_for(main(), 3 * WAIT))
    assert signal.getsignal(signal.SIGTERM) == before


def test_stop_is_bounded_with_a_request_in_flight(control: StoreControl) -> None:
    class Slow(StoreControl):
        async def jobs(self) -> list[JobSnapshot]:
            await asyncio.sleep(60)
            return []

    slow = Slow(control.store)

    async def main() -> float:
        server = WebServer(
            create_app(slow, Metrics(), logging.getLogger(LOGGER)), "127.0.0.1", 0, logging.getLogger(LOGGER)
        )
        await server.start()
        async with httpx.AsyncClient(base_url=server.url, timeout=WAIT, trust_env=False) as client:
            pending = asyncio.create_task(client.get("/api/v1/jobs"))
            await asyncio.sleep(0.2)
            started = time.monotonic()
            await server.stop()
            took = time.monotonic() - started
            with contextlib.suppress(httpx.HTTPError):
                await asyncio.wait_for(pending, WAIT)
        return took

    assert asyncio.run(asyncio.wait_for(main(), 3 * WAIT)) < 3.0


# ----- reading a running daemon back: api_client and `status --url` -----


def test_api_client_reads_back_what_the_store_holds(url: str, store: StateStore, control: StoreControl) -> None:
    remote = fetch_jobs(url)
    local = store.jobs()
    assert [j.name for j in remote] == [j.name for j in local]
    for got, want in zip(remote, local, strict=True):
        # next_check_at is the scheduler's plan over HTTP; everything else is the store's snapshot.
        assert got == type(want)(**{**want.__dict__, "next_check_at": control.next_run(want.name)})
    job, events = fetch_job(url, "firing", events=3)
    assert job.runs[0].external_id == "4242"
    assert [e.kind for e in events] == [e.kind for e in store.events("firing")][-3:]
    now = T0 + dt.timedelta(seconds=30)
    assert render_status(remote, now) == render_status(
        [type(j)(**{**j.__dict__, "next_check_at": control.next_run(j.name)}) for j in local], now
    )


def test_api_client_errors_are_clear() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(TeckoCheckerError, match=rf"cannot reach the daemon at http://127.0.0.1:{port}: "):
        fetch_jobs(f"http://127.0.0.1:{port}")
    with pytest.raises(TeckoCheckerError, match="not an http"):
        fetch_jobs("127.0.0.1:9718")


def test_api_client_on_an_error_answer(url: str) -> None:
    with pytest.raises(TeckoCheckerError, match="answered HTTP 404: no job named 'nope'"):
        fetch_job(url, "nope")


def test_status_command_with_url(url: str, plugin_env: dict[str, str], tmp_path: Path) -> None:
    out = run_cli("status", "--url", url, env=plugin_env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["JOB", "STATE", "TARGETS", "NEXT", "CHECK", "ACTION", "LAST", "ERROR"]
    assert any(line.startswith("watching  watching") for line in lines)
    assert any("batch_a" in line and "7/10 (1 failed)" in line and "[" in line for line in lines)
    assert any(line.startswith("firing") and "running 4242" in line for line in lines)


def test_status_command_with_an_unreachable_url(plugin_env: dict[str, str], tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = run_cli("status", "--url", f"http://127.0.0.1:{port}", env=plugin_env, cwd=tmp_path)
    assert out.returncode == 2
    assert f"cannot reach the daemon at http://127.0.0.1:{port}" in out.stderr and "Traceback" not in out.stderr


# ----- the connection cap -----


class GatedControl(StoreControl):
    """jobs() waits until the test opens the gate: a request that stays in flight."""

    def __init__(self, store: StateStore) -> None:
        super().__init__(store)
        self.gate = threading.Event()

    async def jobs(self) -> list[JobSnapshot]:
        while not self.gate.is_set():
            await asyncio.sleep(0.01)
        return await super().jobs()


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=WAIT)


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_a_connection_beyond_the_cap_pushes_out_the_longest_idle_one(control: StoreControl) -> None:
    with serve_in_thread(control, max_connections=3) as base:
        idle = [connect(base) for _ in range(3)]
        try:
            time.sleep(0.2)  # accepted, in this order
            assert httpx.get(base + "/healthz", timeout=WAIT).status_code == 200  # the 4th: served
            assert closed_by_server(idle[0])  # the oldest idle one made room
            idle[1].sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # the others were left alone
            assert idle[1].recv(4096).startswith(b"HTTP/1.1 200")
        finally:
            for sock in idle:
                sock.close()


def test_when_every_connection_is_busy_a_new_one_gets_a_clean_503(store: StateStore) -> None:
    control = GatedControl(store)
    with serve_in_thread(control, max_connections=2) as base:
        busy = [connect(base) for _ in range(2)]
        try:
            for sock in busy:
                sock.sendall(b"GET /api/v1/jobs HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.3)  # both requests are in flight, waiting on the gate
            refused = httpx.get(base + "/healthz", timeout=WAIT)
            assert refused.status_code == 503 and "too many open connections" in refused.json()["error"]
            control.gate.set()
            for sock in busy:
                assert sock.recv(4096).startswith(b"HTTP/1.1 200")  # the busy ones were never cut off
        finally:
            for sock in busy:
                sock.close()


def test_at_the_cap_the_slowest_partial_request_makes_room_not_one_being_answered(store: StateStore) -> None:
    control = GatedControl(store)
    partial = b"PUT /api/v1/jobs/x HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{"
    with serve_in_thread(control, max_connections=3) as base:
        busy, oldest, newer = connect(base), connect(base), connect(base)
        try:
            busy.sendall(b"GET /api/v1/jobs HTTP/1.1\r\nHost: x\r\n\r\n")  # in flight, waiting on the gate
            oldest.sendall(partial)
            time.sleep(0.2)  # accepted and partly sent, in this order
            newer.sendall(partial)
            assert httpx.get(base + "/healthz", timeout=WAIT).status_code == 200  # the 4th: served
            assert oldest.recv(4096).startswith(b"HTTP/1.1 408 ")  # the slowest made room, told why
            newer.sendall(b"}")  # the newer partial one was left alone and is answered
            assert newer.recv(4096).startswith(b"HTTP/1.1 4")
            control.gate.set()
            assert busy.recv(4096).startswith(b"HTTP/1.1 200")  # the one being answered was never cut off
        finally:
            for sock in (busy, oldest, newer):
                sock.close()


def test_a_partial_request_is_cut_at_the_deadline_however_it_trickles(control: StoreControl) -> None:
    with serve_in_thread(control, request_deadline=0.5) as base, connect(base) as sock:
        started = time.monotonic()
        sock.sendall(b"PUT /api/v1/jobs/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        sock.settimeout(0.05)
        answer = b""
        while not answer and time.monotonic() - started < 5:
            try:
                answer = sock.recv(4096)
            except TimeoutError:
                sock.sendall(b" ")
        assert answer.startswith(b"HTTP/1.1 408 ") and 0.45 <= time.monotonic() - started < 2


def test_a_connection_that_never_sends_a_request_is_closed(control: StoreControl) -> None:
    with serve_in_thread(control, request_deadline=0.2) as base, connect(base) as sock:
        assert closed_by_server(sock)


def test_the_cap_leaves_most_file_descriptors_to_the_daemon() -> None:
    assert connection_cap(1024) == MAX_CONNECTIONS == 200
    assert connection_cap(256) == 64
    assert connection_cap(resource.RLIM_INFINITY) == MAX_CONNECTIONS
