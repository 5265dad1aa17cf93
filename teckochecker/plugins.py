"""Finding plugins: the ``teckochecker`` entry-point group (built-ins and third-party alike), plus
modules named in ``TECKOCHECKER_PLUGINS`` (comma-separated), the way pytest honours PYTEST_PLUGINS.

Hooks are called through pluggy's hook relay (``manager.hook``), never by attribute lookup: so only functions
marked ``@teckochecker.hookimpl`` take part, and ``TECKOCHECKER_TRACE_PLUGINS=1`` sees every call
(teckochecker.plugintrace).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pluggy

from teckochecker import hookspecs
from teckochecker.errors import PluginError
from teckochecker.plugin_api import Action, OptionsModel, Source
from teckochecker.plugintrace import TRACE_ENV, trace_hook_calls, tracing_requested

ENTRY_POINT_GROUP = hookspecs.PROJECT
PLUGINS_ENV = "TECKOCHECKER_PLUGINS"
# The distribution whose own entry points are the built-in plugins.
BUILTIN_DISTRIBUTION = "teckochecker"
LOGGER_NAME = "teckochecker.plugins"

__all__ = [
    "BUILTIN_DISTRIBUTION",
    "ENTRY_POINT_GROUP",
    "PLUGINS_ENV",
    "TRACE_ENV",
    "PluginInfo",
    "PluginRegistry",
    "builtin_plugin_modules",
    "load_builtin_plugins",
    "load_plugins",
]


@dataclass(frozen=True)
class PluginInfo:
    name: str
    version: str | None
    source_types: tuple[str, ...]
    action_types: tuple[str, ...]


@dataclass
class PluginRegistry:
    sources: dict[str, type[Source]] = field(default_factory=dict)
    actions: dict[str, type[Action]] = field(default_factory=dict)
    plugins: list[PluginInfo] = field(default_factory=list)


def load_plugins(
    environ: Mapping[str, str],
    *,
    entry_points: bool = True,
    modules: Iterable[str] = (),
    logger: logging.Logger | None = None,
) -> PluginRegistry:
    """A fresh plugin manager and the types its plugins register. Duplicate type names are fatal."""
    logger = logger or logging.getLogger(LOGGER_NAME)
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    if tracing_requested(environ):
        trace_hook_calls(manager, logger)
    if entry_points:
        try:
            manager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        except Exception as exc:  # a broken third-party plugin must say which one
            raise PluginError(f"cannot load a plugin from the {ENTRY_POINT_GROUP!r} entry points: {exc}") from exc
    extra = [m.strip() for m in environ.get(PLUGINS_ENV, "").split(",") if m.strip()]
    for module_name in [*modules, *extra]:
        _register_module(manager, module_name)
    try:
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(str(exc)) from exc
    _warn_unmarked(manager, logger)
    return _collect(manager)


def builtin_plugin_modules() -> tuple[str, ...]:
    """The modules the teckochecker distribution itself registers in the entry-point group."""
    dist = importlib.metadata.distribution(BUILTIN_DISTRIBUTION)
    return tuple(ep.module for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP)


def load_builtin_plugins(environ: Mapping[str, str]) -> PluginRegistry:
    """Only the plugins shipped with TeckoChecker: what the committed JSON Schema describes."""
    without_extra = {k: v for k, v in environ.items() if k != PLUGINS_ENV}
    return load_plugins(without_extra, entry_points=False, modules=builtin_plugin_modules())


def _register_module(manager: pluggy.PluginManager, module_name: str) -> None:
    if manager.has_plugin(module_name):
        return
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PluginError(f"cannot import plugin module {module_name!r} (from {PLUGINS_ENV}): {exc}") from exc
    manager.register(module, name=module_name)


def _warn_unmarked(manager: pluggy.PluginManager, logger: logging.Logger) -> None:
    """Say so when a plugin defines a hook's function without ``@hookimpl``: pluggy ignores it, and the
    plugin author would otherwise only see its types missing."""
    for plugin in manager.get_plugins():
        name = manager.get_name(plugin) or repr(plugin)
        for hook_name in _hook_names():
            caller = getattr(manager.hook, hook_name)
            marked = any(impl.plugin is plugin for impl in caller.get_hookimpls())
            if callable(getattr(plugin, hook_name, None)) and not marked:
                logger.warning(
                    "plugin %r defines %s() without @teckochecker.hookimpl, so it is not registered",
                    name,
                    hook_name,
                )


def _hook_names() -> list[str]:
    return sorted(name for name in vars(hookspecs) if name.startswith(f"{hookspecs.PROJECT}_"))


def _collect(manager: pluggy.PluginManager) -> PluginRegistry:
    registry = PluginRegistry()
    providers: dict[str, str] = {}
    versions = {id(plugin): dist.version for plugin, dist in manager.list_plugin_distinfo()}
    plugins = manager.get_plugins()
    for plugin in plugins:
        name = manager.get_name(plugin) or repr(plugin)
        others = [p for p in plugins if p is not plugin]
        sources = _call(manager, "teckochecker_source_types", plugin, others, name)
        actions = _call(manager, "teckochecker_action_types", plugin, others, name)
        for cls in sources:
            _add(registry.sources, cls, Source, name, providers, "source")
        for cls in actions:
            _add(registry.actions, cls, Action, name, providers, "action")
        if sources or actions:
            registry.plugins.append(
                PluginInfo(
                    name=name,
                    version=versions.get(id(plugin)),
                    source_types=tuple(c.type_name for c in sources),
                    action_types=tuple(c.type_name for c in actions),
                )
            )
    registry.plugins.sort(key=lambda p: p.name)
    return registry


def _call(manager: pluggy.PluginManager, hook: str, plugin: object, others: list[object], name: str) -> list[Any]:
    """``hook`` of one plugin only, through the relay (so tracing sees it): which plugin registered which
    type is needed for the duplicate check and the ``plugins`` listing."""
    caller = manager.subset_hook_caller(hook, remove_plugins=others)
    if not any(impl.plugin is plugin for impl in caller.get_hookimpls()):
        return []
    try:
        return [cls for result in caller() for cls in (result or [])]
    except Exception as exc:
        raise PluginError(f"plugin {name!r} failed in {hook}(): {exc}") from exc


def _add(table: dict[str, type], cls: type, base: type, plugin: str, providers: dict[str, str], kind: str) -> None:
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise PluginError(f"plugin {plugin!r} registered {cls!r} as a {kind} type, but it is not a {base.__name__}")
    type_name = getattr(cls, "type_name", None)
    options = getattr(cls, "Options", None)
    if not type_name or not (isinstance(options, type) and issubclass(options, OptionsModel)):
        raise PluginError(
            f"{kind} class {cls.__qualname__} of plugin {plugin!r} needs a type_name and an Options model"
        )
    key = f"{kind}:{type_name}"
    if key in providers:
        raise PluginError(
            f"{kind} type {type_name!r} is registered by both {providers[key]!r} and {plugin!r}; uninstall one"
        )
    providers[key] = plugin
    table[type_name] = cls
