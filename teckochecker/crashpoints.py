"""Named points where a test can make the daemon die as if the power went out.

``TECKOCHECKER_CRASHPOINT=after_intent_commit`` (or ``name:N`` for the N-th time) makes the process send
itself SIGKILL there. Unset in production; checking it costs one dict lookup.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping

ENV = "TECKOCHECKER_CRASHPOINT"
POINTS = frozenset(
    {"after_check_commit", "after_intent_commit", "after_start_response", "after_adopt", "during_follow"}
)


class CrashPoints:
    def __init__(self, environ: Mapping[str, str]) -> None:
        spec = environ.get(ENV, "").strip()
        name, _, nth = spec.partition(":")
        if name and name not in POINTS:
            raise ValueError(f"{ENV}={spec!r}: unknown point; known: {', '.join(sorted(POINTS))}")
        self._name = name or None
        self._remaining = int(nth) if nth else 1

    def hit(self, name: str) -> None:
        if name != self._name:
            return
        self._remaining -= 1
        if self._remaining <= 0:
            os.kill(os.getpid(), signal.SIGKILL)
