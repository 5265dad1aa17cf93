"""The ``json_file`` action: one JSON file per fired trigger, ``{directory}/{trigger_id}.json``.

Shows the effectively-once contract from a plugin's side: ``start`` either proves it did nothing (raise
``NotStarted``) or leaves a trace that ``find_started`` can find by the trigger id. The file is written
under a temporary name and then linked into place, which fails if it exists: a second start for the same
trigger cannot overwrite or duplicate the first.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import field_validator

from teckochecker.errors import NotStarted, Rejected
from teckochecker.plugin_api import Action, ActionOutcome, ActionRequest, ActionResult, OptionsModel

__all__ = ["JsonFileAction", "JsonFileOptions"]


class JsonFileOptions(OptionsModel):
    # An existing directory; the daemon's working directory is not the config file's, so it is absolute.
    directory: str

    @field_validator("directory")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("use an absolute path: the daemon's working directory is not the config file's")
        return value


class JsonFileAction(Action):
    type_name = "json_file"
    Options = JsonFileOptions
    options: JsonFileOptions

    @property
    def target_key(self) -> str:
        # Two jobs writing into one directory never clash (file names are trigger ids), but the key is how
        # the core serializes starts on one downstream target; the directory is that target here.
        return f"json_file:{self.options.directory}"

    async def start(self, request: ActionRequest) -> ActionResult:
        # File I/O off the event loop: the daemon's other jobs keep running meanwhile.
        return await asyncio.to_thread(self._write, request)

    async def find_started(self, request: ActionRequest, since: dt.datetime) -> Sequence[ActionResult] | None:
        path = self._path(request)
        return [self._result(path)] if await asyncio.to_thread(path.exists) else []

    def _write(self, request: ActionRequest) -> ActionResult:
        path = self._path(request)
        directory = path.parent
        if not directory.is_dir():
            raise Rejected(f"{directory} is not a directory; create it, then resume the job")
        body = json.dumps(_document(request), indent=2, sort_keys=True) + "\n"
        try:
            with tempfile.NamedTemporaryFile("w", dir=directory, prefix=".tmp-", delete=False) as tmp:
                tmp.write(body)
                tmp.flush()
                os.fsync(tmp.fileno())
        except OSError as exc:
            raise NotStarted(f"cannot write into {directory}: {exc.strerror}") from exc
        try:
            # The commit point, and it fails if the trigger's file exists: never two, never overwritten.
            os.link(tmp.name, path)
        except FileExistsError:
            self.context.logger.info("%s exists: trigger %s was written before", path, request.trigger_id)
        except OSError as exc:
            raise NotStarted(f"cannot write {path}: {exc.strerror}") from exc
        finally:
            with contextlib.suppress(OSError):  # a leftover temporary file is untidy, not wrong
                os.unlink(tmp.name)
        return self._result(path)

    def _path(self, request: ActionRequest) -> Path:
        return Path(self.options.directory) / f"{request.trigger_id}.json"

    def _result(self, path: Path) -> ActionResult:
        return ActionResult(external_id=path.name, outcome=ActionOutcome.SUCCEEDED, url=path.as_uri())


def _document(request: ActionRequest) -> dict[str, Any]:
    return {
        "job": request.job_name,
        "trigger_id": request.trigger_id,
        "fired_at": request.fired_at.isoformat(),
        "targets": [
            {
                "target": o.target,
                "state": o.state.value,
                "vendor_status": o.vendor_status,
                "message": o.message,
                "details": dict(o.details),
            }
            for o in request.targets
        ],
    }
