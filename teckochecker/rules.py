"""Pure decisions: does a job's trigger rule hold, does an action's condition hold, how did the job end."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from teckochecker.config.models import Condition, TriggerRule
from teckochecker.plugin_api import TargetState
from teckochecker.state.models import JobState, RunState


class Verdict(str, enum.Enum):
    WAIT = "wait"
    FIRE = "fire"
    # The rule can no longer hold (e.g. all_succeeded and a target failed): the job ends without firing.
    ABANDON = "abandon"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str = ""


def evaluate(rule: TriggerRule, states: Sequence[TargetState]) -> Decision:
    if rule is TriggerRule.ALL_SUCCEEDED:
        failed = sum(1 for s in states if s.is_terminal and not s.is_success)
        if failed:
            return Decision(
                Verdict.ABANDON, f"{failed} target(s) did not succeed and the trigger rule is all_succeeded"
            )
    if states and all(s.is_terminal for s in states):
        return Decision(Verdict.FIRE, f"all {len(states)} target(s) are finished")
    return Decision(Verdict.WAIT)


def condition_holds(when: Condition, states: Sequence[TargetState]) -> bool:
    all_ok = all(s.is_success for s in states)
    if when is Condition.ALL_SUCCEEDED:
        return all_ok
    if when is Condition.ANY_FAILED:
        return not all_ok
    return True


def final_job_state(target_states: Sequence[TargetState], run_states: Sequence[RunState]) -> JobState:
    if any(s in (RunState.FAILED, RunState.REJECTED) for s in run_states):
        return JobState.FAILED
    partial = any(not s.is_success for s in target_states) or RunState.SUCCEEDED_WITH_WARNINGS in run_states
    return JobState.COMPLETED_WITH_FAILURES if partial else JobState.COMPLETED
