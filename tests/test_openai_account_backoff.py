"""Three ``openai_batch`` jobs of one account under the core's runner (in process, injected clock, the fake
OpenAI over real HTTP): a rate-limited listing makes the jobs wait for ``Retry-After`` together."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import random
import textwrap
from pathlib import Path

from clock import FakeClock
from fakes import FakeOpenAI
from plugin_context import Clients

from teckochecker.config.validate import load_config
from teckochecker.crashpoints import CrashPoints
from teckochecker.metrics import Metrics
from teckochecker.plugin_api import PluginContext, SharedRegistry
from teckochecker.plugins import PluginRegistry
from teckochecker.runner import JobRunner
from teckochecker.runtime import JobRuntime
from teckochecker.secrets.resolving import Redactor, SecretResolver
from teckochecker.services import TickServices
from teckochecker.state.models import JobState
from teckochecker.state.store import StateStore
from teckochecker.state.worker import StoreWorker

API_KEY = "sk-CANARY-backoff-0123456789abcdef0123"


def write_config(path: Path, base_url: str, jobs: dict[str, list[str]]) -> Path:
    ledger = path.parent / "ledger.jsonl"
    lines = [
        "secrets:",
        "  openai: {env: OPENAI_API_KEY}",
        "jobs:",
        *(
            f"  - {{name: {name}, interval: 30s, deadline: 1h, source: {{type: openai_batch, api_key: openai, "
            f'base_url: "{base_url}", targets: {json.dumps(targets)}}}, actions: [{{type: record, ledger: {ledger}}}]}}'
            for name, targets in jobs.items()
        ),
    ]
    path.write_text(textwrap.dedent("\n".join(lines)) + "\n")
    return path


def test_jobs_of_a_rate_limited_account_wait_for_retry_after_together(tmp_path: Path, registry: PluginRegistry) -> None:
    with FakeOpenAI(api_key=API_KEY) as fake:
        ids = [fake.add_batch(status="in_progress") for _ in range(300)]
        jobs = {f"job{n}": ids[n * 100 : (n + 1) * 100] for n in range(3)}
        config = load_config(write_config(tmp_path / "tc.yaml", fake.base_url, jobs), registry)
        clock, clients = FakeClock(), Clients()
        context = PluginContext(
            http=clients,
            clock=clock,
            secret=SecretResolver(config.secrets, {"OPENAI_API_KEY": API_KEY}, Redactor()),
            logger=logging.getLogger("test.plugins"),
            shared=SharedRegistry(),
        )
        store, worker = StateStore.open(f"sqlite:///{tmp_path / 'state.db'}"), StoreWorker()
        runtimes = [JobRuntime.build(definition, context) for definition in config.jobs.values()]
        store.sync_jobs([job.plan() for job in runtimes], clock.now())
        services = TickServices(
            store, worker, clock, CrashPoints({}), logging.getLogger("test"), Metrics(), random.Random(1)
        )
        runner = JobRunner(services)
        fake.inject(429, headers={"retry-after": "30"})  # the first request, the account's listing

        async def tick_every_job() -> list[float | None]:
            results = await asyncio.gather(*(runner.tick(job) for job in runtimes))
            return [result.next_in for result in results]

        def assert_waiting_until(seconds: float) -> None:
            for name in jobs:
                snap = store.job(name)
                assert snap is not None and snap.state is JobState.WATCHING and "HTTP 429" in (snap.last_error or "")
                assert snap.next_check_at == clock.now() + dt.timedelta(seconds=seconds)

        async def scenario() -> tuple[list[float | None], int]:
            try:
                limited = await tick_every_job()
                # Every job is told to come back when the account may ask again, and nothing more was sent.
                assert fake.request_count() == 1 and limited == [30.0, 30.0, 30.0]
                assert_waiting_until(30)
                clock.advance(30)
                return await tick_every_job(), fake.request_count()
            finally:
                await clients.aclose()

        try:
            recovered, total = asyncio.run(scenario())
            # 30 s later: one sweep of the listing (three pages of 100), no batch fetched on its own.
            assert recovered == [None, None, None] and total == 1 + 3
            assert all(r.path == "/v1/batches" for r in fake.requests)
        finally:
            worker.close()
            store.close()
