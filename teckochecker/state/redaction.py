"""Secret values never reach the state store's file: every text written passes the daemon's redactor.

The hook sits on the engine, below every write path, because the text written comes from vendors,
libraries and plugins (an httpx error quoting a header, a proxy echoing the request): redacting at each
call site would miss the next one added.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

Redact = Callable[[str], str]
_WRITES = ("INSERT", "UPDATE")


def redact_writes(engine: Engine, redact: Redact) -> None:
    """Pass every string parameter of an INSERT or UPDATE through ``redact`` before the driver sees it.

    Reads are left alone: a WHERE clause must find what was written."""

    @event.listens_for(engine, "before_cursor_execute", retval=True)
    def _before(
        _conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, executemany: bool
    ) -> tuple[str, Any]:
        if statement.lstrip()[:6].upper() not in _WRITES:
            return statement, parameters
        if executemany:
            return statement, [_redact_parameters(p, redact) for p in parameters]
        return statement, _redact_parameters(parameters, redact)


def _redact_parameters(parameters: Any, redact: Redact) -> Any:
    if isinstance(parameters, dict):
        return {key: _redact_value(value, redact) for key, value in parameters.items()}
    if isinstance(parameters, (list, tuple)):
        return type(parameters)(_redact_value(value, redact) for value in parameters)
    return parameters


def _redact_value(value: Any, redact: Redact) -> Any:
    # JSON columns arrive here already serialised to text (SQLite) or wrapped by the driver (psycopg).
    if isinstance(value, str):
        return redact(value)
    wrapped = getattr(value, "obj", None)
    if wrapped is not None and type(value).__module__.startswith("psycopg"):
        return type(value)(_redact_json(wrapped, redact))
    return value


def _redact_json(value: Any, redact: Redact) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(str(k)): _redact_json(v, redact) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_json(v, redact) for v in value]
    return value
