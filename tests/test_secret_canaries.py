"""No secret in any answer: canary values planted through every kind of secret, with odd bytes, through the
real daemon against the fakes (which echo the token back in errors), then every output channel grepped.

Values that cannot be sent as an HTTP header are refused by name at start and on reload; the acceptable
ones (a tab inside, the one trailing newline of a file) are used, and are found nowhere.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import textwrap
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from daemon import DaemonProcess, run_cli
from fakes import FakeKeboola, FakeOpenAI

COMPONENT = "kds-team.app-custom-python"
MASTER_KEY = Fernet.generate_key().decode()
# Each canary's distinctive core; no output may hold it, in any spelling.
OPENAI_KEY = "sk-CANARYencOPENAIkey0123456789abcdef"  # encrypted
KEBOOLA_TOKEN = "kbc-CANARYfile\tTOKEN-4242-zyxwvu"  # file, a tab inside
API_TOKEN = "CANARYcredAPItoken-7788"  # credential, CRLF-terminated
ROTATED_API_TOKEN = "CANARYrotatedAPItoken-9911"
SPARE = "CANARYenvSPARE-5566"  # env, resolved and checked, used by nothing
CORES = ("CANARYencOPENAIkey", "CANARYfile", "TOKEN-4242", "CANARYcredAPItoken", "CANARYrotated", "CANARYenvSPARE")
BAD_KEBOOLA = b"kbc-CANARYfile-bad-0000\n\n"  # what started the issue: two trailing newlines


@pytest.fixture
def openai():
    with FakeOpenAI(api_key=OPENAI_KEY) as fake:
        yield fake


@pytest.fixture
def keboola():
    with FakeKeboola(token=KEBOOLA_TOKEN, search_lag=0.5) as fake:
        yield fake


def plant(tmp_path: Path, keboola_bytes: bytes) -> tuple[Path, Path]:
    """The secret files: the Keboola token (a file) and the API token (a systemd credential)."""
    token = tmp_path / "keboola.token"
    token.write_bytes(keboola_bytes)
    token.chmod(0o600)
    credentials = tmp_path / "credentials"
    credentials.mkdir(exist_ok=True)
    credential = credentials / "api_token"
    credential.write_bytes(API_TOKEN.encode() + b"\r\n")
    credential.chmod(0o400)
    return token, credential


def write_config(tmp_path: Path, openai: FakeOpenAI, keboola: FakeKeboola, batches: dict[str, list[str]]) -> Path:
    encrypted = Fernet(MASTER_KEY).encrypt(OPENAI_KEY.encode()).decode()
    jobs = "".join(
        textwrap.dedent(f"""\
          - name: {name}
            source: {{type: openai_batch, api_key: openai, base_url: "{openai.base_url}", targets: {json.dumps(ids)}}}
            actions:
              - type: keboola_job
                token: keboola
                stack_url: {keboola.stack_url}
                queue_url: {keboola.queue_url}
                component: {COMPONENT}
                config: "{config_id}"
                search_lag: 1s
                follow_interval: 1s
                # The echoing 503 comes before any job exists: searches, a second start, then a short watch.
                timeout: 2s
                duplicate_watch: 3s
        """)
        for (name, ids), config_id in zip(batches.items(), ("101", "999"), strict=True)
    )
    path = tmp_path / "teckochecker.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        log_level: DEBUG
        http: {{port: 0, api_token: api}}
        secrets:
          openai: {{encrypted: {encrypted}}}
          keboola: {{file: {tmp_path / "keboola.token"}}}
          api: {{credential: api_token}}
          spare: {{env: TC_SPARE}}
        defaults: {{interval: 30s, startup_spread: 0s}}
        jobs:
        """)
        + jobs
    )
    return path


def assert_clean(what: str, text: str | bytes) -> None:
    blob = text if isinstance(text, bytes) else text.encode("utf-8", "backslashreplace")
    for core in CORES:
        assert core.encode() not in blob, f"{core} leaked into {what}:\n{blob[:4000]!r}"


def test_canaries_through_every_kind_of_secret_appear_in_no_output(
    tmp_path: Path, openai: FakeOpenAI, keboola: FakeKeboola, plugin_env: dict[str, str]
) -> None:
    env = {
        **plugin_env,
        "TECKOCHECKER_MASTER_KEY": MASTER_KEY,
        "CREDENTIALS_DIRECTORY": str(tmp_path / "credentials"),
        "TC_SPARE": SPARE,
    }
    fire = [openai.add_batch(status="in_progress"), openai.add_batch(status="in_progress")]
    for batch in fire:
        openai.set_status(batch, "completed", completed=10, failed=0)
    hold = [openai.add_batch(status="in_progress")]
    keboola.add_config(COMPONENT, "101")
    keboola.add_config(COMPONENT, "999")
    config = write_config(tmp_path, openai, keboola, {"fire": fire, "hold": hold})
    outputs: dict[str, str | bytes] = {}

    # 1. A token that cannot be a header: refused by name at start, before anything is sent.
    token_file, credential = plant(tmp_path, BAD_KEBOOLA)
    refused = DaemonProcess(config, env, tmp_path)
    assert refused.proc.wait(timeout=30) != 0, refused.output
    assert (
        f"secret 'keboola': file {token_file}: the value contains a line break (character 24); "
        "it cannot be sent as an HTTP header" in refused.output
    )
    assert keboola.requests == [] and openai.request_count() == 0
    outputs["refused start"] = refused.output

    # 2. Acceptable odd values are used; the fakes echo the Keboola token back on the error paths.
    token_file.write_bytes(KEBOOLA_TOKEN.encode() + b"\n")
    openai.inject(
        503,
        times=2,
        headers={"retry-after": "1"},
        body=json.dumps({"error": {"message": f"over capacity for {OPENAI_KEY!r}"}}).encode(),
    )
    keboola.post_fault("503_echo_token")  # in doubt: the daemon searches, then starts it once
    daemon = DaemonProcess(config, env, tmp_path, "--log-level", "DEBUG")
    base = daemon.http_url(timeout=30)
    daemon.wait_for("job fire: completed", timeout=90)
    assert any(r.headers.get("x-storageapi-token") == KEBOOLA_TOKEN for r in keboola.requests)
    assert any(r.headers.get("authorization") == f"Bearer {OPENAI_KEY}" for r in openai.requests)
    assert len(keboola.jobs_for(COMPONENT, "101")) == 1
    # Keboola's words are shown only with a token (docs/security.md); the echo was stored there, masked.
    token = {"Authorization": f"Bearer {API_TOKEN}"}
    events = httpx.get(base + "/api/v1/jobs/fire?events=1000", headers=token).json()["events"]
    echoed = [e for e in events if "upstream" in e["data"].get("excerpt", "")]
    assert echoed and "[REDACTED]" in echoed[0]["data"]["excerpt"]

    # 3. Reload: a credential that cannot be a header is refused by name; a good rotated one is used at once.
    credential.chmod(0o600)
    credential.write_bytes(ROTATED_API_TOKEN.encode() + b"\n\n")
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for(
        f"secret 'api': credential api_token: the value contains a line break (character {len(ROTATED_API_TOKEN) + 1})"
    )
    credential.write_bytes(ROTATED_API_TOKEN.encode() + b"\n")
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for("config reloaded")
    check_now = httpx.post(
        base + "/api/v1/jobs/hold/check-now", headers={"Authorization": f"Bearer {ROTATED_API_TOKEN}"}
    )
    assert check_now.status_code == 200, check_now.text
    refused_old = httpx.post(base + "/api/v1/jobs/hold/check-now", headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert refused_old.status_code == 401

    for path in (
        "/api/v1/jobs",
        "/api/v1/jobs/fire?events=1000",
        "/api/v1/jobs/hold",
        "/api/v1/status",
        "/",
        "/metrics",
    ):
        outputs[path] = httpx.get(base + path).content
    code, _ = daemon.stop()
    assert code == 0
    outputs["daemon output"] = daemon.output
    for args in (["status"], ["show", "fire"], ["show", "hold"], ["secrets", "check"]):
        out = run_cli("--config", str(config), *args, env=env, cwd=tmp_path)
        outputs[" ".join(args)] = out.stdout + out.stderr
    db = tmp_path / ".teckochecker" / "state.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for stored in (tmp_path / ".teckochecker").iterdir():
        outputs[str(stored)] = stored.read_bytes()

    assert "DEBUG" in daemon.output  # the run really logged at its most talkative
    for what, text in outputs.items():
        assert_clean(what, text)
