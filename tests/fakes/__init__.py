"""Fake vendor servers (real HTTP on 127.0.0.1) for TeckoChecker's tests. See each module's docstring.

tests/ is not a package, so pytest puts tests/ on sys.path: import these as `from fakes import FakeOpenAI`.
"""

from ._http import RecordedRequest
from .keboola import FakeKeboola
from .openai import FakeOpenAI, Step

__all__ = ["FakeKeboola", "FakeOpenAI", "RecordedRequest", "Step"]
