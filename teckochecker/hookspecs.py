"""The hooks a TeckoChecker plugin can implement. Every hook is prefixed ``teckochecker_``.

Hooks *register classes*; the daemon instantiates them per job. A plugin module implements a hook with
``@teckochecker.hookimpl`` and is announced through the ``teckochecker`` entry-point group.
"""

from __future__ import annotations

import pluggy

from teckochecker.plugin_api import Action, Source

PROJECT = "teckochecker"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def teckochecker_source_types() -> list[type[Source]]:  # type: ignore[empty-body]
    """Return the Source classes this plugin provides. Each has a unique ``type_name``."""


@hookspec
def teckochecker_action_types() -> list[type[Action]]:  # type: ignore[empty-body]
    """Return the Action classes this plugin provides. Each has a unique ``type_name``."""
