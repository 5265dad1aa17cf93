"""Limits a job must stay within, reported like every other config problem (FILE:LINE:COL)."""

from __future__ import annotations

from pathlib import Path

import pytest

from teckochecker.config.models import MAX_TARGETS_PER_JOB
from teckochecker.config.validate import load_config
from teckochecker.errors import ConfigError
from teckochecker.plugins import PluginRegistry


def config_with_targets(tmp_path: Path, count: int) -> Path:
    targets = ", ".join(f"t{i}" for i in range(count))
    path = tmp_path / "tc.yaml"
    path.write_text(
        "jobs:\n"
        "  - name: huge\n"
        "    source:\n"
        f"      type: status_file\n      path: {tmp_path / 'status.json'}\n"
        f"      targets: [{targets}]\n"
        f"    actions: [{{type: record, ledger: {tmp_path / 'ledger.jsonl'}}}]\n"
    )
    return path


def test_a_job_over_the_target_limit_is_a_located_config_error(tmp_path: Path, registry: PluginRegistry) -> None:
    path = config_with_targets(tmp_path, MAX_TARGETS_PER_JOB + 1)
    with pytest.raises(ConfigError) as info:
        load_config(path, registry)
    (problem,) = [str(d) for d in info.value.diagnostics]
    assert problem == (
        f"{path}:6:7: jobs[0].source.targets: a job may watch at most {MAX_TARGETS_PER_JOB} targets "
        f"(this one lists {MAX_TARGETS_PER_JOB + 1}); split it into several jobs"
    )


def test_a_job_at_the_limit_is_valid(tmp_path: Path, registry: PluginRegistry) -> None:
    config = load_config(config_with_targets(tmp_path, MAX_TARGETS_PER_JOB), registry)
    assert len(config.jobs["huge"].source.targets) == MAX_TARGETS_PER_JOB
