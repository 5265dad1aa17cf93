"""Which config file a command reads: --config, else $TECKOCHECKER_CONFIG, else ./teckochecker.yaml, else the
system file. Its own module so every command (the secrets ones too) resolves it the same way without importing
the command line's entry point."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from teckochecker.errors import TeckoCheckerError

CONFIG_ENV = "TECKOCHECKER_CONFIG"
SYSTEM_CONFIG = Path("/etc/teckochecker/teckochecker.yaml")


def find_config(explicit: Path | None, environ: Mapping[str, str], cwd: Path) -> Path:
    if explicit is not None:
        return explicit
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    for candidate in (cwd / "teckochecker.yaml", SYSTEM_CONFIG):
        if candidate.exists():
            return candidate
    raise TeckoCheckerError(
        f"no config file: pass --config PATH, set {CONFIG_ENV}, or create ./teckochecker.yaml or {SYSTEM_CONFIG}"
    )
