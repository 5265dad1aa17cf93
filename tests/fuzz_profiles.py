"""Hypothesis profiles for the fuzz tests: ``ci`` (the default) and ``long`` (TECKOCHECKER_FUZZ=long).

The ci profile is sized so that test_fuzz_config.py and test_fuzz_http.py together take a minute or two on a
small shared machine; the long profile runs many times more examples for a hunt before a release.
Every example must finish within DEADLINE: that bounds the time one bad input may take, it is not a benchmark.
"""

from __future__ import annotations

import datetime as dt
import os

from hypothesis import HealthCheck, settings

PROFILE_ENV = "TECKOCHECKER_FUZZ"
DEADLINE = dt.timedelta(seconds=2)
# Examples per property in each profile; the slow properties (a subprocess per example) run a fraction.
EXAMPLES = {"ci": 200, "long": 5000}

for _name, _count in EXAMPLES.items():
    settings.register_profile(
        _name,
        max_examples=_count,
        deadline=DEADLINE,
        # No local example database: a CI run must not depend on (or leave behind) what an earlier run found.
        # A failure prints its seed and a reproduce blob instead.
        database=None,
        print_blob=True,
        # Examples are whole files and HTTP requests; their size and generation time are the point.
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )

PROFILE = os.environ.get(PROFILE_ENV, "ci")
if PROFILE not in EXAMPLES:
    raise RuntimeError(f"{PROFILE_ENV}={PROFILE!r}: use one of {', '.join(EXAMPLES)}")
settings.load_profile(PROFILE)


def examples(fraction: float = 1.0) -> int:
    """How many examples a property runs in the active profile; ``fraction`` scales it for slow properties."""
    return max(5, round(EXAMPLES[PROFILE] * fraction))
