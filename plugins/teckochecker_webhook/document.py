"""The JSON document the ``webhook`` action sends: the Standard Webhooks payload shape (``type``,
``timestamp``, ``data``) around the same facts the Keboola action passes as job variables."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from teckochecker.plugin_api import ActionRequest
from teckochecker.trigger_facts import TriggerFacts

__all__ = ["EVENT_TYPE", "webhook_document"]

EVENT_TYPE = "teckochecker.trigger.fired"


def webhook_document(request: ActionRequest, variables: Mapping[str, str]) -> dict[str, Any]:
    facts = TriggerFacts.of(request)
    return {
        "type": EVENT_TYPE,
        # When the trigger fired, not when this attempt was sent: the body is the same on every attempt.
        "timestamp": request.fired_at.isoformat(),
        "data": {
            "trigger_id": request.trigger_id,
            "job": request.job_name,
            "batch_ids_completed": list(facts.completed),
            "batch_ids_failed": list(facts.failed),
            "batch_count_total": facts.total,
            "batch_count_completed": len(facts.completed),
            "batch_count_failed": len(facts.failed),
            "batch_output_file_ids": facts.output_file_ids,
            "batch_error_file_ids": facts.error_file_ids,
            "batch_results_urls": facts.results_urls,
            "variables": dict(variables),
        },
    }


def encode(document: Mapping[str, Any]) -> bytes:
    """The exact bytes that are signed and sent (the receiver verifies these, never a re-serialization)."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
