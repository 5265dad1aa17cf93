"""Logging to stdout/stderr for journald: plain lines (no timestamp under systemd, which adds its own)
or one JSON object per line. Every record passes the secret Redactor; repeats past a limit are dropped
(teckochecker.loglimit)."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Mapping

from teckochecker.loglimit import RepeatLimiter
from teckochecker.secrets.resolving import Redactor

LOGGER_NAME = "teckochecker"
# Transport loggers can print whole URLs and headers at DEBUG; they stay quiet unless asked for. Alembic's
# INFO lines (plugins set up, DDL assumed transactional) say less than the daemon's one line on an upgrade.
_NOISY = ("httpx", "httpcore", "apscheduler", "watchfiles", "alembic")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_text or record.exc_info:
            body["exception"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return json.dumps(body, ensure_ascii=False)


def setup_logging(
    level: str,
    fmt: str,
    redactor: Redactor,
    environ: Mapping[str, str],
    *,
    monotonic: Callable[[], float] = time.monotonic,
) -> logging.Logger:
    handler = logging.StreamHandler(sys.stderr)
    # First: a suppressed record costs nothing more (no redaction, no traceback formatting).
    handler.addFilter(RepeatLimiter(monotonic))
    handler.addFilter(redactor)
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = __import__("time").gmtime
    elif environ.get("JOURNAL_STREAM"):
        formatter = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in _NOISY:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    return logging.getLogger(LOGGER_NAME)
