"""Benchmark: how long `validate-config` (the daemon's own loader) takes for N jobs that use a template.

    .venv/bin/python benchmarks/validate_config.py --jobs 10000
    .venv/bin/python benchmarks/validate_config.py --jobs 10000 --layout drop-ins

It writes a config into a temporary directory: every job in the main file (``--layout main``), or one
drop-in file per job (``--layout drop-ins``), and prints the seconds `load_config` takes for a few sizes up to
N, so the growth (linear or not) is visible. Not a test: it prints figures. Opens no network connection.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from teckochecker.config.validate import load_config
from teckochecker.plugins import load_plugins

HEADER = """\
secrets:
  openai: {env: OPENAI_API_KEY}
  keboola: {env: KEBOOLA_TOKEN}
templates:
  standard:
    interval: 2m
    deadline: 25h
    source:
      type: openai_batch
      api_key: openai
    actions:
      - type: keboola_job
        stack_url: https://connection.eu-central-1.keboola.com
        token: keboola
        component: kds-team.app-custom-python
        config: "123456789"
"""


def write_config(directory: Path, jobs: int, layout: str) -> Path:
    main = directory / "teckochecker.yaml"
    lines = [HEADER]
    if layout == "drop-ins":
        lines.append("include: [jobs.d/*.yaml]\njobs: []\n")
        (directory / "jobs.d").mkdir()
        for i in range(jobs):
            (directory / "jobs.d" / f"job-{i:05d}.yaml").write_text(_jobs_yaml([i]))
    else:
        lines.append(_jobs_yaml(range(jobs)))
    main.write_text("".join(lines))
    return main


def _jobs_yaml(indexes: range | list[int]) -> str:
    body = "".join(
        f"  - name: job-{i:05d}\n    template: standard\n    source: {{targets: [batch_{i:05d}a, batch_{i:05d}b]}}\n"
        for i in indexes
    )
    return "jobs:\n" + body


def measure(jobs: int, layout: str) -> float:
    registry = load_plugins({})
    with tempfile.TemporaryDirectory(prefix="tc-bench-validate-") as tmp:
        main = write_config(Path(tmp), jobs, layout)
        started = time.perf_counter()
        config = load_config(main, registry)
        elapsed = time.perf_counter() - started
    if len(config.jobs) != jobs:
        raise SystemExit(f"expected {jobs} jobs, loaded {len(config.jobs)}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--layout", choices=["main", "drop-ins"], default="main")
    args = parser.parse_args()
    sizes = sorted({max(1, args.jobs // 4), max(1, args.jobs // 2), args.jobs})
    print(f"load_config with N jobs using a template ({args.layout}):")
    for size in sizes:
        seconds = measure(size, args.layout)
        print(f"  {size:>7} jobs: {seconds:7.2f} s  ({seconds / size * 1e6:7.1f} µs/job)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
