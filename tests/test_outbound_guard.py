"""Where secrets may go: the bindings derived from the files, and the outbound guard that enforces them
before a request leaves (by value, by declared signature, at the connect step, against redirects).

Real HTTP servers on 127.0.0.1 throughout; the guard runs inside the daemon's own HttpClientPool.
"""

from __future__ import annotations

import asyncio
import logging
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes import FakeAnthropic, FakeKeboola, FakeOpenAI
from hostile_servers import Listener, Redirector
from plugin_context import Clients, FixedClock
from pydantic import ValidationError
from teckochecker_anthropic.source import AnthropicBatchOptions, AnthropicBatchSource
from teckochecker_keboola.action import KeboolaJobAction
from teckochecker_keboola.options import KeboolaJobOptions

from teckochecker.config.models import SecretRef
from teckochecker.config.validate import load_config
from teckochecker.errors import AddressRefused, PermanentError, SecretNotBound
from teckochecker.http import HttpClientPool
from teckochecker.metrics import Metrics
from teckochecker.outbound_guard import OutboundGuard, non_public_kind
from teckochecker.plugin_api import SIGNED_WITH, Origin, PluginContext
from teckochecker.plugins import PluginRegistry
from teckochecker.secret_bindings import SecretBindings, secret_bindings
from teckochecker.secrets.resolving import Redactor, SecretResolver

KEY = "sk-guard-test-key-0123456789"
COMPONENT = "kds-team.app-custom-python"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "teckochecker.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def guard_for(bindings: SecretBindings, metrics: Metrics | None = None) -> OutboundGuard:
    return OutboundGuard(metrics or Metrics(), logging.getLogger("teckochecker.outbound"), bindings)


def binding(secret: str, *urls: str, named: tuple[str, ...] = ()) -> SecretBindings:
    origins = frozenset(Origin.of(url) for url in urls)
    return SecretBindings({secret: origins}, origins | {Origin.of(url) for url in named})


async def fetch(pool: HttpClientPool, base_url: str, path: str = "/x", **kwargs: Any) -> httpx.Response:
    try:
        return await pool.client(base_url, base_url=base_url).get(path, **kwargs)
    finally:
        await pool.aclose()


# ----- the bindings --------------------------------------------------------------------------------


def test_origin_is_scheme_host_and_port_with_defaults_filled_in() -> None:
    assert Origin.of("https://API.example.com/v1/") == Origin("https", "api.example.com", 443)
    assert Origin.of("http://[::1]:8080/x") == Origin("http", "::1", 8080)
    assert str(Origin.of("https://[::1]")) == "https://[::1]:443"
    # As httpx puts an internationalized name on the wire, so a destination written in Unicode still matches.
    assert Origin.of("https://München.example/v1") == Origin.of(str(httpx.URL("https://münchen.example/v1")))
    assert Origin.of("https://münchen.example").host == "xn--mnchen-3ya.example"
    for bad in ("ftp://example.com", "example.com", "https://"):
        with pytest.raises(ValueError):
            Origin.of(bad)


def test_each_secret_is_bound_to_the_origins_of_the_parts_that_name_it(
    tmp_path: Path, registry: PluginRegistry
) -> None:
    config = load_config(
        write(
            tmp_path,
            """\
            http:
              api_token: legacy
              tokens: [{secret: pipeline, scopes: [register]}]
            webhooks: {port: 9, secrets: [receiver]}
            secrets:
              openai: {env: A}
              anthropic: {env: B}
              keboola: {env: C, send_to: ["https://queue.eu.example.com:8443"]}
              hook: {env: D}
              legacy: {env: E}
              pipeline: {env: F}
              receiver: {env: G}
              spare: {env: H}
            templates:
              claude:
                source: {type: anthropic_batch, api_key: anthropic}
                # the jobs fill in component and config: the part still binds its token
                actions: [{type: keboola_job, token: keboola, stack_url: "https://connection.keboola.com"}]
            jobs:
              - name: j
                source: {type: openai_batch, api_key: openai, base_url: "http://127.0.0.1:8001/v1", targets: [b]}
                actions:
                  - {type: webhook, url: "https://hooks.example.com/in?token=x", secret: hook}
                  - type: keboola_job
                    token: keboola
                    stack_url: "https://connection.eu.example.com"
                    queue_url: "https://jobs.eu.example.com"
                    component: c
                    config: "1"
            """,
        ),
        registry,
    )
    bindings = secret_bindings(config, registry)
    assert bindings.origins("openai") == {Origin("http", "127.0.0.1", 8001)}
    assert bindings.origins("anthropic") == {Origin("https", "api.anthropic.com", 443)}  # the option's default
    assert bindings.origins("hook") == {Origin("https", "hooks.example.com", 443)}
    assert bindings.origins("keboola") == {
        Origin("https", "connection.eu.example.com", 443),
        Origin("https", "jobs.eu.example.com", 443),  # queue_url
        Origin("https", "queue.eu.example.com", 443),  # guessed from the stack's host
        Origin("https", "queue.eu.example.com", 8443),  # send_to
        Origin("https", "connection.keboola.com", 443),  # the template's part
        Origin("https", "queue.keboola.com", 443),
    }
    for never_sent in ("legacy", "pipeline", "receiver", "spare"):
        assert bindings.origins(never_sent) == frozenset(), never_sent
    assert bindings.daemon_own == {"legacy", "pipeline", "receiver"}
    assert bindings.names_host("127.0.0.1", 8001) and bindings.names_host("QUEUE.eu.example.com", 8443)
    assert not bindings.names_host("127.0.0.1", 8002)


def test_a_template_part_with_a_wrong_destination_binds_nothing(tmp_path: Path, registry: PluginRegistry) -> None:
    config = load_config(
        write(
            tmp_path,
            """\
            secrets: {openai: {env: A}}
            templates:
              broken: {source: {type: openai_batch, api_key: openai, base_url: "ftp://files.example.com"}}
            """,
        ),
        registry,
    )
    # Not the default api.openai.com in place of the wrong one: nobody wrote that.
    assert secret_bindings(config, registry).origins("openai") == frozenset()


@pytest.mark.parametrize(
    ("origin", "problem"),
    [
        ("https://queue.example.com/v2", "origin only"),
        ("https://user@queue.example.com", "origin only"),
        ("ftp://queue.example.com", "such as https://host"),
        ("https://queue.example.com:99999", "malformed"),
    ],
)
def test_send_to_takes_origins_only(origin: str, problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        SecretRef.model_validate({"env": "X", "send_to": [origin]})


def test_the_resolver_tells_each_value_and_its_name() -> None:
    told: list[tuple[str, str]] = []
    resolver = SecretResolver(
        {"a": SecretRef(env="A")}, {"A": "value-of-a"}, Redactor(), on_resolved=lambda n, v: told.append((n, v))
    )
    assert resolver("a") == "value-of-a"
    assert told == [("a", "value-of-a")]


# ----- the guard, by value -------------------------------------------------------------------------


def test_a_secret_is_refused_before_sending_to_an_origin_it_is_not_bound_to(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    with FakeOpenAI(api_key=KEY) as fake, Listener() as listener:
        guard = guard_for(binding("openai", fake.base_url), metrics)
        guard.learn("openai", KEY)

        async def main() -> None:
            pool = HttpClientPool(2, metrics, guard=guard)
            try:
                bound = pool.client("fake", base_url=fake.base_url, headers={"Authorization": f"Bearer {KEY}"})
                assert (await bound.get("batches")).status_code == 200
                hostile = pool.client("listener", base_url=listener.url)
                await hostile.get("/v1/batches", headers={"Authorization": f"Bearer {KEY}"})
            finally:
                await pool.aclose()

        with caplog.at_level(logging.WARNING, "teckochecker.outbound"), pytest.raises(SecretNotBound) as refused:
            asyncio.run(main())
    origin = str(Origin.of(listener.url))
    assert f"refused to send secret 'openai' to {origin}" in str(refused.value)
    assert isinstance(refused.value, PermanentError)  # a plugin's step fails for good, never retried
    assert KEY not in str(refused.value)
    assert listener.requests == []  # nothing was sent
    assert any(f"secret 'openai' to {origin}" in r.getMessage() for r in caplog.records)
    assert all(KEY not in r.getMessage() for r in caplog.records)
    assert metrics.secret_refusals.labels("openai")._value.get() == 1
    assert metrics.http_requests.labels("127.0.0.1", "2xx")._value.get() == 1  # the refused one never counted


@pytest.mark.parametrize(
    "carry",
    [
        {"headers": {"x-api-key": KEY}},
        {"headers": {"api-key": f"prefix{KEY}suffix"}},
        {"params": {"api-key": KEY}},
        {"extensions": {SIGNED_WITH: ("hook",)}},
    ],
    ids=["header", "inside-a-header", "query", "signed-with"],
)
def test_every_way_of_carrying_a_secret_is_seen(carry: dict[str, Any]) -> None:
    with Listener() as listener:
        guard = guard_for(SecretBindings())
        guard.learn("openai", KEY)
        with pytest.raises(SecretNotBound):
            asyncio.run(fetch(HttpClientPool(2, Metrics(), guard=guard), listener.url, **carry))
        assert listener.requests == []


def test_a_secret_in_the_body_is_seen() -> None:
    with Listener() as listener:
        guard = guard_for(SecretBindings())
        guard.learn("keboola", KEY)

        async def main() -> None:
            pool = HttpClientPool(2, Metrics(), guard=guard)
            try:
                await pool.client("l", base_url=listener.url).post("/jobs", json={"note": KEY})
            finally:
                await pool.aclose()

        with pytest.raises(SecretNotBound, match="'keboola'"):
            asyncio.run(main())
        assert listener.requests == []


def test_a_value_defined_under_two_names_goes_where_either_may_go() -> None:
    with FakeOpenAI(api_key=KEY) as fake:
        guard = guard_for(binding("openai", fake.base_url))
        guard.learn("openai", KEY)
        guard.learn("openai_copy", KEY)
        response = asyncio.run(
            fetch(HttpClientPool(2, Metrics(), guard=guard), fake.base_url, "batches", headers={"Authorization": KEY})
        )
        assert response.status_code != 200  # the fake wants "Bearer ...": what matters is that it was sent
        assert len(fake.requests) == 1


def test_the_daemons_own_credential_goes_nowhere_even_under_a_jobs_secret_name() -> None:
    """The same value defined as an API token and as a job's key: the job's binding does not let it out."""
    with FakeOpenAI(api_key=KEY) as fake:
        bindings = binding("openai_copy", fake.base_url)
        guard = guard_for(SecretBindings(bindings.by_secret, bindings.named, frozenset({"operator"})))
        guard.learn("operator", KEY)
        guard.learn("openai_copy", KEY)
        pool = HttpClientPool(2, Metrics(), guard=guard)
        with pytest.raises(SecretNotBound, match="operator"):
            asyncio.run(fetch(pool, fake.base_url, "batches", headers={"Authorization": f"Bearer {KEY}"}))
        assert fake.requests == []


def test_a_value_too_short_to_be_a_credential_is_not_looked_for() -> None:
    guard = guard_for(SecretBindings())
    guard.learn("pin", "batch")  # would be found in every /batches path
    guard.check(httpx.Request("GET", "https://api.example.com/v1/batches", headers={"x-api-key": "batch"}))


def test_a_request_without_secrets_to_a_named_origin_passes() -> None:
    with Listener() as listener:
        guard = guard_for(SecretBindings(named=frozenset({Origin.of(listener.url)})))
        guard.learn("openai", KEY)
        assert asyncio.run(fetch(HttpClientPool(2, Metrics(), guard=guard), listener.url)).status_code == 200
        assert len(listener.requests) == 1


# ----- the connect step ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.1", "private"),
        ("169.254.169.254", "link-local"),  # the cloud metadata service
        ("fe80::1%1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "non-global"),
        ("93.184.215.14", None),
        ("2606:4700::1111", None),
    ],
)
def test_non_public_addresses_are_recognised(address: str, kind: str | None) -> None:
    assert non_public_kind(address) == kind


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_host_no_file_names_may_not_connect_to_a_loopback_address(host: str) -> None:
    with Listener() as listener:
        url = listener.url.replace("127.0.0.1", host)
        with pytest.raises(AddressRefused, match=f"refused to connect to {host}:.*loopback"):
            asyncio.run(fetch(HttpClientPool(2, Metrics(), guard=guard_for(SecretBindings())), url))
        assert listener.requests == []


def test_a_named_host_may_connect_wherever_it_resolves() -> None:
    with Listener() as listener:
        url = listener.url.replace("127.0.0.1", "localhost")
        guard = guard_for(SecretBindings(named=frozenset({Origin.of(url)})))
        assert asyncio.run(fetch(HttpClientPool(2, Metrics(), guard=guard), url)).status_code == 200
        assert listener.requests[0].headers["host"] == url.removeprefix("http://")  # Host stays the name


# ----- redirects -----------------------------------------------------------------------------------


def test_a_redirect_is_never_followed_even_when_asked_to() -> None:
    with Listener() as listener, Redirector(listener.url + "/stolen") as redirector:
        # Both named, the secret bound to the redirector only: only not following keeps the key off the listener.
        guard = guard_for(binding("anthropic", redirector.url, named=(listener.url,)))
        guard.learn("anthropic", KEY)
        response = asyncio.run(
            fetch(
                HttpClientPool(2, Metrics(), guard=guard),
                redirector.url,
                headers={"x-api-key": KEY},
                follow_redirects=True,
            )
        )
        assert response.status_code == 307
        assert len(redirector.requests) == 1 and listener.requests == []


# ----- plugins: URLs from vendor replies -----------------------------------------------------------


def keboola_action(clients: Clients, fake: FakeKeboola, bound: frozenset[Origin], **options: Any) -> KeboolaJobAction:
    context = PluginContext(
        http=clients,
        clock=FixedClock(),
        secret=lambda name: KEY,
        logger=logging.getLogger("teckochecker.test"),
        secret_origins=lambda name: bound if name == "kbc" else frozenset(),
    )
    settings = {"token": "kbc", "stack_url": fake.stack_url, "component": COMPONENT, "config": "1", **options}
    return KeboolaJobAction(KeboolaJobOptions(**settings), context)


def test_keboola_uses_the_queue_the_index_names_only_where_the_token_is_bound() -> None:
    from test_keboola_action import make_request

    with FakeKeboola(token=KEY) as fake:
        fake.add_config(COMPONENT, "1")
        stack_only = frozenset({Origin.of(fake.stack_url)})

        async def start(bound: frozenset[Origin]) -> str:
            clients = Clients()
            try:
                return (await keboola_action(clients, fake, bound).start(make_request())).external_id
            finally:
                await clients.aclose()

        with pytest.raises(PermanentError) as refused:
            asyncio.run(start(stack_only))
        message = str(refused.value)
        assert f"stack index at {fake.stack_url}/v2/storage" in message
        assert f"names the Queue API at {Origin.of(fake.queue_url)}" in message
        assert f"set queue_url: {fake.queue_url}" in message and "send_to of secret 'kbc'" in message
        assert [r.service for r in fake.requests] == ["stack"]  # the index only; no token went anywhere

        assert asyncio.run(start(stack_only | {Origin.of(fake.queue_url)}))
        assert len(fake.jobs) == 1


def test_keboola_with_queue_url_does_not_read_the_index() -> None:
    from test_keboola_action import make_request

    with FakeKeboola(token=KEY) as fake:
        fake.add_config(COMPONENT, "1")
        clients = Clients()
        action = keboola_action(clients, fake, frozenset(), queue_url=fake.queue_url)

        async def start() -> None:
            try:
                await action.start(make_request())
            finally:
                await clients.aclose()

        asyncio.run(start())
        assert [r.service for r in fake.requests] == ["queue"]
        assert Origin.of(fake.queue_url) in action.options.bound_origins()


@pytest.mark.parametrize(
    ("results_url", "kept"),
    [
        ("{base}/v1/messages/batches/{id}/results", True),
        ("https://{host}/v1/messages/batches/{id}/results", True),
        ("https://attacker.example/results", False),
        ("http://{host}:1/results", False),
        ("{base}/" + "x" * 2100, False),
        ("file:///etc/passwd", False),
    ],
)
def test_anthropic_passes_on_only_a_results_url_on_its_own_host(
    results_url: str, kept: bool, caplog: pytest.LogCaptureFixture
) -> None:
    with FakeAnthropic(api_key=KEY) as fake:
        clients = Clients()
        context = PluginContext(clients, FixedClock(), lambda name: KEY, logging.getLogger("teckochecker.test"))
        source = AnthropicBatchSource(AnthropicBatchOptions(api_key="claude", base_url=fake.base_url), context)
        host = Origin.of(fake.base_url).host
        url = results_url.format(base=fake.base_url, host=host, id="msgbatch_1")
        batch = {"id": "msgbatch_1", "processing_status": "ended", "results_url": url}
        with caplog.at_level(logging.WARNING):
            observed = source._observe_batch("msgbatch_1", fake.base_url, batch)
    assert observed.details["results_url"] == (url if kept else None)  # type: ignore[union-attr]
    warned = [r.getMessage() for r in caplog.records if "results_url is left out" in r.getMessage()]
    assert bool(warned) is not kept
    assert all("msgbatch_1" in w for w in warned)


def test_a_reload_moves_the_bindings_with_the_config(tmp_path: Path, registry: PluginRegistry) -> None:
    from teckochecker.clock import SystemClock
    from teckochecker.reload import ConfigReloader
    from teckochecker.sdnotify import Notifier
    from teckochecker.state.guard import StoreGuard

    def config_text(base_url: str) -> str:
        return f"""\
            secrets: {{openai: {{env: OPENAI_KEY}}}}
            jobs:
              - name: j
                source: {{type: openai_batch, api_key: openai, base_url: "{base_url}", targets: [b]}}
                actions: [{{type: record, ledger: /tmp/ledger}}]
            """

    path = write(tmp_path, config_text("https://one.example.com/v1"))
    log = logging.getLogger("teckochecker.test")
    guard = guard_for(SecretBindings())
    reloader = ConfigReloader(
        path,
        load_config(path, registry),
        registry=registry,
        environ={"OPENAI_KEY": KEY},
        redactor=Redactor(),
        clock=SystemClock(),
        metrics=Metrics(),
        notifier=Notifier({}),
        logger=log,
        guard=guard,
    )
    assert guard.origins("openai") == {Origin("https", "one.example.com", 443)}

    async def nothing(*args: Any) -> None:
        return None

    async def reload() -> None:
        store = StoreGuard(None, log, lambda: None)
        await reloader.reload(forced=True, reason="test", guard=store, apply=nothing, watch=lambda new: None)

    write(tmp_path, config_text("https://two.example.com/v1"))
    asyncio.run(reload())
    assert guard.origins("openai") == {Origin("https", "two.example.com", 443)}
    # The values are told as they are resolved (the reload checks every secret), and held to the new bindings.
    with pytest.raises(SecretNotBound, match=r"'openai' to https://one\.example\.com:443"):
        guard.check(httpx.Request("GET", "https://one.example.com/v1/batches", headers={"Authorization": KEY}))
    guard.check(httpx.Request("GET", "https://two.example.com/v1/batches", headers={"Authorization": KEY}))

    write(tmp_path, config_text("ftp://broken"))  # a failed reload keeps the running bindings
    asyncio.run(reload())
    assert guard.origins("openai") == {Origin("https", "two.example.com", 443)}
