"""The last wall before a request leaves: secrets go only where the files bind them, and a host no file
names never reaches a loopback, private or otherwise non-public address.

It does not trust the plugins or the job definitions to have got this right. Before any request is sent, the
guard looks for every resolved secret value in its header values, URL and body (the secrets layer tells it
each value and its name as it resolves them; kept in memory only, like the Redactor's, never logged or
written anywhere), and for the secrets a plugin declares it signed with (``plugin_api.SIGNED_WITH``). Each one must be
bound to the request's origin (secret_bindings.py), or the request is refused before a byte is sent: a
``SecretNotBound`` naming the secret and the origin, a WARNING saying the same, and
``teckochecker_secret_refusals_total{secret=NAME}``. The connect step (outbound_transport.py) asks
``check_address`` about every address a host resolves to.
"""

from __future__ import annotations

import ipaddress
import logging
import urllib.parse
from typing import TYPE_CHECKING

from teckochecker.errors import AddressRefused, SecretNotBound
from teckochecker.metrics import Metrics
from teckochecker.plugin_api import SIGNED_WITH, Origin
from teckochecker.secret_bindings import SecretBindings
from teckochecker.secrets.resolving import MIN_REDACTED_LENGTH

if TYPE_CHECKING:
    import httpx  # only the HTTP layer calls check(); the reloader, which the CLI loads, only calls learn()

__all__ = ["OutboundGuard", "non_public_kind"]


class OutboundGuard:
    def __init__(self, metrics: Metrics, logger: logging.Logger, bindings: SecretBindings | None = None) -> None:
        self._metrics = metrics
        self._log = logger
        self._bindings = bindings or SecretBindings()
        # value → the names it was resolved under (one value may be defined twice). Replaced, never mutated:
        # a check reads it while a resolve on another task adds to it.
        self._values: dict[str, frozenset[str]] = {}

    def bind(self, bindings: SecretBindings) -> None:
        """The bindings of the config now in force (at start and after each reload)."""
        self._bindings = bindings

    def learn(self, name: str, value: str) -> None:
        """The secrets layer resolved ``name`` to ``value``. A value too short to be masked in the logs is too
        short to look for: it would be found inside ordinary words and paths, and is no credential."""
        if len(value) < MIN_REDACTED_LENGTH:
            return
        names = self._values.get(value, frozenset())
        if name not in names:
            self._values = {**self._values, value: names | {name}}

    def origins(self, name: str) -> frozenset[Origin]:
        """Where the files let the secret ``name`` go (plugin_api.PluginContext.secret_origins)."""
        return self._bindings.origins(name)

    def names_host(self, host: str, port: int) -> bool:
        return self._bindings.names_host(host, port)

    def check(self, request: httpx.Request) -> None:
        """Raise SecretNotBound, before anything is sent, if ``request`` carries a secret its origin may not get."""
        carried = self._carried(request)
        if not carried:
            return
        try:
            origin: Origin | None = Origin.of(str(request.url))
        except ValueError:  # not http(s): no secret is bound there
            origin = None
        # A value defined under two names may go where either name may go: the files allowed that value there.
        # Unless one of them is the daemon's own credential (an API token, a webhook signing secret): that
        # value goes nowhere, whatever other name it is also given.
        daemon_own = self._bindings.daemon_own
        refused = sorted(
            {
                name
                for names in carried
                for name in names
                if origin is None or names & daemon_own or not any(self._bindings.allows(n, origin) for n in names)
            }
        )
        if not refused:
            return
        for name in refused:
            self._metrics.secret_refusals.labels(name).inc()
        where = str(origin) if origin is not None else f"{request.url.scheme}://{request.url.host}"
        error = SecretNotBound(refused, where)
        self._log.warning("%s", error)
        raise error

    def check_address(self, host: str, port: int, address: str) -> None:
        """Raise AddressRefused when ``host`` (named by no file) resolved to a non-public ``address``."""
        if self.names_host(host, port):
            return
        kind = non_public_kind(address)
        if kind is None:
            return
        error = AddressRefused(
            f"refused to connect to {host}:{port}: it resolves to {address}, a {kind} address, and no config "
            "file names that host (a URL from a vendor's reply may not lead into this network)"
        )
        self._log.warning("%s", error)
        raise error

    def _carried(self, request: httpx.Request) -> list[frozenset[str]]:
        """The names of each secret the request carries: by value anywhere in it, or declared as signed with."""
        values = self._values
        declared = request.extensions.get(SIGNED_WITH, ())
        carried = [frozenset({str(name)}) for name in declared]
        if not values:
            return carried
        texts = [value.decode("latin-1") for _, value in request.headers.raw]
        url = str(request.url)
        texts += [url, urllib.parse.unquote(url)]
        body = _body(request)
        if body:
            texts.append(body.decode("latin-1"))
        for value, names in values.items():
            if any(value in text for text in texts):
                carried.append(names)
        return carried


def _body(request: httpx.Request) -> bytes:
    import httpx

    try:
        return request.content
    except httpx.RequestNotRead:  # a streamed body: nothing of ours is streamed, and a secret is never a body
        return b""


def non_public_kind(address: str) -> str | None:
    """What kind of address this is when it is not a public unicast one (loopback, private, ...), else None."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 address may carry a %scope
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for kind, test in (
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("unspecified", ip.is_unspecified),
        ("reserved", ip.is_reserved),
        ("private", ip.is_private),
        ("non-global", not ip.is_global),
    ):
        if test:
            return kind
    return None
