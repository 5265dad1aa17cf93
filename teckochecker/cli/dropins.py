"""Drop-in job files: `teckochecker jobs add` and `jobs remove`.

A pipeline that just submitted batches registers them with one command; the running daemon sees the new
file in its include directory and picks the job up within seconds. Files are written atomically
(temporary file, fsync, link or rename), and only after the whole config with the new file has been validated.
The job name is checked before it becomes a file name, the file always lands directly in the drop-in
directory, and concurrent commands take turns on a lock on that directory.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import yaml

from teckochecker.atomicfile import fsync_directory, open_directory, write_atomically
from teckochecker.config.includes import include_directory_problem, include_matches, matches_include
from teckochecker.config.loader import load_file
from teckochecker.config.models import JOB_NAME_RULE, is_job_name
from teckochecker.config.validate import load_config
from teckochecker.errors import TeckoCheckerError
from teckochecker.plugins import PluginRegistry


def add_job(
    config_path: Path,
    registry: PluginRegistry,
    name: str,
    template: str,
    targets: Sequence[str],
    *,
    replace: bool = False,
    now: dt.datetime | None = None,
) -> Path:
    _check_name(name)  # before any path is built from it
    config = load_config(config_path, registry)
    if not config.include:
        raise TeckoCheckerError(
            f"{config_path} has no 'include:'; add e.g. `include: [jobs.d/*.yaml]` so drop-in job files are read"
        )
    directory, path = _drop_in_path(config_path, config.include[0], name)
    text = render_drop_in(name, template, targets, now or dt.datetime.now(dt.timezone.utc))
    with _locked(directory) as dir_fd:
        # Under the lock, so a concurrent `jobs add` of the same name is seen here, and the whole config is
        # validated together with whatever the others wrote before us.
        config = load_config(config_path, registry)
        existing = config.jobs.get(name)
        if existing is not None and not (replace and Path(existing.file) == path):
            raise TeckoCheckerError(
                f"job {name!r} already exists in {existing.file}" + ("" if replace else " (use --replace)")
            )
        load_config(config_path, registry, overlay={path: text})  # raises ConfigError with every problem
        try:
            write_atomically(dir_fd, path.name, text, replace=replace)
        except FileExistsError:
            raise TeckoCheckerError(f"{path.name} already exists in the drop-in directory (use --replace)") from None
    return path


def remove_job(config_path: Path, name: str) -> Path:
    _check_name(name)
    document, _ = load_file(config_path)
    data = document.data if isinstance(document.data, dict) else {}
    if any(isinstance(j, dict) and j.get("name") == name for j in data.get("jobs") or []):
        raise TeckoCheckerError(f"job {name!r} is defined in the main file {config_path}; edit it there")
    for pattern in data.get("include") or []:
        full = config_path.parent / str(pattern)
        if not full.parent.is_dir():
            continue
        with _locked(full.parent):
            for path in include_matches(full):
                names = _job_names(path)
                if name not in names:
                    continue
                if len(names) > 1:
                    raise TeckoCheckerError(
                        f"job {name!r} shares {path} with other jobs ({', '.join(sorted(names - {name}))}); "
                        "edit that file by hand"
                    )
                path.unlink()
                fsync_directory(path.parent)
                return path
    raise TeckoCheckerError(f"no drop-in file defines a job named {name!r}")


def render_drop_in(name: str, template: str, targets: Sequence[str], now: dt.datetime) -> str:
    body = {"jobs": [{"name": name, "template": template, "source": {"targets": list(targets)}}]}
    header = f"# Written by `teckochecker jobs add` at {now:%Y-%m-%dT%H:%M:%SZ}.\n"
    return header + yaml.safe_dump(body, sort_keys=False, default_flow_style=False)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[int]:
    """An exclusive flock on the directory itself, held while validating and writing: concurrent
    `jobs add`/`remove` run one after the other. Yields the directory's fd; files are made relative to it,
    so a directory swapped for a symlink meanwhile is not followed."""
    with open_directory(directory) as fd:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd  # closing the fd releases the lock


def _check_name(name: str) -> None:
    if not is_job_name(name):
        raise TeckoCheckerError(f"invalid job name {name!r}: {JOB_NAME_RULE}")


def _drop_in_path(config_path: Path, pattern: str, name: str) -> tuple[Path, Path]:
    """The drop-in directory (created if absent) and the file for job ``name`` in it."""
    full = config_path.parent / pattern
    directory = _real_directory(full.parent)
    path = full.parent / f"{name}.yaml"
    if not matches_include(path, full):
        raise TeckoCheckerError(
            f"{path.name} would not match the first include glob {pattern!r}; make it match *.yaml files"
        )
    # The name rule already keeps '/' and '..' out; this also catches NAME.yaml being a symlink out of it.
    resolved = path.resolve()
    if resolved.parent != directory or not resolved.is_relative_to(directory):
        raise TeckoCheckerError(f"{path} resolves to {resolved}, outside the drop-in directory {directory}")
    return directory, path


def _real_directory(directory: Path) -> Path:
    """``directory`` with symlinks resolved; made if it does not exist. A dangling symlink, a symlink loop
    or a file in its place is an error that says so."""
    try:
        if not os.path.lexists(directory):
            directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TeckoCheckerError(f"cannot create the drop-in directory {directory}: {exc.strerror or exc}") from None
    problem = include_directory_problem(directory)
    if problem is not None:
        raise TeckoCheckerError(f"the drop-in directory {directory} {problem}")
    return directory.resolve(strict=True)


def _job_names(path: Path) -> set[str]:
    document, _ = load_file(path)
    jobs = document.data.get("jobs") if isinstance(document.data, dict) else None
    return {j["name"] for j in jobs or [] if isinstance(j, dict) and isinstance(j.get("name"), str)}
