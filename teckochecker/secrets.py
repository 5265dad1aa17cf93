"""Named secrets: references in the config → values at the moment a plugin builds a request.

A value comes from exactly one of: an environment variable, a file, a systemd credential, or a Fernet
token decrypted with the master keys (see masterkey.py). Files, credentials and tokens are read at each
call, so a rotated credential file or key is picked up without a restart.

Values are never logged: every resolved value is registered with the Redactor, a logging filter on the
root handler that masks it wherever it would appear. Error messages name the secret and the reason,
never the value or a key.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

from cryptography.fernet import InvalidToken

from teckochecker.boundedread import read_bounded
from teckochecker.config import SecretRef
from teckochecker.errors import SecretError, UnreadableFile
from teckochecker.masterkey import CREDENTIALS_DIRECTORY_ENV, load_master_keys

MASK = "[REDACTED]"
# A secret is a token or a password; a larger file is the wrong file (or /dev/zero).
MAX_SECRET_BYTES = 64 * 1024
# Header values and well-known token shapes, masked even when the value was never registered.
_PATTERNS = [
    re.compile(r"(?i)(authorization:\s*bearer\s+)\S+"),
    re.compile(r"(?i)(x-storageapi-token['\"]?\s*[:=]\s*['\"]?)[^\s'\",}]+"),
    re.compile(r"()\bsk-[A-Za-z0-9_-]{16,}"),
]


class Redactor(logging.Filter):
    """Masks known secret values and secret-shaped strings in every record that passes through."""

    def __init__(self) -> None:
        super().__init__()
        self._values: set[str] = set()

    def register(self, value: str) -> None:
        # Very short values would mask ordinary words; nobody's real key is that short.
        if len(value) >= 6:
            self._values.add(value)

    def redact(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, MASK)
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


class SecretResolver:
    """Resolves the config's named secrets. Raises SecretError naming the secret, never its value."""

    def __init__(self, refs: Mapping[str, SecretRef], environ: Mapping[str, str], redactor: Redactor) -> None:
        self._refs = dict(refs)
        self._environ = environ
        self._redactor = redactor

    def __call__(self, name: str) -> str:
        ref = self._refs.get(name)
        if ref is None:
            raise SecretError(f"secret {name!r} is not defined")
        try:
            value = self._resolve(ref)
        except SecretError as exc:
            # from None: the chained OSError or InvalidToken adds nothing a person can act on.
            raise SecretError(f"secret {name!r}: {exc}") from None
        self._redactor.register(value)
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


def strip_one_newline(text: str) -> str:
    # Exactly one: a value may legitimately end in whitespace, but not in the newline an editor adds.
    for ending in ("\r\n", "\n"):
        if text.endswith(ending):
            return text[: -len(ending)]
    return text
