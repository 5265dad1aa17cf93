"""A fake Anthropic Message Batches API on 127.0.0.1, following docs/vendors.md, Anthropic.

Routes: GET /v1/messages/batches?limit=&after_id=&before_id= (newest first), GET /v1/messages/batches/{id},
POST /v1/messages/batches/{id}/cancel, DELETE /v1/messages/batches/{id}, GET /v1/messages/batches/{id}/results
(JSONL). Every request needs ``x-api-key`` (or ``Authorization: Bearer``) and ``anthropic-version``; every
answer carries ``request-id`` and the ``anthropic-ratelimit-requests-*`` headers. Batch objects always carry
every key (explicit nulls); tests parse every answer with the official ``anthropic`` SDK.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
import secrets
import string
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from ._http import LoopbackFake, Outcome, RecordedRequest, Reply, json_reply

__all__ = ["ANTHROPIC_VERSIONS", "PROCESSING_STATUSES", "FakeAnthropic"]

PROCESSING_STATUSES = ("in_progress", "canceling", "ended")
# SDK 0.x sends 2023-06-01, SDK 2.x a newer date (contract §5): both are accepted.
ANTHROPIC_VERSIONS = frozenset({"2023-06-01", "2026-10-21"})
_BASE58 = "".join(c for c in string.ascii_letters + string.digits if c not in "0OIl")
_BATCHES = "/v1/messages/batches"
_ONE = re.compile(r"^/v1/messages/batches/([^/]+)$")
_CANCEL = re.compile(r"^/v1/messages/batches/([^/]+)/cancel$")
_RESULTS = re.compile(r"^/v1/messages/batches/([^/]+)/results$")
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
REQUEST_LIMIT = 4000


def new_batch_id() -> str:
    """Real ids: "msgbatch_" + 24 base58-ish characters (msgbatch_013Zva2CMHLNnXjNJJKqJ2EF)."""
    return "msgbatch_01" + "".join(secrets.choice(_BASE58) for _ in range(22))


def new_request_id() -> str:
    return "req_011C" + "".join(secrets.choice(_BASE58) for _ in range(20))


def rfc3339(seconds: float) -> str:
    """RFC 3339 with microseconds and "Z", as the API writes it."""
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def error_body(status: int, message: str | None = None, **details: str) -> dict[str, Any]:
    type_ = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    error: dict[str, Any] = {"type": type_, "message": message or _default_message(status)}
    if details:
        error["details"] = dict(details)
    return {"type": "error", "error": error, "request_id": new_request_id()}


def _default_message(status: int) -> str:
    return {
        401: "invalid x-api-key",
        404: "Not found",
        429: "Number of request tokens has exceeded your per-minute rate limit",
        529: "Overloaded",
    }.get(status, "Internal server error" if status >= 500 else "Invalid request")


@dataclass
class _Injection:
    reply: Reply
    times: int
    batch_id: str | None


@dataclass
class _Batch:
    obj: dict[str, Any]
    seq: int  # creation order, the tie-break for newest-first listing


class FakeAnthropic(LoopbackFake):
    """Fake Anthropic Message Batches API. Thread-safe; `stop()` is prompt."""

    def __init__(self, *, api_key: str = "sk-ant-test-key", record_requests: bool = True) -> None:
        super().__init__(("anthropic",), record_requests=record_requests)
        self._api_key = api_key
        self._batches: dict[str, _Batch] = {}
        self._seq = 0
        self._injections: list[_Injection] = []
        self._gets: Counter[str] = Counter()
        # The rate-limit headers of the next answers: remaining requests and the reset time (unix seconds).
        self._remaining: int | None = None
        self._reset_at: float | None = None

    # ----- test-facing API -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """What the SDK and the source take as base_url (the paths start with /v1)."""
        return self._url("anthropic")

    def add_batch(self, batch_id: str | None = None, *, requests: int = 10, created_at: float | None = None) -> str:
        """A batch as the create call returns it: in_progress, every request processing."""
        batch_id = batch_id or new_batch_id()
        created = time.time() if created_at is None else created_at
        obj = {
            "id": batch_id,
            "type": "message_batch",
            "processing_status": "in_progress",
            "request_counts": {"processing": requests, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0},
            "ended_at": None,
            "created_at": rfc3339(created),
            "expires_at": rfc3339(created + 86400),
            "archived_at": None,
            "cancel_initiated_at": None,
            "results_url": None,
        }
        with self._lock:
            if batch_id in self._batches:
                raise ValueError(f"batch {batch_id} already exists")
            self._seq += 1
            self._batches[batch_id] = _Batch(obj, self._seq)
        return batch_id

    def end(
        self, batch_id: str, *, succeeded: int | None = None, errored: int = 0, canceled: int = 0, expired: int = 0
    ) -> None:
        """End the batch with these outcome counts (succeeded: the rest); the counts must add up."""
        with self._lock:
            obj = self._batches[batch_id].obj
            total = sum(obj["request_counts"].values())
            succeeded = total - errored - canceled - expired if succeeded is None else succeeded
            counts = {"processing": 0, "succeeded": succeeded, "errored": errored, "canceled": canceled}
            counts["expired"] = expired
            if min(counts.values()) < 0 or sum(counts.values()) != total:
                raise ValueError(f"counts {counts} do not add up to the batch's {total} requests")
            obj.update(
                processing_status="ended",
                request_counts=counts,
                ended_at=rfc3339(time.time()),
                results_url=f"{self.base_url}{_BATCHES}/{batch_id}/results",
            )

    def set_status(self, batch_id: str, status: str) -> None:
        """Store a processing_status verbatim (e.g. an undocumented one) without other changes."""
        with self._lock:
            self._batches[batch_id].obj["processing_status"] = status

    def remove_batch(self, batch_id: str) -> None:
        with self._lock:
            del self._batches[batch_id]

    def batch(self, batch_id: str) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._batches[batch_id].obj)

    def set_rate_limit(self, remaining: int | None, reset_at: float | None = None) -> None:
        """What the anthropic-ratelimit-requests-* headers of the next answers say (None: a full window)."""
        with self._lock:
            self._remaining, self._reset_at = remaining, reset_at

    def inject(
        self,
        status: int,
        *,
        times: int = 1,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        batch_id: str | None = None,
    ) -> None:
        """The next `times` GETs (of `batch_id`, or any under /v1/messages/batches) get this answer instead;
        the default body is Anthropic's error envelope for `status`; a body starting with "<" is HTML."""
        html = body is not None and body.lstrip().startswith(b"<")
        reply_headers = {"content-type": "text/html" if html else "application/json"}
        reply_headers.update({k.lower(): v for k, v in (headers or {}).items()})
        payload = body if body is not None else json.dumps(error_body(status)).encode()
        with self._lock:
            self._injections.append(_Injection(Reply(status, payload, reply_headers), times, batch_id))

    def request_count(self, batch_id: str | None = None) -> int:
        """GETs of that batch, or every request of any kind when None."""
        with self._lock:
            return self._gets[batch_id] if batch_id is not None else self._request_total

    # ----- HTTP side -------------------------------------------------------------------------------

    def handle(self, request: RecordedRequest) -> Outcome:
        path = request.path.rstrip("/")
        one = _ONE.match(path)
        with self._lock:
            if request.method == "GET" and one:
                self._gets[one.group(1)] += 1
            injected = self._take_injection(request, one.group(1) if one else None)
            if injected is not None:
                return Reply(injected.status, injected.body, {**self._headers(), **injected.headers})
            refused = self._check_headers(request.headers)
            if refused is not None:
                return refused
            return self._route(request.method, path, request.query)

    def _route(self, method: str, path: str, query: dict[str, list[str]]) -> Reply:
        one, cancel, results = _ONE.match(path), _CANCEL.match(path), _RESULTS.match(path)
        if method == "GET" and path == _BATCHES:
            return self._list(query)
        if method == "GET" and one:
            return self._with_batch(one.group(1), lambda b: self._ok(b.obj))
        if method == "DELETE" and one:
            return self._with_batch(one.group(1), self._delete)
        if method == "POST" and cancel:
            return self._with_batch(cancel.group(1), self._cancel)
        if method == "GET" and results:
            return self._with_batch(results.group(1), self._results)
        return self._error(404, f"Not found: {method} {path}")

    def _with_batch(self, batch_id: str, answer: Any) -> Reply:
        batch = self._batches.get(batch_id)
        if batch is None:
            return self._error(404)
        reply: Reply = answer(batch)
        return reply

    def _cancel(self, batch: _Batch) -> Reply:
        obj = batch.obj
        if obj["processing_status"] == "ended":
            return self._error(400, f"Batch {obj['id']} has already ended and cannot be canceled")
        obj["processing_status"] = "canceling"
        obj["cancel_initiated_at"] = obj["cancel_initiated_at"] or rfc3339(time.time())
        return self._ok(obj)

    def _delete(self, batch: _Batch) -> Reply:
        if batch.obj["processing_status"] != "ended":
            return self._error(400, "Batches can only be deleted once they have finished processing")
        del self._batches[batch.obj["id"]]
        return self._ok({"id": batch.obj["id"], "type": "message_batch_deleted"})

    def _results(self, batch: _Batch) -> Reply:
        """One JSONL line per request, by outcome (the order is not guaranteed upstream; here it is fixed)."""
        obj = batch.obj
        if obj["processing_status"] != "ended":
            return self._error(400, f"Batch {obj['id']} has not finished processing")
        lines = []
        counts = obj["request_counts"]
        for outcome in ("succeeded", "errored", "canceled", "expired"):
            for n in range(counts[outcome]):
                lines.append(json.dumps({"custom_id": f"{outcome}-{n}", "result": _result(outcome, n)}))
        body = ("\n".join(lines) + "\n").encode()
        return Reply(200, body, {**self._headers(), "content-type": "application/binary"})

    def _list(self, query: dict[str, list[str]]) -> Reply:
        limit_text = query.get("limit", ["20"])[-1]
        try:
            limit = int(limit_text)
        except ValueError:
            return self._error(400, f"limit: Input should be a valid integer, got {limit_text!r}")
        if not 1 <= limit <= 1000:
            return self._error(400, "limit: Input should be greater than or equal to 1 and at most 1000")
        after, before = query.get("after_id", [None])[-1], query.get("before_id", [None])[-1]
        ordered = sorted(self._batches.values(), key=lambda b: (b.obj["created_at"], b.seq), reverse=True)
        ids = [b.obj["id"] for b in ordered]
        if after:
            start = ids.index(after) + 1 if after in ids else len(ids)
            page, has_more = ordered[start : start + limit], start + limit < len(ordered)
        elif before:
            end = ids.index(before) if before in ids else 0
            page, has_more = ordered[max(0, end - limit) : end], end - limit > 0
        else:
            page, has_more = ordered[:limit], limit < len(ordered)
        data = [b.obj for b in page]
        return self._ok(
            {
                "data": data,
                "has_more": has_more,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        )

    def _check_headers(self, headers: dict[str, str]) -> Reply | None:
        bearer = headers.get("authorization", "")
        key = headers.get("x-api-key") or (bearer[7:].strip() if bearer.startswith("Bearer ") else "")
        if not key:
            return self._error(401, "x-api-key header is required")
        if not secrets.compare_digest(key.encode(), self._api_key.encode()):
            return self._error(401, "invalid x-api-key")  # never echoes the key
        version = headers.get("anthropic-version")
        if version is None:
            return self._error(400, "anthropic-version: header is required")
        if version not in ANTHROPIC_VERSIONS:
            return self._error(400, f"anthropic-version: invalid version {version!r}")
        return None

    def _take_injection(self, request: RecordedRequest, target: str | None) -> Reply | None:
        if request.method != "GET" or not request.path.startswith(_BATCHES):
            return None
        for index, injection in enumerate(self._injections):
            if injection.batch_id is None or injection.batch_id == target:
                injection.times -= 1
                if injection.times <= 0:
                    del self._injections[index]
                return injection.reply
        return None

    def _headers(self) -> dict[str, str]:
        reset_at = self._reset_at if self._reset_at is not None else time.time() + 60
        remaining = REQUEST_LIMIT - 1 if self._remaining is None else self._remaining
        return {
            "content-type": "application/json",
            "request-id": new_request_id(),
            "anthropic-ratelimit-requests-limit": str(REQUEST_LIMIT),
            "anthropic-ratelimit-requests-remaining": str(remaining),
            "anthropic-ratelimit-requests-reset": rfc3339(reset_at),
        }

    def _ok(self, payload: dict[str, Any]) -> Reply:
        return json_reply(200, payload, self._headers())

    def _error(self, status: int, message: str | None = None) -> Reply:
        return json_reply(status, error_body(status, message), self._headers())


def _result(outcome: str, n: int) -> dict[str, Any]:
    if outcome == "succeeded":
        return {
            "type": "succeeded",
            "message": {
                "id": f"msg_01fake{n:016d}",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-5",
                "content": [{"type": "text", "text": "ok"}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 12, "output_tokens": 2},
            },
        }
    if outcome == "errored":
        return {"type": "errored", "error": error_body(400, "prompt is too long")}
    return {"type": outcome}
