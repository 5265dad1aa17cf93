"""An example TeckoChecker plugin: the ``json_status`` source and the ``json_file`` action.

Announced through the ``teckochecker`` entry-point group in this distribution's pyproject.toml. Each hook
is marked ``@hookimpl``; a function with a hook's name but without the marker is ignored (with a warning).
"""

from __future__ import annotations

from teckochecker import hookimpl
from teckochecker.plugin_api import Action, Source
from teckochecker_example.action import JsonFileAction, JsonFileOptions
from teckochecker_example.source import JsonStatusOptions, JsonStatusSource

__all__ = [
    "JsonFileAction",
    "JsonFileOptions",
    "JsonStatusOptions",
    "JsonStatusSource",
    "teckochecker_action_types",
    "teckochecker_source_types",
]


@hookimpl
def teckochecker_source_types() -> list[type[Source]]:
    return [JsonStatusSource]


@hookimpl
def teckochecker_action_types() -> list[type[Action]]:
    return [JsonFileAction]
