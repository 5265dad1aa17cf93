"""The daemon's heartbeat in the state store: how `status` tells a running daemon from a stopped one.

The daemon writes the heartbeat every HEARTBEAT_PERIOD from its event loop and marks it stopped on a
clean stop. A daemon counts as running while its heartbeat is fresh: not marked stopped and younger
than FRESH_FOR (three periods, so one late write under load is not taken for a dead daemon). After a
crash or SIGKILL nothing marks it stopped; it goes stale instead.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

HEARTBEAT_META = "heartbeat"
HEARTBEAT_PERIOD = 5.0
FRESH_FOR = dt.timedelta(seconds=3 * HEARTBEAT_PERIOD)


@dataclass(frozen=True)
class Heartbeat:
    at: dt.datetime
    pid: int
    host: str
    stopped: bool = False

    def is_fresh(self, now: dt.datetime) -> bool:
        return not self.stopped and now - self.at < FRESH_FOR


def heartbeat_json(beat: Heartbeat) -> str:
    return json.dumps({"at": beat.at.isoformat(), "pid": beat.pid, "host": beat.host, "stopped": beat.stopped})


def heartbeat_from_json(text: str | None) -> Heartbeat | None:
    """The stored heartbeat, or None when there is none or it cannot be read (then no daemon is known to run)."""
    if not text:
        return None
    try:
        data = json.loads(text)
        at = dt.datetime.fromisoformat(data["at"])
        return Heartbeat(at, int(data["pid"]), str(data["host"]), bool(data.get("stopped", False)))
    except (ValueError, KeyError, TypeError):
        return None
