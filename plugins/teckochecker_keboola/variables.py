"""The variables a Keboola job receives about the finished set of batches (``variableValuesData``).

Names and shapes follow the original TeckoChecker, plus two file-id maps and the trigger marker that
``find_started`` searches for. Keboola rejects empty names and values, so nothing here is ever "".
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from teckochecker.plugin_api import ActionRequest, Observation, TargetState

__all__ = ["MARKER_VARIABLE", "RESERVED_VARIABLES", "compact_json", "job_variables"]

MARKER_VARIABLE = "teckochecker_trigger_id"
RESERVED_VARIABLES = frozenset(
    {
        "batch_ids_completed",
        "batch_ids_failed",
        "batch_count_total",
        "batch_count_completed",
        "batch_count_failed",
        "batch_output_file_ids",
        "batch_error_file_ids",
        MARKER_VARIABLE,
    }
)
# Every terminal state except success counts as failed; ERROR is a batch we could not observe any more.
_FAILED_STATES = frozenset({TargetState.FAILED, TargetState.EXPIRED, TargetState.CANCELLED, TargetState.ERROR})


def compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def job_variables(request: ActionRequest, extra: Mapping[str, str]) -> list[dict[str, str]]:
    """``variableValuesData.values``: the generated variables, then the user's own."""
    targets = request.targets
    completed = [o.target for o in targets if o.state is TargetState.SUCCEEDED]
    failed = [o.target for o in targets if o.state in _FAILED_STATES]
    generated = {
        "batch_ids_completed": compact_json(completed),
        "batch_ids_failed": compact_json(failed),
        "batch_count_total": str(len(targets)),
        "batch_count_completed": str(len(completed)),
        "batch_count_failed": str(len(failed)),
        "batch_output_file_ids": compact_json(_file_ids(targets, "output_file_id")),
        "batch_error_file_ids": compact_json(_file_ids(targets, "error_file_id")),
        MARKER_VARIABLE: request.trigger_id,
    }
    return [{"name": name, "value": value} for name, value in {**generated, **extra}.items()]


def _file_ids(targets: Iterable[Observation], key: str) -> dict[str, str]:
    # Batches without a file are left out, so the value is "{}" rather than "" when there are none.
    return {o.target: str(o.details[key]) for o in targets if o.details.get(key)}
