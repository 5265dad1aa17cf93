"""Finding plugins: the ``teckochecker`` entry-point group (built-ins and third-party alike), plus
modules named in ``TECKOCHECKER_PLUGINS`` (comma-separated), the way pytest honours PYTEST_PLUGINS."""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pluggy

from teckochecker import hookspecs
from teckochecker.errors import PluginError
from teckochecker.plugin_api import Action, OptionsModel, Source

ENTRY_POINT_GROUP = hookspecs.PROJECT
PLUGINS_ENV = "TECKOCHECKER_PLUGINS"


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
    environ: Mapping[str, str], *, entry_points: bool = True, modules: Iterable[str] = ()
) -> PluginRegistry:
    """A fresh plugin manager and the types its plugins register. Duplicate type names are fatal."""
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
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
    return _collect(manager)


def _register_module(manager: pluggy.PluginManager, module_name: str) -> None:
    if manager.has_plugin(module_name):
        return
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PluginError(f"cannot import plugin module {module_name!r} (from {PLUGINS_ENV}): {exc}") from exc
    manager.register(module, name=module_name)


def _collect(manager: pluggy.PluginManager) -> PluginRegistry:
    registry = PluginRegistry()
    providers: dict[str, str] = {}
    versions = {id(plugin): dist.version for plugin, dist in manager.list_plugin_distinfo()}
    for plugin in manager.get_plugins():
        name = manager.get_name(plugin) or repr(plugin)
        sources = _call(plugin, "teckochecker_source_types", name)
        actions = _call(plugin, "teckochecker_action_types", name)
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


def _call(plugin: object, hook: str, name: str) -> list[Any]:
    impl = getattr(plugin, hook, None)
    if impl is None:
        return []
    try:
        return list(impl() or [])
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
