"""The command line, run as a person would: real subprocesses, real exit codes, no tracebacks."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from daemon import run_cli

from teckochecker import __version__
from teckochecker.cli import build_parser

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "teckochecker.yaml.example"


def test_version(plugin_env: dict[str, str], tmp_path: Path) -> None:
    out = run_cli("--version", env=plugin_env, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == f"teckochecker {__version__}"


@pytest.mark.parametrize("command", [[], ["run"], ["validate-config"], ["status"], ["show"], ["plugins"]])
def test_help_on_every_command(plugin_env: dict[str, str], tmp_path: Path, command: list[str]) -> None:
    out = run_cli(*command, "--help", env=plugin_env, cwd=tmp_path)
    assert out.returncode == 0 and "usage: teckochecker" in out.stdout


def test_every_command_is_documented_in_help() -> None:
    subcommands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert set(subcommands) >= {"run", "validate-config", "status", "show", "plugins", "jobs"}


def test_example_config_validates(plugin_env: dict[str, str], tmp_path: Path) -> None:
    out = run_cli("validate-config", str(EXAMPLE), env=plugin_env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{EXAMPLE}: OK: 1 job(s), 2 target(s), 2 secret(s)"


def test_invalid_config_exit_1_every_problem_no_traceback(plugin_env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("defaults:\n  interval: 5s\n  interval: 1m\njobs: 3\n")
    out = run_cli("validate-config", str(bad), env=plugin_env, cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        f"{bad}:2:3: defaults.interval: must be between 30s and 1h (got 5s)",
        f"{bad}:3:3: defaults.interval: duplicate key (first defined at line 2)",
        f"{bad}:4:1: jobs: must be a list of jobs",
        "3 problem(s) found",
    ]
    assert out.stdout == ""


def test_config_file_resolution(plugin_env: dict[str, str], tmp_path: Path) -> None:
    out = run_cli("validate-config", env=plugin_env, cwd=tmp_path)
    assert out.returncode == 2 and "no config file" in out.stderr
    shutil.copy(EXAMPLE, tmp_path / "teckochecker.yaml")
    out = run_cli("validate-config", env=plugin_env, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.startswith(str(tmp_path / "teckochecker.yaml"))
    other = tmp_path / "other.yaml"
    other.write_text("jobs: []\n")
    out = run_cli("validate-config", env={**plugin_env, "TECKOCHECKER_CONFIG": str(other)}, cwd=tmp_path)
    assert out.stdout.startswith(f"{other}: OK: 0 job(s)")
    out = run_cli(
        "--config",
        str(tmp_path / "teckochecker.yaml"),
        "validate-config",
        env={**plugin_env, "TECKOCHECKER_CONFIG": str(other)},
        cwd=tmp_path,
    )
    assert "1 job(s)" in out.stdout


def test_plugins_lists_builtins_and_test_plugins(plugin_env: dict[str, str], tmp_path: Path) -> None:
    out = run_cli("plugins", env=plugin_env, cwd=tmp_path)
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["PLUGIN", "VERSION", "SOURCE", "TYPES", "ACTION", "TYPES"]
    assert any(line.split()[:4] == ["keboola_job", __version__, "-", "keboola_job"] for line in lines)
    assert any(line.split()[:3] == ["openai_batch", __version__, "openai_batch"] for line in lines)
    assert any(line.split() == ["teckotest_plugin", "-", "status_file", "record"] for line in lines)


def test_broken_plugin_module_is_a_clear_error(plugin_env: dict[str, str], tmp_path: Path) -> None:
    out = run_cli("plugins", env={**plugin_env, "TECKOCHECKER_PLUGINS": "no_such_module"}, cwd=tmp_path)
    assert out.returncode == 2
    assert "cannot import plugin module 'no_such_module'" in out.stderr and "Traceback" not in out.stderr


def test_status_before_the_first_run_lists_the_configured_jobs(plugin_env: dict[str, str], tmp_path: Path) -> None:
    shutil.copy(EXAMPLE, tmp_path / "teckochecker.yaml")
    out = run_cli("status", env=plugin_env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    db = tmp_path / ".teckochecker" / "state.db"
    assert out.stdout.splitlines() == [
        "JOB                     STATE            TARGETS  NEXT CHECK  ACTION  LAST ERROR",
        "nightly-classification  not yet checked  0/2      -           -",
        f"daemon never ran with this config: nothing stored in sqlite:///{db} yet",
    ]
    assert not db.exists()  # looking creates nothing


def test_show_without_a_state_store_explains(plugin_env: dict[str, str], tmp_path: Path) -> None:
    shutil.copy(EXAMPLE, tmp_path / "teckochecker.yaml")
    out = run_cli("show", "nightly-classification", env=plugin_env, cwd=tmp_path)
    assert (
        out.returncode == 2 and "has the daemon run with this config?" in out.stderr and "Traceback" not in out.stderr
    )
