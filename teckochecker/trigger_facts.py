"""What every action passes downstream about a finished set of targets, whatever its transport: which
batches completed and which failed, the counts, and where their results are.

The Keboola action sends these as job variables, the webhook action as a JSON document; both read them
from here, so a receiver sees the same facts whichever action fired.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from teckochecker.plugin_api import ActionRequest, Observation, TargetState

__all__ = ["FAILED_STATES", "TriggerFacts"]

# Every terminal state except success counts as failed; ERROR is a batch we could not observe any more.
FAILED_STATES = frozenset({TargetState.FAILED, TargetState.EXPIRED, TargetState.CANCELLED, TargetState.ERROR})


@dataclass(frozen=True)
class TriggerFacts:
    completed: tuple[str, ...]
    failed: tuple[str, ...]
    total: int
    # Target → file id / URL, only for targets that have one (never "": some clients see "" for "no file").
    output_file_ids: dict[str, str]
    error_file_ids: dict[str, str]
    # Anthropic's one JSONL of every request's result (successes and errors), per batch.
    results_urls: dict[str, str]

    @classmethod
    def of(cls, request: ActionRequest) -> TriggerFacts:
        targets = request.targets
        return cls(
            completed=tuple(o.target for o in targets if o.state is TargetState.SUCCEEDED),
            failed=tuple(o.target for o in targets if o.state in FAILED_STATES),
            total=len(targets),
            output_file_ids=_detail_map(targets, "output_file_id"),
            error_file_ids=_detail_map(targets, "error_file_id"),
            results_urls=_detail_map(targets, "results_url"),
        )


def _detail_map(targets: Iterable[Observation], key: str) -> dict[str, str]:
    return {o.target: str(o.details[key]) for o in targets if o.details.get(key)}
