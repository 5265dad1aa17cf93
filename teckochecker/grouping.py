"""Grouping discovered batches into jobs: pure decisions over what a listing showed and the time, no I/O.

A batch belongs to a template's discovery when its metadata carries every ``match`` pair and a value for
``group_by``; batches with the same value form one group, which becomes one job (named ``name_prefix`` +
value). A group is

    waiting ──(count_key: as many batches listed as announced; or quiet: no new batch for that long)──▶ complete
       │
       └──(a count that is no whole number, counts that disagree, more batches than announced,
           or still waiting ``deadline`` after its first batch was listed)──▶ failed

Complete and failed are final: a batch of the group listed later is noted as late and never added, since
the job may already have fired with the batches it had. Times are the daemon's (when a batch was first
listed), not the vendor's ``created_at``, so a skewed vendor clock cannot complete or fail a group.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from teckochecker.config.discovery import DiscoverSpec
from teckochecker.config.durations import format_duration
from teckochecker.config.models import CONTROL_CHARACTERS, MAX_TARGET_LENGTH, MAX_TARGETS_PER_JOB, is_job_name
from teckochecker.plugin_api import ListedTarget

# Kept in a group's details for people to see; the rest are only counted.
MAX_LATE_KEPT = 20


class GroupState(str, enum.Enum):
    WAITING = "waiting"
    COMPLETE = "complete"
    FAILED = "failed"


@dataclass(frozen=True)
class Sighting:
    """What one listed batch says about its group."""

    target: str
    value: str
    # The raw value of the count key, if the batch carries one.
    count: str | None


@dataclass(frozen=True)
class Group:
    template: str
    value: str
    job_name: str
    targets: tuple[str, ...]
    first_seen: dt.datetime
    # When the group last gained a batch (the quiet period counts from here).
    grown_at: dt.datetime
    expected: int | None = None
    state: GroupState = GroupState.WAITING
    reason: str | None = None
    late: tuple[str, ...] = ()
    late_count: int = 0

    def details(self) -> dict[str, Any]:
        """The group as JSON, for the registered job's bookkeeping (restored by ``from_details``)."""
        return {
            "template": self.template,
            "group": self.value,
            "targets": list(self.targets),
            "first_seen": self.first_seen.isoformat(),
            "grown_at": self.grown_at.isoformat(),
            "expected": self.expected,
            "state": self.state.value,
            "reason": self.reason,
            "late": list(self.late),
            "late_count": self.late_count,
        }

    @classmethod
    def from_details(cls, job_name: str, details: Mapping[str, Any]) -> Group:
        return cls(
            template=str(details["template"]),
            value=str(details["group"]),
            job_name=job_name,
            targets=tuple(details["targets"]),
            first_seen=dt.datetime.fromisoformat(details["first_seen"]),
            grown_at=dt.datetime.fromisoformat(details["grown_at"]),
            expected=details.get("expected"),
            state=GroupState(details["state"]),
            reason=details.get("reason"),
            late=tuple(details.get("late") or ()),
            late_count=int(details.get("late_count") or 0),
        )

    def describe(self) -> str:
        """How far the group got, for people: '2 of 3 batches', '2 batches, quiet for 10m'."""
        seen = len(self.targets)
        if self.expected is not None:
            return f"{seen} of {self.expected} batch(es)"
        return f"{seen} batch(es)"


def sighting(rule: DiscoverSpec, listed: ListedTarget) -> Sighting | None:
    """The batch's group, or None when the batch is not this rule's (a pair differs, or no group value)."""
    metadata = listed.metadata
    if any(metadata.get(key) != value for key, value in rule.match.items()):
        return None
    value = metadata.get(rule.group_by)
    if not value:
        return None
    count = metadata.get(rule.count_key) if rule.count_key else None
    if not (_storable_target(listed.target) and _text(value) and (count is None or _text(count))):
        # A vendor's reply may hold JSON's "\ud800" (half of a UTF-16 pair): nothing can store it, and one such
        # batch stopped every pass of the template. An ID no job could hold is no group's.
        return None
    return Sighting(listed.target, value, count)


def _storable_target(target: str) -> bool:
    return _text(target) and len(target) <= MAX_TARGET_LENGTH and not CONTROL_CHARACTERS.search(target)


def _text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def job_name(rule: DiscoverSpec, value: str) -> str | None:
    """The job a group makes, or None when prefix + value is not a valid job name."""
    name = rule.name_prefix + value
    return name if is_job_name(name) else None


def by_group(rule: DiscoverSpec, listed: Iterable[ListedTarget]) -> dict[str, list[Sighting]]:
    """This rule's batches among ``listed``, by group value, in listing order."""
    groups: dict[str, list[Sighting]] = {}
    for target in listed:
        seen = sighting(rule, target)
        if seen is not None:
            groups.setdefault(seen.value, []).append(seen)
    return groups


def start(template: str, value: str, name: str, now: dt.datetime) -> Group:
    return Group(template, value, name, (), first_seen=now, grown_at=now)


def grow(group: Group, rule: DiscoverSpec, sightings: Sequence[Sighting], now: dt.datetime) -> Group:
    """The group with the batches among ``sightings`` it did not have yet; failed on bad metadata."""
    known = set(group.targets)
    new = [s for s in dict((s.target, s) for s in sightings).values() if s.target not in known]
    if not new:
        return group
    if group.state is not GroupState.WAITING:
        late = (*group.late, *(s.target for s in new))[:MAX_LATE_KEPT]
        return dataclasses.replace(group, late=late, late_count=group.late_count + len(new))
    grown = dataclasses.replace(group, targets=(*group.targets, *(s.target for s in new)), grown_at=now)
    problem = _count_problem(rule, grown, new)
    if problem is not None:
        return _failed(grown, problem)
    expected = grown.expected
    if expected is None and rule.count_key is not None:
        expected = next((int(s.count) for s in new if s.count is not None), None)
    grown = dataclasses.replace(grown, expected=expected)
    if expected is not None and len(grown.targets) > expected:
        return _failed(
            grown,
            f"{len(grown.targets)} batches carry {rule.group_by}={group.value!r}, "
            f"more than the {expected} announced by {rule.count_key}",
        )
    if len(grown.targets) > MAX_TARGETS_PER_JOB:
        return _failed(grown, f"more than {MAX_TARGETS_PER_JOB} batches, the most one job may watch")
    return grown


def settle(group: Group, rule: DiscoverSpec, now: dt.datetime) -> Group:
    """The group, complete or failed if the time or its batches say so; unchanged otherwise."""
    if group.state is not GroupState.WAITING:
        return group
    if group.expected is not None and len(group.targets) == group.expected:
        return dataclasses.replace(group, state=GroupState.COMPLETE)
    quiet_for = (now - group.grown_at).total_seconds()
    if group.expected is None and rule.quiet is not None and group.targets and quiet_for >= rule.quiet:
        return dataclasses.replace(group, state=GroupState.COMPLETE)
    if (now - group.first_seen).total_seconds() >= rule.deadline:
        return _failed(
            group,
            f"the group was not complete {format_duration(rule.deadline)} after its first batch was listed "
            f"({_how_far(group, rule)})",
        )
    return group


def _how_far(group: Group, rule: DiscoverSpec) -> str:
    if group.expected is not None:
        return f"{len(group.targets)} of the {group.expected} announced batches listed"
    if rule.quiet is None:
        return f"{len(group.targets)} batch(es) listed, none carrying {rule.count_key}"
    return f"{len(group.targets)} batch(es) listed, new ones kept coming"


def _count_problem(rule: DiscoverSpec, group: Group, new: Sequence[Sighting]) -> str | None:
    if rule.count_key is None:
        return None
    announced = {group.expected} if group.expected is not None else set()
    for seen in new:
        if seen.count is None:
            continue
        count = _whole_number(seen.count)
        if count is None:
            return f"batch {seen.target} has {rule.count_key}={seen.count[:40]!r}, which is not a whole number above 0"
        announced.add(count)
    if len(announced) > 1:
        return f"the batches disagree on {rule.count_key}: {', '.join(str(n) for n in sorted(announced))}"
    return None


def _whole_number(text: str) -> int | None:
    # isdecimal() also takes other scripts' digits; a count is plain ASCII.
    if not text.isascii() or not text.isdigit() or len(text) > 6:
        return None
    value = int(text)
    return value if value > 0 else None


def _failed(group: Group, reason: str) -> Group:
    return dataclasses.replace(group, state=GroupState.FAILED, reason=reason)
