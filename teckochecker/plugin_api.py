"""What a plugin sees: the Source and Action base classes and the values they exchange with the core.

A source plugin observes *targets* (e.g. OpenAI batch IDs) and reports a normalized state for each.
An action plugin starts something downstream (e.g. a Keboola job) once, and can then follow it.
Both declare a pydantic ``Options`` model so that ``validate-config`` checks their own fields.

Plugins never touch the state store, the scheduler or the config files: the core owns those.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import typing
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict

from teckochecker.clock import Clock
from teckochecker.config.durations import Duration

if TYPE_CHECKING:
    import httpx  # at run time only where a request is made: validate-config and status load this module

__all__ = [
    "SIGNED_WITH",
    "Action",
    "ActionOutcome",
    "ActionRequest",
    "ActionResult",
    "Cancellation",
    "CheckReport",
    "Destination",
    "Duration",
    "HttpClients",
    "ListedTarget",
    "ListingListener",
    "Observation",
    "OptionsModel",
    "Origin",
    "PluginContext",
    "ReplyKind",
    "SecretName",
    "SecretOrigins",
    "SharedObjects",
    "SharedRegistry",
    "Source",
    "TargetState",
    "destinations",
    "http_url",
]


class TargetState(str, enum.Enum):
    """The normalized state of one watched target, whatever the vendor calls it."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    # The vendor answered with a status we do not know; we keep polling and count it.
    UNKNOWN = "unknown"
    # The target cannot be observed any more (e.g. the vendor says it does not exist).
    ERROR = "error"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def is_success(self) -> bool:
        return self is TargetState.SUCCEEDED


_TERMINAL = frozenset(
    {TargetState.SUCCEEDED, TargetState.FAILED, TargetState.CANCELLED, TargetState.EXPIRED, TargetState.ERROR}
)


class SecretName(str):
    """An option that names a secret declared under ``secrets:``; the plugin reads it via ``context.secret``.

    Typing an option field as ``SecretName`` is how the validator knows to check the reference.
    """

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        return core_schema.no_info_after_validator_function(cls, core_schema.str_schema(min_length=1))


class Destination(str):
    """An option that says where the plugin's requests go: an http(s) base URL.

    Typing an option field as ``Destination`` (or ``Destination | None``) is how the core knows it: only
    the files may set it (a job registered over the API or made by discovery cannot), and the secrets named
    in the same options are bound to its origin. Validate the value with ``http_url`` in a field validator.
    """

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        return core_schema.no_info_after_validator_function(cls, core_schema.str_schema(min_length=1))


def destinations(options: BaseModel) -> dict[str, str]:
    """The ``Destination`` options that are set, by field name. Found by the field's declared type, so a
    field validator that returns a plain ``str`` does not hide one."""
    found = {}
    for name, info in type(options).model_fields.items():
        annotation = info.annotation
        if annotation is Destination or Destination in typing.get_args(annotation):
            value = getattr(options, name)
            if value is not None:
                found[name] = str(value)
    return found


def http_url(value: str, example: str) -> str:
    """Validate an http(s) base URL option; returns it without a trailing slash. For field validators."""
    parts = urllib.parse.urlsplit(value.strip())
    _ = parts.port  # raises ValueError on a malformed port
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http(s) URL such as {example}, not {value!r}")
    return value.strip().rstrip("/")


_DEFAULT_PORTS = {"http": 80, "https": 443}

# A request extension naming the secrets a request carries in a form that cannot be recognised by value (an
# HMAC signature made with one), so the daemon's outbound guard holds it to their bindings too:
# ``client.post(url, ..., extensions={SIGNED_WITH: (self.options.secret,)})``.
SIGNED_WITH = "teckochecker_signed_with"


class Origin(NamedTuple):
    """Where a request goes, as far as a secret is concerned: scheme, host and port (the default port filled
    in, the host in lower case), so ``https://API.example.com/v1`` and ``https://api.example.com:443`` are one."""

    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, url: str) -> Origin:
        """The origin of an http(s) URL; raises ValueError for anything else."""
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port  # raises ValueError on a malformed port
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        return cls(parts.scheme, _ascii_host(parts.hostname), port or _DEFAULT_PORTS[parts.scheme])

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 literal keeps its brackets
        return f"{self.scheme}://{host}:{self.port}"


def _ascii_host(host: str) -> str:
    """The host as it goes on the wire: an internationalized name in its IDNA (xn--) form, as httpx sends it."""
    try:
        return host.lower().encode("idna").decode("ascii")
    except UnicodeError:
        return host.lower()  # not a name IDNA can encode: compared as written (and so never matched by one)


class OptionsModel(BaseModel):
    """Base for plugin options: frozen, and unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def bound_origins(self) -> frozenset[Origin]:
        """The origins the secrets named in these options may be sent to, when the options come from the
        files: by default those of the ``Destination`` options. Override to add an origin the plugin derives
        from them (Keboola: the Queue API host next to the stack's)."""
        found = set()
        for url in destinations(self).values():
            try:
                found.add(Origin.of(url))
            except ValueError:
                continue  # refused by the option's own validator; nothing to bind
        return frozenset(found)


@dataclass(frozen=True)
class Observation:
    """What a source saw of one target on one check."""

    target: str
    state: TargetState
    vendor_status: str | None = None
    # JSON-serializable facts worth keeping (counts, file IDs, timestamps, errors).
    details: Mapping[str, Any] = field(default_factory=dict)
    # A message for people, e.g. the vendor's error text.
    message: str | None = None


@dataclass(frozen=True)
class CheckReport:
    """The result of one check of some targets.

    ``transient_errors`` names targets that could not be observed this time (they keep their last state
    and are checked again after a back-off); ``retry_after`` is how long to wait (seconds): the vendor's
    ``Retry-After``, or what remains of a back-off the source shares between jobs (e.g. one per account).
    ``excerpts``: for some of those targets, what the vendor's answer said, kept out of the messages (the
    views without a token show messages; the excerpt goes to the log and to readers with a token). The same
    holds for an observation: put the vendor's words under ``details["excerpt"]``, not in ``message``.
    """

    observations: tuple[Observation, ...] = ()
    transient_errors: Mapping[str, str] = field(default_factory=dict)
    retry_after: float | None = None
    excerpts: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ListedTarget:
    """One target as a source's shared listing showed it (e.g. one batch on a page of ``GET /batches``):
    what discovery needs to group it, nothing more."""

    target: str
    state: TargetState
    vendor_status: str | None
    metadata: Mapping[str, str]
    created_at: dt.datetime | None


class ListingListener(Protocol):
    def __call__(self, page: int, targets: Sequence[ListedTarget]) -> bool:
        """Told every target of each page a listing read (``page`` 0 starts a new listing); returns whether
        it wants the next page too. The listing reads on while any listener wants more and there is more."""
        ...


class ActionOutcome(str, enum.Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    # Finished, but the downstream system reports a partial failure (e.g. Keboola "warning").
    SUCCEEDED_WITH_WARNINGS = "succeeded_with_warnings"
    FAILED = "failed"

    @property
    def is_finished(self) -> bool:
        return self is not ActionOutcome.RUNNING


@dataclass(frozen=True)
class ActionResult:
    """What an action started downstream, and how it stands."""

    external_id: str
    outcome: ActionOutcome = ActionOutcome.RUNNING
    vendor_status: str | None = None
    url: str | None = None
    created_at: dt.datetime | None = None
    message: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Cancellation:
    """What ``Action.cancel`` did with a duplicate start: cancelled it or not, and why, for people."""

    cancelled: bool
    note: str


@dataclass(frozen=True)
class ActionRequest:
    """Everything an action may pass downstream about the finished set of targets."""

    job_name: str
    # Stable for every attempt of this action of this job: a marker the action can send and search for.
    trigger_id: str
    fired_at: dt.datetime
    targets: tuple[Observation, ...]


class ReplyKind(str, enum.Enum):
    """What a request's answer is, which sets how much of it the daemon reads before it gives up: the
    outbound HTTP layer streams every body and stops past the cap of its kind. Chosen per request with
    ``extensions=ReplyKind.LISTING.extensions`` (httpx's request extensions); a request that names none is
    read with the cap of ``OTHER``. An error answer (status 300 or more) is read with the cap of ``ERROR``
    whatever its kind says. Over the cap the request fails as a transport error does (an
    ``httpx.ReadError`` whose message names the host and the cap), and the connection is closed unread."""

    # One page of a listing (e.g. GET /batches?limit=100).
    LISTING = "listing"
    # One object (a batch, a job, a token).
    OBJECT = "object"
    # An index of services (e.g. Keboola's stack index).
    INDEX = "index"
    # A webhook receiver's answer: only its status matters.
    RECEIVER = "receiver"
    # Anything else.
    OTHER = "other"
    # Any answer with a status of 300 or more; set by the daemon, not chosen.
    ERROR = "error"

    @property
    def extensions(self) -> dict[str, str]:
        """The request extensions that choose this kind: ``client.get(path, extensions=kind.extensions)``."""
        return {REPLY_KIND_EXTENSION: self.value}


# The httpx request extension the daemon's outbound HTTP layer reads the reply kind from.
REPLY_KIND_EXTENSION = "teckochecker.reply_kind"


class SecretLookup(Protocol):
    def __call__(self, name: str) -> str: ...


class SecretOrigins(Protocol):
    def __call__(self, name: str) -> frozenset[Origin]:
        """The origins the files bind the named secret to (see ``OptionsModel.bound_origins``)."""
        ...


class HttpClients(Protocol):
    """Pooled HTTP clients owned by the daemon: one per ``key`` (e.g. endpoint + credential).

    Every client shares the daemon's bound on concurrent outbound requests and its request metrics.
    The daemon closes them on shutdown.
    """

    def client(
        self,
        key: str,
        *,
        base_url: str,
        headers: Mapping[str, str] | None = None,
        timeout: httpx.Timeout | float = 30.0,
    ) -> httpx.AsyncClient: ...


T = TypeVar("T")


class SharedObjects(Protocol):
    """Objects shared by every instance of a plugin within one daemon (e.g. one listing of an API shared
    by all jobs that watch the same account), created on first use."""

    def get(self, key: str, factory: Callable[[], T]) -> T: ...


class SharedRegistry:
    """The daemon's SharedObjects: a plain dict it owns (and tests build their own)."""

    def __init__(self) -> None:
        self._objects: dict[str, Any] = {}

    def get(self, key: str, factory: Callable[[], T]) -> T:
        if key not in self._objects:
            self._objects[key] = factory()
        return self._objects[key]  # type: ignore[no-any-return]


@dataclass(frozen=True)
class PluginContext:
    """Services the core hands to every plugin instance. Nothing here is a global."""

    http: HttpClients
    clock: Clock
    secret: SecretLookup
    logger: logging.Logger
    shared: SharedObjects = field(default_factory=SharedRegistry)
    # Where the files let each secret go; a URL read from a vendor's reply is used with a secret only if its
    # origin is in there. The daemon always sets it (and refuses any other request in its HTTP layer); None
    # in a context built by hand (a test, a tool), where the plugin takes such a URL as found.
    secret_origins: SecretOrigins | None = None


class Source(ABC):
    """Observes targets. One instance per job; ``check`` is called with the targets not yet terminal."""

    type_name: ClassVar[str]
    Options: ClassVar[type[OptionsModel]]
    # True when the source reads a listing of all targets that ``listen`` and ``sweep`` expose (a template
    # with ``discover:`` needs one).
    supports_discovery: ClassVar[bool] = False
    # The webhook receiver whose events name this source's targets ("openai": POST /webhooks/openai), or
    # None when the source is only polled. An event makes the core call ``check_fresh`` for that target.
    push_channel: ClassVar[str | None] = None

    def __init__(self, options: OptionsModel, context: PluginContext) -> None:
        self.options = options
        self.context = context

    def listen(self, listener: ListingListener) -> Callable[[], None]:
        """Have ``listener`` told every page the shared listing reads, whoever asked for it; returns the
        call that stops that. Only for sources with ``supports_discovery``."""
        raise NotImplementedError(f"the {self.type_name} source has no listing")

    async def sweep(self) -> None:
        """Make the shared listing read now, unless a fresh enough one exists or is under way; its pages go
        to the listeners. Raises ``TransientError`` when the listing cannot be read now."""
        raise NotImplementedError(f"the {self.type_name} source has no listing")

    async def describe(self, target: str) -> ListedTarget | None:
        """What the listing would show of ``target``, read straight from the vendor: a push notification named
        a target no job watches, and discovery wants to know whether it starts or grows a group before the
        next listing shows it. None when the vendor has no such target for this account, and by default
        (discovery then finds it at its next sweep). Raises ``TransientError`` when it cannot be read now."""
        return None

    @abstractmethod
    async def check(self, targets: Sequence[str]) -> CheckReport:
        """Observe ``targets``.

        Raise ``TransientError`` when nothing could be observed but a later try may work, and
        ``PermanentError`` when the job cannot go on (e.g. the API key is rejected).
        """

    async def check_fresh(self, targets: Sequence[str]) -> CheckReport:
        """Observe ``targets`` straight from the vendor: a push notification said they changed, so an answer
        from something shared between checks (a listing read a few seconds ago) may be stale. Same contract
        as ``check``; the default is ``check`` itself (right for a source that keeps nothing between checks)."""
        return await self.check(targets)

    async def aclose(self) -> None:
        """Release what the instance holds. The shared HTTP client is not the plugin's to close."""


class Action(ABC):
    """Starts one thing downstream per fired trigger. ``start`` is not assumed to be idempotent.

    The core calls ``start`` only after it has durably recorded the intent, and after an in-doubt
    outcome it calls ``find_started`` instead of starting again.
    """

    type_name: ClassVar[str]
    Options: ClassVar[type[OptionsModel]]
    # Seconds a just-started thing may stay invisible to ``find_started`` (a search index lag).
    # An instance may override it (e.g. from its options).
    search_lag: float = 0.0
    # Seconds between two `follow` reads of something still running.
    follow_interval: float = 10.0
    # Seconds a start call can still take effect after it was sent (its own timeout). A search that finds
    # nothing proves nothing before intent + start_timeout + search_lag.
    start_timeout: float = 0.0
    # After a start that followed an in-doubt outcome, ``find_started`` is asked again for this long
    # (growing intervals) for a duplicate a lagging search hid. 0 turns the watch off.
    duplicate_watch: float = 3600.0
    # True when a second start for one trigger is harmless because the downstream system deduplicates on
    # ``request.trigger_id`` (e.g. a webhook receiver on ``webhook-id``). The core then retries an in-doubt
    # start with back-off, as if it had not started, instead of searching (``find_started`` is not needed).
    repeatable_start: bool = False

    def __init__(self, options: OptionsModel, context: PluginContext) -> None:
        self.options = options
        self.context = context

    @property
    @abstractmethod
    def target_key(self) -> str:
        """Identifies the downstream target; the core never has two unresolved starts on one key."""

    @abstractmethod
    async def start(self, request: ActionRequest) -> ActionResult:
        """Start it. Raise ``NotStarted`` only when nothing can have been started (e.g. connection
        refused), ``Rejected`` when the downstream system refused (do not retry), ``InDoubt`` when it
        may or may not have been started."""

    async def find_started(self, request: ActionRequest, since: dt.datetime) -> Sequence[ActionResult] | None:
        """Things this action started for ``request`` since ``since``, oldest first: only things that carry
        ``request.trigger_id`` as their marker, never something merely similar (another start by hand).

        Return None if the action cannot search; the core then treats an in-doubt start as failed
        rather than risk a second start.
        """
        return None

    async def follow(self, started: ActionResult) -> ActionResult:
        """The current state of something started earlier. The default: it finished when started."""
        return ActionResult(
            external_id=started.external_id,
            outcome=ActionOutcome.SUCCEEDED,
            vendor_status=started.vendor_status,
            url=started.url,
        )

    async def cancel(self, request: ActionRequest, duplicate: ActionResult) -> Cancellation:
        """Cancel ``duplicate``, a second start for ``request`` that ``find_started`` returned.

        Must re-check that it carries ``request.trigger_id`` and refuse otherwise; cancels what has not started
        work yet, and what already works only if the action's options say so. Raise ``TransientError`` when
        that cannot be decided now (the core asks again at its next search)."""
        return Cancellation(False, f"the {self.type_name} action cannot cancel; a person must look")

    async def aclose(self) -> None:
        """Release what the instance holds."""
