"""The master keys that decrypt ``encrypted:`` secrets: where they come from, and their MultiFernet.

Fernet is AES-128-CBC with HMAC-SHA256 (authenticated encryption). Several keys are accepted, newest
first: the newest encrypts, any of them decrypts, so a key can be rotated without downtime.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.fernet import Fernet, MultiFernet

from teckochecker.boundedread import read_bounded
from teckochecker.errors import SecretError, UnreadableFile

MASTER_KEY_ENV = "TECKOCHECKER_MASTER_KEY"
MASTER_KEY_FILE_ENV = "TECKOCHECKER_MASTER_KEY_FILE"
MASTER_KEY_CREDENTIAL = "teckochecker_master_key"
CREDENTIALS_DIRECTORY_ENV = "CREDENTIALS_DIRECTORY"
# A key file holds a few 44-character keys; anything much larger is the wrong file.
MAX_KEY_FILE_BYTES = 64 * 1024

_SEPARATORS = re.compile(r"[\s,]+")
HOW_TO_GET_A_KEY = (
    f"make one with `teckochecker secrets keygen` and set {MASTER_KEY_ENV}, or {MASTER_KEY_FILE_ENV} "
    f"to a file holding it, or provide the systemd credential '{MASTER_KEY_CREDENTIAL}'"
)


@dataclass(frozen=True)
class MasterKeys:
    """Valid Fernet keys, newest first, and a description of where they came from (for messages)."""

    # repr=False: a logged or printed MasterKeys must not show the keys.
    keys: tuple[str, ...] = field(repr=False)
    source: str

    def fernet(self) -> MultiFernet:
        return MultiFernet([Fernet(key) for key in self.keys])

    def newest(self) -> Fernet:
        return Fernet(self.keys[0])


def generate_key() -> str:
    return Fernet.generate_key().decode("ascii")


def load_master_keys(environ: Mapping[str, str]) -> MasterKeys:
    """Keys from $TECKOCHECKER_MASTER_KEY, else the file named by $TECKOCHECKER_MASTER_KEY_FILE, else the
    systemd credential. Raises SecretError saying what is wrong, never showing a key."""
    inline = environ.get(MASTER_KEY_ENV, "")
    if inline.strip():
        return MasterKeys(parse_keys(inline, f"${MASTER_KEY_ENV}"), f"${MASTER_KEY_ENV}")
    key_file = environ.get(MASTER_KEY_FILE_ENV, "")
    if key_file.strip():
        origin = f"key file {key_file} (${MASTER_KEY_FILE_ENV})"
        return MasterKeys(parse_keys(_read_key_file(Path(key_file), origin), origin), origin)
    credentials = environ.get(CREDENTIALS_DIRECTORY_ENV, "")
    if credentials:
        origin = f"credential {MASTER_KEY_CREDENTIAL} (${CREDENTIALS_DIRECTORY_ENV})"
        path = Path(credentials) / MASTER_KEY_CREDENTIAL
        # The credential is optional: its absence only means "no key from here". Any other problem
        # (permissions, say) is reported by the read.
        if _exists(path):
            return MasterKeys(parse_keys(_read_key_file(path, origin), origin), origin)
    raise SecretError(f"no master key: {HOW_TO_GET_A_KEY}")


def parse_keys(text: str, origin: str) -> tuple[str, ...]:
    """Keys separated by commas, whitespace or newlines; ``#`` starts a comment (keys never contain one)."""
    without_comments = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    keys = tuple(part for part in _SEPARATORS.split(without_comments) if part)
    if not keys:
        raise SecretError(f"no master key: {origin} holds no key; {HOW_TO_GET_A_KEY}")
    for position, key in enumerate(keys, start=1):
        if not is_fernet_key(key):
            raise SecretError(
                f"{origin}: key {position} of {len(keys)} is not a Fernet key "
                "(44 url-safe base64 characters, as printed by `teckochecker secrets keygen`)"
            )
    return keys


def is_fernet_key(text: str) -> bool:
    try:
        Fernet(text)
    except (ValueError, TypeError):
        return False
    return True


def _exists(path: Path) -> bool:
    try:
        path.stat()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return True


def _read_key_file(path: Path, origin: str) -> str:
    try:
        data = read_bounded(path, MAX_KEY_FILE_BYTES)
    except UnreadableFile as exc:
        raise SecretError(f"{origin} {exc.reason}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretError(f"{origin} is not UTF-8 text") from None


def master_key_file(environ: Mapping[str, str]) -> Path | None:
    """The file load_master_keys reads the keys from (same precedence), or None for the inline variable."""
    if environ.get(MASTER_KEY_ENV, "").strip():
        return None
    key_file = environ.get(MASTER_KEY_FILE_ENV, "")
    if key_file.strip():
        return Path(key_file)
    credentials = environ.get(CREDENTIALS_DIRECTORY_ENV, "")
    if credentials and _exists(Path(credentials) / MASTER_KEY_CREDENTIAL):
        return Path(credentials) / MASTER_KEY_CREDENTIAL
    return None
