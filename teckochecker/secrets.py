"""Named secrets: references in the config → values at the moment a plugin builds a request.

Values are never logged: every resolved value is registered with the Redactor, a logging filter on the
root handler that masks it wherever it would appear.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

from teckochecker.config import SecretRef
from teckochecker.errors import SecretError

MASK = "[REDACTED]"
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
        value = self._resolve(name, ref)
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

    def _resolve(self, name: str, ref: SecretRef) -> str:
        if ref.env is not None:
            value = self._environ.get(ref.env)
            if not value:
                raise SecretError(f"secret {name!r}: environment variable {ref.env} is not set or empty")
            return value
        raise SecretError(f"secret {name!r} has no source")
