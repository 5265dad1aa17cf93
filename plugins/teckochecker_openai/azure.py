"""The ``azure_openai_batch`` source: OpenAI batches on an Azure OpenAI resource.

Azure serves the same Batch objects as OpenAI (docs/vendors.md, Azure), so this is the ``openai_batch`` source
with Azure's addressing and credentials:

- ``endpoint`` is the resource URL as the Azure portal shows it (``https://<resource>.openai.azure.com``);
- with ``api_version`` the classic API is used (``{endpoint}/openai/batches?api-version=...``), without it
  the v1 API (``{endpoint}/openai/v1/batches``);
- the credential is either ``api_key`` (sent as the ``api-key`` header) or ``entra_token`` (a Microsoft Entra
  access token, sent as ``Authorization: Bearer``). Secrets are read per request, so a token file that an
  agent refreshes every hour is used as soon as it changes.

A type of its own rather than options of ``openai_batch``: the YAML then says what the portal says (an
endpoint and an api-version, not a base URL that must end in the right path), and the two credentials are
one choice that the validator checks, instead of a header-name switch that only makes sense on Azure.
"""

from __future__ import annotations

from typing import Self

from pydantic import Field, field_validator, model_validator

from teckochecker.plugin_api import Destination, Duration, OptionsModel, PluginContext, SecretName, http_url
from teckochecker_openai.source import OpenAIBatchOptions, OpenAIBatchSource

__all__ = ["AzureOpenAIBatchOptions", "AzureOpenAIBatchSource"]


class AzureOpenAIBatchOptions(OptionsModel):
    endpoint: Destination
    # e.g. 2024-10-21 or 2025-04-01-preview: the classic API. Omitted: the v1 API.
    api_version: str | None = Field(default=None, pattern=r"^\d{4}-\d{2}-\d{2}(-preview)?$")
    api_key: SecretName | None = None
    entra_token: SecretName | None = None
    timeout: Duration = Field(default=30.0, gt=0)
    list_batches: bool = True
    list_max_age: Duration = Field(default=10.0, ge=1.0, le=3600.0)

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, value: str) -> str:
        url = http_url(value, "https://my-resource.openai.azure.com")
        if url.endswith("/openai") or "/openai/" in url:
            raise ValueError(f"give the resource endpoint without the /openai path, e.g. {url.split('/openai')[0]}")
        return url

    @model_validator(mode="after")
    def _one_credential(self) -> Self:
        if (self.api_key is None) == (self.entra_token is None):
            raise ValueError("set exactly one of api_key (the resource's key) and entra_token (a bearer token)")
        return self

    @property
    def base_url(self) -> str:
        return f"{self.endpoint}/openai" if self.api_version else f"{self.endpoint}/openai/v1"


class AzureOpenAIBatchSource(OpenAIBatchSource):
    type_name = "azure_openai_batch"
    Options = AzureOpenAIBatchOptions  # type: ignore[assignment]
    vendor = "Azure OpenAI"

    def __init__(self, options: OptionsModel, context: PluginContext) -> None:
        assert isinstance(options, AzureOpenAIBatchOptions)
        self.azure = options
        credential = options.api_key or options.entra_token
        assert credential is not None  # the validator made sure
        # Everything else (listing, account back-off, judging answers) is the OpenAI source's. Built without
        # validating again: every value was validated as an Azure option (durations are seconds by now).
        openai_options = OpenAIBatchOptions.model_construct(
            api_key=credential,
            base_url=options.base_url,
            timeout=options.timeout,
            list_batches=options.list_batches,
            list_max_age=options.list_max_age,
        )
        super().__init__(openai_options, context)

    def _auth_headers(self) -> dict[str, str]:
        if self.azure.api_key is not None:
            return {"api-key": self.context.secret(self.azure.api_key)}
        return super()._auth_headers()

    def _query(self) -> dict[str, str]:
        return {"api-version": self.azure.api_version} if self.azure.api_version else {}
