"""Both listeners of the real daemon hold their own limits against hostile clients, with no reverse proxy:
slow clients at the connection cap cannot make real deliveries fail, a request that trickles in is cut at the
request deadline, and a client leaving mid-body costs one log line, never a traceback."""

from __future__ import annotations

import socket
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from daemon import DaemonProcess
from slowclients import SlowClients

from teckochecker.simulators.openai_webhooks import batch_event, sign

HOOK_SECRET = "whsec_RdvaYFYUXuIFuEbvZHwMfYFhUf7aMYjYcmM24+Aj40c="
API_TOKEN = "operator-token-0123456789abcdef"
CAP = 6
DEADLINE = 1.0


@pytest.fixture
def daemon(tmp_path: Path, plugin_env: dict[str, str]) -> Iterator[DaemonProcess]:
    config = tmp_path / "teckochecker.yaml"
    config.write_text(
        textwrap.dedent(f"""\
        http: {{port: 0, api_token: api, request_deadline: {DEADLINE:g}s}}
        webhooks: {{port: 0, secrets: [hook], max_connections: {CAP}, request_deadline: {DEADLINE:g}s}}
        secrets:
          hook: {{env: HOOK}}
          api: {{env: API_TOKEN}}
        jobs: []
        """)
    )
    process = DaemonProcess(config, {**plugin_env, "HOOK": HOOK_SECRET, "API_TOKEN": API_TOKEN}, tmp_path)
    try:
        process.wait_for("teckochecker started")
        yield process
    finally:
        process.stop()


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def deliver(url: str) -> int:
    event = batch_event("batch_unwatched", "completed", int(time.time()))
    headers = sign(HOOK_SECRET, event.message_id, int(time.time()), event.body)
    return httpx.post(url, content=event.body, headers=headers, timeout=10).status_code


def test_slow_clients_at_the_cap_cannot_make_deliveries_fail(daemon: DaemonProcess) -> None:
    hook = daemon.http_url(listener="webhook receiver")
    # Twice the cap in slow connections, and a deadline they stay under by renewing: only eviction can help.
    with SlowClients(*address(hook), "/webhooks/openai", 2 * CAP, renew=0.8 * DEADLINE, trickle=0.2) as slow:
        deadline = time.monotonic() + 20
        # The cap is full once the listener starts ending slow connections (pushed out: 408; refused: 503).
        while sum(n for how, n in slow.outcomes.items() if how != "renewed") < CAP:
            assert time.monotonic() < deadline, f"the slow clients never filled the cap: {slow.outcomes}"
            time.sleep(0.05)
        answers = [deliver(hook + "/webhooks/openai") for _ in range(2 * CAP)]
    assert answers == [200] * (2 * CAP)
    assert "503" not in "".join(slow.outcomes), slow.outcomes  # room was always made, never refused


@pytest.mark.parametrize("listener", ["HTTP", "webhook receiver"])
def test_a_request_that_trickles_in_is_cut_at_the_deadline(daemon: DaemonProcess, listener: str) -> None:
    with socket.create_connection(address(daemon.http_url(listener=listener)), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /webhooks/openai HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
        sock.settimeout(0.1)
        answer = b""
        while not answer and time.monotonic() - started < 10 * DEADLINE:
            try:
                answer = sock.recv(4096)
            except TimeoutError:
                sock.sendall(b" ")  # one more byte every 100 ms: trickling does not extend the deadline
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"connection: close" in answer.lower()
    assert DEADLINE * 0.9 <= elapsed < DEADLINE * 3, elapsed
    daemon.wait_for(f"{listener}: a request from 127.0.0.1 did not arrive within {DEADLINE:g} s: 408, closed")


@pytest.mark.parametrize(
    ("listener", "head"),
    [
        ("HTTP", b"PUT /api/v1/jobs/left HTTP/1.1\r\nAuthorization: Bearer " + API_TOKEN.encode() + b"\r\n"),
        ("webhook receiver", b"POST /webhooks/openai HTTP/1.1\r\n"),
    ],
)
def test_a_client_leaving_mid_body_is_one_line_without_a_traceback(
    daemon: DaemonProcess, listener: str, head: bytes
) -> None:
    with socket.create_connection(address(daemon.http_url(listener=listener)), timeout=10) as sock:
        sock.sendall(head + b'Host: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"job')
    line = f"{listener}: the client at 127.0.0.1 left before its request had arrived"
    daemon.wait_for(line)
    assert deliver(daemon.http_url(listener="webhook receiver") + "/webhooks/openai") == 200  # still serving
    assert daemon.output.count(line) == 1
    assert "Traceback" not in daemon.output and "ClientDisconnect" not in daemon.output
