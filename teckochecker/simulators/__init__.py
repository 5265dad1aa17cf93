"""Simulated vendor APIs on 127.0.0.1: OpenAI's Batch API (also behind Azure's URLs), Anthropic's Message
Batches, a Keboola stack (connection + Queue API) and a Standard Webhooks receiver.

Real HTTP servers that follow the facts in docs/vendors.md to the letter. The tests drive the daemon against them, and
`teckochecker demo` lets a user without credentials or network watch the daemon work.
"""

from teckochecker.simulators._http import Latency, RecordedRequest
from teckochecker.simulators.anthropic import FakeAnthropic
from teckochecker.simulators.azure import FakeAzureOpenAI
from teckochecker.simulators.keboola import FakeKeboola
from teckochecker.simulators.openai import FakeOpenAI, Step
from teckochecker.simulators.webhook import FakeWebhookReceiver

__all__ = [
    "FakeAnthropic",
    "FakeAzureOpenAI",
    "FakeKeboola",
    "FakeOpenAI",
    "FakeWebhookReceiver",
    "Latency",
    "RecordedRequest",
    "Step",
]
