"""OpenAI webhooks, in process: the signature vectors of docs/vendors.md, webhooks, every kind of bad delivery
(status, counter, nothing hinted), replays, unwatched batches, the config keys, and the fake's deliveries."""

from __future__ import annotations

import asyncio
import datetime as dt
import http.server
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from clock import FakeClock
from fakes import FakeOpenAI
from starlette.applications import Starlette

from teckochecker.errors import ConfigError, SecretError
from teckochecker.metrics import Metrics
from teckochecker.simulators.openai_webhooks import sign
from teckochecker.webhooks.deliveries import DeliveryOutcome, RecentIds
from teckochecker.webhooks.receiver import MAX_BODY_BYTES, PATH, OpenAIWebhooks, create_webhook_app
from teckochecker.webhooks.signature import Rejected, SignatureVerifier, signing_key

SECRET = "whsec_RdvaYFYUXuIFuEbvZHwMfYFhUf7aMYjYcmM24+Aj40c="
OTHER_SECRET = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY="  # 32 other bytes
TS = 1750861210
SDK_ID = "wh_685c059ae39c8190af8c71ed1022a24d"
SDK_BODY = (
    b'{"id": "evt_685c059ae3a481909bdc86819b066fb6", "object": "event", "created_at": 1750861210, '
    b'"type": "response.completed", "data": {"id": "resp_123"}}'
)
SDK_SIGNATURE = "v1,gUAg4R2hWouRZqRQG4uJypNS8YK885G838+EHb4nKBY="
BATCH_ID = "wh_test_0001"
BATCH_BODY = (
    b'{"id":"evt_test_batch_completed_0001","object":"event","created_at":1750861210,'
    b'"type":"batch.completed","data":{"id":"batch_abc123"}}'
)
BATCH_SIGNATURE = "v1,ZO70rw3EeMi2njiMDzVLk0uR32rdIRi9m6FNZyaZW6A="
# What the OpenAI SDK expects when the same secret is given without "whsec_" (it then uses the raw text).
PITFALL_SIGNATURE = "v1,aFoLABFr/A/mLvub5AIfffj10MfOeQQRac0Kbqp1W54="


def clock_at(timestamp: float) -> FakeClock:
    return FakeClock(dt.datetime.fromtimestamp(timestamp, dt.timezone.utc))


def verifier(*secrets: str, at: float = TS) -> SignatureVerifier:
    keys = [signing_key(f"s{i}", s) for i, s in enumerate(secrets or (SECRET,))]
    return SignatureVerifier(lambda: keys, clock_at(at))


def headers(message_id: str, signature: str, timestamp: int = TS) -> dict[str, str]:
    return {"webhook-id": message_id, "webhook-timestamp": str(timestamp), "webhook-signature": signature}


# ----- the contract's test vectors -----


def test_sdk_vector_verifies() -> None:
    assert verifier().verify(headers(SDK_ID, SDK_SIGNATURE), SDK_BODY).message_id == SDK_ID


def test_batch_vector_verifies() -> None:
    assert verifier().verify(headers(BATCH_ID, BATCH_SIGNATURE), BATCH_BODY).timestamp == TS


def test_whsec_prefix_pitfall() -> None:
    # A signature made with the prefix-less text as the key is not OpenAI's: refused.
    with pytest.raises(Rejected) as refused:
        verifier().verify(headers(BATCH_ID, PITFALL_SIGNATURE), BATCH_BODY)
    assert refused.value.outcome is DeliveryOutcome.BAD_SIGNATURE
    # And a secret configured without the prefix is refused by name, its value never shown.
    with pytest.raises(SecretError) as bad:
        signing_key("openai_webhook", SECRET.removeprefix("whsec_"))
    assert "openai_webhook" in str(bad.value) and "whsec_" in str(bad.value)
    assert SECRET.removeprefix("whsec_") not in str(bad.value)


@pytest.mark.parametrize(
    ("value", "reason"),
    [("whsec_not*base64", "not valid base64"), ("whsec_c2hvcnQ=", "5 bytes"), ("whsec_", "0 bytes")],
)
def test_bad_secret_values_are_refused_by_name(value: str, reason: str) -> None:
    with pytest.raises(SecretError, match=reason):
        signing_key("hook", value)


def test_any_one_of_several_signatures_and_secrets() -> None:
    wrong = "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
    header = f"v1a,c29tZXRoaW5n {wrong} {BATCH_SIGNATURE}"
    assert verifier().verify(headers(BATCH_ID, header), BATCH_BODY)
    # Rotation: the new secret first, the old one still accepted.
    assert verifier(OTHER_SECRET, SECRET).verify(headers(BATCH_ID, BATCH_SIGNATURE), BATCH_BODY)
    with pytest.raises(Rejected):
        verifier(OTHER_SECRET).verify(headers(BATCH_ID, BATCH_SIGNATURE), BATCH_BODY)


@pytest.mark.parametrize(("offset", "ok"), [(-300, True), (300, True), (-301, False), (301, False)])
def test_timestamp_window_is_five_minutes_both_ways(offset: int, ok: bool) -> None:
    check = verifier(at=TS + offset)
    if ok:
        check.verify(headers(BATCH_ID, BATCH_SIGNATURE), BATCH_BODY)
    else:
        with pytest.raises(Rejected) as refused:
            check.verify(headers(BATCH_ID, BATCH_SIGNATURE), BATCH_BODY)
        assert refused.value.outcome is DeliveryOutcome.STALE


def test_body_is_verified_as_received_not_reserialized() -> None:
    reformatted = json.dumps(json.loads(BATCH_BODY)).encode()  # same JSON, other spacing
    with pytest.raises(Rejected):
        verifier().verify(headers(BATCH_ID, BATCH_SIGNATURE), reformatted)


def test_recent_ids_are_bounded() -> None:
    recent = RecentIds(capacity=3)
    for i in range(5):
        recent.remember(f"wh_{i}")
    assert len(recent) == 3 and "wh_0" not in recent and "wh_4" in recent


# ----- the receiver over its ASGI app -----


class Hints:
    def __init__(self, watched: set[str]) -> None:
        self.watched = watched
        self.calls: list[tuple[str, str]] = []

    def __call__(self, channel: str, batch_id: str, received: float) -> int:
        self.calls.append((channel, batch_id))
        return 1 if batch_id in self.watched else 0


def receiver(hints: Hints, *, at: float | None = None, leading: bool = True) -> tuple[Starlette, Metrics]:
    metrics = Metrics()
    clock = clock_at(time.time() if at is None else at)
    keys = [signing_key("hook", SECRET)]
    verifier = SignatureVerifier(lambda: keys, clock)
    app = create_webhook_app(OpenAIWebhooks(verifier, hints, metrics, clock, _logger(), leading=lambda: leading))
    return app, metrics


def _logger() -> logging.Logger:
    return logging.getLogger("teckochecker.test_webhooks")


def event(batch_id: str = "batch_abc123", kind: str = "batch.completed") -> bytes:
    body = {"id": "evt_1", "object": "event", "created_at": TS, "type": kind, "data": {"id": batch_id}}
    return json.dumps(body, separators=(",", ":")).encode()


def post(app: Starlette, body: bytes, hdrs: dict[str, str], path: str = PATH) -> httpx.Response:
    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            return await client.post(path, content=body, headers=hdrs)

    return asyncio.run(send())


def signed(body: bytes, message_id: str = "wh_1", timestamp: int | None = None, secret: str = SECRET) -> dict[str, str]:
    return sign(secret, message_id, int(time.time()) if timestamp is None else timestamp, body)


def outcomes(metrics: Metrics) -> dict[str, float]:
    return {
        s.labels["outcome"]: s.value
        for family in metrics.registry.collect()
        if family.name == "teckochecker_webhook_deliveries"
        for s in family.samples
        if s.name.endswith("_total")
    }


def test_a_verified_batch_event_is_accepted_and_hinted() -> None:
    hints = Hints({"batch_abc123"})
    app, metrics = receiver(hints)
    response = post(app, event(), signed(event()))
    assert response.status_code == 200 and response.json()["outcome"] == "accepted"
    assert hints.calls == [("openai", "batch_abc123")]
    assert outcomes(metrics)["accepted"] == 1


def test_the_batch_vector_itself_is_accepted_at_its_time() -> None:
    hints = Hints({"batch_abc123"})
    app, _ = receiver(hints, at=TS + 10)
    assert post(app, BATCH_BODY, headers(BATCH_ID, BATCH_SIGNATURE)).status_code == 200
    assert hints.calls == [("openai", "batch_abc123")]


def _bad_deliveries() -> list[tuple[str, bytes, dict[str, str], int, str]]:
    body = event()
    good = signed(body)
    return [
        ("unsigned", body, {k: v for k, v in good.items() if k != "webhook-signature"}, 401, "bad_signature"),
        ("forged", body, signed(body, secret=OTHER_SECRET), 401, "bad_signature"),
        ("tampered body", event("batch_other"), good, 401, "bad_signature"),
        ("garbage signature", body, {**good, "webhook-signature": "v1 ,,, v1,@@@"}, 401, "bad_signature"),
        ("stale", body, signed(body, timestamp=int(time.time()) - 3600), 401, "stale"),
        ("from the future", body, signed(body, timestamp=int(time.time()) + 3600), 401, "stale"),
        ("no id", body, {k: v for k, v in good.items() if k != "webhook-id"}, 400, "malformed"),
        ("timestamp not a number", body, {**good, "webhook-timestamp": "1e9"}, 400, "malformed"),
        ("timestamp negative", body, {**good, "webhook-timestamp": "-1700000000"}, 400, "malformed"),
        ("timestamp words", body, {**good, "webhook-timestamp": "yesterday"}, 400, "malformed"),
        # Past the year 9999: not a date at all (was a 500, "year 33658 is out of range"), signed or not.
        ("timestamp past any date", body, {**good, "webhook-timestamp": "999999999999"}, 400, "malformed"),
        ("oversized", b"x" * (MAX_BODY_BYTES + 1), good, 413, "malformed"),
        ("not UTF-8", b"\xff\xfe", signed(b"{}"), 400, "malformed"),
    ]


@pytest.mark.parametrize("name", [delivery[0] for delivery in _bad_deliveries()])
def test_bad_deliveries_are_refused_counted_and_change_nothing(name: str) -> None:
    # Signed now, not when the suite was collected: in a long run a collection-time signature is stale.
    _, body, hdrs, status, outcome = next(d for d in _bad_deliveries() if d[0] == name)
    hints = Hints({"batch_abc123", "batch_other"})
    app, metrics = receiver(hints)
    response = post(app, body, hdrs)
    assert response.status_code == status, response.text
    assert "error" in response.json()
    assert hints.calls == []
    counted = outcomes(metrics)
    assert counted[outcome] == 1 and sum(counted.values()) == 1


def test_a_replay_is_acknowledged_and_ignored() -> None:
    hints = Hints({"batch_abc123"})
    app, metrics = receiver(hints)
    body = event()
    assert post(app, body, signed(body, "wh_same")).json()["outcome"] == "accepted"
    # The vendor's retry: same id, a fresh timestamp and signature.
    again = post(app, body, signed(body, "wh_same", timestamp=int(time.time()) + 1))
    assert again.status_code == 200 and again.json()["outcome"] == "duplicate"
    assert len(hints.calls) == 1
    assert outcomes(metrics)["duplicate"] == 1


def test_unwatched_batches_and_other_events_are_acknowledged_and_ignored() -> None:
    hints = Hints(set())
    app, metrics = receiver(hints)
    assert post(app, event("batch_nobody"), signed(event("batch_nobody"), "wh_a")).json()["outcome"] == "unwatched"
    other = event("resp_1", kind="response.completed")
    assert post(app, other, signed(other, "wh_b")).json()["outcome"] == "unwatched"
    assert hints.calls == [("openai", "batch_nobody")]
    assert outcomes(metrics)["unwatched"] == 2


def _verified_but_not_actionable() -> list[tuple[str, bytes]]:
    long_id = "batch_" + "x" * 300
    return [
        # OpenAI's other event types: their data has other fields, or is not an object at all.
        ("realtime call", b'{"id":"e1","type":"realtime.call.incoming","created_at":1,"data":{"call_id":"c"}}'),
        ("live call", b'{"id":"e2","type":"live.call.incoming","created_at":1,"data":{"sip_headers":[]}}'),
        ("safety identifier", b'{"id":"e3","type":"safety_identifier.blocked","created_at":1,"data":"sid"}'),
        ("no data at all", b'{"id":"e4","type":"response.completed","created_at":1}'),
        ("not JSON", b"{nope"),
        ("JSON but not an object", b'["batch.completed"]'),
        ("nested past the JSON parser's depth", b"[" * 60_000),
        ("no type", b'{"id":"e5","data":{"id":"batch_abc123"}}'),
        ("batch event without data.id", b'{"id":"e6","type":"batch.completed","created_at":1,"data":{}}'),
        ("batch event, data not an object", b'{"id":"e7","type":"batch.failed","created_at":1,"data":[1]}'),
        ("batch event, data.id no vendor's ID", event(long_id)),
    ]


@pytest.mark.parametrize("name", [delivery[0] for delivery in _verified_but_not_actionable()])
def test_every_verified_delivery_is_acknowledged_even_when_it_is_no_batch_event(name: str) -> None:
    # A non-2xx makes OpenAI retry a correctly signed delivery for up to 72 hours.
    _, body = next(d for d in _verified_but_not_actionable() if d[0] == name)
    hints = Hints({"batch_abc123"})
    app, metrics = receiver(hints)
    response = post(app, body, signed(body))
    assert response.status_code == 200, response.text
    assert response.json() == {"received": True, "outcome": "unwatched"}
    assert hints.calls == []
    counted = outcomes(metrics)
    assert counted["unwatched"] == 1 and sum(counted.values()) == 1


def test_a_batch_event_without_a_usable_id_is_logged_once_as_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    app, _ = receiver(Hints(set()))
    body = b'{"id":"e6","type":"batch.completed","created_at":1,"data":{}}'
    other = b'{"id":"e1","type":"realtime.call.incoming","created_at":1,"data":{"call_id":"c"}}'
    with caplog.at_level(logging.DEBUG, logger=_logger().name):
        post(app, body, signed(body, "wh_w"))
        post(app, other, signed(other, "wh_o"))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "wh_w" in warnings[0].getMessage() and "data.id" in warnings[0].getMessage()


def test_an_unsigned_event_of_another_type_is_still_refused() -> None:
    app, metrics = receiver(Hints(set()))
    body = b'{"id":"e1","type":"realtime.call.incoming","created_at":1,"data":{"call_id":"c"}}'
    assert post(app, body, signed(body, secret=OTHER_SECRET)).status_code == 401
    assert (
        post(app, b"{nope", {k: v for k, v in signed(b"{nope").items() if k != "webhook-signature"}).status_code == 401
    )
    assert outcomes(metrics)["bad_signature"] == 2 and outcomes(metrics)["unwatched"] == 0


def test_a_standby_refuses_a_verified_delivery_so_the_sender_retries() -> None:
    hints = Hints({"batch_abc123"})
    app, metrics = receiver(hints, leading=False)
    body = event()
    response = post(app, body, signed(body, "wh_s"))
    assert response.status_code == 503 and "stands by" in response.json()["error"]
    assert hints.calls == [] and outcomes(metrics)["standby"] == 1
    # Not remembered: the same delivery retried to the leader is accepted, not a duplicate.
    app, _ = receiver(hints)
    assert post(app, body, signed(body, "wh_s")).json()["outcome"] == "accepted"
    # A forged delivery to a standby is still a bad signature, not a standby answer.
    app, metrics = receiver(Hints(set()), leading=False)
    assert post(app, body, signed(body, secret=OTHER_SECRET)).status_code == 401
    assert outcomes(metrics)["bad_signature"] == 1 and outcomes(metrics)["standby"] == 0


def test_only_the_webhook_path_is_served() -> None:
    app, metrics = receiver(Hints(set()))
    assert post(app, event(), signed(event()), path="/metrics").status_code == 404

    async def get() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://x") as client:
            return await client.get(PATH)

    assert asyncio.run(get()).status_code == 405
    assert sum(outcomes(metrics).values()) == 0


# ----- the config keys -----


def _config(tmp_path: Path, registry: Any, webhooks: str) -> Any:
    from teckochecker.config.validate import load_config

    path = tmp_path / "teckochecker.yaml"
    path.write_text(f"secrets:\n  hook: {{env: HOOK}}\n  old: {{env: OLD}}\nhttp: {{port: 9718}}\n{webhooks}jobs: []\n")
    return load_config(path, registry)


def test_webhooks_are_off_by_default(tmp_path: Path, registry: Any) -> None:
    assert not _config(tmp_path, registry, "").webhooks.enabled


def test_webhook_settings(tmp_path: Path, registry: Any) -> None:
    config = _config(tmp_path, registry, "webhooks: {port: 9720, listen: 0.0.0.0, secrets: [hook, old]}\n")
    assert config.webhooks.port == 9720 and config.webhooks.secrets == ["hook", "old"]


@pytest.mark.parametrize(
    ("webhooks", "message"),
    [
        ("webhooks: {port: 9720}\n", "needs webhooks.secrets"),
        ("webhooks: {port: 9720, secrets: [nope]}\n", "secret 'nope' is not defined"),
        ("webhooks: {port: 9718, secrets: [hook]}\n", "must differ from http.port"),
    ],
)
def test_webhook_config_problems_name_the_place(tmp_path: Path, registry: Any, webhooks: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        _config(tmp_path, registry, webhooks)
    assert message in str(error.value) and "teckochecker.yaml:5" in str(error.value)


# ----- the fake's deliveries -----


class _Collector(http.server.BaseHTTPRequestHandler):
    """A stand-in receiver that answers 500 to the first delivery and 200 afterwards."""

    got: ClassVar[list[tuple[dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        type(self).got.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(500 if len(type(self).got) == 1 else 200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_the_fake_sends_a_signed_event_when_a_batch_ends_and_retries() -> None:
    _Collector.got = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with FakeOpenAI() as fake:
            sender = fake.send_webhooks(f"http://127.0.0.1:{server.server_address[1]}/hook", SECRET, workers=1)
            batch = fake.add_batch(status="in_progress")
            silent = fake.add_batch(status="in_progress", webhooks=False)
            fake.set_status(silent, "completed")
            fake.set_status(batch, "failed")
            fake.set_status(batch, "failed")  # no change: no second event
            deadline = time.monotonic() + 10
            while len(sender.delivered()) < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            attempts = list(sender.attempts)
    finally:
        server.shutdown()
    assert [(a.event.batch_id, a.status) for a in attempts] == [(batch, 500), (batch, 200)]
    (first_headers, body), (second_headers, second_body) = _Collector.got
    assert first_headers["webhook-id"] == second_headers["webhook-id"] and body == second_body
    event_body = json.loads(body)
    assert event_body["type"] == "batch.failed" and event_body["data"] == {"id": batch}
    assert set(event_body) == {"id", "object", "created_at", "type", "data"}
    check = SignatureVerifier(lambda: [signing_key("hook", SECRET)], clock_at(time.time()))
    assert check.verify(second_headers, second_body).message_id == second_headers["webhook-id"]
