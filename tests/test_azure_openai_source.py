"""The ``azure_openai_batch`` source against the fake Azure OpenAI resource (real HTTP on 127.0.0.1): the
classic ``api-version`` URLs and the v1 URLs, the ``api-key`` header and an Entra bearer token. The official
``openai`` SDK's Azure client proves the fake's URL shapes and answers are Azure's."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from fakes import FakeAzureOpenAI
from plugin_context import Clients, FixedClock
from pydantic import ValidationError
from teckochecker_openai import AzureOpenAIBatchOptions, AzureOpenAIBatchSource

from teckochecker.errors import PermanentError
from teckochecker.plugin_api import CheckReport, PluginContext, SecretName, SharedRegistry, TargetState

KEY = "azure-CANARY-key-00112233445566778899aabbccddeeff"
TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.CANARY-entra-token"
VERSION = "2024-10-21"


@pytest.fixture
def fake() -> Iterator[FakeAzureOpenAI]:
    with FakeAzureOpenAI(api_key=KEY, entra_token=TOKEN) as server:
        yield server


@pytest.fixture
def clients() -> Clients:
    return Clients()


def make_source(clients: Clients, fake: FakeAzureOpenAI, **options: Any) -> AzureOpenAIBatchSource:
    options.setdefault("list_batches", False)
    if "entra_token" not in options:
        options.setdefault("api_key", SecretName("azure"))
    context = PluginContext(
        http=clients,
        clock=FixedClock(),
        secret=lambda name: {"azure": KEY, "entra": TOKEN}[name],
        logger=logging.getLogger("teckochecker.test.azure"),
        shared=SharedRegistry(),
    )
    return AzureOpenAIBatchSource(AzureOpenAIBatchOptions(endpoint=fake.endpoint, **options), context)


def check(clients: Clients, source: AzureOpenAIBatchSource, targets: list[str]) -> CheckReport:
    async def main() -> CheckReport:
        try:
            return await source.check(targets)
        finally:
            await clients.aclose()

    return asyncio.run(main())


# ----- the fake, through the official SDK's Azure client ---------------------------------------------


def test_the_sdk_azure_client_reads_the_classic_api_with_a_key(fake: FakeAzureOpenAI) -> None:
    batch_id = fake.add_batch(status="completed")
    client = openai.AzureOpenAI(api_key=KEY, api_version=VERSION, azure_endpoint=fake.endpoint, max_retries=0)
    assert client.batches.retrieve(batch_id).status == "completed"
    assert [b.id for b in client.batches.list()] == [batch_id]
    request = fake.requests[0]
    assert request.path == f"/openai/batches/{batch_id}" and request.query["api-version"] == [VERSION]
    assert request.headers["api-key"] == KEY


def test_the_sdk_reads_the_v1_api_with_an_entra_token(fake: FakeAzureOpenAI) -> None:
    batch_id = fake.add_batch(status="in_progress")
    client = openai.OpenAI(api_key=TOKEN, base_url=fake.v1_base_url, max_retries=0)
    assert client.batches.retrieve(batch_id).status == "in_progress"
    assert fake.requests[0].path == f"/openai/v1/batches/{batch_id}"
    with pytest.raises(openai.AuthenticationError) as denied:
        openai.OpenAI(api_key="wrong", base_url=fake.v1_base_url, max_retries=0).batches.list()
    assert denied.value.body == {"code": "401", "message": denied.value.body["message"]}  # type: ignore[index]


def test_the_fake_answers_a_missing_api_version_and_an_unknown_batch_like_azure(fake: FakeAzureOpenAI) -> None:
    no_version = httpx.get(f"{fake.classic_base_url}/batches", headers={"api-key": KEY}, trust_env=False)
    assert no_version.status_code == 404 and no_version.json() == {
        "error": {"code": "404", "message": "Resource not found"}
    }
    client = openai.AzureOpenAI(api_key=KEY, api_version=VERSION, azure_endpoint=fake.endpoint, max_retries=0)
    with pytest.raises(openai.NotFoundError) as missing:
        client.batches.retrieve("batch_" + "0" * 32)
    assert missing.value.body["code"] == "notFound"  # type: ignore[index]


# ----- the source ------------------------------------------------------------------------------------


def test_classic_api_with_the_api_key_header(fake: FakeAzureOpenAI, clients: Clients) -> None:
    batch_id = fake.add_batch(status="completed")
    report = check(clients, make_source(clients, fake, api_version=VERSION), [batch_id])
    assert [o.state for o in report.observations] == [TargetState.SUCCEEDED]
    request = fake.requests[-1]
    assert request.path == f"/openai/batches/{batch_id}" and request.query == {"api-version": [VERSION]}
    assert request.headers["api-key"] == KEY and "authorization" not in request.headers


def test_v1_api_with_an_entra_token(fake: FakeAzureOpenAI, clients: Clients) -> None:
    batch_id = fake.add_batch(status="failed")
    report = check(clients, make_source(clients, fake, entra_token=SecretName("entra")), [batch_id])
    assert [o.state for o in report.observations] == [TargetState.FAILED]
    request = fake.requests[-1]
    assert request.path == f"/openai/v1/batches/{batch_id}" and "api-version" not in request.query
    assert request.headers["authorization"] == f"Bearer {TOKEN}" and "api-key" not in request.headers


@pytest.mark.parametrize("version", [VERSION, None])
def test_the_listing_carries_the_api_version_too(fake: FakeAzureOpenAI, clients: Clients, version: str | None) -> None:
    ids = [fake.add_batch(status="in_progress") for _ in range(3)]
    report = check(clients, make_source(clients, fake, api_version=version, list_batches=True), ids)
    assert len(report.observations) == 3
    (listing,) = fake.requests
    assert listing.query.get("api-version") == ([version] if version else None)


def test_a_rejected_key_is_permanent_and_never_shown(fake: FakeAzureOpenAI, clients: Clients) -> None:
    batch_id = fake.add_batch()
    source = make_source(clients, fake, api_version=VERSION)
    source.context = PluginContext(
        http=clients, clock=FixedClock(), secret=lambda _: "wrong-key-CANARY", logger=logging.getLogger("t")
    )
    with pytest.raises(PermanentError, match="HTTP 401") as error:
        check(clients, source, [batch_id])
    assert "wrong-key-CANARY" not in str(error.value)


def test_a_429_in_microsofts_envelope_is_a_wait(fake: FakeAzureOpenAI, clients: Clients) -> None:
    batch_id = fake.add_batch()
    body = json.dumps({"error": {"code": "tooManyRequests", "message": "Rate limit is exceeded."}}).encode()
    fake.inject(429, body=body, headers={"retry-after": "9"})
    report = check(clients, make_source(clients, fake, api_version=VERSION), [batch_id])
    assert report.retry_after == 9 and report.transient_errors[batch_id].startswith("HTTP 429 from")
    assert report.excerpts[batch_id] == "Rate limit is exceeded."  # Microsoft's words, kept apart


def test_an_unknown_batch_is_an_error_observation(fake: FakeAzureOpenAI, clients: Clients) -> None:
    missing = "batch_" + "f" * 32
    report = check(clients, make_source(clients, fake, api_version=VERSION), [missing])
    (observation,) = report.observations
    assert observation.state is TargetState.ERROR and observation.details["error_code"] == "notFound"


def test_azure_spec_quirks_one_error_object_and_no_counts(fake: FakeAzureOpenAI, clients: Clients) -> None:
    batch_id = fake.add_batch(status="failed")
    quirky = fake.batch(batch_id)
    quirky["errors"] = {"object": "list", "data": {"code": "invalid_json_line", "message": "bad line", "line": "3"}}
    del quirky["request_counts"]
    fake.inject(200, body=json.dumps(quirky).encode(), batch_id=batch_id)
    (observation,) = check(clients, make_source(clients, fake, api_version=VERSION), [batch_id]).observations
    assert (observation.state, observation.message) == (TargetState.FAILED, "bad line")


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"api_key": "a", "entra_token": "b"}, "exactly one"),
        ({}, "exactly one"),
        ({"api_key": "a", "endpoint": "https://r.openai.azure.com/openai/v1"}, "without the /openai path"),
        ({"api_key": "a", "api_version": "latest"}, "api_version"),
    ],
)
def test_options_are_checked(options: dict[str, str], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        AzureOpenAIBatchOptions(**{"endpoint": "https://r.openai.azure.com", **options})  # type: ignore[arg-type]
