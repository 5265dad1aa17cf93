"""Servers an attacker would point the daemon at, and a named one that tries to send it there: real HTTP
servers on 127.0.0.1 that record every request they receive."""

from __future__ import annotations

from teckochecker.simulators._http import LoopbackFake, Outcome, RecordedRequest, json_reply


class Listener(LoopbackFake):
    """Someone else's server: records every request, answers like a helpful vendor would (as a stack index
    it names itself as the Queue API, so a client that believed it would send its token on)."""

    def __init__(self) -> None:
        super().__init__(("listener",))

    @property
    def url(self) -> str:
        return self._url("listener")

    def handle(self, request: RecordedRequest) -> Outcome:
        return json_reply(200, {"services": [{"id": "queue", "url": self.url}], "id": "1"})


class HostileStack(LoopbackFake):
    """A Keboola stack (named in the files) whose index names ``queue`` as its Queue API."""

    def __init__(self, queue: str) -> None:
        super().__init__(("stack",))
        self.queue = queue

    @property
    def url(self) -> str:
        return self._url("stack")

    def handle(self, request: RecordedRequest) -> Outcome:
        return json_reply(200, {"services": [{"id": "queue", "url": self.queue}]})


class Redirector(LoopbackFake):
    """A server (named in the files) that answers every request with a 307 to ``location``."""

    def __init__(self, location: str) -> None:
        super().__init__(("redirector",))
        self.location = location

    @property
    def url(self) -> str:
        return self._url("redirector")

    def handle(self, request: RecordedRequest) -> Outcome:
        return json_reply(307, {}, headers={"location": self.location})
