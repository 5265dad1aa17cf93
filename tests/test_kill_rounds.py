"""The randomized kill test (benchmarks/kill_rounds.py) in small: a few rounds of SIGKILL during the trigger
window, with in-doubt create answers, a lagging search index and hand-started foreign jobs. Measured only
from outside the daemon: the fake Keboola's ledger and the daemon's state store."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from kill_rounds import RoundSettings, round_line, run_round

# Seed 1 gives every round an index lag above 2 x search_lag, in-doubt answers on the first create calls
# and at least one foreign job (checked below, so a change of the round's draws cannot make this vacuous).
SEED = 1
ROUNDS = 3
SETTINGS = RoundSettings(jobs=3, settle_timeout=15.0)


def test_sigkill_rounds_leave_one_job_per_trigger_and_touch_no_foreign_job(tmp_path: Path) -> None:
    results = []
    for number in range(1, ROUNDS + 1):
        workdir = tmp_path / f"round{number}"
        workdir.mkdir()
        results.append(run_round(number, SEED * 100_003 + number, SETTINGS, workdir))
    report = "\n".join(round_line(r) for r in results)

    # The rounds did exercise what they are meant to: a kill inside the window, faults, foreign jobs, lag.
    assert all(r.kill_after is not None for r in results), report
    assert all(r.triggers_fired == SETTINGS.jobs for r in results), report
    assert sum(len(r.faults) for r in results) >= ROUNDS, report
    assert sum(r.foreign_jobs for r in results) >= ROUNDS, report
    assert max(r.index_lag for r in results) > 2 * SETTINGS.search_lag, report

    assert sum(r.foreign_touched for r in results) == 0, report
    assert sum(r.duplicates_left_running for r in results) == 0, report
    assert sum(r.triggers_without_job for r in results) == 0, report
    assert sum(r.stuck_jobs for r in results) == 0, report
