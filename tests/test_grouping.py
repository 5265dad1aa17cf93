"""Grouping discovered batches into jobs: pure decisions, with the time given by the test."""

from __future__ import annotations

import datetime as dt

import pytest

from teckochecker.config.discovery import DiscoverSpec
from teckochecker.grouping import Group, GroupState, by_group, grow, job_name, settle, start
from teckochecker.plugin_api import ListedTarget, TargetState

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
COUNTED = DiscoverSpec.model_validate(
    {
        "match": {"teckochecker_template": "classify"},
        "group_by": "teckochecker_job",
        "count_key": "teckochecker_batches",
        "deadline": "1h",
        "name_prefix": "classify-",
    }
)
QUIET = DiscoverSpec.model_validate(
    {"match": {"teckochecker_template": "classify"}, "group_by": "teckochecker_job", "quiet": "10m", "deadline": "1h"}
)


def batch(batch_id: str, **metadata: str) -> ListedTarget:
    return ListedTarget(batch_id, TargetState.RUNNING, "in_progress", metadata, T0)


def mine(batch_id: str, job: str = "run-7", count: str | None = "3") -> ListedTarget:
    extra = {"teckochecker_batches": count} if count is not None else {}
    return batch(batch_id, teckochecker_template="classify", teckochecker_job=job, **extra)


def sweep(group: Group, rule: DiscoverSpec, listed: list[ListedTarget], at: dt.datetime) -> Group:
    sightings = by_group(rule, listed).get(group.value, [])
    return settle(grow(group, rule, sightings, at), rule, at)


def new_group(rule: DiscoverSpec = COUNTED, value: str = "run-7") -> Group:
    name = job_name(rule, value)
    assert name is not None
    return start("classify", value, name, T0)


def test_only_matching_batches_with_a_group_value_are_grouped() -> None:
    listed = [
        mine("b1"),
        mine("b2", job="run-8"),
        batch("other", teckochecker_template="summarize", teckochecker_job="run-7"),
        batch("no-group", teckochecker_template="classify"),
        batch("empty-group", teckochecker_template="classify", teckochecker_job=""),
        batch("plain"),
    ]
    groups = by_group(COUNTED, listed)
    assert {value: [s.target for s in seen] for value, seen in groups.items()} == {"run-7": ["b1"], "run-8": ["b2"]}


def test_job_name_is_prefix_plus_value_and_must_be_a_valid_name() -> None:
    assert job_name(COUNTED, "run-7") == "classify-run-7"
    assert job_name(QUIET, "run-7") == "run-7"
    assert job_name(QUIET, "../etc") is None
    assert job_name(QUIET, "a" * 129) is None
    assert job_name(COUNTED, "x y") is None


def test_a_counted_group_grows_and_completes_when_all_announced_batches_are_listed() -> None:
    group = sweep(new_group(), COUNTED, [mine("b1"), mine("b2")], T0)
    assert group.state is GroupState.WAITING and group.targets == ("b1", "b2") and group.expected == 3
    assert group.describe() == "2 of 3 batch(es)"
    # The same batches listed again change nothing.
    assert sweep(group, COUNTED, [mine("b2"), mine("b1")], T0 + dt.timedelta(minutes=5)) == group
    group = sweep(group, COUNTED, [mine("b3"), mine("b2"), mine("b1")], T0 + dt.timedelta(minutes=6))
    assert group.state is GroupState.COMPLETE and group.targets == ("b1", "b2", "b3")


def test_a_count_that_is_not_a_whole_number_fails_the_group() -> None:
    for bad in ("three", "0", "-1", "2.0", "٣", " 3", "9999999"):
        group = sweep(new_group(), COUNTED, [mine("b1", count=bad)], T0)
        assert group.state is GroupState.FAILED, bad
        assert group.reason is not None and "teckochecker_batches=" in group.reason
        assert "not a whole number" in group.reason


def test_more_batches_than_announced_fails_the_group() -> None:
    listed = [mine("b1", count="2"), mine("b2", count="2"), mine("b3", count="2")]
    group = sweep(new_group(), COUNTED, listed, T0)
    assert group.state is GroupState.FAILED
    assert group.reason == "3 batches carry teckochecker_job='run-7', more than the 2 announced by teckochecker_batches"


def test_batches_that_disagree_on_the_count_fail_the_group() -> None:
    group = sweep(new_group(), COUNTED, [mine("b1", count="3")], T0)
    group = sweep(group, COUNTED, [mine("b2", count="4")], T0 + dt.timedelta(minutes=1))
    assert group.state is GroupState.FAILED
    assert group.reason == "the batches disagree on teckochecker_batches: 3, 4"


def test_a_group_that_never_completes_fails_at_its_deadline_not_before() -> None:
    group = sweep(new_group(), COUNTED, [mine("b1")], T0)
    almost = settle(group, COUNTED, T0 + dt.timedelta(minutes=59, seconds=59))
    assert almost.state is GroupState.WAITING
    failed = settle(group, COUNTED, T0 + dt.timedelta(hours=1))
    assert failed.state is GroupState.FAILED
    assert failed.reason == (
        "the group was not complete 1h after its first batch was listed (1 of the 3 announced batches listed)"
    )


def test_without_a_count_the_group_completes_after_the_quiet_period() -> None:
    group = sweep(new_group(QUIET), QUIET, [mine("b1", count=None)], T0)
    group = sweep(group, QUIET, [mine("b2", count=None)], T0 + dt.timedelta(minutes=8))
    # Quiet counts from the last new batch: 9m59s after b2, still waiting.
    assert settle(group, QUIET, T0 + dt.timedelta(minutes=17, seconds=59)).state is GroupState.WAITING
    done = settle(group, QUIET, T0 + dt.timedelta(minutes=18))
    assert done.state is GroupState.COMPLETE and done.targets == ("b1", "b2")


def test_a_group_whose_batches_keep_coming_past_the_deadline_fails() -> None:
    group = new_group(QUIET)
    for minute in range(0, 61, 5):
        group = sweep(group, QUIET, [mine(f"b{minute}", count=None)], T0 + dt.timedelta(minutes=minute))
    assert group.state is GroupState.FAILED
    assert group.reason is not None and "new ones kept coming" in group.reason


def test_a_count_key_rule_falls_back_to_quiet_when_no_batch_announces_a_count() -> None:
    both = COUNTED.model_copy(update={"quiet": 300.0})
    group = sweep(new_group(both), both, [mine("b1", count=None)], T0)
    assert group.expected is None and group.state is GroupState.WAITING
    assert settle(group, both, T0 + dt.timedelta(minutes=5)).state is GroupState.COMPLETE
    # Without quiet, such a group can only wait for its deadline.
    alone = sweep(new_group(), COUNTED, [mine("b1", count=None)], T0)
    failed = settle(alone, COUNTED, T0 + dt.timedelta(hours=1))
    assert failed.reason is not None and "none carrying teckochecker_batches" in failed.reason


def test_batches_listed_after_the_group_ended_are_late_never_added() -> None:
    group = sweep(new_group(), COUNTED, [mine("b1", count="1")], T0)
    assert group.state is GroupState.COMPLETE
    later = sweep(group, COUNTED, [mine("b2", count="1"), mine("b1", count="1")], T0 + dt.timedelta(minutes=1))
    assert later.state is GroupState.COMPLETE and later.targets == ("b1",)
    assert later.late == ("b2",) and later.late_count == 1


def test_a_group_survives_a_round_trip_through_its_details() -> None:
    group = sweep(new_group(), COUNTED, [mine("b1"), mine("b2")], T0)
    assert Group.from_details(group.job_name, group.details()) == group


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"group_by": "g", "quiet": "1m"}, "match"),
        ({"match": {"a": "b"}, "group_by": "g"}, "say how a group is known to be complete"),
        ({"match": {"a": "b"}, "group_by": "a", "quiet": "1m"}, "different metadata keys"),
        ({"match": {"a": "b"}, "group_by": "g", "count_key": "g"}, "different metadata keys"),
        ({"match": {"a": "b"}, "group_by": "k" * 65, "quiet": "1m"}, "at most 64"),
        ({"match": {f"k{i}": "v" for i in range(16)}, "group_by": "g", "quiet": "1m"}, "at most 15 pairs"),
        ({"match": {"a": "b"}, "group_by": "g", "quiet": "1m", "name_prefix": "../"}, "a job name's start"),
        ({"match": {"a": "b"}, "group_by": "g", "quiet": "1m", "max_pages": 0}, "greater than or equal to 1"),
    ],
)
def test_bad_discover_sections_are_refused(section: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DiscoverSpec.model_validate(section)
