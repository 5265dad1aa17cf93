"""Failing conditions of a job, logged once per change instead of once per tick.

A job that cannot reach its vendor fails the same way on every tick. Logging each failure would bury
the log; logging none leaves a foreground run silent while `status` shows the error. So each job has
one condition per kind (its checks, its action steps, its reconciling searches): a WARNING when the
condition appears or its reason changes, an INFO when it clears.

Reasons differ per target and per attempt (a URL with the batch ID, a job ID, a retry count), so two
reasons are compared on a key without the member names and with every number blanked out.
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Iterable, Mapping

_NUMBER = re.compile(r"\d+")


class ConditionKind(enum.Enum):
    CHECK = "check"
    ACTION = "action step"
    RECONCILE = "reconcile"


# What each kind failed to do, and what it counts.
_WHAT = {
    ConditionKind.CHECK: ("could not check", "target"),
    ConditionKind.ACTION: ("action step failed for", "action"),
    ConditionKind.RECONCILE: ("reconcile deferred for", "action"),
}


def reason_key(reason: str, members: Iterable[str]) -> str:
    """What stays of a reason when the member it is about and every count are taken out."""
    names = [re.escape(name) for name in sorted(set(members), key=len, reverse=True) if name]
    if names:
        # Whole names only: target "a" must not eat the "a" of "batches".
        reason = re.sub(rf"(?<![\w-])(?:{'|'.join(names)})(?![\w-])", "<member>", reason)
    return _NUMBER.sub("#", reason)


class ConditionLog:
    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        # (job, kind) → the key of the reason last logged; absent while the condition is clear.
        self._open: dict[tuple[str, ConditionKind], str] = {}

    def update(self, job: str, kind: ConditionKind, failing: Mapping[str, str], total: int) -> None:
        """Report how the condition stands now: ``failing`` maps each failing member to its reason (empty
        when all went well) out of ``total`` members."""
        if not failing:
            self.clear(job, kind)
            return
        reason = next(iter(failing.values()))
        key = reason_key(reason, failing)
        if self._open.get((job, kind)) == key:
            return
        self._open[(job, kind)] = key
        what, noun = _WHAT[kind]
        self._log.warning(
            "job %s: %s %d of %d %s(s): %s", job, what, len(failing), max(total, len(failing)), noun, reason
        )

    def clear(self, job: str, kind: ConditionKind) -> None:
        if self._open.pop((job, kind), None) is not None:
            self._log.info("job %s: %s recovered", job, kind.value)

    def forget(self, job: str) -> None:
        """Drop a finished job's conditions without a word: it has nothing left to recover from."""
        for key in [k for k in self._open if k[0] == job]:
            del self._open[key]
