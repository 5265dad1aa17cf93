"""Simulated vendor APIs on 127.0.0.1: OpenAI's Batch API and a Keboola stack (connection + Queue API).

Real HTTP servers that follow shared/contracts to the letter. The tests drive the daemon against them, and
`teckochecker demo` lets a user without credentials or network watch the daemon work.
"""

from teckochecker.simulators._http import Latency, RecordedRequest
from teckochecker.simulators.keboola import FakeKeboola
from teckochecker.simulators.openai import FakeOpenAI, Step

__all__ = ["FakeKeboola", "FakeOpenAI", "Latency", "RecordedRequest", "Step"]
