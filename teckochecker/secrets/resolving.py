"""Named secrets: references in the config → values at the moment a plugin builds a request.

A value comes from exactly one of: an environment variable, a file, a systemd credential, or a Fernet
token decrypted with the master keys (see masterkey.py). Files, credentials and tokens are read at each
call, so a rotated credential file or key is picked up without a restart.

Values are never logged: every resolved value is registered with the Redactor, which the daemon applies
at every sink (its log handlers, the state store, the HTTP answers) so it is masked wherever it would
appear. Error messages name the secret and the reason, never the value or a key.

Every value is sent as an HTTP header value, so one that cannot be (a line break, a control character,
non-ASCII text) is refused here, when it is resolved, with a message naming the secret.
"""

from __future__ import annotations

import html
import json
import logging
import re
import stat
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path

from cryptography.fernet import InvalidToken

from teckochecker.boundedread import read_bounded
from teckochecker.config.models import SecretRef
from teckochecker.errors import SecretError, UnreadableFile
from teckochecker.secrets.masterkey import CREDENTIALS_DIRECTORY_ENV, load_master_keys, master_key_file

MASK = "[REDACTED]"
# Very short values would mask ordinary words; nobody's real key is that short.
MIN_REDACTED_LENGTH = 6
# A secret is a token or a password; a larger file is the wrong file (or /dev/zero).
MAX_SECRET_BYTES = 64 * 1024
# Header values and well-known token shapes, masked even when the value was never registered. A match stops
# at a quote or backslash, so masking text inside stored JSON never breaks the JSON.
_PATTERNS = [
    re.compile(r"(?i)(authorization:\s*bearer\s+)[^\s'\"\\]+"),
    re.compile(r"(?i)(x-storageapi-token['\"]?\s*[:=]\s*['\"]?)[^\s'\",}\\]+"),
    re.compile(r"()\bsk-[A-Za-z0-9_-]{16,}"),
]


class Redactor(logging.Filter):
    """Masks known secret values and secret-shaped strings in every record that passes through."""

    def __init__(self) -> None:
        super().__init__()
        # Longest first, so a value is masked whole before a shorter form of it (its stripped core) is.
        # Replaced, never mutated: the store's worker thread redacts while the event loop registers.
        self._values: tuple[str, ...] = ()

    def register(self, value: str) -> None:
        if value in self._values:
            return  # the common case: every request resolves its secret again
        forms = {form for form in _spellings(value) if len(form) >= MIN_REDACTED_LENGTH} - set(self._values)
        if forms:
            self._values = tuple(sorted({*self._values, *forms}, key=len, reverse=True))

    def redact_values(self, text: str) -> str:
        """Only the registered values, in every spelling: for documents whose wording must stay as written."""
        for value in self._values:
            if value in text:
                text = text.replace(value, MASK)
        return text

    def redact(self, text: str) -> str:
        text = self.redact_values(text)
        for pattern in _PATTERNS:
            text = pattern.sub(lambda m: m.group(1) + MASK, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


def _spellings(value: str) -> set[str]:
    """The value as it may appear in a message: verbatim, trimmed, and escaped the ways libraries quote
    text (httpx quotes a refused header as bytes repr; HTML, URLs), each also inside JSON, as the store and
    the API keep messages (a quoted value in an event's data is escaped twice)."""
    quoted = {value, value.strip(), repr(value)[1:-1], repr(value.encode("utf-8", "backslashreplace"))[2:-1]}
    quoted |= {html.escape(value), urllib.parse.quote(value, safe="")}
    in_json = {json.dumps(form, ensure_ascii=ascii_only)[1:-1] for form in quoted for ascii_only in (True, False)}
    return quoted | in_json


def header_value_problem(value: str) -> str | None:
    """Why ``value`` cannot be an HTTP header value (RFC 9110 §5.5 field-value), or None if it can.

    Only visible ASCII, with spaces and tabs inside. The reason names the kind and position of the
    offending character, never the value."""
    for position, char in enumerate(value, start=1):
        if char in "\r\n":
            return f"the value contains a line break (character {position})"
        if char != "\t" and (ord(char) < 0x20 or ord(char) == 0x7F):
            return f"the value contains a control character (U+{ord(char):04X}, character {position})"
        if ord(char) > 0x7E:
            return f"the value contains a non-ASCII character (character {position})"
    if value != value.strip(" \t"):
        return "the value starts or ends with a space or tab"
    return None


class SecretResolver:
    """Resolves the config's named secrets. Raises SecretError naming the secret, never its value.

    ``on_resolved(name, value)`` is told every value resolved: the daemon's outbound guard, which refuses to
    send a value where the files do not bind its name (it keeps them in memory only, as the Redactor does)."""

    def __init__(
        self,
        refs: Mapping[str, SecretRef],
        environ: Mapping[str, str],
        redactor: Redactor,
        *,
        on_resolved: Callable[[str, str], None] | None = None,
    ) -> None:
        self._refs = dict(refs)
        self._environ = environ
        self._redactor = redactor
        self._on_resolved = on_resolved

    def __call__(self, name: str) -> str:
        ref = self._refs.get(name)
        if ref is None:
            raise SecretError(f"secret {name!r} is not defined")
        try:
            value = self._resolve(ref)
        except SecretError as exc:
            # from None: the chained OSError or InvalidToken adds nothing a person can act on.
            raise SecretError(f"secret {name!r}: {exc}") from None
        # Registered even when refused below: the value must never leak, whatever happens to it next.
        self._redactor.register(value)
        if self._on_resolved is not None:
            self._on_resolved(name, value)
        problem = header_value_problem(value)
        if problem is not None:
            trim = (
                " (one trailing newline is removed from a file; more is part of the value)" if ref.env is None else ""
            )
            raise SecretError(
                f"secret {name!r}: {ref.describe()}: {problem}; it cannot be sent as an HTTP header{trim}"
            )
        return value

    def check_all(self) -> dict[str, str | None]:
        """Each secret's name → None if it resolves, else the reason."""
        problems: dict[str, str | None] = {}
        for name in sorted(self._refs):
            try:
                self(name)
                problems[name] = None
            except SecretError as exc:
                problems[name] = str(exc)
        return problems

    def permission_warnings(self) -> list[str]:
        """One warning per secret file, credential or master key file that group or others may read."""
        paths: dict[Path, str] = {}
        for name in sorted(self._refs):
            ref = self._refs[name]
            if ref.file is not None:
                paths.setdefault(Path(ref.file), f"secret {name!r}: file {ref.file}")
            elif ref.credential is not None and self._environ.get(CREDENTIALS_DIRECTORY_ENV):
                path = Path(self._environ[CREDENTIALS_DIRECTORY_ENV]) / ref.credential
                paths.setdefault(path, f"secret {name!r}: credential {ref.credential!r} ({path})")
        if any(ref.encrypted is not None for ref in self._refs.values()):
            key_file = master_key_file(self._environ)
            if key_file is not None:
                paths.setdefault(key_file, f"master key file {key_file}")
        return [f"{what} {problem}" for path, what in paths.items() if (problem := _loose_permissions(path))]

    def _resolve(self, ref: SecretRef) -> str:
        if ref.env is not None:
            return self._from_env(ref.env)
        if ref.file is not None:
            return read_secret_file(Path(ref.file), f"file {ref.file}")
        if ref.credential is not None:
            return self._from_credential(ref.credential)
        if ref.encrypted is not None:
            return self._decrypt(ref.encrypted)
        raise SecretError("has no source")

    def _from_env(self, variable: str) -> str:
        value = self._environ.get(variable)
        if not value:
            raise SecretError(f"environment variable {variable} is not set or empty")
        return value

    def _from_credential(self, credential: str) -> str:
        directory = self._environ.get(CREDENTIALS_DIRECTORY_ENV)
        if not directory:
            raise SecretError(
                f"credential {credential!r}: {CREDENTIALS_DIRECTORY_ENV} is not set "
                "(is it running under systemd with LoadCredential=?)"
            )
        path = Path(directory) / credential
        missing = (
            f"credential {credential!r} not found in ${CREDENTIALS_DIRECTORY_ENV} ({directory}); "
            f"add LoadCredential={credential}:/path/to/file to the unit"
        )
        return read_secret_file(path, f"credential {credential!r} ({path})", missing=missing)

    def _decrypt(self, token: str) -> str:
        keys = load_master_keys(self._environ)
        for key in keys.keys:
            # The master keys are secrets too.
            self._redactor.register(key)
        try:
            plaintext = keys.fernet().decrypt(token)
        except InvalidToken:
            raise SecretError(
                f"cannot decrypt: the master key from {keys.source} does not match (was it rotated away?)"
            ) from None
        try:
            value = plaintext.decode("utf-8")
        except UnicodeDecodeError:
            raise SecretError("the decrypted value is not UTF-8 text") from None
        if not value:
            raise SecretError("the encrypted value is empty")
        return value


def read_secret_file(path: Path, what: str, *, missing: str | None = None) -> str:
    """The file's text without one trailing newline ("\\n" or "\\r\\n"), as editors and `echo` add one.

    ``missing`` replaces the message for a file that does not exist."""
    try:
        data = read_bounded(path, MAX_SECRET_BYTES)
    except UnreadableFile as exc:
        raise SecretError(missing if exc.missing and missing else f"{what} {exc.reason}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretError(f"{what} is not UTF-8 text") from None
    text = strip_one_newline(text)
    if not text:
        raise SecretError(f"{what} is empty")
    return text


def _loose_permissions(path: Path) -> str | None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return None  # resolving it reports the problem
    if stat.S_IMODE(mode) & 0o077:
        return (
            f"is readable or writable by group or others (mode {stat.S_IMODE(mode):04o}); "
            f"restrict it with `chmod 600 {path}` (or 400)"
        )
    return None


def strip_one_newline(text: str) -> str:
    # Exactly one: a value may legitimately end in whitespace, but not in the newline an editor adds.
    for ending in ("\r\n", "\n"):
        if text.endswith(ending):
            return text[: -len(ending)]
    return text
