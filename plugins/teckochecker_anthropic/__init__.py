"""Built-in plugin: the ``anthropic_batch`` source, which watches Anthropic Message Batches.

Registered through the ``teckochecker`` entry-point group like any third-party plugin.
"""

from __future__ import annotations

from teckochecker import hookimpl
from teckochecker.plugin_api import Source
from teckochecker_anthropic.source import AnthropicBatchOptions, AnthropicBatchSource
from teckochecker_anthropic.statuses import PROCESSING_STATUSES, batch_state

__all__ = [
    "PROCESSING_STATUSES",
    "AnthropicBatchOptions",
    "AnthropicBatchSource",
    "batch_state",
    "teckochecker_source_types",
]


@hookimpl
def teckochecker_source_types() -> list[type[Source]]:
    return [AnthropicBatchSource]
