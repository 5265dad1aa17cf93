"""The fake vendor servers follow the vendor contracts: checked with the official SDK, the OpenAPI document
and the contract's examples, over real loopback HTTP (httpx as the client)."""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pydantic
import pytest
from fakes import FakeKeboola, FakeOpenAI, Latency, Step, response_violations
from openai.types import Batch

from teckochecker.simulators._http import too_many_requests

CONTRACTS = Path(__file__).parent / "contracts"
EXAMPLES = json.loads((CONTRACTS / "openai-batch-examples.json").read_text())
KEY = "sk-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
TOKEN = {"X-StorageApi-Token": "kbc-test-token"}
FILE_ID = re.compile(r"^file-[A-Za-z0-9]{22}$")
BATCH_ID = re.compile(r"^batch_[0-9a-f]{32}$")
APP = "kds-team.app-custom-python"
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00$")


def key_tree(value: Any) -> Any:
    """The nested key structure of a JSON object (values dropped), to compare field sets.

    `metadata` is a free-form map, so only its presence counts."""
    if isinstance(value, dict):
        return {k: None if k == "metadata" else key_tree(v) for k, v in value.items()}
    return None


def sdk_client(fake: FakeOpenAI, **kwargs: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key=kwargs.pop("api_key", KEY), base_url=fake.base_url, max_retries=kwargs.pop("max_retries", 0), **kwargs
    )


@pytest.fixture
def oai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def kbc() -> Iterator[FakeKeboola]:
    with FakeKeboola() as fake:
        fake.add_config(APP, "123")
        yield fake


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as client:
        yield client


# ===== OpenAI =====================================================================================

# One scenario per status family of the contract (§1, §6, §7.2), with what the real API would show.
SCENARIOS: dict[str, tuple[str, dict[str, Any]]] = {
    "validating": ("validating", {}),
    "in_progress": ("in_progress", {"completed": 4, "failed": 1}),
    "finalizing": ("finalizing", {}),
    "completed": ("completed", {"failed": 3}),
    "completed_all_failed": ("completed", {"completed": 0, "failed": 10}),
    "failed": ("failed", {}),
    "expired": ("expired", {"completed": 6, "failed": 1}),
    "cancelling": ("cancelling", {}),
    "cancelled": ("cancelled", {"completed": 2}),
}


def make_scenario(fake: FakeOpenAI, name: str) -> str:
    status, counts = SCENARIOS[name]
    batch_id = fake.add_batch(total=10, metadata={"teckochecker_job": "nightly"})
    if status in ("expired", "cancelled", "cancelling"):
        fake.set_status(batch_id, "in_progress")
    fake.set_status(batch_id, status, **counts)
    return batch_id


def test_every_batch_has_exactly_the_contract_key_set_and_parses_with_the_sdk(
    oai: FakeOpenAI, http: httpx.Client
) -> None:
    example_keys = {name: key_tree(obj) for name, obj in EXAMPLES["batches"].items()}
    for name in SCENARIOS:
        batch_id = make_scenario(oai, name)
        response = http.get(f"{oai.base_url}/batches/{batch_id}", headers=AUTH)
        assert response.status_code == 200
        payload = response.json()
        tree = key_tree(payload)
        # errors is an object only on failed batches; compare its inner keys with the failed example.
        expected = example_keys["failed"] if name == "failed" else example_keys["validating"]
        assert tree == expected, name
        assert list(payload) == list(EXAMPLES["batches"]["validating"]), "key order like the real API"
        parsed = Batch.model_validate(payload)
        assert parsed.status == SCENARIOS[name][0]
        assert BATCH_ID.match(parsed.id) and FILE_ID.match(parsed.input_file_id)
        assert parsed.expires_at == parsed.created_at + 86400


def test_status_moves_set_what_the_real_api_sets(oai: FakeOpenAI) -> None:
    b = {name: oai.batch(make_scenario(oai, name)) for name in SCENARIOS}
    validating = b["validating"]
    assert validating["model"] is None and validating["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert validating["usage"] == EXAMPLES["batches"]["validating"]["usage"]
    assert b["in_progress"]["model"] and b["in_progress"]["in_progress_at"]
    assert b["in_progress"]["request_counts"] == {"total": 10, "completed": 4, "failed": 1}
    assert b["finalizing"]["finalizing_at"] and b["finalizing"]["request_counts"]["completed"] == 10
    done = b["completed"]
    assert done["completed_at"] and done["request_counts"] == {"total": 10, "completed": 7, "failed": 3}
    assert FILE_ID.match(done["output_file_id"]) and FILE_ID.match(done["error_file_id"])
    all_failed = b["completed_all_failed"]
    assert all_failed["output_file_id"] is None and FILE_ID.match(all_failed["error_file_id"])
    failed = b["failed"]
    assert failed["failed_at"] and failed["model"] is None and failed["in_progress_at"] is None
    assert failed["errors"]["data"][0]["code"] == "token_limit_exceeded"
    assert failed["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    expired = b["expired"]
    assert expired["expired_at"] and expired["output_file_id"] and expired["error_file_id"]
    assert b["cancelling"]["cancelling_at"] and b["cancelling"]["cancelled_at"] is None
    cancelled = b["cancelled"]
    assert cancelled["cancelled_at"] and cancelled["cancelling_at"] and cancelled["output_file_id"]
    assert cancelled["error_file_id"]


def test_cancelled_before_running_has_no_output_and_explicit_file_ids_win(oai: FakeOpenAI) -> None:
    quiet = oai.add_batch(status="cancelled")
    assert oai.batch(quiet)["output_file_id"] is None and oai.batch(quiet)["error_file_id"]
    clean = oai.add_batch()
    oai.set_status(clean, "completed", error_file_id="")  # a client saw "" for "no file" (contract §6)
    assert oai.batch(clean)["error_file_id"] == ""


def test_sdk_retrieves_every_status_over_the_wire(oai: FakeOpenAI) -> None:
    ids = {name: make_scenario(oai, name) for name in SCENARIOS}

    async def fetch_all() -> dict[str, Any]:
        async with sdk_client(oai) as client:
            return {name: await client.batches.retrieve(batch_id) for name, batch_id in ids.items()}

    got = asyncio.run(fetch_all())
    for name, batch in got.items():
        assert batch.id == ids[name] and batch.status == SCENARIOS[name][0]
    assert got["completed"].request_counts is not None and got["completed"].request_counts.failed == 3
    assert got["completed_all_failed"].output_file_id is None
    assert got["failed"].errors is not None and got["failed"].errors.data
    assert got["failed"].errors.data[0].code == "token_limit_exceeded"
    assert got["validating"].metadata == {"teckochecker_job": "nightly"}


def test_timeline_moves_the_batch_by_polls(oai: FakeOpenAI, http: httpx.Client) -> None:
    batch_id = oai.add_batch(total=4)
    oai.set_timeline(batch_id, [("in_progress", 1), ("finalizing", 2), Step("completed", 1, failed=4)])
    seen = [http.get(f"{oai.base_url}/batches/{batch_id}", headers=AUTH).json() for _ in range(5)]
    assert [b["status"] for b in seen] == ["in_progress", "in_progress", "finalizing", "completed", "completed"]
    assert seen[-1]["output_file_id"] is None and seen[-1]["request_counts"]["failed"] == 4
    with pytest.raises(ValueError):
        oai.set_status(batch_id, "completed", completed=3, failed=3)
    assert oai.batch(batch_id) == seen[-1], "a refused move leaves the batch as it was"


def test_undocumented_status_is_served_verbatim(oai: FakeOpenAI) -> None:
    batch_id = oai.add_batch(status="in_progress")
    oai.set_status(batch_id, "paused")

    async def fetch() -> Batch:
        async with sdk_client(oai) as client:
            return await client.batches.retrieve(batch_id)

    # The SDK does not validate responses, so the daemon sees the raw word and must map it to "unknown";
    # strict validation would reject it.
    status: str = asyncio.run(fetch()).status  # typed as the documented Literal, holds any word
    assert status == "paused"
    with pytest.raises(pydantic.ValidationError):
        Batch.model_validate(oai.batch(batch_id))


def test_list_is_newest_first_pages_with_after_and_parses(oai: FakeOpenAI, http: httpx.Client) -> None:
    ids = [oai.add_batch(created_at=1_767_229_200 + i) for i in range(5)]
    page = http.get(f"{oai.base_url}/batches", params={"limit": 2}, headers=AUTH).json()
    assert set(page) == set(EXAMPLES["list_response_GET_v1_batches_limit_2"])
    assert [b["id"] for b in page["data"]] == ids[::-1][:2] and page["has_more"] is True
    assert page["first_id"] == ids[4] and page["last_id"] == ids[3]
    for bad in ("0", "101", "x"):
        response = http.get(f"{oai.base_url}/batches", params={"limit": bad}, headers=AUTH)
        assert response.status_code == 400 and response.json()["error"]["param"] == "limit"

    async def walk() -> list[str]:
        async with sdk_client(oai) as client:
            return [batch.id async for batch in client.batches.list(limit=2)]

    assert asyncio.run(walk()) == ids[::-1]
    assert oai.request_count() >= 4


def test_sdk_cancel_moves_to_cancelling_and_terminal_cancel_is_refused(oai: FakeOpenAI) -> None:
    running, done = oai.add_batch(status="in_progress"), oai.add_batch(status="completed")

    async def cancel() -> tuple[Batch, Exception | None]:
        async with sdk_client(oai) as client:
            batch = await client.batches.cancel(running)
            try:
                await client.batches.cancel(done)
            except openai.BadRequestError as exc:
                return batch, exc
            return batch, None

    batch, refused = asyncio.run(cancel())
    assert batch.status == "cancelling" and batch.cancelling_at is not None
    assert isinstance(refused, openai.BadRequestError)


def test_errors_map_to_sdk_exceptions_with_envelope_and_headers(oai: FakeOpenAI) -> None:
    batch_id = oai.add_batch(status="in_progress")
    oai.remove_batch(batch_id)

    async def errors() -> dict[str, openai.APIStatusError]:
        seen: dict[str, openai.APIStatusError] = {}
        async with sdk_client(oai) as good, sdk_client(oai, api_key="sk-wrong-secret-value") as bad:
            for name, call in (("404", good.batches.retrieve(batch_id)), ("401", bad.batches.retrieve("x"))):
                try:
                    await call
                except openai.APIStatusError as exc:
                    seen[name] = exc
        return seen

    seen = asyncio.run(errors())
    assert isinstance(seen["404"], openai.NotFoundError) and seen["404"].code == "batch_not_found"
    assert seen["404"].body == {
        "message": f"No batch found with id '{batch_id}'.",
        "type": "invalid_request_error",
        "param": None,
        "code": "batch_not_found",
    }
    assert isinstance(seen["401"], openai.AuthenticationError) and seen["401"].code == "invalid_api_key"
    assert "wrong" not in str(seen["401"]) and "sk-" not in seen["401"].message  # never echo the key
    for exc in seen.values():
        assert exc.request_id and exc.request_id.startswith("req_")
        assert exc.response.headers["openai-version"] == "2020-10-01"
        assert exc.response.headers["content-type"] == "application/json"


def test_injected_429_500_and_html_502(oai: FakeOpenAI) -> None:
    batch_id = oai.add_batch(status="in_progress")
    oai.inject(429, headers={"retry-after": "2"}, batch_id=batch_id)
    oai.inject(500)
    oai.inject(502, body=b"<html><body><h1>502 Bad Gateway</h1></body></html>")

    async def three() -> list[Exception]:
        out: list[Exception] = []
        async with sdk_client(oai) as client:
            for _ in range(3):
                try:
                    await client.batches.retrieve(batch_id)
                except openai.APIStatusError as exc:
                    out.append(exc)
            await client.batches.retrieve(batch_id)  # injections used up: a normal answer again
        return out

    rate, server, gateway = asyncio.run(three())
    assert isinstance(rate, openai.RateLimitError) and rate.code == "rate_limit_exceeded"
    assert rate.response.headers["retry-after"] == "2"
    assert isinstance(server, openai.InternalServerError) and isinstance(server.body, dict)
    assert server.body["type"] == "server_error"
    assert isinstance(gateway, openai.InternalServerError) and gateway.status_code == 502
    assert "502 Bad Gateway" in gateway.response.text
    assert gateway.response.headers["content-type"] == "text/html"
    assert oai.request_count(batch_id) == 4


def test_sdk_retries_are_visible_in_recorded_requests(oai: FakeOpenAI) -> None:
    batch_id = oai.add_batch(status="in_progress")
    other = oai.add_batch()
    oai.inject(429, times=2, headers={"retry-after-ms": "10"}, batch_id=batch_id)

    async def fetch() -> Batch:
        async with sdk_client(oai, max_retries=2) as client:
            await client.batches.retrieve(other)  # not targeted by the injection
            return await client.batches.retrieve(batch_id)

    assert asyncio.run(fetch()).status == "in_progress"
    gets = [r for r in oai.requests if r.path.endswith(batch_id)]
    assert [r.headers["x-stainless-retry-count"] for r in gets] == ["0", "1", "2"]
    assert oai.request_count(batch_id) == 3 and oai.request_count(other) == 1


def test_organization_and_project_headers_are_required_when_configured() -> None:
    with FakeOpenAI(organization="org-fake", project="proj_fake") as fake:
        batch_id = fake.add_batch()

        async def run() -> tuple[Batch, list[str | None]]:
            codes: list[str | None] = []
            for kwargs in ({}, {"organization": "org-fake"}):
                async with sdk_client(fake, **kwargs) as client:
                    try:
                        await client.batches.retrieve(batch_id)
                    except openai.AuthenticationError as exc:
                        codes.append(exc.code)
            async with sdk_client(fake, organization="org-fake", project="proj_fake") as client:
                return await client.batches.retrieve(batch_id), codes

        batch, codes = asyncio.run(run())
        assert batch.id == batch_id and codes == ["mismatched_organization", "mismatched_project"]


def test_missing_auth_is_401_and_truncated_and_slow_replies(oai: FakeOpenAI, http: httpx.Client) -> None:
    batch_id = oai.add_batch()
    missing = http.get(f"{oai.base_url}/batches/{batch_id}")
    assert missing.status_code == 401 and set(missing.json()["error"]) == {"message", "type", "param", "code"}
    oai.inject(200, truncate_to=10)
    with pytest.raises(httpx.RemoteProtocolError):
        http.get(f"{oai.base_url}/batches/{batch_id}", headers=AUTH)
    oai.inject(200, delay=0.5)
    with pytest.raises(httpx.ReadTimeout):
        http.get(f"{oai.base_url}/batches/{batch_id}", headers=AUTH, timeout=0.1)


@pytest.mark.parametrize(
    ("text", "latency"),
    [("300ms±200ms", Latency(0.3, 0.2)), ("1s+-250ms", Latency(1.0, 0.25)), ("1s", Latency(1.0)), ("0", Latency(0))],
)
def test_latency_is_written_as_mean_and_jitter(text: str, latency: Latency) -> None:
    assert Latency.parse(text) == latency


@pytest.mark.parametrize("text", ["300", "300ms±", "fast", "-1s"])
def test_a_latency_without_units_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        Latency.parse(text)


def test_latency_draws_within_its_jitter_and_delays_every_answer(http: httpx.Client) -> None:
    samples = [Latency(0.3, 0.2).sample(random.Random(seed)) for seed in range(200)]
    assert 0.1 <= min(samples) < 0.2 and 0.4 < max(samples) <= 0.5
    assert Latency(0.05, 0.2).sample(random.Random(1)) >= 0  # never a negative wait
    with FakeOpenAI(latency=Latency(0.3, 0.1), rng=random.Random(7)) as slow:
        batch_id = slow.add_batch()
        for path in (f"/batches/{batch_id}", "/batches?limit=1"):
            started = time.monotonic()
            assert http.get(slow.base_url + path, headers=AUTH).status_code == 200
            assert time.monotonic() - started >= 0.2  # a lower bound only: the machine may add, never take
        assert slow.request_kinds() == {"list": 1, "retrieve": 1, "other": 0}


# ===== Keboola ====================================================================================

CONTRACT_JOB_KEYS = {  # the contract's create-response example (DOCS-JOBS), plus the newer PHPCLI keys
    "id",
    "runId",
    "parentRunId",
    "project",
    "token",
    "status",
    "desiredStatus",
    "mode",
    "component",
    "config",
    "configData",
    "configRowIds",
    "tag",
    "createdTime",
    "startTime",
    "endTime",
    "durationSeconds",
    "result",
    "usageData",
    "isFinished",
    "url",
    "branchId",
    "variableValuesId",
    "variableValuesData",
    "backend",
    "metrics",
    "behavior",
    "parallelism",
    "type",
    "executor",
    "orchestrationJobId",
    "orchestrationTaskId",
    "onlyOrchestrationTaskIds",
    "previousJobId",
}
TECKO_BODY = {
    "component": APP,
    "config": "123",
    "mode": "run",
    "variableValuesData": {
        "values": [
            {"name": "batch_ids_completed", "value": '["batch_abc"]'},
            {"name": "batch_count_total", "value": "1"},
        ]
    },
}


def create(
    kbc: FakeKeboola, http: httpx.Client, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    return http.post(
        f"{kbc.queue_url}/jobs",
        json=TECKO_BODY if body is None else body,
        headers=TOKEN if headers is None else headers,
    )


def get_job(kbc: FakeKeboola, http: httpx.Client, job_id: str) -> dict[str, Any]:
    response = http.get(f"{kbc.queue_url}/jobs/{job_id}", headers=TOKEN)
    assert response.status_code == 200
    job: dict[str, Any] = response.json()
    return job


def search(kbc: FakeKeboola, http: httpx.Client, query: str) -> list[str]:
    response = http.get(f"{kbc.queue_url}/search/jobs?{query}", headers=TOKEN)
    assert response.status_code == 200, response.text
    return [job["id"] for job in response.json()]


def assert_error(response: httpx.Response, status: int, message: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error", "code", "exceptionId", "status", "context"]
    assert body["error"] == message and body["code"] == status and body["status"] == "error"
    assert re.fullmatch(r"exception-[0-9a-f]{32}", body["exceptionId"]) and body["context"] == []


def test_index_discovers_the_queue_without_a_token(kbc: FakeKeboola, http: httpx.Client) -> None:
    for path in ("/v2/storage", "/v2/storage/", "/v2/storage?exclude=components"):
        response = http.get(kbc.stack_url + path)
        assert response.status_code == 200 and response.headers["content-type"] == "application/json"
        index = response.json()
        assert [s["url"] for s in index["services"] if s["id"] == "queue"] == [kbc.queue_url]
        assert ("components" in index) is ("exclude" not in path)
    assert kbc.queue_url != kbc.stack_url and kbc.contract_violations == []


def test_create_returns_201_with_the_contract_job(kbc: FakeKeboola, http: httpx.Client) -> None:
    before = time.time()
    response = create(kbc, http)
    assert response.status_code == 201 and response.headers["content-type"] == "application/json"
    job = response.json()
    assert set(job) >= CONTRACT_JOB_KEYS
    assert job["id"].isdigit() and job["runId"] == job["id"] and job["parentRunId"] == ""
    assert job["project"] == {"id": "7150", "name": "TeckoChecker Fake"}
    assert job["token"] == {"id": "4242", "description": "teckochecker@example.com"}
    assert (job["status"], job["desiredStatus"], job["isFinished"]) == ("created", "processing", False)
    assert (job["startTime"], job["endTime"], job["durationSeconds"], job["result"]) == (None, None, 0, [])
    assert job["url"] == f"{kbc.queue_url}/jobs/{job['id']}" and job["branchId"] is None
    assert job["configRowIds"] == [] and job["variableValuesData"] == TECKO_BODY["variableValuesData"]
    assert (job["tag"], job["type"], job["executor"], job["backend"]) == ("1.2.3", "standard", "dind", {})
    assert ISO_UTC.match(job["createdTime"])
    created = time.mktime(time.strptime(job["createdTime"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    assert before - 2 <= created <= time.time() + 1, "createdTime is the real current UTC time"
    assert kbc.jobs == [job] and kbc.jobs_for(APP, "123") == [job]
    request = kbc.requests[-1]
    assert response_violations(request, kbc.queue_url, 201, job) == []
    assert kbc.contract_violations == []


def test_create_echoes_branch_rows_tag_and_child_run_id(kbc: FakeKeboola, http: httpx.Client) -> None:
    body = {
        "component": APP,
        "config": "123",
        "branchId": "456",
        "configRowIds": ["7"],
        "tag": "2.0.0",
        "variableValuesId": "99",
    }
    job = create(kbc, http, body, {**TOKEN, "X-KBC-RunId": "555"}).json()
    assert (job["branchId"], job["configRowIds"], job["tag"], job["variableValuesId"]) == ("456", ["7"], "2.0.0", "99")
    assert job["runId"] == f"555.{job['id']}" and job["parentRunId"] == "555"
    assert job["variableValuesData"] == {"values": []}


@pytest.mark.parametrize(
    ("body", "message", "violates_document"),
    [
        ({"mode": "run", "config": "123"}, None, True),
        ({"component": APP, "mode": "fast"}, None, True),
        ({"component": APP, "config": "999"}, 'Cannot resolve job parameters: Configuration "999" not found', False),
        ({"component": APP, "config": "off"}, f'Configuration "off" of component "{APP}" is disabled.', False),
        (
            {
                "component": APP,
                "config": "123",
                "variableValuesId": "9",
                "variableValuesData": {"values": [{"name": "a", "value": "b"}]},
            },
            'Provide either "variableValuesId" or "variableValuesData", but not both.',
            False,
        ),
        (
            {"component": APP, "variableValuesData": {"values": [{"name": "", "value": "b"}]}},
            'The path "job.variableValuesData.values.0.name" cannot contain an empty value, but got "".',
            False,
        ),
        (
            {"component": APP, "variableValuesData": {"values": [{"name": "a", "value": ""}]}},
            'The path "job.variableValuesData.values.0.value" cannot contain an empty value, but got "".',
            False,
        ),
        ({"component": APP, "variableValuesData": {"values": [{"name": "a"}]}}, None, True),
        ({"component": APP, "variableValuesData": {}}, None, True),
        ({"component": APP, "backend": "xsmall"}, None, True),
    ],
)
def test_business_rules_and_document_reject_with_400_and_create_nothing(
    kbc: FakeKeboola, http: httpx.Client, body: dict[str, Any], message: str | None, violates_document: bool
) -> None:
    kbc.add_config(APP, "off", disabled=True)
    response = create(kbc, http, body)
    if message is not None:
        assert_error(response, 400, message)
    else:
        assert response.status_code == 400 and response.json()["error"].startswith("Invalid request: ")
    assert kbc.jobs == []
    assert len(kbc.contract_violations) == (1 if violates_document else 0)
    if violates_document:
        assert kbc.contract_violations[0].startswith("POST /jobs: ")


def test_disabled_config_runs_with_force_run_and_validation_can_be_off(http: httpx.Client) -> None:
    with FakeKeboola(validate=False) as kbc:
        kbc.add_config(APP, "off", disabled=True)
        assert create(kbc, http, {"component": APP, "config": "off", "mode": "forceRun"}).status_code == 201
        assert create(kbc, http, {"component": APP, "mode": "fast"}).status_code == 400  # business rule
        assert kbc.contract_violations == [] and len(kbc.jobs) == 1


def test_queue_needs_the_token(kbc: FakeKeboola, http: httpx.Client) -> None:
    assert_error(create(kbc, http, headers={}), 401, "Invalid access token")
    assert_error(create(kbc, http, headers={"X-StorageApi-Token": "other"}), 401, "Invalid access token")
    assert_error(http.get(f"{kbc.queue_url}/search/jobs"), 401, "Invalid access token")
    assert kbc.jobs == []
    # A request without the header breaks the document's security requirement; a wrong value does not.
    assert len(kbc.contract_violations) == 2


@pytest.mark.parametrize(("outcome", "message"), [("success", None), ("error", "Boom."), ("warning", None)])
def test_lifecycle_follows_the_script(kbc: FakeKeboola, http: httpx.Client, outcome: str, message: str | None) -> None:
    kbc.set_outcome(APP, "123", outcome, processing_after_gets=2, finish_after_gets=3, message=message)
    job_id = create(kbc, http).json()["id"]
    seen = [get_job(kbc, http, job_id) for _ in range(4)]
    assert [j["status"] for j in seen] == ["created", "processing", outcome, outcome]
    final = seen[2]
    assert final["isFinished"] is True and ISO_UTC.match(final["endTime"]) and final["startTime"]
    assert isinstance(final["durationSeconds"], int) and final["result"]["message"]
    if message:
        assert final["result"]["message"] == message
    if outcome == "error":
        assert final["result"]["error"]["type"] == "user"
        assert final["result"]["error"]["exceptionId"].startswith("exception-")
    assert kbc.jobs[0] is kbc.job(job_id) and kbc.jobs[0]["status"] == outcome
    assert_error(http.get(f"{kbc.queue_url}/jobs/424242", headers=TOKEN), 404, 'Job "424242" not found')
    responses = [(r, s) for r, s in zip(kbc.requests[-5:-1], seen, strict=True)]
    for request, job in responses:
        assert response_violations(request, kbc.queue_url, 200, job) == []


def test_default_outcome_and_finish_job(kbc: FakeKeboola, http: httpx.Client) -> None:
    first, second = create(kbc, http).json()["id"], create(kbc, http, {"component": "other.app"}).json()["id"]
    assert [get_job(kbc, http, first)["status"] for _ in range(2)] == ["processing", "success"]
    kbc.finish_job(second, "error", "Stopped by the test.")
    assert get_job(kbc, http, second)["result"]["message"] == "Stopped by the test."


def test_config_lock_keeps_a_newer_job_waiting(kbc: FakeKeboola, http: httpx.Client) -> None:
    kbc.set_outcome(APP, "123", processing_after_gets=1, finish_after_gets=3)
    older, newer = create(kbc, http).json()["id"], create(kbc, http).json()["id"]
    other_branch = create(kbc, http, {**TECKO_BODY, "branchId": "5"}).json()["id"]
    assert get_job(kbc, http, older)["status"] == "processing"
    assert [get_job(kbc, http, newer)["status"] for _ in range(3)] == ["waiting"] * 3
    assert get_job(kbc, http, other_branch)["status"] == "processing"  # another branch, another lock
    assert [get_job(kbc, http, older)["status"] for _ in range(2)] == ["processing", "success"]
    assert get_job(kbc, http, newer)["status"] == "processing"


def test_delayed_start_holds_the_job_in_created(kbc: FakeKeboola, http: httpx.Client) -> None:
    held = create(kbc, http, {**TECKO_BODY, "delay": 3600}).json()
    statuses = [get_job(kbc, http, held["id"])["status"] for _ in range(3)]
    assert held["delayedStartTime"] and statuses == ["created"] * 3
    soon = time.time() + 0.3
    start = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(soon)) + f"{soon % 1:.3f}"[1:] + "+00:00"
    job_id = create(kbc, http, {"component": "other.app", "delayedStartTime": start}).json()["id"]
    assert get_job(kbc, http, job_id)["status"] == "created" or time.time() >= soon  # (a stalled machine)
    time.sleep(max(0.0, soon - time.time()) + 0.05)
    assert get_job(kbc, http, job_id)["status"] == "processing"
    assert create(kbc, http, {"component": APP, "delay": 1, "delayedStartTime": start}).status_code == 400
    assert kbc.contract_violations == []


def test_kill(kbc: FakeKeboola, http: httpx.Client) -> None:
    queued = create(kbc, http).json()["id"]
    killed = http.post(f"{kbc.queue_url}/jobs/{queued}/kill", headers=TOKEN)
    assert killed.status_code == 202 and killed.json()["desiredStatus"] == "terminating"
    cancelled = get_job(kbc, http, queued)
    assert (cancelled["status"], cancelled["isFinished"], cancelled["desiredStatus"]) == (
        "cancelled",
        True,
        "terminating",
    )
    running = create(kbc, http).json()["id"]
    assert get_job(kbc, http, running)["status"] == "processing"
    assert http.post(f"{kbc.queue_url}/jobs/{running}/kill", headers=TOKEN).status_code == 202
    assert kbc.job(running)["status"] == "terminating"
    assert get_job(kbc, http, running)["status"] == "terminated"
    assert http.post(f"{kbc.queue_url}/jobs/{running}/kill", headers=TOKEN).status_code == 400
    assert_error(http.post(f"{kbc.queue_url}/jobs/1/kill", headers=TOKEN), 404, 'Job "1" not found')
    assert kbc.contract_violations == []


def test_search_filters_key_forms_and_sorting(kbc: FakeKeboola, http: httpx.Client) -> None:
    kbc.add_config("keboola.ex-db", "9")
    a = create(kbc, http).json()["id"]
    b = create(kbc, http, {"component": "keboola.ex-db", "config": "9"}).json()["id"]
    c = create(kbc, http, {**TECKO_BODY, "branchId": "5"}).json()["id"]
    kbc.finish_job(a, "success")
    assert search(kbc, http, "") == [c, b, a]  # default: sortBy id, desc
    assert search(kbc, http, "sortBy=createdTime&sortOrder=asc") == [a, b, c]
    assert search(kbc, http, f"componentId={APP}") == [c, a]
    assert search(kbc, http, f"component[]={APP}&configId[0]=123&branchId[]=null") == [a]
    assert search(kbc, http, "config=9&config=123&sortOrder=asc") == [a, b, c]
    assert search(kbc, http, "branchId=5") == [c]
    assert search(kbc, http, "configId[0]=9") == [b]
    assert search(kbc, http, "componentId[]=keboola.ex-db") == [b]
    assert search(kbc, http, "status[]=success&status[]=error") == [a]
    assert search(kbc, http, f"id[]={a}&id[]={b}&limit=1&offset=1") == [a]
    assert search(kbc, http, f"runId={b}&tokenId=4242") == [b]
    assert search(kbc, http, "tokenId=1") == [] and search(kbc, http, "configId=nope") == []
    assert search(kbc, http, "createdTimeFrom=-1 hour&createdTimeTo=2100-01-01T00:00:00%2B02:00") == [c, b, a]
    assert search(kbc, http, "createdTimeFrom=2100-01-01T00:00:00%2B00:00") == []
    assert search(kbc, http, "limit=2") == [c, b]
    assert http.get(f"{kbc.queue_url}/search/jobs?limit=x", headers=TOKEN).status_code == 400
    assert len(kbc.contract_violations) == 1  # only limit=x breaks the document
    violation = kbc.contract_violations[0]
    assert violation.startswith("GET /search/jobs: ") and "limit" in violation


def test_search_lag_hides_new_jobs(kbc: FakeKeboola, http: httpx.Client) -> None:
    kbc.search_lag = 0.3
    created = time.monotonic()
    job_id = create(kbc, http).json()["id"]
    assert search(kbc, http, "") == [] or time.monotonic() - created >= 0.3  # (a stalled machine)
    assert get_job(kbc, http, job_id)["id"] == job_id  # GET reads the primary store
    deadline = time.monotonic() + 2
    while search(kbc, http, "") != [job_id]:
        assert time.monotonic() < deadline, "the job never became searchable"
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("mode", "status", "created"),
    [
        ("reject_400", 400, 0),
        ("reject_401", 401, 0),
        ("503_before_create", 503, 0),
        ("create_then_503", 503, 1),
    ],
)
def test_post_faults_with_a_response(
    kbc: FakeKeboola, http: httpx.Client, mode: str, status: int, created: int
) -> None:
    kbc.post_fault(mode, times=2)
    responses = [create(kbc, http) for _ in range(3)]
    assert [r.status_code for r in responses] == [status, status, 201]
    assert list(responses[0].json()) == ["error", "code", "exceptionId", "status", "context"]
    assert len(kbc.jobs) == 2 * created + 1


def test_create_then_reset_leaves_the_job_in_the_ledger(kbc: FakeKeboola, http: httpx.Client) -> None:
    kbc.post_fault("create_then_reset")
    with pytest.raises(httpx.ReadError, match="reset"):  # an RST, not a clean close (RemoteProtocolError)
        create(kbc, http)
    assert len(kbc.jobs) == 1 and kbc.jobs[0]["status"] == "created"
    assert create(kbc, http).status_code == 201  # the fault was used up


def test_create_then_hang_holds_until_stop_and_stop_is_prompt(http: httpx.Client) -> None:
    kbc = FakeKeboola().start()
    try:
        kbc.add_config(APP, "123")
        kbc.post_fault("create_then_hang")
        with pytest.raises(httpx.ReadTimeout):
            http.post(f"{kbc.queue_url}/jobs", json=TECKO_BODY, headers=TOKEN, timeout=0.3)
        assert len(kbc.jobs) == 1
    finally:
        started = time.monotonic()
        kbc.stop()
        assert time.monotonic() - started < 2
    with pytest.raises(httpx.ConnectError):
        http.get(kbc.stack_url + "/v2/storage")


def test_slow_create_answers_201_after_the_delay(kbc: FakeKeboola, http: httpx.Client) -> None:
    kbc.post_fault("slow_create", delay=0.3)
    started = time.monotonic()
    response = create(kbc, http)
    assert response.status_code == 201 and time.monotonic() - started >= 0.3
    assert [j["id"] for j in kbc.jobs] == [response.json()["id"]]


def test_unknown_fault_mode_is_refused(kbc: FakeKeboola) -> None:
    with pytest.raises(ValueError):
        kbc.post_fault("explode")


def test_a_stopped_fake_refuses_connections_and_restarts_on_the_same_port(http: httpx.Client) -> None:
    with FakeOpenAI() as fake:
        batch_id = fake.add_batch()
        url = f"{fake.base_url}/batches/{batch_id}"
        assert http.get(url, headers=AUTH).status_code == 200  # leaves a kept-alive connection
        fake.stop()
        with pytest.raises(httpx.TransportError):
            http.get(url, headers=AUTH)
        fake.start()
        assert http.get(url, headers=AUTH).status_code == 200


def test_a_path_answered_always_keeps_its_answer_until_turned_off_and_every_request_is_counted() -> None:
    with FakeOpenAI(api_key="sk-test") as fake:
        batch = fake.add_batch()
        path = f"/v1/batches/{batch}"
        fake.answer_always(path, too_many_requests(retry_after="0"), method="GET")
        headers = {"Authorization": "Bearer sk-test"}
        with httpx.Client(base_url=fake.base_url.removesuffix("/v1"), headers=headers) as client:
            answers = [client.get(path) for _ in range(5)]
            assert [(a.status_code, a.headers["retry-after"]) for a in answers] == [(429, "0")] * 5
            assert client.get("/v1/batches").status_code == 200  # only that path
            fake.stop_answering()
            assert client.get(path).status_code == 200
        assert fake.requests_to(path) == 6 and fake.requests_to("/v1/batches") == 1
        assert fake.requests_to(path, "POST") == 0
