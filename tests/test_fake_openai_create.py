"""The fake OpenAI's create call: batch metadata on create and in list/get, within the contract's limits
(docs/vendors.md, OpenAI batches: at most 16 pairs, keys of at most 64 characters, values of at most 512), driven by
the official SDK the way a pipeline would call it."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from fakes import FakeOpenAI

KEY = "sk-test-key"


@pytest.fixture
def oai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=KEY) as fake:
        yield fake


def client(fake: FakeOpenAI) -> openai.OpenAI:
    return openai.OpenAI(api_key=KEY, base_url=fake.base_url, max_retries=0)


def test_metadata_given_on_create_is_shown_by_get_and_list(oai: FakeOpenAI) -> None:
    sdk = client(oai)
    metadata = {"teckochecker_template": "classify", "teckochecker_job": "run-7", "k" * 64: "v" * 512}
    metadata |= {f"pair{i}": str(i) for i in range(13)}
    assert len(metadata) == 16
    created = sdk.batches.create(
        input_file_id="file-abc", endpoint="/v1/chat/completions", completion_window="24h", metadata=metadata
    )
    assert created.status == "validating" and created.metadata == metadata and created.input_file_id == "file-abc"
    assert sdk.batches.retrieve(created.id).metadata == metadata
    plain = sdk.batches.create(input_file_id="file-def", endpoint="/v1/embeddings", completion_window="24h")
    assert plain.metadata is None
    listed = {b.id: b.metadata for b in sdk.batches.list(limit=100)}
    assert listed == {created.id: metadata, plain.id: None}


@pytest.mark.parametrize(
    ("metadata", "param", "words"),
    [
        ({f"k{i}": "v" for i in range(17)}, "metadata", "at most 16 properties"),
        ({"k" * 65: "v"}, "metadata", "at most 64 characters"),
        ({"k": "v" * 513}, "metadata.k", "maximum length 512"),
        ({"k": 3}, "metadata.k", "expected a string"),
    ],
)
def test_metadata_beyond_the_limits_is_refused_and_nothing_is_created(
    oai: FakeOpenAI, metadata: dict[str, object], param: str, words: str
) -> None:
    sdk = client(oai)
    with pytest.raises(openai.BadRequestError) as info:
        sdk.batches.create(
            input_file_id="file-abc",
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata=metadata,  # type: ignore[arg-type]
        )
    assert info.value.param == param and words in info.value.message
    assert list(sdk.batches.list()) == []


def test_create_checks_its_required_fields(oai: FakeOpenAI) -> None:
    sdk = client(oai)
    with pytest.raises(openai.BadRequestError) as info:
        sdk.batches.create(input_file_id="file-abc", endpoint="/v1/nope", completion_window="24h")  # type: ignore[arg-type]
    assert info.value.param == "endpoint"
    with pytest.raises(openai.BadRequestError) as info:
        sdk.batches.create(input_file_id="file-abc", endpoint="/v1/embeddings", completion_window="48h")  # type: ignore[arg-type]
    assert info.value.param == "completion_window"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(api_key="sk-wrong", base_url=oai.base_url, max_retries=0).batches.create(
            input_file_id="file-abc", endpoint="/v1/embeddings", completion_window="24h"
        )
    assert list(sdk.batches.list()) == []
