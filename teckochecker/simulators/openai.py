"""A fake OpenAI Batch API on 127.0.0.1, following docs/vendors.md, the OpenAI sections.

Routes: POST /v1/batches (create, with metadata), GET /v1/batches/{id}, GET /v1/batches?limit=&after=,
POST /v1/batches/{id}/cancel. Create checks the contract's limits (metadata: at most 16 pairs, string keys of
at most 64 characters, string values of at most 512); the wording of its 400 answers is unverified upstream.
After ``send_webhooks(url, secret)``, a batch reaching a terminal status is also announced by a signed
webhook (§4, openai_webhooks.py), unless it was added with ``webhooks=False``.
Batch objects always carry every key of the contract (explicit nulls); tests check the key set against
tests/contracts/openai-batch-examples.json and parse every object with the official SDK.
"""

from __future__ import annotations

import copy
import random
import re
import secrets
import string
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import EllipsisType
from typing import Any

from ._http import Latency, LoopbackFake, Outcome, RecordedRequest, Reply, json_reply
from .openai_webhooks import WebhookSender, batch_event

__all__ = ["BATCH_STATUSES", "TERMINAL_STATUSES", "FakeOpenAI", "Latency", "RecordedRequest", "Step"]

BATCH_STATUSES = (
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
)
TERMINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})
CANCELLABLE_STATUSES = frozenset({"validating", "in_progress", "finalizing"})
DEFAULT_MODEL = "gpt-4o-mini-2024-07-18"
OPENAI_VERSION = "2020-10-01"
_BASE62 = string.ascii_letters + string.digits
_BATCH_PATH = re.compile(r"^/v1/batches/([^/]+)$")
_CANCEL_PATH = re.compile(r"^/v1/batches/([^/]+)/cancel$")
# The create request's accepted endpoints (contract §1, batch_create_params.py).
CREATE_ENDPOINTS = frozenset(
    {
        "/v1/responses",
        "/v1/chat/completions",
        "/v1/embeddings",
        "/v1/completions",
        "/v1/moderations",
        "/v1/images/generations",
        "/v1/images/edits",
        "/v1/videos",
    }
)
METADATA_PAIRS, METADATA_KEY_CHARS, METADATA_VALUE_CHARS = 16, 64, 512
# The fake has no files API: a created batch holds this many requests.
CREATED_BATCH_TOTAL = 10

# Default error envelopes per status. Texts follow the examples file; code/type per the contract's table.
_DEFAULT_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request.", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to access this resource.", "invalid_request_error", None),
    404: ("Not found.", "invalid_request_error", None),
    409: ("The request conflicts with the current state of the resource.", "invalid_request_error", None),
    422: ("Unprocessable request.", "invalid_request_error", None),
    429: (
        "Rate limit reached for requests in organization org-fake on requests per min (RPM): Limit 5000, "
        "Used 5000, Requested 1. Please try again in 12ms.",
        "requests",
        "rate_limit_exceeded",
    ),
}
_SERVER_ERROR = ("The server had an error while processing your request. Sorry about that!", "server_error", None)


def new_batch_id() -> str:
    """Real ids: "batch_" + 32 hex."""
    return "batch_" + secrets.token_hex(16)


def new_file_id() -> str:
    """Real ids: "file-" + 22 base62 characters."""
    return "file-" + "".join(secrets.choice(_BASE62) for _ in range(22))


def new_request_id() -> str:
    return "req_" + secrets.token_hex(16)


def error_envelope(message: str, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def default_error_body(status: int, batch_id: str | None = None) -> dict[str, Any]:
    if status == 404 and batch_id is not None:
        message = f"No batch found with id '{batch_id}'."
        return error_envelope(message, "invalid_request_error", "batch_not_found")
    fallback = _SERVER_ERROR if status >= 500 else _DEFAULT_ERRORS[400]
    message, type_, code = _DEFAULT_ERRORS.get(status, fallback)
    return error_envelope(message, type_, code)


def _zero_usage() -> dict[str, Any]:
    return {
        "input_tokens": 0,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 0,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 0,
    }


def _usage_for(done: int) -> dict[str, Any]:
    """Plausible, deterministic token usage for `done` finished requests."""
    inp, out = done * 120, done * 24
    return {
        "input_tokens": inp,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": out,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": inp + out,
    }


@dataclass
class _Injection:
    reply: Reply
    times: int
    batch_id: str | None


@dataclass(frozen=True)
class Step:
    """One step of a scripted timeline: the `after_gets`-th GET of the batch from the previous step on
    answers with the batch moved to `status` (with these counts, as `set_status` would)."""

    status: str
    after_gets: int = 1
    completed: int | None = None
    failed: int | None = None


@dataclass
class _Batch:
    """A batch object plus what the real service knows but does not show yet."""

    obj: dict[str, Any]
    total: int  # the request count the input file holds (request_counts.total is 0 while validating)
    model: str
    seq: int  # creation order, the tie-break for newest-first listing
    timeline: list[Step] = field(default_factory=list)
    gets_into_step: int = 0
    webhooks: bool = True  # announce its end by webhook (once send_webhooks is on)


class FakeOpenAI(LoopbackFake):
    """Fake OpenAI Batch API. Thread-safe; `stop()` is prompt. See the module docstring for routes."""

    def __init__(
        self,
        *,
        api_key: str = "sk-test-key",
        organization: str | None = None,
        project: str | None = None,
        record_requests: bool = True,
        latency: Latency | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """``latency``: every answer is held this long (mean ± jitter, drawn from ``rng``), as across a WAN."""
        super().__init__(("openai",), record_requests=record_requests, latency=latency, rng=rng)
        self._api_key = api_key
        self._organization = organization
        self._project = project
        self._batches: dict[str, _Batch] = {}
        self._seq = 0
        self._injections: list[_Injection] = []
        self._gets: Counter[str] = Counter()
        self._lists = 0
        self._order: tuple[list[_Batch], dict[str, int]] | None = None
        self.webhooks: WebhookSender | None = None

    # ----- test-facing API -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return self._url("openai") + "/v1"

    def send_webhooks(self, url: str, secret: str, *, workers: int = 4, max_attempts: int = 5) -> WebhookSender:
        """From now on, POST a signed ``batch.<status>`` event to ``url`` whenever a batch ends."""
        if self.webhooks is not None:
            self.webhooks.stop()
        self.webhooks = WebhookSender(url, secret, workers=workers, max_attempts=max_attempts)
        return self.webhooks

    def stop(self) -> None:
        if self.webhooks is not None:
            self.webhooks.stop()
            self.webhooks = None
        super().stop()

    def add_batch(
        self,
        batch_id: str | None = None,
        *,
        status: str = "validating",
        total: int = 10,
        endpoint: str = "/v1/chat/completions",
        metadata: dict[str, str] | None = None,
        created_at: int | None = None,
        model: str = DEFAULT_MODEL,
        webhooks: bool = True,
    ) -> str:
        """Create a batch as the real create call would (validating), then move it to `status`.
        ``webhooks=False``: its end is never announced by webhook (a batch of another project)."""
        _check_metadata(metadata)
        batch_id = batch_id or new_batch_id()
        created = int(time.time()) if created_at is None else created_at
        obj = {
            "id": batch_id,
            "object": "batch",
            "endpoint": endpoint,
            "model": None,
            "errors": None,
            "input_file_id": new_file_id(),
            "completion_window": "24h",
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": created,
            "in_progress_at": None,
            "expires_at": created + 86400,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "usage": _zero_usage(),
            "metadata": dict(metadata) if metadata is not None else None,
        }
        with self._lock:
            if batch_id in self._batches:
                raise ValueError(f"batch {batch_id} already exists")
            self._seq += 1
            self._batches[batch_id] = _Batch(obj, total, model, self._seq, webhooks=webhooks)
            self._order = None
        if status != "validating":
            self.set_status(batch_id, status)
        return batch_id

    def set_status(
        self,
        batch_id: str,
        status: str,
        *,
        completed: int | None = None,
        failed: int | None = None,
        output_file_id: str | EllipsisType | None = ...,
        error_file_id: str | EllipsisType | None = ...,
        errors: list[dict[str, Any]] | None = None,
        at: int | None = None,
    ) -> None:
        """Move a batch like the real API would (timestamps, counts, model, file ids); see the brief.

        An undocumented status word is stored verbatim with no other change, to test "unknown" mapping.
        """
        now = int(time.time()) if at is None else at
        with self._lock:
            batch = self._batches[batch_id]
            before = copy.deepcopy(batch.obj)
            try:
                _transition(batch, status, now, completed, failed, errors)
            except ValueError:
                batch.obj = before  # counts that do not fit: leave the batch as it was
                raise
            self._announce_end(batch, before["status"])
            if errors is not None and status != "failed":
                batch.obj["errors"] = {"object": "list", "data": errors}
            if output_file_id is not ...:
                batch.obj["output_file_id"] = output_file_id
            if error_file_id is not ...:
                batch.obj["error_file_id"] = error_file_id

    def set_timeline(self, batch_id: str, steps: Iterable[Step | tuple[str, int]]) -> None:
        """Script the batch by polls: e.g. [("in_progress", 1), ("finalizing", 3), ("completed", 2)] makes
        the 1st GET show in_progress, the 4th finalizing and the 6th completed. One step per GET at most,
        so every step is seen; list calls do not advance it. Replaces any earlier timeline."""
        script = [s if isinstance(s, Step) else Step(*s) for s in steps]
        if any(step.after_gets < 1 for step in script):
            raise ValueError("after_gets must be >= 1")
        with self._lock:
            batch = self._batches[batch_id]
            batch.timeline, batch.gets_into_step = script, 0

    def remove_batch(self, batch_id: str) -> None:
        with self._lock:
            del self._batches[batch_id]
            self._order = None

    def batch(self, batch_id: str) -> dict[str, Any]:
        """A deep copy of the batch object as the API would return it now."""
        with self._lock:
            return copy.deepcopy(self._batches[batch_id].obj)

    def inject(
        self,
        status: int,
        *,
        times: int = 1,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        batch_id: str | None = None,
        delay: float = 0.0,
        truncate_to: int | None = None,
    ) -> None:
        """The next `times` GETs (of `batch_id`, or any GET under /v1/batches) get this response instead.

        Default body: the JSON error envelope for `status` (200 with no body sends the batch object, so
        `delay`/`truncate_to` alone make a slow or cut-off real response). A body starting with "<" is
        sent as text/html (the gateway 502 seen in the wild).
        """
        reply_headers = {"content-type": "text/html" if body and body.lstrip().startswith(b"<") else "application/json"}
        reply_headers.update({k.lower(): v for k, v in (headers or {}).items()})
        reply = Reply(status, body if body is not None else b"", reply_headers, delay, truncate_to)
        with self._lock:
            self._injections.append(_Injection(reply, times, batch_id))

    def request_kinds(self) -> dict[str, int]:
        """Requests so far by kind: ``list`` pages, single-batch ``retrieve`` GETs, and ``other`` (counted even
        if not recorded), so a benchmark can tell a listing from a fan-out of single requests."""
        with self._lock:
            retrieves = self._gets.total()
            return {"list": self._lists, "retrieve": retrieves, "other": self._request_total - self._lists - retrieves}

    def request_count(self, batch_id: str | None = None) -> int:
        """GETs of that batch, or every request of any kind when None (counted even if not recorded)."""
        with self._lock:
            return self._gets[batch_id] if batch_id is not None else self._request_total

    # ----- HTTP side -------------------------------------------------------------------------------

    def handle(self, request: RecordedRequest) -> Outcome:
        target = _target_batch(request)
        with self._lock:
            if request.method == "GET" and target is not None:
                self._gets[target] += 1
            elif request.method == "GET" and request.path.rstrip("/") == "/v1/batches":
                self._lists += 1
            injected = self._take_injection(request, target)
        if injected is not None and (injected.status != 200 or injected.body):
            return self._finish_injected(injected, target)
        reply = self._check_auth(request.headers) or self._route(request)
        if injected is not None:  # a 200 with no body: the real answer, only slow or cut off
            return Reply(reply.status, reply.body, reply.headers, injected.delay, injected.truncate_to)
        return reply

    def _route(self, request: RecordedRequest) -> Reply:
        path = request.path.rstrip("/")
        retrieve, cancel = _BATCH_PATH.match(path), _CANCEL_PATH.match(path)
        if request.method == "GET" and path == "/v1/batches":
            return self._list(request.query)
        if request.method == "POST" and path == "/v1/batches":
            return self._create(request)
        if request.method == "GET" and retrieve:
            return self._retrieve(retrieve.group(1))
        if request.method == "POST" and cancel:
            return self._cancel(cancel.group(1))
        if retrieve or cancel or path == "/v1/batches":
            return self._error(
                405,
                error_envelope(
                    f"Invalid method for URL ({request.method} {request.path}).", "invalid_request_error", None
                ),
            )
        return self._error(
            404, error_envelope(f"Invalid URL ({request.method} {request.path})", "invalid_request_error", None)
        )

    def _create(self, request: RecordedRequest) -> Reply:
        try:
            body = request.json()
        except ValueError:
            body = None
        problem = _create_problem(body)
        if problem is not None:
            message, param, code = problem
            return self._error(400, error_envelope(message, "invalid_request_error", code, param))
        batch_id = self.add_batch(endpoint=body["endpoint"], metadata=body.get("metadata"), total=CREATED_BATCH_TOTAL)
        with self._lock:
            self._batches[batch_id].obj["input_file_id"] = body["input_file_id"]
            return self._ok(self._batches[batch_id].obj)

    def _retrieve(self, batch_id: str) -> Reply:
        with self._lock:
            batch = self._batches.get(batch_id)
            if batch is None:
                return self._error(404, default_error_body(404, batch_id))
            if batch.timeline:
                status = batch.obj["status"]
                _advance_timeline(batch)
                self._announce_end(batch, status)
            return self._ok(batch.obj)

    def _cancel(self, batch_id: str) -> Reply:
        with self._lock:
            batch = self._batches.get(batch_id)
            if batch is None:
                return self._error(404, default_error_body(404, batch_id))
            status = batch.obj["status"]
            if status in CANCELLABLE_STATUSES:
                _transition(batch, "cancelling", int(time.time()), None, None, None)
            elif status != "cancelling":  # cancelling again is a no-op that returns the batch
                return self._error(
                    400, error_envelope(f"Cannot cancel a batch with status '{status}'.", "invalid_request_error", None)
                )
            return self._ok(batch.obj)

    def _announce_end(self, batch: _Batch, before: str) -> None:
        """Send the webhook for a batch that just ended (call with the lock held)."""
        status = batch.obj["status"]
        if self.webhooks is None or not batch.webhooks or status not in TERMINAL_STATUSES or before == status:
            return
        self.webhooks.send(batch_event(batch.obj["id"], status, batch.obj[f"{status}_at"] or int(time.time())))

    def _list(self, query: dict[str, list[str]]) -> Reply:
        limit_text = query.get("limit", ["20"])[-1]
        try:
            limit = int(limit_text)
        except ValueError:
            return self._error(
                400,
                error_envelope(
                    f"Invalid 'limit': expected an integer, but got '{limit_text}' instead.",
                    "invalid_request_error",
                    "invalid_type",
                    "limit",
                ),
            )
        if not 1 <= limit <= 100:
            word, bound = ("below minimum", ">= 1") if limit < 1 else ("above maximum", "<= 100")
            return self._error(
                400,
                error_envelope(
                    f"Invalid 'limit': integer {word} value. Expected a value {bound}, but got {limit} instead.",
                    "invalid_request_error",
                    f"integer_{word.replace(' ', '_')}_value",
                    "limit",
                ),
            )
        after = query.get("after", [None])[-1]
        with self._lock:
            ordered, position = self._newest_first()
            # An unknown cursor gives an empty page (undocumented upstream; see the report).
            start = (position[after] + 1 if after in position else len(ordered)) if after else 0
            page = [b.obj for b in ordered[start : start + limit]]
            envelope = {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": start + limit < len(ordered),
            }
            return self._ok(envelope)

    def _newest_first(self) -> tuple[list[_Batch], dict[str, int]]:
        """Listing order (newest created_at first, then newest added), cached: paging 10,000 batches must not
        sort them once per page. Call with the lock held."""
        if self._order is None:
            ordered = sorted(self._batches.values(), key=lambda b: (b.obj["created_at"], b.seq), reverse=True)
            self._order = (ordered, {b.obj["id"]: i for i, b in enumerate(ordered)})
        return self._order

    def _check_auth(self, headers: dict[str, str]) -> Reply | None:
        auth = headers.get("authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            # The real message explains Bearer auth; it never echoes a key.
            return self._error(
                401,
                error_envelope(
                    "You didn't provide an API key. You need to provide your API key in an Authorization header "
                    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                    "invalid_request_error",
                    None,
                ),
            )
        if not secrets.compare_digest(auth[7:].strip().encode(), self._api_key.encode()):
            # Never echo the key back, not even masked: logs of the client would then carry part of it.
            return self._error(
                401,
                error_envelope(
                    "Incorrect API key provided. You can find your API key at "
                    "https://platform.openai.com/account/api-keys.",
                    "invalid_request_error",
                    "invalid_api_key",
                ),
            )
        if self._organization is not None and headers.get("openai-organization") != self._organization:
            return self._error(
                401,
                error_envelope(
                    "OpenAI-Organization header should match organization for API key",
                    "invalid_request_error",
                    "mismatched_organization",
                ),
            )
        if self._project is not None and headers.get("openai-project") != self._project:
            return self._error(
                401,
                error_envelope(
                    "OpenAI-Project header should match project for API key",
                    "invalid_request_error",
                    "mismatched_project",
                ),
            )
        return None

    def _take_injection(self, request: RecordedRequest, target: str | None) -> Reply | None:
        if request.method != "GET" or not request.path.startswith("/v1/batches"):
            return None
        for index, injection in enumerate(self._injections):
            if injection.batch_id is None or injection.batch_id == target:
                injection.times -= 1
                if injection.times <= 0:
                    del self._injections[index]
                return injection.reply
        return None

    def _finish_injected(self, reply: Reply, target: str | None) -> Reply:
        body = reply.body or _dumps(default_error_body(reply.status, target if reply.status == 404 else None))
        return Reply(reply.status, body, {**self._common_headers(), **reply.headers}, reply.delay, reply.truncate_to)

    def _common_headers(self) -> dict[str, str]:
        headers = {
            "content-type": "application/json",
            "x-request-id": new_request_id(),
            "openai-version": OPENAI_VERSION,
            "openai-processing-ms": "12",
        }
        if self._organization is not None:
            headers["openai-organization"] = self._organization
        return headers

    def _ok(self, payload: dict[str, Any]) -> Reply:
        return json_reply(200, payload, self._common_headers())

    def _error(self, status: int, payload: dict[str, Any]) -> Reply:
        return json_reply(status, payload, self._common_headers())


def _advance_timeline(batch: _Batch) -> None:
    batch.gets_into_step += 1
    step = batch.timeline[0]
    if batch.gets_into_step >= step.after_gets:
        _transition(batch, step.status, int(time.time()), step.completed, step.failed, None)
        batch.timeline.pop(0)
        batch.gets_into_step = 0


def _dumps(payload: Any) -> bytes:
    return json_reply(200, payload).body


def _target_batch(request: RecordedRequest) -> str | None:
    path = request.path.rstrip("/")
    match = _BATCH_PATH.match(path) or _CANCEL_PATH.match(path)
    return match.group(1) if match else None


def _check_metadata(metadata: dict[str, str] | None) -> None:
    """The API's limits (16 pairs, keys ≤ 64, values ≤ 512 chars): a fake must not hold what the API can't."""
    problem = _metadata_problem(metadata)
    if problem is not None:
        raise ValueError(f"metadata exceeds the OpenAI limits (16 pairs, keys ≤ 64, values ≤ 512 chars): {problem[0]}")


def _metadata_problem(metadata: Any) -> tuple[str, str, str] | None:
    """(message, param, code) of the 400 the API gives for this metadata, or None when it is accepted."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        return ("Invalid type for 'metadata': expected an object.", "metadata", "invalid_type")
    if len(metadata) > METADATA_PAIRS:
        return (
            f"Invalid 'metadata': too many properties. Expected an object with at most {METADATA_PAIRS} "
            f"properties, but got an object with {len(metadata)} properties instead.",
            "metadata",
            "object_above_max_properties",
        )
    for key, value in metadata.items():
        if len(key) > METADATA_KEY_CHARS:
            return (
                f"Invalid 'metadata': key too long. Expected a key with at most {METADATA_KEY_CHARS} characters, "
                f"but got a key with {len(key)} characters instead.",
                "metadata",
                "string_above_max_length",
            )
        if not isinstance(value, str):
            return (f"Invalid type for 'metadata.{key}': expected a string.", f"metadata.{key}", "invalid_type")
        if len(value) > METADATA_VALUE_CHARS:
            return (
                f"Invalid 'metadata.{key}': string too long. Expected a string with maximum length "
                f"{METADATA_VALUE_CHARS}, but got a string with length {len(value)} instead.",
                f"metadata.{key}",
                "string_above_max_length",
            )
    return None


def _create_problem(body: Any) -> tuple[str, str | None, str | None] | None:
    if not isinstance(body, dict):
        return ("The request body is not a JSON object.", None, None)
    for name in ("input_file_id", "endpoint", "completion_window"):
        if not isinstance(body.get(name), str) or not body[name]:
            return (f"Missing required parameter: '{name}'.", name, "missing_required_parameter")
    if body["endpoint"] not in CREATE_ENDPOINTS:
        return (f"Invalid value for 'endpoint': {body['endpoint']!r} is not supported.", "endpoint", "invalid_value")
    if body["completion_window"] != "24h":
        return ("Invalid value for 'completion_window': only '24h' is supported.", "completion_window", "invalid_value")
    metadata = _metadata_problem(body.get("metadata"))
    return (metadata[0], metadata[1], metadata[2]) if metadata else None


# ----- the state machine ---------------------------------------------------------------------------


def _transition(
    batch: _Batch, status: str, now: int, completed: int | None, failed: int | None, errors: list[dict[str, Any]] | None
) -> None:
    obj = batch.obj
    obj["status"] = status
    mover = _MOVES.get(status)
    if mover is None:
        return  # validating, or an undocumented word kept verbatim
    mover(batch, now, completed, failed, errors)


def _set_once(obj: dict[str, Any], key: str, now: int) -> None:
    if obj[key] is None:
        obj[key] = now


def _start_processing(batch: _Batch, now: int) -> None:
    """What leaving `validating` for real work shows: in_progress_at, the model, the real total."""
    _set_once(batch.obj, "in_progress_at", now)
    batch.obj["model"] = batch.model
    batch.obj["request_counts"]["total"] = batch.total


def _set_counts(batch: _Batch, completed: int, failed: int) -> None:
    if completed < 0 or failed < 0 or completed + failed > batch.total:
        raise ValueError(f"counts completed={completed} failed={failed} do not fit total={batch.total}")
    batch.obj["request_counts"] = {"total": batch.total, "completed": completed, "failed": failed}


def _move_in_progress(
    batch: _Batch, now: int, completed: int | None, failed: int | None, errors: list[dict[str, Any]] | None
) -> None:
    _start_processing(batch, now)
    counts = batch.obj["request_counts"]
    _set_counts(
        batch, counts["completed"] if completed is None else completed, counts["failed"] if failed is None else failed
    )


def _move_finalizing(
    batch: _Batch, now: int, completed: int | None, failed: int | None, errors: list[dict[str, Any]] | None
) -> None:
    # Counts are already full while finalizing (contract §1, curator#287).
    _start_processing(batch, now)
    _set_once(batch.obj, "finalizing_at", now)
    done_failed = batch.obj["request_counts"]["failed"] if failed is None else failed
    _set_counts(batch, batch.total - done_failed if completed is None else completed, done_failed)


def _move_completed(
    batch: _Batch, now: int, completed: int | None, failed: int | None, errors: list[dict[str, Any]] | None
) -> None:
    obj = batch.obj
    _start_processing(batch, now)
    _set_once(obj, "finalizing_at", now)
    _set_once(obj, "completed_at", now)
    if completed is None:
        failed = obj["request_counts"]["failed"] if failed is None else failed
        completed = batch.total - failed
    elif failed is None:
        failed = batch.total - completed
    _set_counts(batch, completed, failed)
    # Every request failed → no output file, only the error file (contract §6).
    obj["output_file_id"] = obj["output_file_id"] or (new_file_id() if completed > 0 else None)
    obj["error_file_id"] = obj["error_file_id"] or (new_file_id() if failed > 0 else None)
    obj["usage"] = _usage_for(completed)


def _move_failed(
    batch: _Batch, now: int, completed: int | None, failed: int | None, errors: list[dict[str, Any]] | None
) -> None:
    # A validation failure: errors.data filled in, counts all zero (real dump; contract §1 and §6).
    obj = batch.obj
    _set_once(obj, "failed_at", now)
    obj["errors"] = {"object": "list", "data": errors if errors is not None else [_token_limit_error(batch)]}
    obj["request_counts"] = {
        "total": 0 if completed is None and failed is None else batch.total,
        "completed": completed or 0,
        "failed": failed or 0,
    }


def _token_limit_error(batch: _Batch) -> dict[str, Any]:
    return {
        "code": "token_limit_exceeded",
        "message": f"Enqueued token limit reached for {batch.model} in organization org-fake. Limit: "
        "2,000,000 enqueued tokens. Please try again once some in_progress batches have been "
        "completed.",
        "param": None,
        "line": None,
    }


def _move_ended_early(batch: _Batch, now: int, completed: int | None, failed: int | None) -> None:
    """Expired or cancelled: partial output if anything finished; the error file holds the rest."""
    obj = batch.obj
    if obj["in_progress_at"] is not None:
        counts = obj["request_counts"]
        _set_counts(
            batch,
            counts["completed"] if completed is None else completed,
            counts["failed"] if failed is None else failed,
        )
    elif completed or failed:
        _set_counts(batch, completed or 0, failed or 0)
    done = obj["request_counts"]["completed"]
    obj["output_file_id"] = obj["output_file_id"] or (new_file_id() if done > 0 else None)
    obj["error_file_id"] = obj["error_file_id"] or new_file_id()
    obj["usage"] = _usage_for(done)


def _move_expired(
    batch: _Batch, now: int, completed: int | None, failed: int | None, errors: list[dict[str, Any]] | None
) -> None:
    _start_processing(batch, now)  # only a batch that ran can run out of time
    _set_once(batch.obj, "expired_at", now)
    _move_ended_early(batch, now, completed, failed)


def _move_cancelling(
    batch: _Batch, now: int, completed: int | None, failed: int | None, errors: list[dict[str, Any]] | None
) -> None:
    _set_once(batch.obj, "cancelling_at", now)
    if completed is not None or failed is not None:
        counts = batch.obj["request_counts"]
        _set_counts(
            batch,
            counts["completed"] if completed is None else completed,
            counts["failed"] if failed is None else failed,
        )


def _move_cancelled(
    batch: _Batch, now: int, completed: int | None, failed: int | None, errors: list[dict[str, Any]] | None
) -> None:
    _set_once(batch.obj, "cancelling_at", now)
    _set_once(batch.obj, "cancelled_at", now)
    if batch.obj["in_progress_at"] is None and (completed or failed):
        _start_processing(batch, now)  # requests finished, so it must have been running
    _move_ended_early(batch, now, completed, failed)


_MOVES = {
    "in_progress": _move_in_progress,
    "finalizing": _move_finalizing,
    "completed": _move_completed,
    "failed": _move_failed,
    "expired": _move_expired,
    "cancelling": _move_cancelling,
    "cancelled": _move_cancelled,
}
