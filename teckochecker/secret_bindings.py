"""Where each secret may be sent, derived from the config files alone.

A secret is bound to the origins of the plugin parts (a source's options, an action's options) that name it
in the files, its file jobs and its templates: each part's ``OptionsModel.bound_origins()`` (its
``Destination`` options, plus what the plugin derives from them). A secret's own ``send_to:`` adds origins by
hand. A secret no plugin part names (``http.api_token``, ``http.tokens``, ``webhooks.secrets``) is bound to
nothing, so it is never sent. Jobs registered over the API or made by discovery add nothing: what they may
reach, the files already said.
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from teckochecker.config.validate import Config, _secret_names
from teckochecker.plugin_api import Action, Destination, OptionsModel, Origin, SecretName, Source
from teckochecker.plugins import PluginRegistry

# The keys of a plugin part that are the core's, not the plugin's options.
_SOURCE_KEYS = frozenset({"type", "targets"})
_ACTION_KEYS = frozenset({"type", "when"})


@dataclass(frozen=True)
class SecretBindings:
    """Each secret's allowed origins, and every origin the files name (which may be reached wherever its
    name resolves, a private address included)."""

    by_secret: Mapping[str, frozenset[Origin]] = field(default_factory=dict)
    named: frozenset[Origin] = frozenset()
    # The secrets behind http.api_token, http.tokens and webhooks.secrets: their values go nowhere, even when
    # the same value is also defined under a job's secret name.
    daemon_own: frozenset[str] = frozenset()

    def origins(self, secret: str) -> frozenset[Origin]:
        return self.by_secret.get(secret, frozenset())

    def allows(self, secret: str, origin: Origin) -> bool:
        return origin in self.origins(secret)

    def names_host(self, host: str, port: int) -> bool:
        """Whether the files name this host and port (under either scheme)."""
        return (host.lower(), port) in self._named_hosts

    @functools.cached_property
    def _named_hosts(self) -> frozenset[tuple[str, int]]:
        return frozenset((origin.host, origin.port) for origin in self.named)


def secret_bindings(config: Config, registry: PluginRegistry) -> SecretBindings:
    by_secret: dict[str, set[Origin]] = {
        name: {Origin.of(url) for url in ref.send_to} for name, ref in config.secrets.items()
    }
    named: set[Origin] = {origin for origins in by_secret.values() for origin in origins}
    for options in _file_parts(config, registry):
        try:
            origins = options.bound_origins()
            # Field by field: a template's part built without validation may lack a field its jobs fill in.
            present = {name: getattr(options, name) for name in type(options).model_fields if hasattr(options, name)}
            secrets = [str(name) for _, name in _secret_names(present, ())]
        except (AttributeError, ValueError):
            continue  # a template's part too incomplete to say anything; no job can be made of it as it is
        named |= origins
        for secret in secrets:
            by_secret.setdefault(secret, set()).update(origins)
    daemon_own = frozenset({token.secret for token in config.http.bearer_tokens()} | set(config.webhooks.secrets))
    return SecretBindings(
        {name: frozenset(origins) for name, origins in by_secret.items()}, frozenset(named), daemon_own
    )


def _file_parts(config: Config, registry: PluginRegistry) -> Iterator[OptionsModel]:
    """Every plugin part's options in the files: the file jobs' (templates merged), the templates' own."""
    for job in config.jobs.values():
        yield job.source.options
        yield from (action.options for action in job.actions)
    for discovery in config.discoveries.values():
        yield discovery.source.options
    for body in config.template_bodies.values():
        source = body.get("source")
        if isinstance(source, dict):
            yield from _template_part(registry.sources, source, _SOURCE_KEYS)
        actions = body.get("actions")
        for action in actions if isinstance(actions, list) else ():
            if isinstance(action, dict):
                yield from _template_part(registry.actions, action, _ACTION_KEYS)


def _template_part(
    table: Mapping[str, type[Source] | type[Action]], raw: Mapping[str, Any], core_keys: frozenset[str]
) -> Iterator[OptionsModel]:
    """A template's plugin part as options. A template may leave out what its jobs fill in (a Keboola
    config id): then the fields that did validate are kept and the rest left at their defaults."""
    type_name = raw.get("type")
    cls = table.get(type_name) if isinstance(type_name, str) else None
    if cls is None:
        return
    model: type[OptionsModel] = cls.Options
    options = {k: v for k, v in raw.items() if k not in core_keys}
    try:
        yield model.model_validate(options)
        return
    except ValidationError as exc:
        failed = {error["loc"][0] for error in exc.errors() if error["loc"]}
    if failed & _fields_of(model, Destination):
        return  # a default in place of a wrong destination would bind the secret to a place nobody wrote
    kept = {k: v for k, v in options.items() if k in model.model_fields and k not in failed}
    # Built without validation, so a secret's name is typed here as validation would have typed it.
    for name in _fields_of(model, SecretName) & set(kept):
        if isinstance(kept[name], str):
            kept[name] = SecretName(kept[name])
    yield model.model_construct(**kept)


def _fields_of(model: type[OptionsModel], kind: type) -> set[str]:
    """The fields typed ``kind`` or ``kind | None``."""
    return {
        name
        for name, info in model.model_fields.items()
        if info.annotation is kind or kind in typing.get_args(info.annotation)
    }
