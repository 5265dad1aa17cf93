"""The command line. The only module that prints and chooses exit codes."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from teckochecker import __version__
from teckochecker.cli.config_commands import register_config_commands
from teckochecker.cli.exitcodes import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK, EXIT_SCHEMA_BEHIND
from teckochecker.cli.report import (
    daemon_down,
    render_job,
    render_plugins,
    render_registry_notes,
    render_reload,
    render_replicas,
    render_status,
    render_unchecked,
    replicas_down,
)
from teckochecker.cli.secrets import register_secrets_commands
from teckochecker.clock import SystemClock
from teckochecker.config.diagnostics import Diagnostic
from teckochecker.config.loader import load_file
from teckochecker.config.location import CONFIG_ENV, SYSTEM_CONFIG, find_config
from teckochecker.config.validate import Config, load_config
from teckochecker.control import RELOAD_META, reload_status_from_json
from teckochecker.errors import ConfigError, NoStateStore, SecretError, StateStoreError, TeckoCheckerError
from teckochecker.logs import setup_logging
from teckochecker.plugins import PluginRegistry, load_plugins
from teckochecker.plugintrace import tracing_requested
from teckochecker.secrets.resolving import Redactor, SecretResolver
from teckochecker.state.heartbeat import HEARTBEAT_META, heartbeat_from_json
from teckochecker.state.leadership import ReplicaInfo, list_replicas
from teckochecker.state.location import SingleInstanceLock, ensure_parent, resolve_state_url, sqlite_path
from teckochecker.state.revisions import UPGRADE_COMMAND, SchemaState
from teckochecker.state.store import StateStore

if TYPE_CHECKING:
    from teckochecker.cli.registration import Registered


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    environ = dict(os.environ)
    if tracing_requested(environ):
        # Plugins are loaded before a command sets up its logging; the trace must not be lost.
        setup_logging("INFO", getattr(args, "log_format", "text"), Redactor(), environ)
    try:
        return int(args.handler(args, environ))
    except ConfigError as exc:
        for diagnostic in exc.diagnostics:
            print(diagnostic, file=sys.stderr)
        print(f"{len(exc.diagnostics)} problem(s) found", file=sys.stderr)
        return EXIT_INVALID
    except TeckoCheckerError as exc:
        print(f"teckochecker: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="teckochecker",
        description="Watch sets of asynchronous jobs (OpenAI batches) and run actions (Keboola jobs) once they finish.",
    )
    parser.add_argument("--version", action="version", version=f"teckochecker {__version__}")
    parser.add_argument(
        "--config",
        "-c",
        type=Path,
        metavar="PATH",
        help=f"config file (default: ${CONFIG_ENV}, else ./teckochecker.yaml, else {SYSTEM_CONFIG})",
    )
    commands = parser.add_subparsers(title="commands", dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run", help="run the daemon", description="Run the daemon in the foreground until SIGTERM/SIGINT."
    )
    run.add_argument(
        "--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="overrides log_level in the config"
    )
    run.add_argument("--log-format", choices=["text", "json"], default="text", help="json: one JSON object per line")
    run.set_defaults(handler=cmd_run)

    demo = commands.add_parser(
        "demo",
        help="watch the daemon work against simulated OpenAI and Keboola (no credentials, no network)",
        description="Start simulated OpenAI and Keboola servers on 127.0.0.1, write a scratch config with three "
        "jobs, and run the real daemon with its status page while batches make progress for about a minute. "
        "Ctrl-C stops it and removes the scratch directory (unless --keep).",
    )
    demo.add_argument("--keep", action="store_true", help="keep the config, state and log to explore afterwards")
    demo.add_argument("--port", type=int, metavar="PORT", help="the daemon's HTTP port (default: a free one)")
    demo.add_argument("--speed", type=_speed, default=1.0, metavar="X", help="play the story X times faster (≤ 100)")
    demo.add_argument("--exit-when-done", action="store_true", help="stop once the story has played out (for scripts)")
    demo.set_defaults(handler=cmd_demo)

    validate = commands.add_parser(
        "validate-config",
        help="check a config file and exit",
        description="Validate a config file with the daemon's own loader. Exit 0 if valid, 1 if not "
        "(every problem printed as FILE:LINE:COL: path: message). Opens no network connection and no state store.",
    )
    validate.add_argument("path", nargs="?", type=Path, help="the file to check (default: the --config resolution)")
    validate.set_defaults(handler=cmd_validate)

    status = commands.add_parser(
        "status",
        help="show every job's state",
        description="Show jobs and their batches' progress from the state store, or from a running daemon (--url).",
    )
    _state_url_option(status)
    status.add_argument(
        "--url",
        metavar="URL",
        help="read a running daemon's HTTP API instead of the state store (e.g. http://127.0.0.1:9718)",
    )
    status.set_defaults(handler=cmd_status)

    show = commands.add_parser("show", help="show one job: its targets, actions and event log")
    show.add_argument("job", help="the job's name")
    show.add_argument("--events", type=int, default=50, metavar="N", help="how many recent events (default 50)")
    _state_url_option(show)
    show.set_defaults(handler=cmd_show)

    plugins = commands.add_parser("plugins", help="list loaded plugins and the types they provide")
    plugins.set_defaults(handler=cmd_plugins)

    jobs = commands.add_parser(
        "jobs",
        help="add or remove jobs (drop-in files, or a daemon's API with --url); export API jobs",
        description="Manage drop-in job files in the first include: directory, or with --url the jobs registered "
        "over a daemon's HTTP API (token from --token-file or $TECKOCHECKER_TOKEN, never the command line).",
    )
    jobs_commands = jobs.add_subparsers(title="commands", dest="jobs_command", required=True, metavar="COMMAND")
    add = jobs_commands.add_parser(
        "add",
        help="write a drop-in job from a template",
        description="Validate the whole config with the new job, then write NAME.yaml atomically into the first "
        "include directory. A running daemon picks it up within seconds.",
    )
    add.add_argument("name", help="the new job's name")
    add.add_argument("--template", "-t", required=True, help="a template from the main file's templates:")
    add.add_argument(
        "--batch",
        "-b",
        dest="targets",
        action="append",
        required=True,
        metavar="ID",
        help="a target (batch ID) to watch; repeat for several",
    )
    add.add_argument("--replace", action="store_true", help="overwrite an existing drop-in of that name")
    _remote_options(add)
    add.set_defaults(handler=cmd_jobs_add)
    remove = jobs_commands.add_parser(
        "remove",
        help="delete a drop-in job file",
        description="Delete the drop-in file that defines NAME. Its history is kept.",
    )
    remove.add_argument("name", help="the job's name")
    _remote_options(remove)
    remove.set_defaults(handler=cmd_jobs_remove)
    export = jobs_commands.add_parser(
        "export",
        help="print the jobs registered over the API as a drop-in file",
        description="Print the jobs registered over the HTTP API (from the state store) as YAML that "
        "validate-config accepts as a drop-in file: for teams that move them into git.",
    )
    _state_url_option(export)
    export.set_defaults(handler=cmd_jobs_export)
    _add_db_commands(commands)
    register_secrets_commands(commands)
    register_config_commands(commands)
    return parser


def _add_db_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    db = commands.add_parser(
        "db",
        help="the state store's schema: its revision, and upgrading it",
        description="Every schema change is an Alembic revision shipped in the package. The daemon upgrades "
        "on start unless state.upgrade_on_start is false.",
    )
    db_commands = db.add_subparsers(title="commands", dest="db_command", required=True, metavar="COMMAND")
    current = db_commands.add_parser(
        "current",
        help="print the schema revision and whether it is the head",
        description=f"Read the schema revision of the configured state store; change nothing. Exit {EXIT_OK} "
        f"at the head, {EXIT_SCHEMA_BEHIND} when behind (or not created yet), {EXIT_ERROR} when it cannot be "
        "read or is newer than this release.",
    )
    _state_url_option(current)
    current.set_defaults(handler=cmd_db_current)
    upgrade = db_commands.add_parser(
        "upgrade",
        help="bring the schema to this release's head revision (back up first)",
        description="Upgrade the configured state store's schema in one transaction. On PostgreSQL under an "
        "advisory lock (safe beside daemons starting); on SQLite refused while a daemon uses the file.",
    )
    _state_url_option(upgrade)
    upgrade.set_defaults(handler=cmd_db_upgrade)


def _remote_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", metavar="URL", help="register or remove over a running daemon's HTTP API instead of a drop-in file"
    )
    parser.add_argument(
        "--token-file", type=Path, metavar="PATH", help="a file holding the bearer token (else $TECKOCHECKER_TOKEN)"
    )


def _state_url_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-url", metavar="URL", help="read this state store instead of the config's")


def _load(
    args: argparse.Namespace, environ: Mapping[str, str], path: Path | None = None
) -> tuple[Config, PluginRegistry]:
    registry = load_plugins(environ)
    config_path = path or find_config(args.config, environ, Path.cwd())
    return load_config(config_path, registry), registry


def _config_path(args: argparse.Namespace, environ: Mapping[str, str]) -> Path:
    return find_config(args.config, environ, Path.cwd())


def cmd_validate(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    config, _ = _load(args, environ, args.path)
    problems = _webhook_secret_problems(config, environ)
    if problems:
        raise ConfigError(problems)
    print(config.summary())
    return EXIT_OK


def _webhook_secret_problems(config: Config, environ: Mapping[str, str]) -> list[Diagnostic]:
    """What `run` refuses at start about the receiver's signing secrets (a value that is not a whole
    ``whsec_`` one), for each value readable here. A value not readable here (another machine's variable,
    file or credential) says nothing: `teckochecker secrets check` is the command for that."""
    if not config.webhooks.enabled:
        return []
    from teckochecker.webhooks.signature import signing_key  # only when a receiver is configured

    resolver = SecretResolver(config.secrets, environ, Redactor())
    problems: list[Diagnostic] = []
    for index, name in enumerate(config.webhooks.secrets):
        try:
            value = resolver(name)
        except SecretError:
            continue
        try:
            signing_key(name, value)
        except SecretError as exc:
            document, _ = load_file(Path(config.file))
            where: tuple[str | int, ...] = ("webhooks", "secrets", index)
            problems.append(Diagnostic(document.mark_for(where), where, str(exc)))
    return problems


def cmd_run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from teckochecker.app import Daemon  # keeps the read-only commands light
    from teckochecker.sdnotify import Notifier

    config_path = _config_path(args, environ)
    config, registry = _load(args, environ, config_path)
    redactor = Redactor()
    logger = setup_logging(args.log_level or config.log_level, args.log_format, redactor, environ)
    daemon = Daemon(
        config_path,
        config,
        registry=registry,
        environ=environ,
        clock=SystemClock(),
        redactor=redactor,
        logger=logger,
        cwd=Path.cwd(),
        notifier=Notifier(environ, logger=logger),
    )
    try:
        # uvloop: the same asyncio API on libuv. In the webhook benchmark's burst the daemon is CPU-bound in
        # its event loop (HTTP in and out); on uvloop it used 30 % less CPU for the same work (README).
        import uvloop  # here: the read-only commands never start a loop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(daemon.run())
    except TeckoCheckerError as exc:
        logger.error("%s", exc)
        return EXIT_ERROR
    return EXIT_OK


def cmd_demo(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from teckochecker.cli.demo import run_demo  # the simulators are not needed by any other command

    return run_demo(
        keep=args.keep, speed=args.speed, exit_when_done=args.exit_when_done, port=args.port, out=sys.stdout
    )


def _speed(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError("must be more than 0 and at most 100")
    return value


def _state_url(args: argparse.Namespace, environ: Mapping[str, str]) -> str:
    if args.state_url:
        return str(args.state_url)
    # Only the state URL is needed: read it without full validation, so status works on a config
    # that has since become invalid.
    document, _ = load_file(find_config(args.config, environ, Path.cwd()))
    state = document.data.get("state") if isinstance(document.data, dict) else None
    configured = state.get("url") if isinstance(state, dict) else None
    return resolve_state_url(configured if isinstance(configured, str) else None, environ, Path.cwd())


def _daemon_down(store: StateStore, now: dt.datetime) -> str | None:
    replicas = _replicas(store)
    if replicas:
        return replicas_down(replicas)
    return daemon_down(heartbeat_from_json(store.get_meta(HEARTBEAT_META)), now)


def _replicas(store: StateStore) -> list[ReplicaInfo]:
    """The replicas on a PostgreSQL store (SQLite has one daemon and its heartbeat in tc_meta)."""
    if store.engine.dialect.name != "postgresql" or not sa.inspect(store.engine).has_table("tc_replicas"):
        return []
    return list_replicas(store.engine)


def cmd_status(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    if args.url:
        if args.state_url:
            raise TeckoCheckerError("give --url or --state-url, not both")
        from teckochecker.cli.api_client import fetch_jobs, fetch_replicas  # httpx only when asked to

        print(render_status(fetch_jobs(args.url), SystemClock().now()))
        if replicas := fetch_replicas(args.url):
            print(render_replicas(replicas))
        return EXIT_OK
    url = _state_url(args, environ)
    try:
        store = StateStore.open(url, readonly=True)
    except NoStateStore:
        return _status_before_first_run(args, environ, url)
    try:
        now = SystemClock().now()
        down = _daemon_down(store, now)
        print(render_status(store.jobs(), now, daemon_down=down))
        saved = store.get_meta(RELOAD_META)
        print(render_reload(reload_status_from_json(saved) if saved else None))
        if replicas := _replicas(store):
            print(render_replicas(replicas))
        if notes := store.registry_notes():
            print(render_registry_notes(notes))
    finally:
        store.close()
    return EXIT_OK


def _status_before_first_run(args: argparse.Namespace, environ: Mapping[str, str], url: str) -> int:
    # What is configured is all there is to show yet, and that is no error.
    config, _ = _load(args, environ)
    targets = {name: job.source.targets for name, job in config.jobs.items()}
    shown = make_url(url).render_as_string(hide_password=True)
    print(render_unchecked(targets, f"daemon never ran with this config: nothing stored in {shown} yet"))
    return EXIT_OK


def cmd_show(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    store = StateStore.open(_state_url(args, environ), readonly=True)
    try:
        job = store.job(args.job)
        if job is None:
            raise TeckoCheckerError(f"no job named {args.job!r} in the state store (see 'teckochecker status')")
        now = SystemClock().now()
        down = _daemon_down(store, now)
        print(render_job(job, store.events(args.job, limit=args.events), now, daemon_down=down))
    finally:
        store.close()
    return EXIT_OK


def cmd_jobs_add(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    if args.url:
        from teckochecker.cli.api_client import shown_url  # httpx only when asked to
        from teckochecker.cli.registration import job_body, put_job, read_token

        body = job_body(args.template, args.targets)
        done = _remote(lambda: put_job(args.url, args.name, body, read_token(args.token_file, environ)))
        if done is None:
            return EXIT_INVALID
        print(f"job {args.name!r} {done.outcome} at {shown_url(args.url)}: watching {len(args.targets)} target(s)")
        return EXIT_OK
    from teckochecker.cli.dropins import add_job

    path = add_job(
        _config_path(args, environ), load_plugins(environ), args.name, args.template, args.targets, replace=args.replace
    )
    print(f"wrote {path}: job {args.name!r} watching {len(args.targets)} target(s)")
    return EXIT_OK


def cmd_jobs_remove(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    if args.url:
        from teckochecker.cli.api_client import shown_url
        from teckochecker.cli.registration import delete_job, read_token

        done = _remote(lambda: delete_job(args.url, args.name, read_token(args.token_file, environ)))
        if done is None:
            return EXIT_INVALID
        print(f"job {args.name!r} removed at {shown_url(args.url)}")
        return EXIT_OK
    from teckochecker.cli.dropins import remove_job

    path = remove_job(_config_path(args, environ), args.name)
    print(f"removed {path}")
    return EXIT_OK


def cmd_db_current(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    url = _state_url(args, environ)
    shown = make_url(url).render_as_string(hide_password=True)
    try:
        found = StateStore.schema_status(url)
    except NoStateStore as exc:
        print(f"{exc}; the daemon's first start or '{UPGRADE_COMMAND}' creates it")
        return EXIT_SCHEMA_BEHIND
    print(f"{shown}: {found.describe()}")
    if found.up_to_date:
        return EXIT_OK
    if found.state is SchemaState.EMPTY:
        print(f"the daemon's first start or '{UPGRADE_COMMAND}' creates it")
    else:
        print(f"back up the store, then run '{UPGRADE_COMMAND}' (the daemon also does on start, unless told not to)")
    return EXIT_SCHEMA_BEHIND


def cmd_db_upgrade(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    url = _state_url(args, environ)
    lock = _daemon_excluded(url)
    try:
        store = StateStore.open(url)
        try:
            done = store.schema_upgrade
        finally:
            store.close()
    finally:
        if lock is not None:
            lock.release()
    assert done is not None  # a writable open always says what it did to the schema
    print(f"{make_url(url).render_as_string(hide_password=True)}: {done.describe()}")
    return EXIT_OK


def _daemon_excluded(url: str) -> SingleInstanceLock | None:
    """SQLite: the daemon's own lock, so the schema never changes under a running daemon."""
    path = sqlite_path(url)
    if path is None:
        return None
    ensure_parent(path)
    lock = SingleInstanceLock(path)
    try:
        lock.acquire()
    except StateStoreError:
        raise StateStoreError(f"a teckochecker daemon is using {path}: stop it before upgrading its schema") from None
    return lock


def _remote(call: Callable[[], Registered]) -> Registered | None:
    """The call's result; None (after printing every problem) when the daemon found the job invalid."""
    from teckochecker.cli.registration import Refused

    try:
        return call()
    except Refused as exc:
        if not exc.problems:
            raise
        print(f"teckochecker: error: {exc}", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) found", file=sys.stderr)
        return None


def cmd_jobs_export(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from teckochecker.cli.registration import export_yaml

    # The templates turn a body into the file job it stands for.
    config, registry = _load(args, environ)
    store = StateStore.open(_state_url(args, environ), readonly=True)
    try:
        print(export_yaml(store.registered_jobs(), store.url, SystemClock().now(), config, registry), end="")
    finally:
        store.close()
    return EXIT_OK


def cmd_plugins(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    print(render_plugins(load_plugins(environ)))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
