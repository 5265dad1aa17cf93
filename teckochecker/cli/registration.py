"""Jobs registered over the HTTP API, from the command line: `jobs add/remove --url` (the same as a
pipeline's PUT/DELETE) and `jobs export` (the API jobs as a drop-in file, for teams that move them into git).

The bearer token comes from a file (--token-file) or the environment (TECKOCHECKER_TOKEN), never from the
command line, where `ps` and shell history would show it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import yaml

from teckochecker.boundedread import read_bounded
from teckochecker.cli.api_client import TIMEOUT, api_root, shown_url
from teckochecker.config.models import JOB_NAME_RULE, is_job_name
from teckochecker.config.registered import file_form
from teckochecker.config.validate import Config, registered_shape_problems
from teckochecker.errors import TeckoCheckerError, UnreadableFile
from teckochecker.plugins import PluginRegistry
from teckochecker.state.models import JobOrigin, RegisteredJob

TOKEN_ENV = "TECKOCHECKER_TOKEN"
# A bearer token is a line of printable ASCII; a file far bigger than one is the wrong file.
MAX_TOKEN_FILE_BYTES = 4096


class Refused(TeckoCheckerError):
    """The daemon refused the job; ``problems`` lists each one (HTTP 422) as ``path: message``."""

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = tuple(problems)


@dataclass(frozen=True)
class Registered:
    name: str
    outcome: str  # created, updated, unchanged, removed


def read_token(token_file: Path | None, environ: Mapping[str, str]) -> str:
    """The bearer token from ``token_file`` (a regular file, read bounded) or $TECKOCHECKER_TOKEN. A refusal
    names where the token was looked for and why, never any of what was read."""
    if token_file is not None:
        try:
            raw = read_bounded(token_file, MAX_TOKEN_FILE_BYTES)
        except UnreadableFile as exc:
            raise TeckoCheckerError(f"the token file {token_file} {exc.reason}") from None
        return _checked_token(raw, f"the token file {token_file}")
    token = environ.get(TOKEN_ENV, "")
    if not token.strip():
        raise TeckoCheckerError(f"give the bearer token with --token-file PATH or the {TOKEN_ENV} environment variable")
    return _checked_token(token.encode("utf-8", "surrogateescape"), f"${TOKEN_ENV}")


def _checked_token(raw: bytes, where: str) -> str:
    token = raw.strip()
    if not token:
        raise TeckoCheckerError(f"{where} is empty")
    if b"\n" in token or b"\r" in token:
        raise TeckoCheckerError(f"{where} holds more than one line; it must hold only the token")
    if not all(0x21 <= byte <= 0x7E for byte in token):
        raise TeckoCheckerError(f"{where} holds characters a bearer token cannot have (printable ASCII, no spaces)")
    return token.decode("ascii")


def job_body(template: str, targets: Sequence[str]) -> dict[str, Any]:
    return {"template": template, "source": {"targets": list(targets)}}


def put_job(
    base_url: str, name: str, body: Mapping[str, Any], token: str, *, transport: httpx.BaseTransport | None = None
) -> Registered:
    answer = _call("PUT", base_url, name, token, body, transport)
    return Registered(name, str(answer.get("outcome", "created")))


def delete_job(base_url: str, name: str, token: str, *, transport: httpx.BaseTransport | None = None) -> Registered:
    _call("DELETE", base_url, name, token, None, transport)
    return Registered(name, "removed")


def _call(
    method: str,
    base_url: str,
    name: str,
    token: str,
    body: Mapping[str, Any] | None,
    transport: httpx.BaseTransport | None,
) -> Mapping[str, Any]:
    if not is_job_name(name):
        raise TeckoCheckerError(f"invalid job name {name!r}: {JOB_NAME_RULE}")
    url = f"{api_root(base_url)}/api/v1/jobs/{quote(name, safe='')}"
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    try:
        with httpx.Client(timeout=TIMEOUT, transport=transport, trust_env=False) as client:
            response = client.request(method, url, headers=headers, json=body)
    # UnicodeError: a host no IDNA encoding takes (xn--, a..b), found only when the request is made.
    except (httpx.HTTPError, httpx.InvalidURL, UnicodeError) as exc:
        shown = shown_url(str(exc)) or type(exc).__name__
        raise TeckoCheckerError(f"cannot reach the daemon at {shown_url(base_url)}: {shown}") from exc
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if not isinstance(answer, Mapping):
        shown = shown_url(base_url)
        raise TeckoCheckerError(f"{shown} answered HTTP {response.status_code} without JSON (is it TeckoChecker?)")
    if response.status_code in (200, 201):
        return answer
    message = f"the daemon at {shown_url(base_url)} answered HTTP {response.status_code}: {answer.get('error', '-')}"
    problems = [f"{p.get('path') or 'body'}: {p.get('message')}" for p in answer.get("problems") or ()]
    raise Refused(message, problems)


def export_yaml(
    jobs: Sequence[RegisteredJob], source: str, now: dt.datetime, config: Config, registry: PluginRegistry
) -> str:
    """The API jobs as one drop-in file (``jobs:`` only) that validate-config accepts in an include directory:
    each body as the file job it stands for (its variables and action options merged into the template's
    actions, which a file job lists whole)."""
    exported = [_as_file_job(job, config, registry) for job in jobs if job.origin is JobOrigin.API]
    header = (
        f"# {len(exported)} job(s) registered over the API, exported from {source} at {now:%Y-%m-%d %H:%M:%SZ}.\n"
        "# Put this file in an include: directory; then DELETE the API jobs (a name in both: the file wins).\n"
    )
    return header + yaml.safe_dump({"jobs": exported}, sort_keys=False, allow_unicode=True, default_flow_style=False)


def _as_file_job(job: RegisteredJob, config: Config, registry: PluginRegistry) -> dict[str, Any]:
    body = {"name": job.name, **job.body}
    name = body.get("template")
    # A stored body's template may be a list or an object, which no dict key can be (it was a traceback).
    template = config.template_bodies.get(name) if isinstance(name, str) else None
    if template is None or registered_shape_problems(body, config, registry, where=job.name):
        return body  # held, or its template is gone: as stored, for a person to mend
    return file_form(body, template, registry)
