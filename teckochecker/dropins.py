"""Drop-in job files: `teckochecker jobs add` and `jobs remove`.

A pipeline that just submitted batches registers them with one command; the running daemon sees the new
file in its include directory and picks the job up within seconds. Files are written atomically
(temporary file, fsync, rename), and only after the whole config with the new file has been validated.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import os
from collections.abc import Sequence
from pathlib import Path

import yaml

from teckochecker.errors import TeckoCheckerError
from teckochecker.loader import load_file
from teckochecker.plugins import PluginRegistry
from teckochecker.validate import load_config


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
    config = load_config(config_path, registry)
    if not config.include:
        raise TeckoCheckerError(
            f"{config_path} has no 'include:'; add e.g. `include: [jobs.d/*.yaml]` so drop-in job files are read"
        )
    path = _drop_in_path(config_path, config.include[0], name)
    existing = config.jobs.get(name)
    if existing is not None and not (replace and Path(existing.file) == path):
        raise TeckoCheckerError(
            f"job {name!r} already exists in {existing.file}" + ("" if replace else " (use --replace)")
        )
    text = render_drop_in(name, template, targets, now or dt.datetime.now(dt.timezone.utc))
    load_config(config_path, registry, overlay={path: text})  # raises ConfigError with every problem
    write_atomically(path, text)
    return path


def remove_job(config_path: Path, name: str) -> Path:
    document, _ = load_file(config_path)
    data = document.data if isinstance(document.data, dict) else {}
    if any(isinstance(j, dict) and j.get("name") == name for j in data.get("jobs") or []):
        raise TeckoCheckerError(f"job {name!r} is defined in the main file {config_path}; edit it there")
    for pattern in data.get("include") or []:
        full = config_path.parent / str(pattern)
        for path in sorted(full.parent.glob(full.name)):
            names = _job_names(path)
            if name not in names:
                continue
            if len(names) > 1:
                raise TeckoCheckerError(
                    f"job {name!r} shares {path} with other jobs ({', '.join(sorted(names - {name}))}); "
                    "edit that file by hand"
                )
            path.unlink()
            _fsync_dir(path.parent)
            return path
    raise TeckoCheckerError(f"no drop-in file defines a job named {name!r}")


def render_drop_in(name: str, template: str, targets: Sequence[str], now: dt.datetime) -> str:
    body = {"jobs": [{"name": name, "template": template, "source": {"targets": list(targets)}}]}
    header = f"# Written by `teckochecker jobs add` at {now:%Y-%m-%dT%H:%M:%SZ}.\n"
    return header + yaml.safe_dump(body, sort_keys=False, default_flow_style=False)


def write_atomically(path: Path, text: str) -> None:
    # A dot-name never matches an include glob, so the daemon never reads a half-written file.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _drop_in_path(config_path: Path, pattern: str, name: str) -> Path:
    full = config_path.parent / pattern
    path = full.parent / f"{name}.yaml"
    if not fnmatch.fnmatch(path.name, full.name):
        raise TeckoCheckerError(
            f"{path.name} would not match the first include glob {pattern!r}; make it match *.yaml files"
        )
    return path


def _job_names(path: Path) -> set[str]:
    document, _ = load_file(path)
    jobs = document.data.get("jobs") if isinstance(document.data, dict) else None
    return {j["name"] for j in jobs or [] if isinstance(j, dict) and isinstance(j.get("name"), str)}


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
