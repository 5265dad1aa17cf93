"""Fuzzing the HTTP listener: whatever a client sends, no 5xx but a documented 503, and JSON on every /api path.

Requests are written as raw bytes on a socket (an HTTP client would refuse or normalize the odd ones): every
endpoint, wrong methods, random paths, job names with unicode, percent-encoding and NUL, tokens right and
wrong, random headers, random and oversized bodies. They go to the real uvicorn server on 127.0.0.1 serving
the real app, over a real state store (tests/test_web.py builds it); one server per module, shared by all
examples. A second server's state store is down, so /api answers the documented 503. Last, short sequences
of control requests go to a real `teckochecker run` process, and every "ok" it answers must be true.
Sizes: tests/fuzz_profiles.py.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from conftest import SUPPORT, TEST_PLUGINS
from daemon import DaemonProcess
from fuzz_profiles import examples
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_daemon_http import TOKEN as DAEMON_TOKEN
from test_daemon_http import write as write_daemon_config
from test_web import TOKEN, StoreControl, populate, serve_in_thread

from teckochecker.state.store import StateStore
from teckochecker.web.routes import MAX_BODY_BYTES

WAIT = 10.0
JOBS = ["watching", "firing", "done", "late"]
ENDPOINTS = [
    "/",
    "/healthz",
    "/readyz",
    "/metrics",
    "/api/v1/status",
    "/api/v1/jobs",
    "/api/v1/jobs/{name}",
    "/api/v1/jobs/{name}/pause",
    "/api/v1/jobs/{name}/resume",
    "/api/v1/jobs/{name}/check-now",
]
METHODS = ["GET", "GET", "POST", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"]
# The two documented 503s: a failing state store, and a daemon that cannot answer for another reason.
UNAVAILABLE = ("state store unavailable", "the daemon cannot answer right now")


# ----- a raw HTTP/1.1 exchange -----


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def exchange(base: str, request: bytes, *, complete: bool = True) -> Answer | None:
    """Send ``request`` as it is and read the answer to EOF (it says Connection: close); None if the server
    closed without one. ``complete=False``: the bytes may leave the server waiting for more, so say there is
    no more (a server may take a half-closed connection for a gone client, so only then)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=WAIT) as sock:
        sock.sendall(request)
        if not complete:
            sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    if not data:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = _dechunk(body)
    return Answer(int(status_line.split(" ")[1]), headers, body)


def _dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, body = out + body[:size], body[size + 2 :]
    return out


# ----- requests -----

encoded_names = st.one_of(
    st.sampled_from([*JOBS, "nope", "", ".", "..", "%00", "watching%00", "watching%0A", "%ff%fe", "a%2Fb"]),
    st.text(max_size=30).map(lambda t: urllib.parse.quote(t, safe="")),  # unicode, NUL, anything, encoded
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30).map(
        lambda t: t.replace("?", "%3F").replace("#", "%23")
    ),
    st.integers(0, 300).map(lambda n: "x" * n),
)
paths = st.one_of(
    st.builds(lambda endpoint, name: endpoint.replace("{name}", name), st.sampled_from(ENDPOINTS), encoded_names),
    st.builds(
        lambda parts: "/" + "/".join(parts),
        st.lists(
            st.one_of(st.sampled_from(["api", "v1", "jobs", "..", ".", "", "metrics"]), encoded_names), max_size=6
        ),
    ),
)
queries = st.one_of(
    st.just(""),
    st.builds(lambda v: "?events=" + urllib.parse.quote(v, safe=""), st.text(max_size=12)),
    st.sampled_from(
        ["?events=0", "?events=1000", "?events=1001", "?events=99999999999999999999", "?events=1&events=2"]
    ),
    st.text(max_size=30).map(lambda t: "?" + urllib.parse.quote(t, safe="=&")),
)
header_values = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=60
)
authorization = st.one_of(
    st.none(),
    st.sampled_from([f"Bearer {TOKEN}", f"bearer {TOKEN}", f"Bearer {TOKEN}x", "Bearer", "Bearer  ", f"Basic {TOKEN}"]),
    header_values.map(lambda v: "Bearer " + v),
    header_values,
)
header_names = st.one_of(
    st.sampled_from(["Accept", "Accept-Encoding", "Content-Type", "Origin", "X-Forwarded-For", "Cookie", "Range"]),
    st.from_regex(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,20}", fullmatch=True).filter(
        lambda n: n.lower() not in ("host", "content-length", "transfer-encoding", "connection", "expect")
    ),
)
bodies = st.one_of(
    st.just(b""),
    st.binary(max_size=200),
    st.sampled_from([b"{}", b"null", b'{"paused": true}', b"{" * 1000]),
    st.integers(MAX_BODY_BYTES - 2, MAX_BODY_BYTES + 1000).map(lambda n: b"x" * n),
)


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    chunked: bool
    # Raw bytes spliced in somewhere: the request may not be valid HTTP, the server may refuse it as such.
    garbage: bytes = b""
    garbage_at: int = 0
    path: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", urllib.parse.unquote(self.target.partition("?")[0], errors="replace"))

    def to_bytes(self) -> bytes:
        head = f"{self.method} {self.target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in self.headers)
        if self.chunked:
            framed = (f"{len(self.body):x}\r\n".encode() + self.body + b"\r\n" if self.body else b"") + b"0\r\n\r\n"
            data = head.encode("latin-1") + b"Transfer-Encoding: chunked\r\n\r\n" + framed
        else:
            data = head.encode("latin-1") + f"Content-Length: {len(self.body)}\r\n\r\n".encode() + self.body
        if self.garbage:
            at = min(self.garbage_at, len(data))
            data = data[:at] + self.garbage + data[at:]
        return data


def _aimed(draw: st.DrawFn) -> tuple[str, str, str | None]:
    """Method, target and Authorization of a request an endpoint expects, mostly: it must get past routing
    and authentication to reach the code behind them."""
    endpoint = draw(st.sampled_from(ENDPOINTS))
    control = endpoint.rsplit("/", 1)[-1] in ("pause", "resume", "check-now")
    method = draw(st.sampled_from(["POST"] * 8 + METHODS)) if control else draw(st.sampled_from(["GET"] * 8 + METHODS))
    name = draw(st.one_of(st.sampled_from(JOBS), encoded_names))
    query = draw(st.one_of(st.just(""), queries))
    token = draw(st.one_of(st.just(f"Bearer {TOKEN}"), authorization))
    return method, endpoint.replace("{name}", name) + query, token


def _wild(draw: st.DrawFn) -> tuple[str, str, str | None]:
    method = draw(st.one_of(st.sampled_from(METHODS), st.from_regex(r"[A-Z]{1,10}", fullmatch=True)))
    return method, draw(paths) + draw(queries), draw(authorization)


@st.composite
def requests(draw: st.DrawFn) -> Request:
    method, target, token = _aimed(draw) if draw(st.booleans()) else _wild(draw)
    headers = [("Authorization", token)] if token is not None else []
    headers += draw(st.lists(st.tuples(header_names, header_values), max_size=4))
    garbled = draw(st.integers(0, 19)) == 0
    return Request(
        method=method,
        target=target,
        headers=tuple(headers),
        body=draw(bodies),
        chunked=draw(st.booleans()),
        garbage=draw(st.binary(min_size=1, max_size=8)) if garbled else b"",
        garbage_at=draw(st.integers(0, 200)) if garbled else 0,
    )


# ----- the property -----


def check_answer(request: Request, answer: Answer | None, *, store_down: bool) -> None:
    if request.garbage:
        # Not valid HTTP any more: the server may refuse it (uvicorn's own plain 400) or just close. Garbage
        # after a complete request leaves that request answered as usual: the store-down 503 included.
        assert answer is None or answer.status < 500 or (store_down and answer.status == 503), answer
        return
    assert answer is not None, f"no answer to {request.to_bytes()[:300]!r}"
    if answer.status >= 500:
        assert answer.status == 503, (answer.status, answer.body[:500])
        body = json.loads(answer.body) if request.method != "HEAD" else None
        if request.path == "/readyz":
            assert body is None or body["status"] == "not_ready"
        else:
            assert store_down and (body is None or body["error"].startswith(UNAVAILABLE)), answer.body[:500]
    if request.path.startswith("/api/"):
        assert answer.headers.get("content-type", "").startswith("application/json"), answer
        if request.method != "HEAD":
            assert isinstance(json.loads(answer.body), dict)
    assert TOKEN.encode() not in answer.body and TOKEN not in json.dumps(answer.headers)


@dataclass
class Served:
    control: StoreControl
    url: str


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    store = StateStore.open(f"sqlite:///{tmp_path_factory.mktemp('fuzz-http') / 'state.db'}")
    populate(store)
    control = StoreControl(store)
    with serve_in_thread(control) as url:
        yield Served(control, url)
    store.close()


@pytest.fixture(scope="module")
def served_store_down(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A real SQLite store that went away: its file is now a directory, so every query fails."""
    path = tmp_path_factory.mktemp("fuzz-http-down") / "state.db"
    store = StateStore.open(f"sqlite:///{path}")
    populate(store)
    store.close()  # drops the pooled connections; the next query opens the path again
    path.unlink()
    shutil.rmtree(path.parent / "state.db-wal", ignore_errors=True)
    path.mkdir()
    control = StoreControl(store)
    control.ready["state_store"] = False
    with serve_in_thread(control) as url:
        yield Served(control, url)


# Found once: an empty 307 (its Location from the Host header) instead of a JSON answer.
@example(request=Request("GET", "/api/v1/jobs/", (), b"", chunked=False), token_configured=True)
@given(request=requests(), token_configured=st.booleans())
def test_every_request_gets_a_non_5xx_json_answer(served: Served, request: Request, token_configured: bool) -> None:
    served.control.token = TOKEN if token_configured else None
    check_answer(request, exchange(served.url, request.to_bytes(), complete=not request.garbage), store_down=False)


@settings(max_examples=examples(0.5))
@given(request=requests())
def test_with_the_state_store_down_the_answer_is_a_documented_503(served_store_down: Served, request: Request) -> None:
    answer = exchange(served_store_down.url, request.to_bytes(), complete=not request.garbage)
    check_answer(request, answer, store_down=True)


# ----- the real daemon: control answers tell the truth -----

DAEMON_JOBS = ["done", "waiting", "refused", "nope"]


@dataclass
class RunningDaemon:
    url: str
    process: DaemonProcess


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    """tests/test_daemon_http.py's daemon: 'done' completed, 'refused' failed, 'waiting' watching for ever."""
    directory = tmp_path_factory.mktemp("fuzz-daemon")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TECKOCHECKER_")}
    env.update(TEST_PLUGINS, TC_CONTROL_TOKEN=DAEMON_TOKEN)
    env["PYTHONPATH"] = str(SUPPORT)
    process = DaemonProcess(write_daemon_config(directory), env, directory)
    process.wait_for("job done: completed")
    process.wait_for("job refused: failed")
    yield RunningDaemon(process.http_url(), process)
    code, _ = process.stop()
    assert code == 0, process.output[-3000:]


def _call(url: str, method: str, path: str) -> tuple[int, dict[str, object]]:
    request = Request(method, path, (("Authorization", f"Bearer {DAEMON_TOKEN}"),), b"", chunked=False)
    answer = exchange(url, request.to_bytes())
    assert answer is not None and answer.status < 500, (path, answer)
    assert answer.headers["content-type"].startswith("application/json")
    return answer.status, json.loads(answer.body)


@settings(max_examples=examples(0.25))
@given(steps=st.lists(st.tuples(st.sampled_from(["pause", "resume", "check-now"]), st.sampled_from(DAEMON_JOBS))))
def test_control_answers_of_the_real_daemon_are_true(daemon: RunningDaemon, steps: list[tuple[str, str]]) -> None:
    for name in DAEMON_JOBS:  # every example starts from the same state: nothing paused
        _call(daemon.url, "POST", f"/api/v1/jobs/{name}/resume")
    for action, name in steps:
        status, body = _call(daemon.url, "POST", f"/api/v1/jobs/{name}/{action}")
        if status != 200:
            assert status in (404, 409), (action, name, status, body)
            continue
        assert body == {"job": name, "action": action, "ok": True}
        _, job = _call(daemon.url, "GET", f"/api/v1/jobs/{name}")
        if action == "pause":
            assert job["paused"] is True
        elif action == "resume":
            assert job["paused"] is False
        else:  # "check-now: ok" promises a check now: the job must be one that runs
            assert job["paused"] is False and job["final"] is False, (job["paused"], job["state"])
