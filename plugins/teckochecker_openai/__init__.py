"""Built-in plugin: the ``openai_batch`` source, which watches OpenAI Batch API batches, and
``azure_openai_batch`` for the same batches on an Azure OpenAI resource.

Registered through the ``teckochecker`` entry-point group like any third-party plugin.
"""

from __future__ import annotations

from teckochecker import hookimpl
from teckochecker.plugin_api import Source
from teckochecker_openai.azure import AzureOpenAIBatchOptions, AzureOpenAIBatchSource
from teckochecker_openai.source import OpenAIBatchOptions, OpenAIBatchSource
from teckochecker_openai.statuses import BATCH_STATUSES, batch_state

__all__ = [
    "BATCH_STATUSES",
    "AzureOpenAIBatchOptions",
    "AzureOpenAIBatchSource",
    "OpenAIBatchOptions",
    "OpenAIBatchSource",
    "batch_state",
    "teckochecker_source_types",
]


@hookimpl
def teckochecker_source_types() -> list[type[Source]]:
    return [OpenAIBatchSource, AzureOpenAIBatchSource]
