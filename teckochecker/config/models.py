"""The configuration file's shape, as frozen pydantic models. Plugin options are validated by the
plugins' own models (see validate.py); here they are only collected."""

from __future__ import annotations

import base64
import enum
import re
import urllib.parse
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from teckochecker.config.durations import Duration

MIN_INTERVAL = 30.0
MAX_INTERVAL = 3600.0
# Every check of a job handles all its targets at once (one vendor listing, one store transaction, one
# API answer); past this, a single job stalls the daemon for seconds and holds hundreds of MB.
MAX_TARGETS_PER_JOB = 10_000
# The longest target ID (the state store's column; vendors' IDs are under 64: OpenAI's and Azure's
# ``batch_…`` about 40 characters, Anthropic's ``msgbatch_…`` about 35). One longer is no vendor's ID, and
# would be polled, logged and sent in every tick.
MAX_TARGET_LENGTH = 255
DEFAULT_INTERVAL = 120.0
# A little after OpenAI's 24 h batch window.
DEFAULT_DEADLINE = 25 * 3600.0
DEFAULT_HTTP_PORT = 9718

# Also the drop-in file's name (NAME.yaml): no '/', no leading '.', no NUL or control characters.
JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
JOB_NAME_RULE = "use letters, digits, '-', '_' and '.', starting with a letter or digit (max 128)"
# NUL and other control characters: the state store (PostgreSQL) refuses NUL, and none belongs in an ID.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TriggerRule(str, enum.Enum):
    """When a job fires its actions."""

    ALL_TERMINAL = "all_terminal"  # every target finished, whatever the outcome
    ALL_SUCCEEDED = "all_succeeded"  # every target succeeded; a failed target ends the job without firing


class Condition(str, enum.Enum):
    """Which outcomes of the targets an action runs for."""

    ALWAYS = "always"
    ALL_SUCCEEDED = "all_succeeded"
    ANY_FAILED = "any_failed"


ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SECRET_KINDS = ("env", "file", "credential", "encrypted")


class SecretRef(Model):
    """Where a secret's value comes from: exactly one kind. The value itself never sits in the file."""

    # The name of an environment variable, checked for shape so that a pasted value is refused, not echoed.
    env: str | None = Field(default=None, min_length=1)
    # An absolute path: the daemon's working directory is not the config file's directory.
    file: str | None = Field(default=None, min_length=1)
    # A systemd credential's name, read from $CREDENTIALS_DIRECTORY/NAME (LoadCredential=NAME:...).
    credential: str | None = Field(default=None, min_length=1)
    # A Fernet token made by `teckochecker secrets encrypt NAME`.
    encrypted: str | None = Field(default=None, min_length=1)
    # Origins (https://host:port) the value may be sent to besides those of the options naming it, e.g. a
    # Keboola Queue API the stack index names on a host that is not the guessed one.
    send_to: list[str] = Field(
        default_factory=list,
        description="Origins (scheme://host[:port]) this secret may also be sent to; see docs/security.md",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_plain_values(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError(
                "a secret is a reference, not a value: write one of {env: VARIABLE_NAME}, "
                "{file: /path/to/file}, {credential: NAME} (systemd LoadCredential=) or {encrypted: TOKEN} "
                "(made by `teckochecker secrets encrypt NAME`), so the value never sits in this file"
            )
        return data

    @field_validator("env")
    @classmethod
    def _env_name(cls, name: str | None) -> str | None:
        if name is not None and not ENV_NAME.match(name):
            raise ValueError("must be an environment variable's name (letters, digits and '_'), not the value itself")
        return name

    @field_validator("file")
    @classmethod
    def _absolute_file(cls, path: str | None) -> str | None:
        if path is not None and not path.startswith("/"):
            raise ValueError("use an absolute path: the daemon's working directory is not this file's")
        if path is not None and CONTROL_CHARACTERS.search(path):
            raise ValueError("a path may not contain control characters (NUL, newline, ...)")
        return path

    @field_validator("credential")
    @classmethod
    def _credential_name(cls, name: str | None) -> str | None:
        if name is not None and ("/" in name or name in (".", "..")):
            raise ValueError("must be a credential's name (a plain file name, as in LoadCredential=NAME:...)")
        return name

    @field_validator("encrypted")
    @classmethod
    def _token_shape(cls, token: str | None) -> str | None:
        if token is not None and not is_fernet_token(token):
            raise ValueError("is not a Fernet token: paste what `teckochecker secrets encrypt` printed")
        return token

    @field_validator("send_to")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            problem = origin_problem(origin)
            if problem is not None:
                raise ValueError(f"send_to {origin!r}: {problem}")
        return origins

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        given = [kind for kind in SECRET_KINDS if getattr(self, kind) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of: {', '.join(SECRET_KINDS)}")
        return self

    @property
    def kind(self) -> str:
        return next(kind for kind in SECRET_KINDS if getattr(self, kind) is not None)

    def describe(self) -> str:
        """Where the value comes from, for people; never the token itself."""
        if self.encrypted is not None:
            return "encrypted value"
        return f"{self.kind} {getattr(self, self.kind)}"


def origin_problem(origin: str) -> str | None:
    """Why ``origin`` is not an origin such as https://host:port (nothing after the port), or None."""
    try:
        parts = urllib.parse.urlsplit(origin)
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError:
        return "has a malformed host or port"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an origin such as https://host or https://host:8443"
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        return "must be an origin only (scheme, host and port): no path, query or user info"
    return None


def is_fernet_token(token: str) -> bool:
    """The shape of a Fernet token: url-safe base64 of version 0x80, timestamp, IV, AES blocks, HMAC."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+=*", token):
        return False
    try:
        raw = base64.urlsafe_b64decode(token)
    except ValueError:
        return False
    # 1 version byte + 8 timestamp + 16 IV + at least one 16-byte block + 32 HMAC.
    return len(raw) >= 73 and raw[0] == 0x80 and (len(raw) - 57) % 16 == 0


# PostgreSQL's lock_timeout and statement_timeout: longer than any statement the daemon makes on a healthy
# store (its biggest, reading 10,000 jobs, takes well under a second), short enough for a client's retry.
DEFAULT_STORE_TIMEOUT = 5.0
# The state stores TeckoChecker ships drivers for, as SQLAlchemy URL schemes (dialect+driver).
STATE_URL_SCHEMES = ("sqlite", "sqlite+pysqlite", "postgresql+psycopg")


def state_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a state store (its scheme has no driver here), or None. Names only the scheme:
    the rest of a URL may hold a password."""
    scheme, separator, _ = url.partition("://")
    if separator and scheme in STATE_URL_SCHEMES:
        return None
    shown = f"{scheme}://" if separator else "a URL without a scheme"
    return (
        f"unsupported state store URL ({shown[:40]}): use sqlite:///PATH or postgresql+psycopg://USER@HOST/DB "
        f"(schemes: {', '.join(STATE_URL_SCHEMES)})"
    )


class StateSettings(Model):
    url: str | None = Field(default=None, description="SQLAlchemy URL; default: a SQLite file in the state dir")
    # Off: the daemon refuses a store whose schema is not at the head and names `teckochecker db upgrade`,
    # for operators who upgrade the schema themselves (after a backup, before rolling out replicas).
    upgrade_on_start: bool = True
    # Replicas on PostgreSQL (replicas.py): a standby takes over once the leader has not renewed for this long.
    lease: Duration = Field(default=30.0, ge=3, le=600)
    # How this replica is shown and recorded; default host:pid. Must differ between replicas.
    replica_name: str | None = Field(default=None, min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:@-]+$")
    # PostgreSQL: the server cancels a statement that waits this long for a lock (a table locked by hand, a
    # stuck transaction elsewhere), or runs this long. Then the API answers 503 at once instead of hanging, and
    # /readyz fails until the store answers again. Every session of the daemon; commands use the defaults.
    lock_timeout: Duration = Field(default=DEFAULT_STORE_TIMEOUT, ge=0.1, le=600)
    statement_timeout: Duration = Field(default=DEFAULT_STORE_TIMEOUT, ge=0.1, le=3600)

    @field_validator("url")
    @classmethod
    def _supported_url(cls, url: str | None) -> str | None:
        if url is not None and (problem := state_url_problem(url)) is not None:
            raise ValueError(problem)
        return url


class TokenScope(str, enum.Enum):
    """What a bearer token may do: register and remove jobs (PUT/DELETE /api/v1/jobs/NAME), or control
    running jobs (pause, resume, check-now)."""

    REGISTER = "register"
    CONTROL = "control"


class TokenSpec(Model):
    """One bearer token: the name of the secret that holds it, and what it may do."""

    secret: str = Field(min_length=1)
    scopes: Annotated[list[TokenScope], Field(min_length=1)]


class HttpSettings(Model):
    listen: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_HTTP_PORT, ge=0, le=65535)
    # The name of a secret holding a bearer token with every scope (register and control): the older,
    # single-token form, kept working. Without it and without tokens, the mutating endpoints are off.
    api_token: str | None = Field(default=None, min_length=1)
    # Least privilege: each token names its secret and its scopes (a pipeline's token: [register]).
    tokens: list[TokenSpec] = []
    # The listener's own limits (docs/security.md): open connections (fewer under a low file descriptor
    # limit), and how long a request's headers and body may take to arrive, from its first byte.
    max_connections: int = Field(default=200, ge=1, le=10_000)
    request_deadline: Duration = Field(default=10.0, gt=0, le=300)

    def bearer_tokens(self) -> list[TokenSpec]:
        """Every configured token, api_token as one with both scopes."""
        legacy = [TokenSpec(secret=self.api_token, scopes=list(TokenScope))] if self.api_token else []
        return [*legacy, *self.tokens]


class WebhookSettings(Model):
    """The webhook receiver (``POST /webhooks/openai``) on a listener of its own, off unless a port is set:
    only this path may be exposed through a reverse proxy while metrics and the API stay on loopback."""

    listen: str = "127.0.0.1"
    port: int | None = Field(default=None, ge=0, le=65535)
    # Names of secrets (declared under secrets:) holding the endpoint's signing secret, ``whsec_...``. Several
    # while a secret is rotated: a delivery signed with any of them is accepted.
    secrets: list[Annotated[str, Field(min_length=1)]] = []
    # The listener's own limits (docs/security.md): open connections (fewer under a low file descriptor
    # limit), and how long a request's headers and body may take to arrive, from its first byte.
    max_connections: int = Field(default=200, ge=1, le=10_000)
    request_deadline: Duration = Field(default=10.0, gt=0, le=300)

    @property
    def enabled(self) -> bool:
        return self.port is not None


class Defaults(Model):
    interval: Duration = DEFAULT_INTERVAL
    concurrency: int = Field(default=10, ge=1, le=1000)
    deadline: Annotated[Duration, Field(gt=0)] = DEFAULT_DEADLINE
    # The first checks after a start are spread over this long, so that many jobs do not all poll at once.
    startup_spread: Duration = Field(default=10.0, ge=0, le=3600)

    _interval_range = field_validator("interval")(lambda v: _check_interval(v))


def _check_interval(seconds: float) -> float:
    if not MIN_INTERVAL <= seconds <= MAX_INTERVAL:
        raise ValueError(f"must be between 30s and 1h (got {seconds:g}s)")
    return seconds


class PluginSpec(BaseModel):
    """A ``type:`` plus the plugin's own keys, which its Options model validates later."""

    model_config = ConfigDict(frozen=True, extra="allow")

    type: str = Field(min_length=1)

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def _unicode_text(value: Any) -> Any:
    """Before the type check, whose own refusal would not say why."""
    try:
        if isinstance(value, str):
            value.encode("utf-8")
    except UnicodeEncodeError:
        # JSON's "\ud800" is a lone half of a UTF-16 pair: no text, and nothing can store, log or send it.
        raise ValueError(f"{value[:40]!r} is not valid Unicode text (a lone surrogate)") from None
    return value


TargetId = Annotated[str, Field(max_length=MAX_TARGET_LENGTH), BeforeValidator(_unicode_text)]


class SourceSpec(PluginSpec):
    targets: Annotated[list[TargetId], Field(min_length=1)]

    @field_validator("targets")
    @classmethod
    def _unique_targets(cls, targets: list[str]) -> list[str]:
        if len(targets) > MAX_TARGETS_PER_JOB:
            raise ValueError(
                f"a job may watch at most {MAX_TARGETS_PER_JOB} targets (this one lists {len(targets)}); "
                "split it into several jobs"
            )
        seen: set[str] = set()
        for target in targets:
            if not target.strip():
                raise ValueError("a target may not be empty")
            if CONTROL_CHARACTERS.search(target):
                raise ValueError(f"target {target!r} contains a control character (NUL, newline, ...)")
            if target in seen:
                raise ValueError(f"target {target!r} is listed twice")
            seen.add(target)
        return targets


class ActionSpec(PluginSpec):
    when: Condition = Condition.ALWAYS


def is_job_name(name: str) -> bool:
    return JOB_NAME.fullmatch(name) is not None


class JobSpec(Model):
    name: str
    # Set when the job came from a template; kept so a changed template changes the job's fingerprint.
    template: str | None = None
    source: SourceSpec
    actions: Annotated[list[ActionSpec], Field(min_length=1)]
    trigger: TriggerRule = TriggerRule.ALL_TERMINAL
    interval: Duration | None = None
    deadline: Duration | None = None

    @field_validator("name")
    @classmethod
    def _name_shape(cls, name: str) -> str:
        if not is_job_name(name):
            raise ValueError(JOB_NAME_RULE)
        return name

    @field_validator("interval")
    @classmethod
    def _interval_range(cls, value: float | None) -> float | None:
        return None if value is None else _check_interval(value)

    @field_validator("deadline")
    @classmethod
    def _deadline_positive(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError("must be longer than 0s")
        return value


class ConfigFile(Model):
    state: StateSettings = StateSettings()
    http: HttpSettings = HttpSettings()
    webhooks: WebhookSettings = WebhookSettings()
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
    secrets: dict[str, SecretRef] = {}
    defaults: Defaults = Defaults()
    # Globs, relative to this file's directory, of drop-in files that add jobs (e.g. jobs.d/*.yaml).
    include: list[Annotated[str, Field(min_length=1)]] = []
    # Reusable job parts: a job says `template: NAME` and its own keys are merged over the template's.
    templates: dict[str, dict[str, Any]] = {}
    jobs: list[JobSpec] = []

    @field_validator("include")
    @classmethod
    def _plain_patterns(cls, patterns: list[str]) -> list[str]:
        if any(CONTROL_CHARACTERS.search(pattern) for pattern in patterns):
            raise ValueError("a path may not contain control characters (NUL, newline, ...)")
        return patterns

    @model_validator(mode="before")
    @classmethod
    def _empty_sections_mean_defaults(cls, data: Any) -> Any:
        # A section left with only comments in it is YAML null; treat it as absent. Only a known section: an
        # unknown key stays, to be reported, even when its value is null (a misspelt `jbos:`).
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None or k not in cls.model_fields}
        return data
