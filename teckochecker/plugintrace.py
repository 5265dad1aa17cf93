"""``TECKOCHECKER_TRACE_PLUGINS=1``: log every hook call of a plugin manager, for plugin authors asking
"was my hook called, and what did it return?".

Only names are logged, never values: a hook's arguments are shown as ``name=<type>`` and its results as
class names (``module.Class``) or types, so a secret passed to or returned by a hook cannot reach the log.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pluggy

TRACE_ENV = "TECKOCHECKER_TRACE_PLUGINS"
_OFF = ("", "0", "false", "no", "off")


def tracing_requested(environ: Mapping[str, str]) -> bool:
    return environ.get(TRACE_ENV, "").strip().lower() not in _OFF


def trace_hook_calls(manager: pluggy.PluginManager, logger: logging.Logger) -> None:
    """Log each hook call before (hook, plugins, argument names) and after (result shape or error)."""

    def before(hook_name: str, impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, object]) -> None:
        logger.info(
            "plugin hook %s(%s) calling %s", hook_name, _arguments(kwargs), ", ".join(_plugins(impls)) or "nobody"
        )

    def after(
        outcome: pluggy.Result[Any], hook_name: str, impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, object]
    ) -> None:
        if outcome.exception is not None:
            logger.info("plugin hook %s raised %s", hook_name, type(outcome.exception).__name__)
            return
        logger.info("plugin hook %s returned %s", hook_name, describe(outcome.get_result()))

    manager.add_hookcall_monitoring(before, after)


def _plugins(impls: Sequence[pluggy.HookImpl]) -> list[str]:
    return [impl.plugin_name for impl in impls]


def _arguments(kwargs: Mapping[str, object]) -> str:
    return ", ".join(f"{name}=<{type(value).__name__}>" for name, value in kwargs.items())


def describe(value: object) -> str:
    """A value's shape without its content: classes by qualified name, containers element-wise, the rest
    by type."""
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_each(value)) + "]"
    if value is None:
        return "None"
    return f"<{type(value).__name__}>"


def _each(values: Iterable[object]) -> list[str]:
    return [describe(v) for v in values]
