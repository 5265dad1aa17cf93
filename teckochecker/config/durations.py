"""Durations as people write them in YAML: ``45s``, ``2m``, ``1h``, ``1h30m``, ``500ms``."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# Longer than any deadline or interval anyone means; bounding here keeps datetime arithmetic on every use
# (now + deadline) from overflowing, and keeps "999…9d" from becoming inf.
MAX_DURATION = 366 * 86400.0


def parse_duration(value: Any) -> float:
    """Seconds in ``value``; a bare number is refused so that ``interval: 2`` cannot mean the wrong unit."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"a duration is written with a unit, like 45s, 2m or 1h (got {_shorten(repr(value))})")
    text = value.strip().replace(" ", "")
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"invalid duration {_shorten(value)!r}: write it like 45s, 2m, 1h or 1h30m")
    if not total <= MAX_DURATION:  # `not <=` so that inf and nan are refused too
        raise ValueError(f"duration {_shorten(value)!r} is longer than the maximum of 366d")
    return total


def _shorten(text: str) -> str:
    # The message repeats the value; a pasted megabyte of digits should not be repeated whole.
    return text if len(text) <= 40 else text[:37] + "..."


def format_duration(seconds: float) -> str:
    """Seconds → the shortest readable form (``150`` → ``2m30s``)."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    out, rest = "", round(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            out += f"{rest // size}{unit}"
            rest %= size
    return out or "0s"


# A duration in the config's JSON Schema (`teckochecker config schema`): a string with units. Spaces are
# allowed only around a unit, where people put them ("1h 30m"); parse_duration also takes "1 0s", nobody writes it.
DURATION_PATTERN = r"^\s*(?:[0-9]+(?:\.[0-9]+)? *(?:ms|s|m|h|d) *)+$"
_DURATION_JSON_SCHEMA = {"type": "string", "pattern": DURATION_PATTERN, "examples": ["45s", "2m", "1h30m"]}

# A pydantic field type: written as "2m" in YAML, held as float seconds.
Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(_DURATION_JSON_SCHEMA),
]
