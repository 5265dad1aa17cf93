"""Fake vendor servers (real HTTP on 127.0.0.1) for TeckoChecker's tests.

They live in the package (teckochecker.simulators) because `teckochecker demo` serves users with them too;
here they are set up the way tests want them: the fake Keboola checks every request against the Queue API
document. tests/ is not a package, so pytest puts tests/ on sys.path: `from fakes import FakeOpenAI`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from teckochecker.simulators import keboola as _keboola
from teckochecker.simulators._http import Latency, RecordedRequest
from teckochecker.simulators.anthropic import ANTHROPIC_VERSIONS, PROCESSING_STATUSES, FakeAnthropic
from teckochecker.simulators.azure import API_VERSIONS, FakeAzureOpenAI
from teckochecker.simulators.keboola import FINISHED_STATUSES, POST_FAULT_MODES
from teckochecker.simulators.openai import BATCH_STATUSES, TERMINAL_STATUSES, FakeOpenAI, Step
from teckochecker.simulators.webhook import Delivery, FakeWebhookReceiver

__all__ = [
    "ANTHROPIC_VERSIONS",
    "API_VERSIONS",
    "BATCH_STATUSES",
    "FINISHED_STATUSES",
    "KEBOOLA_OPENAPI",
    "POST_FAULT_MODES",
    "PROCESSING_STATUSES",
    "TERMINAL_STATUSES",
    "Delivery",
    "FakeAnthropic",
    "FakeAzureOpenAI",
    "FakeKeboola",
    "FakeOpenAI",
    "FakeWebhookReceiver",
    "Latency",
    "RecordedRequest",
    "Step",
    "response_violations",
]

KEBOOLA_OPENAPI = Path(__file__).resolve().parents[1] / "contracts" / "keboola-queue-openapi.yaml"


class FakeKeboola(_keboola.FakeKeboola):
    """The simulator, validating every queue request against the contract unless `validate=False`."""

    def __init__(self, *, validate: bool = True, **options: Any) -> None:
        super().__init__(openapi_spec=KEBOOLA_OPENAPI if validate else None, **options)


def response_violations(request: RecordedRequest, host_url: str, status: int, payload: Any) -> list[str]:
    return _keboola.response_violations(KEBOOLA_OPENAPI, request, host_url, status, payload)
