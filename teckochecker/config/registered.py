"""What a job that did not come from a file may set: a job registered over the API (origin ``api``) or made
by discovery (origin ``discovered``) is a template from the files plus its targets, a ``variables`` mapping
and the fields its template declares ``overridable:``. Where requests go and with which credentials only
the files say, so a pipeline's ``register`` token cannot point the daemon's secrets at its own listener.

The template key ``overridable:`` lists paths, each alone or with the values it may take::

    overridable:
      - interval
      - {path: "actions[0].config", one_of: ["101", "102"]}

A path is ``interval``, ``deadline``, ``trigger`` or ``actions[N].OPTION``, OPTION being one of the action's
options that neither names a secret (``SecretName``) nor says where requests go (``Destination``).
"""

from __future__ import annotations

import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from teckochecker.config.diagnostics import Path, format_path
from teckochecker.config.durations import parse_duration
from teckochecker.plugin_api import Destination, OptionsModel, SecretName
from teckochecker.plugins import PluginRegistry

OVERRIDABLE = "overridable"
VARIABLES = "variables"
# What every registered body may set, whatever its template declares.
ALWAYS = ("name", "template", "source.targets", VARIABLES)
JOB_FIELDS = ("interval", "deadline", "trigger")
_PATH = re.compile(r"(?P<field>interval|deadline|trigger)|actions\[(?P<index>[0-9]{1,3})\]\.(?P<option>[A-Za-z_]\w*)")
# The same, for the JSON Schema.
PATH_PATTERN = r"^(interval|deadline|trigger|actions\[[0-9]{1,3}\]\.[A-Za-z_]\w*)$"

# A problem as a path inside what was checked and a message; the caller locates it.
Problem = tuple[Path, str]


@dataclass(frozen=True)
class Overridable:
    """One path a template lets a registered body set, and the values it may take (None: any valid one)."""

    path: str
    one_of: tuple[Any, ...] | None = None

    def allows(self, value: Any) -> bool:
        return self.one_of is None or any(_same(value, allowed) for allowed in self.one_of)


def _same(value: Any, allowed: Any) -> bool:
    if value == allowed and type(value) is type(allowed):
        return True
    try:  # "60s" and "1m" are one interval
        return parse_duration(value) == parse_duration(allowed)
    except ValueError:
        return False


def overridable_of(
    raw: Any, template: Mapping[str, Any], registry: PluginRegistry
) -> tuple[dict[str, Overridable], list[Problem]]:
    """A template's ``overridable:`` list, checked against its actions; problem paths are relative to it."""
    if raw is None:
        return {}, []
    if not isinstance(raw, list):
        return {}, [((), "must be a list of paths (interval, deadline, trigger, actions[N].OPTION)")]
    found: dict[str, Overridable] = {}
    problems: list[Problem] = []
    for index, item in enumerate(raw):
        entry, problem = _entry(item)
        if problem is not None:
            problems.append(((index, *problem[0]), problem[1]))
            continue
        assert entry is not None
        refused = _path_problem(entry.path, template, registry)
        if refused is not None:
            where: Path = (index, "path") if isinstance(item, dict) else (index,)
            problems.append((where, refused))
        elif entry.path in found:
            problems.append(((index,), f"{entry.path} is listed twice"))
        else:
            found[entry.path] = entry
    return found, problems


def _entry(item: Any) -> tuple[Overridable | None, Problem | None]:
    if isinstance(item, str):
        return Overridable(item), None
    if not isinstance(item, dict):
        return None, ((), "write a path, or {path: PATH, one_of: [VALUE, ...]}")
    unknown = sorted(str(k) for k in item if k not in ("path", "one_of"))
    if unknown:
        return None, ((unknown[0],), "unknown key (an entry is a path, or {path: PATH, one_of: [VALUE, ...]})")
    path, one_of = item.get("path"), item.get("one_of")
    if not isinstance(path, str):
        return None, (("path",), "required: the path a registered job may set")
    if not isinstance(one_of, list) or not one_of:
        return None, (("one_of",), "must be a non-empty list of the values a registered job may choose")
    return Overridable(path, tuple(one_of)), None


def _path_problem(path: str, template: Mapping[str, Any], registry: PluginRegistry) -> str | None:
    match = _PATH.fullmatch(path)
    if match is None:
        return f"unknown path {path!r}: write interval, deadline, trigger or actions[N].OPTION"
    if match["field"]:
        return None
    index, option = int(match["index"]), match["option"]
    actions = template.get("actions")
    action = actions[index] if isinstance(actions, list) and index < len(actions) else None
    if not isinstance(action, dict):
        count = len(actions) if isinstance(actions, list) else 0
        return f"the template has no action {index} (it has {count})"
    cls = registry.actions.get(str(action.get("type")))
    if cls is None:
        return None  # the unknown type is reported where the action is
    return _option_problem(cls.Options, option, str(action.get("type")))


def _option_problem(options: type[OptionsModel], option: str, type_name: str) -> str | None:
    """Why ``option`` of an action cannot be made overridable, or None when it can."""
    fields = options.model_fields
    if option == VARIABLES and option in fields:
        return "variables need not be declared: a registered job may always set them (its top-level variables:)"
    if option not in fields:
        known = ", ".join(sorted(fields)) or "none"
        return f"the {type_name} action has no option {option!r} (options: {known})"
    annotation = fields[option].annotation
    if _mentions(annotation, Destination):
        return "a template cannot make a destination overridable: only the files say where requests go"
    if _mentions(annotation, SecretName):
        return "a template cannot make a secret overridable: only the files name the credentials a job uses"
    return None


def _mentions(annotation: Any, kind: type) -> bool:
    """Whether a field's declared type is ``kind`` or holds it (``kind | None``, ``list[kind]``)."""
    if annotation is kind:
        return True
    return any(_mentions(arg, kind) for arg in typing.get_args(annotation))


def names_secret(options: type[OptionsModel], option: str) -> bool:
    info = options.model_fields.get(option)
    return info is not None and _mentions(info.annotation, SecretName)


def _accepts_variables(options: type[OptionsModel]) -> bool:
    return VARIABLES in options.model_fields


# ----- a body -----


def allowed_paths(overridable: Mapping[str, Overridable]) -> str:
    """What a body with this template may set, for the messages that refuse anything else."""
    return ", ".join((*ALWAYS, *overridable))


def shape_problems(
    body: Mapping[str, Any],
    template_name: str,
    template: Mapping[str, Any],
    overridable: Mapping[str, Overridable],
    registry: PluginRegistry,
) -> list[Problem]:
    """What ``body`` sets that a registered job may not (paths relative to the body). Values are checked
    later, by the validator, exactly as a file job's are."""
    problems: list[Problem] = []

    def refuse(path: Path) -> None:
        why = _reason(_option_type(path, template, registry), template_name)
        allowed = allowed_paths(overridable)
        message = f"a registered job may not set {format_path(path)}: {why}. With this template it may set: {allowed}"
        problems.append((path, message))

    for key, value in body.items():
        if key in ("name", "template"):
            continue
        if key == "source":
            if not isinstance(value, dict):
                problems.append((("source",), "must be a mapping: {targets: [ID, ...]}"))
                continue
            for inner in value:
                if inner != "targets":
                    refuse(("source", str(inner)))
        elif key == VARIABLES:
            problems += _variables_problems(value, template_name, template, registry)
        elif key in JOB_FIELDS:
            if key not in overridable:
                refuse((key,))
            else:
                problems += _value_problems((key,), value, overridable[key])
        elif key == "actions":
            problems += _actions_problems(value, template, overridable, refuse)
        else:
            refuse((str(key),))
    return problems


def _option_type(path: Path, template: Mapping[str, Any], registry: PluginRegistry) -> Any:
    """The declared type of the plugin option at ``path`` of a body (None: no plugin option there)."""
    cls: Any = None
    if len(path) == 2 and path[0] == "source":
        source = template.get("source")
        cls = registry.sources.get(str(source.get("type"))) if isinstance(source, dict) else None
    elif len(path) == 3 and path[0] == "actions" and isinstance(path[1], int):
        actions = _actions_of(template)
        action = actions[path[1]] if path[1] < len(actions) else None
        cls = registry.actions.get(str(action.get("type"))) if isinstance(action, dict) else None
    info = cls.Options.model_fields.get(str(path[-1])) if cls is not None else None
    return info.annotation if info is not None else None


def _reason(annotation: Any, template_name: str) -> str:
    if _mentions(annotation, Destination):
        return "the files say where requests go"
    if _mentions(annotation, SecretName):
        return "the files say which credentials a job uses"
    return f"template {template_name!r} does not list it under {OVERRIDABLE}:"


def _variables_problems(
    value: Any, template_name: str, template: Mapping[str, Any], registry: PluginRegistry
) -> list[Problem]:
    if not isinstance(value, dict):
        return [((VARIABLES,), "must be a mapping of names to values")]
    if not _variable_actions(template, registry):
        return [((VARIABLES,), f"no action of template {template_name!r} accepts variables")]
    return []


def _actions_problems(
    value: Any, template: Mapping[str, Any], overridable: Mapping[str, Overridable], refuse: Any
) -> list[Problem]:
    problems: list[Problem] = []
    actions = _actions_of(template)
    if not isinstance(value, list):
        return [
            (("actions",), "must be a list: per action of the template, in order, the options it sets ({} for none)")
        ]
    if len(value) > len(actions):
        return [(("actions",), f"the template has {len(actions)} action(s); this lists {len(value)}")]
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            problems.append((("actions", index), "must be a mapping of the options it sets ({} for none)"))
            continue
        for option, option_value in item.items():
            entry = overridable.get(f"actions[{index}].{option}")
            if entry is None:
                refuse(("actions", index, str(option)))
            else:
                problems += _value_problems(("actions", index, str(option)), option_value, entry)
    return problems


def _value_problems(path: Path, value: Any, entry: Overridable) -> list[Problem]:
    if entry.allows(value):
        return []
    allowed = ", ".join(repr(v) for v in entry.one_of or ())
    return [(path, f"the template allows only: {allowed}")]


def _variable_actions(template: Mapping[str, Any], registry: PluginRegistry) -> list[int]:
    actions = _actions_of(template)
    found = []
    for index, action in enumerate(actions):
        cls = registry.actions.get(str(action.get("type"))) if isinstance(action, dict) else None
        if cls is not None and _accepts_variables(cls.Options):
            found.append(index)
    return found


def file_form(body: Mapping[str, Any], template: Mapping[str, Any], registry: PluginRegistry) -> dict[str, Any]:
    """The job ``body`` stands for, as it would be written in a file (``template:`` plus its own keys): the
    body's ``variables`` merged over each accepting action's, its action options over the template's actions.
    Only for a body without shape problems."""
    job: dict[str, Any] = {key: body[key] for key in ("name", "template", "source", *JOB_FIELDS) if key in body}
    overrides = body.get("actions") or []
    variables = body.get(VARIABLES)
    if not overrides and not variables:
        return job
    actions = [dict(a) for a in template.get("actions") or []]
    for index, options in enumerate(overrides):
        actions[index].update(options)
    for index in _variable_actions(template, registry) if variables else ():
        merged = actions[index].get(VARIABLES)
        actions[index][VARIABLES] = {**(merged if isinstance(merged, dict) else {}), **(variables or {})}
    job["actions"] = actions
    return job


def _actions_of(template: Mapping[str, Any]) -> list[Any]:
    actions = template.get("actions")
    return actions if isinstance(actions, list) else []
