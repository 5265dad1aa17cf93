"""The variables a Keboola job receives about the finished set of batches (``variableValuesData``).

Names and shapes follow the original TeckoChecker, plus two file-id maps and the trigger marker that
``find_started`` searches for. Keboola rejects empty names and values, so nothing here is ever "".
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from teckochecker.plugin_api import ActionRequest
from teckochecker.trigger_facts import TriggerFacts

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
        "batch_results_urls",
        MARKER_VARIABLE,
    }
)


def compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def job_variables(request: ActionRequest, extra: Mapping[str, str]) -> list[dict[str, str]]:
    """``variableValuesData.values``: the generated variables, then the user's own."""
    facts = TriggerFacts.of(request)
    generated = {
        "batch_ids_completed": compact_json(list(facts.completed)),
        "batch_ids_failed": compact_json(list(facts.failed)),
        "batch_count_total": str(facts.total),
        "batch_count_completed": str(len(facts.completed)),
        "batch_count_failed": str(len(facts.failed)),
        # Batches without a file are left out, so the value is "{}" rather than "" when there are none.
        "batch_output_file_ids": compact_json(facts.output_file_ids),
        "batch_error_file_ids": compact_json(facts.error_file_ids),
        MARKER_VARIABLE: request.trigger_id,
    }
    if facts.results_urls:
        # Anthropic batches: one results file per batch. Only sent when there are some, so a Keboola
        # configuration watching OpenAI batches need not declare a variable it never gets.
        generated["batch_results_urls"] = compact_json(facts.results_urls)
    return [{"name": name, "value": value} for name, value in {**generated, **extra}.items()]
