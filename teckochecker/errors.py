"""The exception tree. Expected outcomes (a failed batch) are values; these are for not being able to act.

TeckoCheckerError
├── ConfigError            the configuration is invalid (carries every Diagnostic)
├── StateStoreError        the state store cannot be opened or used
│   └── NoStateStore       there is none yet: no daemon has run with this config
│   └── StateStoreUnavailable  a call to the running store failed (down, dropped, unreadable); may pass later
│       └── Fenced         this replica does not lead (a standby, or a leader whose lease passed): no write
├── PluginError            a plugin could not be loaded or registered
├── SecretError            a secret cannot be resolved (names the secret, never the value)
├── UnreadableFile         a file is missing, not a regular file, or over its size cap (never shows content)
├── TransientError         observing or acting failed; a later try may work (optional retry_after)
└── PermanentError         observing or acting cannot work until a person changes something
    ├── Rejected           the downstream system refused the request (e.g. HTTP 400/401/403/404)
    └── OutboundRefused    a request stopped before it left: it would go where the files did not say
        ├── SecretNotBound     it carries a secret to an origin the files do not bind that secret to
        └── AddressRefused     a host no file names resolves to a loopback, private or reserved address
NotStarted (TransientError) an action start that certainly did not reach the downstream system
InDoubt (TeckoCheckerError) an action start whose outcome is unknown: reconcile, never retry blindly
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from teckochecker.config.diagnostics import Diagnostic


class TeckoCheckerError(Exception):
    """Base of every error TeckoChecker raises on purpose.

    ``excerpt`` (TransientError, PermanentError, InDoubt): the start of a refusing server's answer, kept out
    of the message. The message is shown to anyone who can read the status page; the excerpt goes to the
    log and to readers with a token, because the server may be anything a URL points at."""

    excerpt: str | None = None


class ConfigError(TeckoCheckerError):
    def __init__(self, diagnostics: Sequence[Diagnostic]) -> None:
        self.diagnostics = tuple(diagnostics)
        super().__init__("\n".join(str(d) for d in self.diagnostics))


class StateStoreError(TeckoCheckerError):
    pass


class NoStateStore(StateStoreError):
    pass


class StateStoreUnavailable(StateStoreError):
    pass


class Fenced(StateStoreUnavailable):
    """A write or start refused because this replica does not hold the current leader epoch (replicas.py)."""


class PluginError(TeckoCheckerError):
    pass


class SecretError(TeckoCheckerError):
    pass


class UnreadableFile(TeckoCheckerError):
    def __init__(self, path: Path, reason: str, *, missing: bool = False) -> None:
        self.path = path
        self.reason = reason
        # Some callers treat an absent file differently (an optional credential, a friendlier message).
        self.missing = missing
        super().__init__(f"{path}: {reason}")


class TransientError(TeckoCheckerError):
    def __init__(self, message: str, *, retry_after: float | None = None, excerpt: str | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.excerpt = excerpt


class PermanentError(TeckoCheckerError):
    def __init__(self, message: str, *, excerpt: str | None = None) -> None:
        super().__init__(message)
        self.excerpt = excerpt


class Rejected(PermanentError):
    pass


class OutboundRefused(PermanentError):
    """Raised by the daemon's HTTP layer before anything is sent, so a plugin's step fails for good and says
    why; retrying could not help until a person changes the files."""


class SecretNotBound(OutboundRefused):
    def __init__(self, secrets: Sequence[str], origin: str) -> None:
        self.secrets = tuple(secrets)
        self.origin = origin
        names = ", ".join(repr(name) for name in self.secrets)
        super().__init__(
            f"refused to send secret {names} to {origin}: the config files do not bind it there (a Destination "
            f"option of a plugin part that names it, or its send_to under 'secrets:')"
        )


class AddressRefused(OutboundRefused):
    pass


class NotStarted(TransientError):
    pass


class InDoubt(TeckoCheckerError):
    def __init__(self, message: str, *, excerpt: str | None = None) -> None:
        super().__init__(message)
        self.excerpt = excerpt
