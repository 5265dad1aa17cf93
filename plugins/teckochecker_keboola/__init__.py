"""Built-in plugin: the ``keboola_job`` action, which starts a Keboola Queue job once and follows it.

Registered through the ``teckochecker`` entry-point group like any third-party plugin.
"""

from __future__ import annotations

from teckochecker import hookimpl
from teckochecker.plugin_api import Action
from teckochecker_keboola.action import KeboolaJobAction, job_body
from teckochecker_keboola.options import KeboolaJobOptions
from teckochecker_keboola.queue import guess_queue_url, parse_time
from teckochecker_keboola.statuses import JOB_STATUSES, job_outcome
from teckochecker_keboola.variables import MARKER_VARIABLE, RESERVED_VARIABLES, job_variables

__all__ = [
    "JOB_STATUSES",
    "MARKER_VARIABLE",
    "RESERVED_VARIABLES",
    "KeboolaJobAction",
    "KeboolaJobOptions",
    "guess_queue_url",
    "job_body",
    "job_outcome",
    "job_variables",
    "parse_time",
    "teckochecker_action_types",
]


@hookimpl
def teckochecker_action_types() -> list[type[Action]]:
    return [KeboolaJobAction]
