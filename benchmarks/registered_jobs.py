"""Benchmark: what registered jobs cost a daemon, in-process, on a SQLite state store.

    .venv/bin/python benchmarks/registered_jobs.py --jobs 10000

Prints, for N registered jobs of 2 targets each (template + targets, as a pipeline PUTs them):
- storing them one put_registered_job at a time (one transaction each, as N PUTs would);
- the periodic check when nothing changed (registry_version: the one query every replica runs every 5 s);
- re-reading every row (a replica's first read), and what a replica reads after one PUT elsewhere: the
  fingerprints and update times of all rows (registered_stamps), then the one changed row;
- validating and merging all of them against the config (after a config change; off the event loop);
- the same with nothing changed (the cache: only changed rows are validated again).
Uses the test plugins (tests/support), so only TeckoChecker is measured. Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "support"))
os.environ.setdefault("TECKOCHECKER_PLUGINS", "teckotest_plugin")

from teckochecker.config.validate import load_config  # noqa: E402
from teckochecker.plugins import load_plugins  # noqa: E402
from teckochecker.registered_jobs import RegisteredDefinitions, assemble  # noqa: E402
from teckochecker.state.models import JobOrigin  # noqa: E402
from teckochecker.state.store import StateStore  # noqa: E402

CONFIG = """\
templates:
  std:
    source: {type: status_file, path: /tmp/status.json}
    actions: [{type: record, ledger: /tmp/ledger.jsonl}]
"""


def timed(label: str, fn, repeat: int = 1) -> object:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    shown = f"{statistics.median(times) * 1000:.1f} ms" + (f" (median of {repeat})" if repeat > 1 else "")
    print(f"{label:<58} {shown}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tc.yaml"
        path.write_text(CONFIG)
        registry = load_plugins(os.environ)
        config = load_config(path, registry)
        store = StateStore.open(f"sqlite:///{tmp}/state.db")
        now = dt.datetime.now(dt.UTC)
        bodies = [
            {"name": f"run-{i}", "template": "std", "source": {"targets": [f"batch_{i:032x}", f"batch_{i:031x}f"]}}
            for i in range(args.jobs)
        ]

        def put_all() -> None:
            for body in bodies:
                store.put_registered_job(str(body["name"]), JobOrigin.API, body, now=now)

        print(f"{args.jobs} registered jobs, 2 targets each, SQLite (WAL, synchronous=FULL) in {tmp}")
        timed(f"store {args.jobs} jobs, one transaction each", put_all)
        timed("the same PUT again (unchanged: nothing written)", lambda: put_all(), repeat=1)
        timed("periodic check with nothing changed (registry_version)", store.registry_version, repeat=20)
        rows = timed("read every row with its body (registered_jobs)", store.registered_jobs, repeat=3)
        timed("after one change: every row's stamp (registered_stamps)", store.registered_stamps, repeat=3)
        timed("after one change: that row's body", lambda: store.registered_jobs(["run-42"]), repeat=3)
        assert isinstance(rows, list)
        definitions = RegisteredDefinitions(registry)
        built = timed("validate every row against the config", lambda: definitions.build(rows, config))
        timed("validate again, nothing changed (cache)", lambda: definitions.build(rows, config), repeat=3)
        registered, invalid = built  # type: ignore[misc]
        by_name = {r.name: r for r in rows}
        timed("merge with the file jobs", lambda: assemble(config.jobs, by_name, registered, invalid), repeat=3)
        store.close()


if __name__ == "__main__":
    main()
