"""Fake vendor servers (real HTTP on 127.0.0.1) for TeckoChecker's tests. See each module's docstring."""

from ._http import RecordedRequest
from .keboola import FakeKeboola
from .openai import FakeOpenAI

__all__ = ["FakeKeboola", "FakeOpenAI", "RecordedRequest"]
