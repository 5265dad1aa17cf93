"""What a tick works with, built once by the daemon (tests build their own): one bundle instead of the same
parameter list at every layer."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from teckochecker.clock import Clock
from teckochecker.crashpoints import CrashPoints
from teckochecker.metrics import Metrics
from teckochecker.state.store import StateStore
from teckochecker.state.worker import StoreWorker


@dataclass(frozen=True)
class TickServices:
    store: StateStore
    worker: StoreWorker
    clock: Clock
    crashpoints: CrashPoints
    logger: logging.Logger
    metrics: Metrics
    rng: random.Random = field(default_factory=random.Random)
    # Asked just before an action start: False when this replica may no longer be the leader (replicas.py).
    may_act: Callable[[], bool] = field(default=lambda: True)
