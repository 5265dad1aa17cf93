"""Config files + plugin registry → a validated, immutable Config, or every problem at once.

The daemon and ``validate-config`` both call ``load_config``: one validator for CI and runtime.
It opens no network connection and no state store.
"""

from __future__ import annotations

import builtins
import dataclasses
import hashlib
import json
from collections import ChainMap
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any, cast

from pydantic import BaseModel, ValidationError

from teckochecker.config.diagnostics import Diagnostic, Mark, Path
from teckochecker.config.discovery import DiscoverSpec
from teckochecker.config.includes import include_directory_problem, include_matches
from teckochecker.config.loader import Document, load_file, load_text
from teckochecker.config.models import (
    Condition,
    ConfigFile,
    Defaults,
    HttpSettings,
    JobSpec,
    SecretRef,
    StateSettings,
    TriggerRule,
    WebhookSettings,
)
from teckochecker.config.registered import (
    OVERRIDABLE,
    VARIABLES,
    Overridable,
    file_form,
    names_secret,
    overridable_of,
    shape_problems,
)
from teckochecker.errors import ConfigError
from teckochecker.plugin_api import Action, OptionsModel, SecretName, Source
from teckochecker.plugins import PluginRegistry


@dataclass(frozen=True)
class SourceDefinition:
    type: str
    targets: tuple[str, ...]
    options: OptionsModel
    cls: builtins.type[Source]  # builtins: the field "type" above shadows the name here


@dataclass(frozen=True)
class ActionDefinition:
    index: int
    type: str
    when: Condition
    options: OptionsModel
    cls: builtins.type[Action]


@dataclass(frozen=True)
class JobDefinition:
    name: str
    source: SourceDefinition
    actions: tuple[ActionDefinition, ...]
    trigger: TriggerRule
    interval: float
    deadline: float
    file: str
    # Changes whenever anything about the job changes; a reload compares these.
    fingerprint: str
    # Where the job starts in its file (FILE:LINE names it when the API refuses to change a file job).
    line: int = 1


@dataclass(frozen=True)
class DiscoveryDefinition:
    """A template that makes jobs of the batches it discovers (templates.NAME.discover)."""

    template: str
    rule: DiscoverSpec
    # The template's source, checked as a job would be: what discovery lists with.
    source: SourceDefinition


@dataclass(frozen=True)
class Config:
    file: str
    state: StateSettings
    http: HttpSettings
    log_level: str
    secrets: Mapping[str, SecretRef]
    defaults: Defaults
    jobs: Mapping[str, JobDefinition]
    # Every file the config was read from (the main file first), and the drop-in directories.
    files: tuple[str, ...] = ()
    include_dirs: tuple[FsPath, ...] = ()
    include: tuple[str, ...] = ()
    templates: tuple[str, ...] = ()
    # Templates with a discover: section, by template name.
    discoveries: Mapping[str, DiscoveryDefinition] = dataclasses.field(default_factory=dict)
    # The templates' bodies, so a job registered over the API can be validated against this config.
    template_bodies: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    # Per template, what a registered job may set besides its targets and variables (templates.X.overridable).
    overridables: Mapping[str, Mapping[str, Overridable]] = field(default_factory=dict)

    def summary(self) -> str:
        targets = sum(len(j.source.targets) for j in self.jobs.values())
        drop_ins = f", {len(self.files) - 1} drop-in file(s)" if len(self.files) > 1 else ""
        return f"{self.file}: OK: {len(self.jobs)} job(s), {targets} target(s), {len(self.secrets)} secret(s){drop_ins}"


def load_config(
    path: FsPath, registry: PluginRegistry, *, overlay: Mapping[FsPath, str | None] | None = None
) -> Config:
    """Load and validate ``path`` and its drop-ins. Raises ConfigError carrying every diagnostic, sorted by place.

    ``overlay`` replaces the text of drop-in files (None: the file is absent), so that a change can be
    validated as a whole before it is written.
    """
    document, diagnostics = load_file(path)
    config = None
    if document.data is not None:
        # Duplicate keys are reported, and the rest of the document is still checked.
        config, problems = _validate_document(document, registry, dict(overlay or {}))
        diagnostics += problems
    if diagnostics or config is None:
        raise ConfigError(sorted(diagnostics, key=lambda d: (d.mark, d.message)))
    return config


@dataclass(frozen=True)
class _RawJob:
    data: Any
    path: Path
    doc: Document


def _validate_document(
    doc: Document, registry: PluginRegistry, overlay: dict[FsPath, str | None]
) -> tuple[Config | None, list[Diagnostic]]:
    if not isinstance(doc.data, dict):
        return None, [
            Diagnostic(doc.mark_for(()), (), "the file must be a mapping of keys (state, secrets, jobs, ...)")
        ]
    top, diagnostics = _validate_model(ConfigFile, {**doc.data, "jobs": []}, (), doc)
    raw_jobs = _jobs_of(doc, diagnostics, drop_in=False)
    include_dirs, drop_ins = _drop_in_documents(doc, top, overlay, diagnostics)
    for drop_in in drop_ins:
        raw_jobs += _jobs_of(drop_in, diagnostics, drop_in=True)
    # Undefined-secret checks still work when another part of the top level is invalid.
    raw_secrets = doc.data.get("secrets")
    secrets = top.secrets if top else (dict.fromkeys(raw_secrets) if isinstance(raw_secrets, dict) else {})
    defaults = top.defaults if top else Defaults()
    templates = top.templates if top else {}
    template_marks = _template_marks(doc)
    discoveries = _discoveries(doc, templates, registry, secrets, defaults, diagnostics)
    overridables = _overridables(doc, templates, registry, diagnostics)
    reserved = _operator_secrets(top) if top is not None else {}
    diagnostics += _template_secret_problems(doc, templates, registry, reserved)
    jobs: dict[str, JobDefinition] = {}
    for raw in raw_jobs:
        diagnostics += _job_secret_problems(raw, templates, registry, reserved)
        raw = _with_template(raw, templates, template_marks, diagnostics)
        job, problems = _validate_job(raw.data, raw.path, raw.doc, registry, secrets, defaults, echo_secrets=True)
        diagnostics.extend(problems)
        if job is None:
            continue
        if job.name in jobs:
            where = raw.doc.mark_for((*raw.path, "name"))
            diagnostics.append(
                Diagnostic(
                    where, (*raw.path, "name"), f"duplicate job name {job.name!r} (also in {jobs[job.name].file})"
                )
            )
            continue
        jobs[job.name] = job
    if top is not None:
        diagnostics += _token_secret_problems(top, doc)
    if top is not None:
        diagnostics += _webhook_problems(top, doc)
    if top is None or diagnostics:
        return None, diagnostics
    config = Config(
        file=doc.file,
        state=top.state,
        http=top.http,
        log_level=top.log_level,
        secrets=dict(top.secrets),
        defaults=top.defaults,
        jobs=jobs,
        files=(doc.file, *(d.file for d in drop_ins)),
        include_dirs=include_dirs,
        include=tuple(top.include),
        templates=tuple(sorted(top.templates)),
        discoveries=discoveries,
        template_bodies=dict(top.templates),
        webhooks=top.webhooks,
        overridables=overridables,
    )
    return config, []


def _overridables(
    doc: Document, templates: Mapping[str, Any], registry: PluginRegistry, diagnostics: list[Diagnostic]
) -> dict[str, dict[str, Overridable]]:
    found = {}
    for name, template in templates.items():
        if not isinstance(template, dict):
            continue
        declared, problems = overridable_of(template.get(OVERRIDABLE), template, registry)
        for inner, message in problems:
            where = ("templates", name, OVERRIDABLE, *inner)
            diagnostics.append(Diagnostic(doc.mark_for(where), where, message))
        found[name] = declared
    return found


def _operator_secrets(top: ConfigFile) -> dict[str, str]:
    """The secrets that hold the API's bearer tokens and the webhook signing secrets, by name → where."""
    reserved = {name: "webhooks.secrets" for name in top.webhooks.secrets}
    reserved |= {token.secret: "http.tokens" for token in top.http.tokens}
    if top.http.api_token:
        reserved[top.http.api_token] = "http.api_token"
    return reserved


def _template_secret_problems(
    doc: Document, templates: Mapping[str, Any], registry: PluginRegistry, reserved: Mapping[str, str]
) -> list[Diagnostic]:
    problems = []
    for name, template in templates.items():
        if isinstance(template, dict):
            problems += _plugin_secret_problems(template, template, ("templates", name), doc, registry, reserved)
    return problems


def _job_secret_problems(
    raw: _RawJob, templates: Mapping[str, Any], registry: PluginRegistry, reserved: Mapping[str, str]
) -> list[Diagnostic]:
    """Only what the job writes itself: what it takes from its template is reported at the template."""
    if not isinstance(raw.data, dict):
        return []
    name = raw.data.get("template")
    template = templates.get(name) if isinstance(name, str) else None
    return _plugin_secret_problems(raw.data, template or {}, raw.path, raw.doc, registry, reserved)


def _plugin_secret_problems(
    own: Mapping[str, Any],
    template: Mapping[str, Any],
    path: Path,
    doc: Document,
    registry: PluginRegistry,
    reserved: Mapping[str, str],
) -> list[Diagnostic]:
    """A plugin option of ``own`` (a job or template) that names a secret holding a bearer token or a webhook
    signing secret: a job could otherwise send the operator's credential to wherever its plugin connects."""
    if not reserved:
        return []
    parts: list[tuple[Path, Any, Any]] = []
    source, base = own.get("source"), template.get("source")
    if isinstance(source, dict):
        kind = source.get("type", base.get("type") if isinstance(base, dict) else None)
        parts.append(((*path, "source"), source, registry.sources.get(kind) if isinstance(kind, str) else None))
    actions = own.get("actions")
    for index, action in enumerate(actions if isinstance(actions, list) else []):
        if isinstance(action, dict) and isinstance(action.get("type"), str):
            parts.append(((*path, "actions", index), action, registry.actions.get(action["type"])))
    problems = []
    for where, part, cls in parts:
        for option, value in part.items() if cls is not None else ():
            if isinstance(value, str) and value in reserved and names_secret(cls.Options, str(option)):
                at = (*where, option)
                message = (
                    f"secret {value!r} holds a credential of the daemon itself ({reserved[value]}); "
                    "a job's plugin may never send it anywhere: give the job a secret of its own"
                )
                problems.append(Diagnostic(doc.mark_for(at), at, message))
    return problems


# The name a template with discover: is checked under, as if it were a job with one target.
_PROBE_NAME = "discovered"


def _discoveries(
    doc: Document,
    templates: Mapping[str, dict[str, Any]],
    registry: PluginRegistry,
    secrets: Mapping[str, Any],
    defaults: Defaults,
    diagnostics: list[Diagnostic],
) -> dict[str, DiscoveryDefinition]:
    """Every template's discover: section, and the template checked as the job it will make, so that a
    template that cannot make a valid job is refused now rather than when its first batch is listed."""
    found: dict[str, DiscoveryDefinition] = {}
    for name, template in templates.items():
        if not isinstance(template, dict) or "discover" not in template:
            continue
        path: Path = ("templates", name)
        rule, problems = _validate_model(DiscoverSpec, template["discover"], (*path, "discover"), doc)
        diagnostics.extend(problems)
        raw = {k: v for k, v in template.items() if k not in ("discover", OVERRIDABLE)}
        source = raw["source"] if isinstance(raw.get("source"), dict) else {}
        probe = {**raw, "name": _PROBE_NAME, "source": {**source, "targets": ["probe"]}}
        job, problems = _validate_job(probe, path, doc, registry, secrets, defaults, echo_secrets=True)
        diagnostics.extend(problems)
        if job is None or rule is None:
            continue
        if not job.source.cls.supports_discovery:
            where = (*path, "source", "type")
            message = f"source type {job.source.type!r} cannot discover batches (it has no listing to read)"
            diagnostics.append(Diagnostic(doc.mark_for(where), where, message))
            continue
        found[name] = DiscoveryDefinition(name, rule, job.source)
    return found


def registered_shape_problems(body: Any, config: Config, registry: PluginRegistry, *, where: str) -> list[Diagnostic]:
    """What a registered body (origin api or discovered) sets that only a file may: it names a template and
    sets only its targets, variables and what the template declares overridable (config/registered.py)."""
    doc = Document(where, body, {})
    if not isinstance(body, dict):
        return [Diagnostic(doc.mark_for(()), (), "a registered job is a JSON object: a template and its targets")]
    name = body.get("template")
    if name is None:
        message = (
            "a registered job names a template from the files (defined: "
            f"{', '.join(sorted(config.template_bodies)) or 'none'}) and sets its targets"
        )
        return [Diagnostic(doc.mark_for(("template",)), ("template",), message)]
    template = config.template_bodies.get(name) if isinstance(name, str) else None
    if template is None:
        return []  # an unknown template is the validator's to report, with the defined ones
    problems = shape_problems(body, name, template, config.overridables.get(name, {}), registry)
    return [Diagnostic(doc.mark_for(path), path, message) for path, message in problems]


def validate_job_body(
    body: Any, config: Config, registry: PluginRegistry, *, where: str
) -> tuple[JobDefinition | None, list[Diagnostic]]:
    """One registered job (over the API, or stored), validated exactly as a job in the config's files
    would be, against its templates, secrets and defaults, once its shape is one a registered job may have
    (``registered_shape_problems``). Diagnostic paths are relative to the body (``source.targets[2]``);
    ``where`` names it in place of a file. Unknown secret names are not echoed back: a caller who pasted a
    value where a name belongs must not see it in the answer."""
    doc = Document(where, body, {})
    diagnostics = registered_shape_problems(body, config, registry, where=where)
    if not isinstance(body, dict) or "template" not in body:
        return None, diagnostics
    # What the body may set is still checked, so the answer lists every problem at once.
    body = _without(body, [d.path for d in diagnostics])
    # A hostile body's template may be a list or an object, which no dict key can be.
    template = config.template_bodies.get(body["template"]) if isinstance(body["template"], str) else None
    job = file_form(body, template, registry) if template is not None else body
    raw = _with_template(_RawJob(job, (), doc), config.template_bodies, {}, diagnostics)
    job, problems = _validate_job(raw.data, (), doc, registry, config.secrets, config.defaults, echo_secrets=False)
    if VARIABLES in body:
        problems = _as_body_variables(problems)
    diagnostics += problems
    return (None if diagnostics else job), diagnostics


def _as_body_variables(problems: list[Diagnostic]) -> list[Diagnostic]:
    """A problem with the variables an action got is one of the body's ``variables`` (merged into each action
    that takes them): named there, and once, not once per action."""
    found: dict[tuple[Path, str], Diagnostic] = {}
    for problem in problems:
        path = problem.path
        if len(path) >= 3 and path[0] == "actions" and path[2] == VARIABLES:
            problem = Diagnostic(problem.mark, (VARIABLES, *path[3:]), problem.message)
        found.setdefault((problem.path, problem.message), problem)
    return list(found.values())


def _without(body: dict[str, Any], paths: list[Path]) -> dict[str, Any]:
    """``body`` without the values at ``paths`` (copied where they are taken out; the rest is shared)."""
    copy = dict(body)
    for path in paths:
        parent: Any = copy
        for part in path[:-1]:
            child = parent[part]
            child = dict(child) if isinstance(child, dict) else list(child)
            parent[part] = child
            parent = child
        if path and isinstance(parent, dict):
            parent.pop(path[-1], None)
        elif path and isinstance(parent, list) and isinstance(path[-1], int):
            parent[path[-1]] = {}
    return copy


def _token_secret_problems(top: ConfigFile, doc: Document) -> list[Diagnostic]:
    named: list[tuple[Path, str]] = [(("http", "api_token"), top.http.api_token)] if top.http.api_token else []
    named += [(("http", "tokens", i, "secret"), t.secret) for i, t in enumerate(top.http.tokens)]
    defined = ", ".join(sorted(top.secrets)) or "none"
    return [
        Diagnostic(doc.mark_for(path), path, f"secret {name!r} is not defined under 'secrets:' (defined: {defined})")
        for path, name in named
        if name not in top.secrets
    ]


def _webhook_problems(top: ConfigFile, doc: Document) -> list[Diagnostic]:
    hooks = top.webhooks
    problems = []
    where: Path
    defined = ", ".join(sorted(top.secrets)) or "none"
    for index, name in enumerate(hooks.secrets):
        if name not in top.secrets:
            where = ("webhooks", "secrets", index)
            message = f"secret {name!r} is not defined under 'secrets:' (defined: {defined})"
            problems.append(Diagnostic(doc.mark_for(where), where, message))
    if hooks.enabled and not hooks.secrets:
        where = ("webhooks", "port")
        message = (
            "the webhook receiver needs webhooks.secrets: the name(s) of secrets holding the endpoint's "
            "signing secret (whsec_...); without one every delivery would be refused"
        )
        problems.append(Diagnostic(doc.mark_for(where), where, message))
    if hooks.port and hooks.port == top.http.port:
        where = ("webhooks", "port")
        message = f"must differ from http.port ({top.http.port}): the webhook receiver has a listener of its own"
        problems.append(Diagnostic(doc.mark_for(where), where, message))
    return problems


def _jobs_of(doc: Document, diagnostics: list[Diagnostic], *, drop_in: bool) -> list[_RawJob]:
    data = doc.data if isinstance(doc.data, dict) else {}
    if drop_in:
        if not isinstance(doc.data, dict):
            diagnostics.append(Diagnostic(doc.mark_for(()), (), "a drop-in file is a mapping with a 'jobs:' list"))
        for key in data:
            if key != "jobs":
                diagnostics.append(
                    Diagnostic(doc.mark_for((key,)), (key,), "unknown key (a drop-in file holds only 'jobs:')")
                )
    raw_jobs = data.get("jobs") or []
    if not isinstance(raw_jobs, list):
        diagnostics.append(Diagnostic(doc.mark_for(("jobs",)), ("jobs",), "must be a list of jobs"))
        return []
    return [_RawJob(raw, ("jobs", i), doc) for i, raw in enumerate(raw_jobs)]


def _drop_in_documents(
    doc: Document, top: ConfigFile | None, overlay: dict[FsPath, str | None], diagnostics: list[Diagnostic]
) -> tuple[tuple[FsPath, ...], list[Document]]:
    if top is None:
        return (), []
    base = FsPath(doc.file).parent
    dirs: list[FsPath] = []
    documents: list[Document] = []
    seen: set[FsPath] = set()
    for index, pattern in enumerate(top.include):
        if FsPath(pattern).is_absolute():
            diagnostics.append(
                Diagnostic(
                    doc.mark_for(("include", index)), ("include", index), "use a path relative to this file's directory"
                )
            )
            continue
        full = base / pattern
        problem = include_directory_problem(full.parent)
        if problem is not None:
            where = ("include", index)
            diagnostics.append(Diagnostic(doc.mark_for(where), where, f"the directory {full.parent} {problem}"))
            continue
        dirs.append(full.parent)
        for path in include_matches(full, overlay):
            if path in seen:
                continue
            seen.add(path)
            text = overlay.get(path, "") if path in overlay else None
            if path in overlay and text is None:
                continue
            loaded, problems = load_text(text, str(path)) if text is not None else load_file(path)
            diagnostics.extend(problems)
            if loaded.data is not None:
                documents.append(loaded)
    return tuple(dict.fromkeys(dirs)), documents


def _template_marks(main: Document) -> dict[str, list[tuple[Path, Mark]]]:
    """Each template's marks, by path inside the template; gathered once, not once per job (which was
    quadratic: every job scanned every mark of the main file)."""
    by_template: dict[str, list[tuple[Path, Mark]]] = {}
    for path, mark in main.marks.items():
        if len(path) >= 2 and path[0] == "templates" and isinstance(path[1], str):
            by_template.setdefault(path[1], []).append((path[2:], mark))
    return by_template


def _with_template(
    raw: _RawJob,
    templates: Mapping[str, Mapping[str, Any]],
    template_marks: Mapping[str, list[tuple[Path, Mark]]],
    diagnostics: list[Diagnostic],
) -> _RawJob:
    if not isinstance(raw.data, dict) or "template" not in raw.data:
        return raw
    name = raw.data["template"]
    template = templates.get(name) if isinstance(name, str) else None
    if template is None:
        defined = ", ".join(sorted(templates)) or "none"
        diagnostics.append(
            Diagnostic(
                raw.doc.mark_for((*raw.path, "template")),
                (*raw.path, "template"),
                f"unknown template {name!r} (defined: {defined})",
            )
        )
        return _RawJob({k: v for k, v in raw.data.items() if k != "template"}, raw.path, raw.doc)
    # discover: and overridable: say how jobs are made of the template; they are no part of the jobs themselves.
    merged = _deep_merge({k: v for k, v in template.items() if k not in ("discover", OVERRIDABLE)}, raw.data)
    # Problems in parts that came from the template are located in the template.
    from_template = {(*raw.path, *inner): mark for inner, mark in template_marks.get(name, [])}
    # The job's own marks win; a view, not a copy: copying the whole file's marks per job was quadratic too.
    # ChainMap's type wants mutable maps; this view is only ever read.
    marks = ChainMap(cast(MutableMapping[Path, Mark], raw.doc.marks), from_template)
    return _RawJob(merged, raw.path, Document(raw.doc.file, raw.doc.data, marks))


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _validate_job(
    raw: Any,
    path: Path,
    doc: Document,
    registry: PluginRegistry,
    secrets: Mapping[str, Any],
    defaults: Defaults,
    *,
    echo_secrets: bool,
) -> tuple[JobDefinition | None, list[Diagnostic]]:
    spec, diagnostics = _validate_model(JobSpec, raw, path, doc)
    # Plugin options are checked from the raw mapping, so their problems show even when the job's own are wrong.
    raw = raw if isinstance(raw, dict) else {}
    source_path = (*path, "source")
    source_cls, source_options = _plugin_part(
        registry.sources,
        "source",
        raw.get("source"),
        {"type", "targets"},
        source_path,
        doc,
        _SecretNames(secrets, echo_secrets),
        diagnostics,
    )
    raw_actions = raw.get("actions") if isinstance(raw.get("actions"), list) else []
    actions = []
    for index, raw_action in enumerate(raw_actions):
        action_cls, options = _plugin_part(
            registry.actions,
            "action",
            raw_action,
            {"type", "when"},
            (*path, "actions", index),
            doc,
            _SecretNames(secrets, echo_secrets),
            diagnostics,
        )
        if spec is not None and action_cls is not None and options is not None:
            when = spec.actions[index].when
            actions.append(ActionDefinition(index, spec.actions[index].type, when, options, action_cls))
    if diagnostics or spec is None or source_cls is None or source_options is None:
        return None, diagnostics
    source = SourceDefinition(spec.source.type, tuple(spec.source.targets), source_options, source_cls)
    job = JobDefinition(
        name=spec.name,
        source=source,
        actions=tuple(actions),
        trigger=spec.trigger,
        interval=spec.interval or defaults.interval,
        deadline=spec.deadline or defaults.deadline,
        file=doc.file,
        fingerprint=_fingerprint(spec, source_options, actions, defaults),
        line=doc.mark_for(path).line,
    )
    return job, []


@dataclass(frozen=True)
class _SecretNames:
    """The secrets a job may name, and whether a problem may quote the name it was given."""

    defined: Mapping[str, Any]
    echo: bool

    def problem(self, name: str) -> str:
        defined = ", ".join(sorted(self.defined)) or "none"
        if self.echo:
            return f"secret {name!r} is not defined under 'secrets:' (defined: {defined})"
        return f"no secret of that name under 'secrets:' (defined: {defined}); name a secret, never its value"


def _plugin_part(
    table: Mapping[str, type],
    kind: str,
    raw: Any,
    core_keys: set[str],
    path: Path,
    doc: Document,
    secrets: _SecretNames,
    diagnostics: list[Diagnostic],
) -> tuple[Any, OptionsModel | None]:
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        return None, None  # the job model already reported it
    cls = _lookup(table, raw["type"], kind, path, doc, diagnostics)
    options = {k: v for k, v in raw.items() if k not in core_keys}
    return cls, _plugin_options(cls, options, path, doc, secrets, diagnostics)


def _lookup(
    table: Mapping[str, type], type_name: str, kind: str, path: Path, doc: Document, diagnostics: list[Diagnostic]
) -> Any:
    cls = table.get(type_name)
    if cls is None:
        known = ", ".join(sorted(table)) or "none (no plugin provides one)"
        diagnostics.append(
            Diagnostic(
                doc.mark_for((*path, "type")), (*path, "type"), f"unknown {kind} type {type_name!r}; known: {known}"
            )
        )
    return cls


def _plugin_options(
    cls: type[Source] | type[Action] | None,
    raw: dict[str, Any],
    path: Path,
    doc: Document,
    secrets: _SecretNames,
    diagnostics: list[Diagnostic],
) -> OptionsModel | None:
    if cls is None:
        return None
    options: OptionsModel | None
    options, problems = _validate_model(cls.Options, raw, path, doc)
    diagnostics.extend(problems)
    if options is not None:
        for field_path, name in _secret_names(options, path):
            if name not in secrets.defined:
                diagnostics.append(Diagnostic(doc.mark_for(field_path), field_path, secrets.problem(str(name))))
    return options


def _secret_names(value: Any, path: Path) -> Iterator[tuple[Path, SecretName]]:
    """Every SecretName inside a plugin's options, with its path."""
    if isinstance(value, SecretName):
        yield path, value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _secret_names(getattr(value, name), (*path, name))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _secret_names(item, (*path, i))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _secret_names(item, (*path, str(key)))


def _validate_model(model: type[BaseModel], raw: Any, path: Path, doc: Document) -> tuple[Any, list[Diagnostic]]:
    try:
        return model.model_validate(raw), []
    except ValidationError as exc:
        return None, [_diagnostic(error, path, doc) for error in exc.errors(include_input=False, include_url=False)]


def _diagnostic(error: Mapping[str, Any], path: Path, doc: Document) -> Diagnostic:
    loc = (*path, *(part for part in error["loc"] if not _is_pydantic_tag(part)))
    return Diagnostic(doc.mark_for(loc), loc, _message(error))


def _is_pydantic_tag(part: Any) -> bool:
    # Union and function-validator branches appear in locations as names like "function-after[...]".
    return isinstance(part, str) and ("[" in part or part.startswith("function-"))


def _message(error: Mapping[str, Any]) -> str:
    kind, msg = error["type"], str(error["msg"])
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            return msg[len(prefix) :]
    return msg[0].lower() + msg[1:] if msg else kind


def _fingerprint(
    spec: JobSpec, source_options: OptionsModel, actions: list[ActionDefinition], defaults: Defaults
) -> str:
    body = {
        "job": spec.model_dump(mode="json"),
        "source_options": source_options.model_dump(mode="json"),
        "actions": [a.options.model_dump(mode="json") for a in actions],
        "defaults": defaults.model_dump(mode="json"),
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
