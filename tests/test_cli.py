"""The command line, run as a person would: real subprocesses, real exit codes, no tracebacks."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from daemon import TECKOCHECKER, run_cli

from teckochecker import __version__
from teckochecker.cli.main import build_parser
from teckochecker.config.models import JOB_NAME_RULE

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "teckochecker.yaml.example"


def test_version(plugin_env: dict[str, str], tmp_path: Path) -> None:
    out = run_cli("--version", env=plugin_env, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == f"teckochecker {__version__}"


HELPED = [[], ["run"], ["validate-config"], ["status"], ["show"], ["plugins"], ["db", "current"], ["db", "upgrade"]]


@pytest.mark.parametrize("command", HELPED)
def test_help_on_every_command(plugin_env: dict[str, str], tmp_path: Path, command: list[str]) -> None:
    out = run_cli(*command, "--help", env=plugin_env, cwd=tmp_path)
    assert out.returncode == 0 and "usage: teckochecker" in out.stdout


def test_every_command_is_documented_in_help() -> None:
    subcommands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert set(subcommands) >= {"run", "validate-config", "status", "show", "plugins", "jobs", "db"}


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
    assert any(
        line.split()[:4] == ["openai_batch", __version__, "openai_batch,", "azure_openai_batch"] for line in lines
    )
    assert any(line.split()[:4] == ["anthropic_batch", __version__, "anthropic_batch", "-"] for line in lines)
    assert any(line.split()[:4] == ["webhook", __version__, "-", "webhook"] for line in lines)
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


@pytest.mark.parametrize("url", ["mysql://tc:pw-CANARY@db.example/tc", "postgresql://tc:pw-CANARY@db.example/tc"])
def test_a_state_url_with_no_driver_here_is_refused_in_one_line(
    plugin_env: dict[str, str], tmp_path: Path, url: str
) -> None:
    """mysql:// passed validate-config, then every command that opens the store ended in ModuleNotFoundError;
    plain postgresql:// means psycopg2, which is not installed either."""
    config = tmp_path / "teckochecker.yaml"
    config.write_text(f'state: {{url: "{url}"}}\n' + DROP_IN_MAIN.replace("include: [jobs.d/*.yaml]\n", ""))
    checked = run_cli("validate-config", str(config), env=plugin_env, cwd=tmp_path)
    assert checked.returncode == 1 and "Traceback" not in checked.stderr
    [problem, _] = checked.stderr.splitlines()
    assert "state.url: unsupported state store URL" in problem
    assert "sqlite, sqlite+pysqlite, postgresql+psycopg" in problem and "pw-CANARY" not in problem
    scheme = url.partition("://")[0]
    commands = [["status"], ["db", "current"], ["db", "upgrade"], ["show", "x"]]
    given = [[*command, "--state-url", url] for command in commands[:2]]
    for args in [*commands, *given]:
        out = run_cli(*args, env=plugin_env, cwd=tmp_path)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert out.stderr.splitlines() == [
            f"teckochecker: error: unsupported state store URL ({scheme}://): use sqlite:///PATH or "
            "postgresql+psycopg://USER@HOST/DB (schemes: sqlite, sqlite+pysqlite, postgresql+psycopg)"
        ], args
    # run and jobs export read the whole config first (export writes each body as its file job), so they
    # refuse it as validate-config does.
    for command in (["run"], ["jobs", "export"]):
        started = run_cli(*command, env=plugin_env, cwd=tmp_path)
        assert started.returncode == 1 and "Traceback" not in started.stderr, command
        assert "state.url: unsupported state store URL" in started.stderr and "pw-CANARY" not in started.stderr


# --- jobs add / remove: names stay in their directory, one writer at a time -----------------------------

DROP_IN_MAIN = """\
include: [jobs.d/*.yaml]
templates:
  std:
    source: {type: status_file, path: /tmp/status.json}
    actions: [{type: record, ledger: /tmp/ledger.jsonl}]
jobs: []
"""


def jobs_add(config: Path, env: dict[str, str], name: str, *batches: str) -> list[str]:
    args = ["--config", str(config), "jobs", "add", name, "--template", "std"]
    for batch in batches:
        args += ["--batch", batch]
    return [TECKOCHECKER, *args]


@pytest.mark.parametrize("name", ["../main", "/etc/x", "a/b", "..", ".hidden", "", "a\nb", "x" * 129])
def test_jobs_add_refuses_names_that_leave_the_directory(plugin_env: dict[str, str], tmp_path: Path, name: str) -> None:
    config = tmp_path / "main.yaml"
    config.write_text(DROP_IN_MAIN)
    (tmp_path / "jobs.d").mkdir()
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    out = run_cli(*jobs_add(config, plugin_env, name, "b1")[1:], env=plugin_env, cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr == f"teckochecker: error: invalid job name {name!r}: {JOB_NAME_RULE}\n"
    assert config.read_text() == DROP_IN_MAIN
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    out = run_cli("--config", str(config), "jobs", "remove", name, env=plugin_env, cwd=tmp_path)
    assert out.returncode == 2 and "invalid job name" in out.stderr


def test_concurrent_jobs_add_of_one_name_exactly_one_wins(plugin_env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "main.yaml"
    # An unused template that takes a while to parse widens the window between reading the config and
    # writing the file, as a config with many jobs does; without a lock several processes fit into it.
    filler = "  filler: {values: [" + ", ".join(str(i) for i in range(5000)) + "]}\n"
    config.write_text(DROP_IN_MAIN.replace("templates:\n", "templates:\n" + filler))
    procs = [
        subprocess.Popen(
            jobs_add(config, plugin_env, "same", f"batch-{i}"),
            env=plugin_env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(20)
    ]
    results = [(proc.wait(timeout=120), *proc.communicate()) for proc in procs]
    winners = [i for i, (code, _, _) in enumerate(results) if code == 0]
    assert len(winners) == 1, results
    for i, (code, stdout, stderr) in enumerate(results):
        if i != winners[0]:
            assert code == 2 and stdout == "", (code, stdout, stderr)
            assert stderr.startswith("teckochecker: error: job 'same' already exists in "), stderr
    # The file holds the winner's job, and the whole config is valid with it.
    assert f"batch-{winners[0]}" in (tmp_path / "jobs.d" / "same.yaml").read_text()
    assert sorted(p.name for p in (tmp_path / "jobs.d").iterdir()) == ["same.yaml"]  # no temporary files left
    out = run_cli("validate-config", str(config), env=plugin_env, cwd=tmp_path)
    assert out.returncode == 0 and "1 job(s), 1 target(s)" in out.stdout


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d.symlink_to(d.parent / "absent"), "is a symlink to {parent}/absent, which does not exist"),
        (lambda d: d.symlink_to(d), "cannot be used: a symlink loop"),
        (lambda d: d.write_text("not a directory\n"), "is not a directory ({dir} is a file)"),
    ],
    ids=["dangling-symlink", "symlink-loop", "regular-file"],
)
def test_jobs_add_into_a_broken_drop_in_directory_is_a_clear_error(
    plugin_env: dict[str, str], tmp_path: Path, make: Callable[[Path], object], message: str
) -> None:
    config = tmp_path / "main.yaml"
    config.write_text(DROP_IN_MAIN)
    directory = tmp_path / "jobs.d"
    make(directory)
    expected = f"{config}:1:11: include[0]: the directory {directory} {message.format(parent=tmp_path, dir=directory)}"
    # The daemon's validator reports it, and so `jobs add` (which validates first) refuses to write.
    for command in (["validate-config", str(config)], jobs_add(config, plugin_env, "fresh", "b1")[1:]):
        out = run_cli(*command, env=plugin_env, cwd=tmp_path)
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
        assert out.stderr.splitlines() == [expected, "1 problem(s) found"]


def test_jobs_add_writes_only_inside_the_drop_in_directory(plugin_env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "main.yaml"
    config.write_text(DROP_IN_MAIN)
    (tmp_path / "jobs.d").mkdir()
    out = run_cli(*jobs_add(config, plugin_env, "a..b", "b1")[1:], env=plugin_env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"wrote {tmp_path / 'jobs.d' / 'a..b.yaml'}: job 'a..b' watching 1 target(s)\n"
    assert sorted(p.name for p in (tmp_path / "jobs.d").iterdir()) == ["a..b.yaml"]


def test_jobs_remove_never_deletes_a_dot_file_the_daemon_does_not_load(
    plugin_env: dict[str, str], tmp_path: Path
) -> None:
    """`jobs remove` expands the include glob as the loader does: a dot-file (an editor's or `jobs add`'s
    scratch file) is never loaded, so it is not the job's file and is left alone. It used to be deleted."""
    config = tmp_path / "main.yaml"
    config.write_text(DROP_IN_MAIN)
    (tmp_path / "jobs.d").mkdir()
    scratch = tmp_path / "jobs.d" / ".nightly.yaml"
    scratch.write_text("jobs:\n  - {name: nightly, template: std, source: {targets: [b1]}}\n")
    out = run_cli("--config", str(config), "jobs", "remove", "nightly", env=plugin_env, cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr == "teckochecker: error: no drop-in file defines a job named 'nightly'\n"
    assert scratch.exists()
    out = run_cli(*jobs_add(config, plugin_env, "nightly", "b1")[1:], env=plugin_env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    out = run_cli("--config", str(config), "jobs", "remove", "nightly", env=plugin_env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (tmp_path / "jobs.d").iterdir()) == [".nightly.yaml"]


# ----- refusals of the remote commands (--url, --token-file): one line, never the token or a password -----

TOKEN_LINE = "tok-CANARY-0123456789"
NOT_A_TOKEN = "holds characters a bearer token cannot have (printable ASCII, no spaces)"


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def refused(out: subprocess.CompletedProcess[str]) -> str:
    """The one error line of a refused command; asserts the exit code and that nothing else was printed."""
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert out.stdout == "" and "Traceback" not in out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("teckochecker: error: "), out.stderr
    return lines[0]


@pytest.mark.parametrize("command", [["jobs", "add", "j", "--template", "t", "-b", "b1"], ["jobs", "remove", "j"]])
@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (f"{TOKEN_LINE}\nsecond-line-{TOKEN_LINE}\n".encode(), "holds more than one line; it must hold only the token"),
        (f"{TOKEN_LINE}\u00e9\n".encode(), "holds characters a bearer token cannot have (printable ASCII, no spaces)"),
        (
            f"{TOKEN_LINE} {TOKEN_LINE}".encode(),
            "holds characters a bearer token cannot have (printable ASCII, no spaces)",
        ),
        (b"\n\n", "is empty"),
    ],
)
def test_a_bad_token_file_is_one_line_without_its_content(
    plugin_env: dict[str, str], tmp_path: Path, command: list[str], content: bytes, reason: str
) -> None:
    token_file = tmp_path / "token"
    token_file.write_bytes(content)
    url = f"http://127.0.0.1:{closed_port()}"
    line = refused(run_cli(*command, "--url", url, "--token-file", str(token_file), env=plugin_env, cwd=tmp_path))
    assert line == f"teckochecker: error: the token file {token_file} {reason}"
    assert TOKEN_LINE not in line


def test_a_token_file_that_is_a_fifo_is_refused_at_once(plugin_env: dict[str, str], tmp_path: Path) -> None:
    fifo = tmp_path / "token"
    os.mkfifo(fifo)
    url = f"http://127.0.0.1:{closed_port()}"
    # run_cli's timeout turns a hang into a failure
    line = refused(
        run_cli("jobs", "remove", "j", "--url", url, "--token-file", str(fifo), env=plugin_env, cwd=tmp_path)
    )
    assert line == f"teckochecker: error: the token file {fifo} is a FIFO (named pipe), not a regular file"


def test_a_bad_token_in_the_environment_is_one_line_without_it(plugin_env: dict[str, str], tmp_path: Path) -> None:
    env = {**plugin_env, "TECKOCHECKER_TOKEN": f"{TOKEN_LINE}\n{TOKEN_LINE}"}
    url = f"http://127.0.0.1:{closed_port()}"
    line = refused(run_cli("jobs", "remove", "j", "--url", url, env=env, cwd=tmp_path))
    assert line == "teckochecker: error: $TECKOCHECKER_TOKEN holds more than one line; it must hold only the token"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://[::1", "not a valid URL: 'http://[::1' (Invalid IPv6 URL)"),
        ("http://127.0.0.1:99999", "not a valid URL: 'http://127.0.0.1:99999' (Port out of range 0-65535)"),
        ("http://ops:pa55-CANARY@[::1", "not a valid URL: 'http://ops:***@[::1' (Invalid IPv6 URL)"),
        ("ftp://ops:pa55-CANARY@127.0.0.1", "not an http(s) URL: 'ftp://ops:***@127.0.0.1'"),
        # A host no IDNA encoding takes fails only when the request is made (it was a traceback).
        ("http://ops:pa55-CANARY@xn--", "cannot reach the daemon at http://ops:***@xn--: "),
        ("http://a..b", "cannot reach the daemon at http://a..b: "),
    ],
)
@pytest.mark.parametrize("command", [["status"], ["jobs", "remove", "j"]])
def test_a_bad_url_is_one_line_that_never_shows_its_password(
    plugin_env: dict[str, str], tmp_path: Path, url: str, expected: str, command: list[str]
) -> None:
    env = {**plugin_env, "TECKOCHECKER_TOKEN": TOKEN_LINE}
    line = refused(run_cli(*command, "--url", url, env=env, cwd=tmp_path))
    assert line.startswith(f"teckochecker: error: {expected}") and "pa55" not in line


@pytest.mark.parametrize(
    "command", [["status"], ["jobs", "remove", "j"], ["jobs", "add", "j", "--template", "t", "-b", "b"]]
)
def test_a_password_in_the_url_is_never_echoed(plugin_env: dict[str, str], tmp_path: Path, command: list[str]) -> None:
    env = {**plugin_env, "TECKOCHECKER_TOKEN": TOKEN_LINE}
    port = closed_port()
    line = refused(run_cli(*command, "--url", f"http://ops:pa55-CANARY@127.0.0.1:{port}", env=env, cwd=tmp_path))
    assert line.startswith(f"teckochecker: error: cannot reach the daemon at http://ops:***@127.0.0.1:{port}: ")
    assert "pa55" not in line


def test_validate_config_refuses_a_webhook_secret_run_would_refuse_where_it_can_read_it(
    plugin_env: dict[str, str], tmp_path: Path
) -> None:
    whole = "whsec_RdvaYFYUXuIFuEbvZHwMfYFhUf7aMYjYcmM24+Aj40c="
    bare = whole.removeprefix("whsec_")
    config = tmp_path / "hooks.yaml"
    config.write_text(
        "webhooks:\n"
        "  port: 8090\n"
        "  secrets: [fine, bare, elsewhere]\n"
        "secrets:\n"
        "  fine: {env: HOOK_FINE}\n"
        "  bare: {env: HOOK_BARE}\n"
        "  elsewhere: {env: HOOK_ON_THE_SERVER}\n"
        "jobs: []\n"
    )
    env = {**plugin_env, "HOOK_FINE": whole, "HOOK_BARE": bare}
    out = run_cli("validate-config", str(config), env=env, cwd=tmp_path)
    assert out.returncode == 1, out.stdout
    assert out.stderr.splitlines() == [
        f"{config}:3:19: webhooks.secrets[1]: secret 'bare' is not a webhook signing secret: paste the whole "
        "value OpenAI shows, starting with 'whsec_'",
        "1 problem(s) found",
    ]
    assert bare not in out.stdout + out.stderr
    # The same value where `run` would accept it; an unreadable one ('elsewhere') is not judged here.
    out = run_cli("validate-config", str(config), env={**env, "HOOK_BARE": whole}, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{config}: OK")
