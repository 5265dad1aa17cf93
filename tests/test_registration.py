"""Jobs registered over HTTP, on the real daemon process: PUT/DELETE, validation, token scopes, file jobs
read-only, the file winning a name in both, rows written by another process, and a restart."""

from __future__ import annotations

import datetime as dt
import json
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from daemon import DaemonProcess, read_ledger, run_cli

from teckochecker.config.models import MAX_TARGET_LENGTH
from teckochecker.config.validate import load_config, validate_job_body
from teckochecker.state.models import JobOrigin
from teckochecker.state.store import StateStore

REGISTER_TOKEN = "register-token-0123456789"
CONTROL_TOKEN = "control-token-0123456789"
BOTH_TOKEN = "both-token-0123456789abc"
REGISTER = {"Authorization": f"Bearer {REGISTER_TOKEN}"}
CONTROL = {"Authorization": f"Bearer {CONTROL_TOKEN}"}
BOTH = {"Authorization": f"Bearer {BOTH_TOKEN}"}


class Setup:
    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.status = tmp_path / "status.json"
        self.ledger = tmp_path / "ledger.jsonl"
        self.config = tmp_path / "teckochecker.yaml"
        self.state = tmp_path / "state.db"
        self.status.write_text(json.dumps({"done1": "succeeded", "done2": "succeeded"}))
        (tmp_path / "jobs.d").mkdir()
        self.config.write_text(
            textwrap.dedent(f"""\
            http: {{port: 0, api_token: both}}
            state: {{url: "sqlite:///{self.state}"}}
            secrets:
              both: {{env: TC_BOTH}}
              reg: {{env: TC_REG}}
              ctl: {{env: TC_CTL}}
              vendor: {{env: TC_VENDOR}}
            defaults: {{startup_spread: 0s}}
            include: [jobs.d/*.yaml]
            templates:
              std:
                source: {{type: status_file, path: {self.status}}}
                actions: [{{type: record, ledger: {self.ledger}, follow: false}}]
                overridable: [interval, "actions[0].outcome", "actions[0].follow"]
            jobs:
              - name: filed
                template: std
                source: {{targets: [never0]}}
            """)
        )
        text = self.config.read_text().replace(
            "http: {port: 0, api_token: both}",
            "http: {port: 0, api_token: both, tokens: [{secret: reg, scopes: [register]}, "
            "{secret: ctl, scopes: [control]}]}",
        )
        self.config.write_text(text)

    def env(self, plugin_env: dict[str, str]) -> dict[str, str]:
        return {
            **plugin_env,
            "TC_BOTH": BOTH_TOKEN,
            "TC_REG": REGISTER_TOKEN,
            "TC_CTL": CONTROL_TOKEN,
            "TC_VENDOR": "vendor-secret-value-42",
        }


def start(setup: Setup, env: dict[str, str]) -> tuple[DaemonProcess, httpx.Client]:
    daemon = DaemonProcess(setup.config, env, setup.dir)
    daemon.wait_for("teckochecker started")
    return daemon, httpx.Client(base_url=daemon.http_url(), timeout=10)


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


@pytest.fixture
def running(setup: Setup, plugin_env: dict[str, str]):
    daemon, client = start(setup, setup.env(plugin_env))
    yield daemon, client
    client.close()
    code, _ = daemon.stop()
    assert code == 0, daemon.output


def wait_until(predicate, what: str, daemon: DaemonProcess, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{daemon.output}"
        time.sleep(0.05)


def job_body(*targets: str) -> dict[str, object]:
    return {"template": "std", "source": {"targets": list(targets)}}


def test_put_fires_once_and_the_same_put_again_changes_nothing(
    running, setup: Setup, plugin_env: dict[str, str]
) -> None:
    daemon, client = running
    created = client.put("/api/v1/jobs/nightly", headers=REGISTER, json=job_body("done1", "done2"))
    assert created.status_code == 201, created.text
    assert created.json() == {"job": "nightly", "origin": "api", "outcome": "created"}
    daemon.wait_for("job nightly: completed")
    assert len(read_ledger(setup.ledger)) == 1

    again = client.put("/api/v1/jobs/nightly", headers=REGISTER, json=job_body("done1", "done2"))
    assert again.status_code == 200 and again.json()["outcome"] == "unchanged"
    # A changed definition of a job that already fired: refused, and the fired one stays as it was.
    changed = client.put("/api/v1/jobs/nightly", headers=REGISTER, json=job_body("done1", "done2", "done3"))
    assert changed.status_code == 409 and "already fired" in changed.json()["error"]
    job = client.get("/api/v1/jobs/nightly").json()
    assert job["origin"] == "api" and job["state"] == "completed" and job["targets_total"] == 2
    origins = {j["name"]: j["origin"] for j in client.get("/api/v1/jobs").json()["jobs"]}
    assert origins == {"filed": "file", "nightly": "api"}
    assert len(read_ledger(setup.ledger)) == 1
    assert 'data-job="nightly" data-state="completed" data-origin="api"' in client.get("/").text
    assert "audit: register job='nightly' from 127.0.0.1: created" in daemon.output
    assert "audit: register job='nightly' from 127.0.0.1: unchanged" in daemon.output
    assert "audit: register job='nightly' from 127.0.0.1: refused (409)" in daemon.output
    metrics = client.get("/metrics").text
    assert 'teckochecker_jobs_by_origin{origin="api"} 1.0' in metrics
    assert 'teckochecker_jobs_by_origin{origin="file"} 1.0' in metrics
    env, cli = setup.env(plugin_env), ("--config", str(setup.config))
    status = run_cli(*cli, "status", env=env, cwd=setup.dir).stdout.splitlines()
    assert status[0].split()[:3] == ["JOB", "ORIGIN", "STATE"]
    assert [line.split()[:3] for line in status if line.startswith(("filed", "nightly"))] == [
        ["filed", "file", "watching"],
        ["nightly", "api", "completed"],
    ]
    remote = run_cli(*cli, "status", "--url", str(client.base_url), env=env, cwd=setup.dir).stdout
    assert "nightly  api     completed" in remote
    assert "origin:     api" in run_cli(*cli, "show", "nightly", env=env, cwd=setup.dir).stdout


def test_a_watching_job_gains_targets_and_delete_removes_it(running, setup: Setup) -> None:
    daemon, client = running
    assert client.put("/api/v1/jobs/grow", headers=REGISTER, json=job_body("wait1")).status_code == 201
    grown = client.put("/api/v1/jobs/grow", headers=REGISTER, json=job_body("wait1", "wait2"))
    assert grown.status_code == 200 and grown.json()["outcome"] == "updated"
    job = client.get("/api/v1/jobs/grow").json()
    assert [t["target"] for t in job["targets"]] == ["wait1", "wait2"] and job["state"] == "watching"

    gone = client.delete("/api/v1/jobs/grow", headers=REGISTER)
    assert gone.status_code == 200 and gone.json() == {"job": "grow", "removed": True}
    kept = client.get("/api/v1/jobs/grow").json()
    # Its history is kept, and still says where the job came from (it said "file" once its row was gone).
    assert (kept["removed"], kept["origin"]) == (True, "api")
    assert client.delete("/api/v1/jobs/grow", headers=REGISTER).status_code == 404
    assert "registered jobs applied: 0 added, 0 changed, 1 removed" in daemon.output


def test_a_firing_job_is_removed_only_once_its_actions_have_finished(running, setup: Setup) -> None:
    daemon, client = running
    # done1 has finished: the job fires at its first check; the record action's job then keeps running.
    body = {"template": "std", "source": {"targets": ["done1"]}, "actions": [{"outcome": "running", "follow": True}]}
    assert client.put("/api/v1/jobs/busy", headers=REGISTER, json=body).status_code == 201
    deadline = time.monotonic() + 20
    while client.get("/api/v1/jobs/busy").json()["state"] != "firing":
        assert time.monotonic() < deadline, daemon.output
        time.sleep(0.05)
    refused = client.delete("/api/v1/jobs/busy", headers=REGISTER)
    assert refused.status_code == 409 and "firing" in refused.json()["error"]
    # Still registered and still followed: a restart or failover would find its row.
    assert client.get("/api/v1/jobs/busy").json()["origin"] == "api"
    assert len(read_ledger(setup.ledger)) == 1


def test_every_problem_is_a_422_with_its_path(running) -> None:
    _, client = running
    body = {
        "template": "std",
        "source": {"targets": ["a", "b", 3], "token": "nope"},
        "interval": "5s",
        "surprise": True,
    }
    answer = client.put("/api/v1/jobs/bad", headers=REGISTER, json=body)
    assert answer.status_code == 422
    problems = {p["path"]: p["message"] for p in answer.json()["problems"]}
    assert set(problems) == {"source.targets[2]", "source.token", "interval", "surprise"}, problems
    # What only the files may set is refused by name, with what the template lets a registered job set.
    allowed = "it may set: name, template, source.targets, variables, interval, actions[0].outcome, actions[0].follow"
    assert "may not set source.token" in problems["source.token"] and allowed in problems["source.token"]
    assert "nope" not in problems["source.token"]
    assert "may not set surprise" in problems["surprise"]
    assert problems["interval"] == "must be between 30s and 1h (got 5s)"

    unknown = client.put("/api/v1/jobs/bad", headers=REGISTER, json={"template": "gone", "source": {"targets": ["a"]}})
    assert unknown.status_code == 422
    assert {"path": "template", "message": "unknown template 'gone' (defined: std)"} in unknown.json()["problems"]
    assert client.get("/api/v1/jobs/bad").status_code == 404  # nothing was stored


def test_a_body_never_carries_a_secret_value(running, setup: Setup) -> None:
    daemon, client = running
    for value in ("vendor-secret-value-42", "sk-" + "A" * 30, REGISTER_TOKEN):
        body = {**job_body("a"), "actions": [{"type": "record", "ledger": value}]}
        answer = client.put("/api/v1/jobs/leaky", headers=REGISTER, json=body)
        assert answer.status_code == 422, answer.text
        assert answer.json()["problems"] == [
            {
                "path": "actions[0].ledger",
                "message": "looks like a secret value: name a secret defined under 'secrets:'",
            }
        ]
        assert value not in answer.text
    for given in ({"value": "hunter2-hunter2"}, {"env": "TC_VENDOR"}):
        inline = {"template": "std", "source": {"targets": ["a"], "token": given}}
        answer = client.put("/api/v1/jobs/leaky", headers=REGISTER, json=inline)
        assert answer.status_code == 422 and "hunter2" not in answer.text
        assert answer.json()["problems"] == [
            {
                "path": "source.token",
                "message": "a body never gives a secret, neither its value nor its source: "
                "a job uses the secrets its template names",
            }
        ]
    declared = client.put("/api/v1/jobs/leaky", headers=REGISTER, json={**job_body("a"), "secrets": {"x": "y"}})
    assert declared.status_code == 422 and declared.json()["problems"][0]["path"] == "secrets"
    assert "vendor-secret-value-42" not in daemon.output and "sk-AAAA" not in daemon.output
    store = StateStore.open(f"sqlite:///{setup.state}", readonly=True)
    try:
        assert store.registered_jobs() == []
    finally:
        store.close()


def test_malformed_and_oversized_bodies(running) -> None:
    _, client = running
    not_json = client.put("/api/v1/jobs/x", headers=REGISTER, content=b"{nope")
    assert not_json.status_code == 400 and "not JSON" in not_json.json()["error"]
    mismatch = client.put("/api/v1/jobs/x", headers=REGISTER, json={**job_body("a"), "name": "y"})
    assert mismatch.status_code == 422 and mismatch.json()["problems"][0]["path"] == "name"
    assert client.put("/api/v1/jobs/x", headers=REGISTER, json=["a"]).status_code == 422
    assert client.put("/api/v1/jobs/x", headers=REGISTER, content=b"[" * 100_000).status_code == 400
    deep: dict[str, object] = {}
    for _ in range(40):
        deep = {"a": deep}
    nested = client.put("/api/v1/jobs/x", headers=REGISTER, json={**job_body("a"), "deep": deep})
    assert nested.status_code == 422 and "nested deeper than 32 levels" in nested.json()["problems"][0]["message"]
    bad_name = client.put("/api/v1/jobs/%2E%2E", headers=REGISTER, json=job_body("a"))
    assert bad_name.status_code == 422 and bad_name.json()["problems"][0]["path"] == "name"
    # Bigger than the 64 KiB any other endpoint accepts, within the 256 KiB a job may be.
    targets = [f"batch_{i:026d}" for i in range(5000)]
    big = client.put("/api/v1/jobs/big", headers=REGISTER, json=job_body(*targets))
    assert big.status_code == 201 and len(big.request.content) > 64 * 1024
    huge = client.put("/api/v1/jobs/huge", headers=REGISTER, content=b" " * (256 * 1024 + 1))
    assert huge.status_code == 413
    assert client.get("/api/v1/jobs/huge").status_code == 404


def test_a_target_that_is_no_text_or_too_long_is_a_422_naming_it(running) -> None:
    daemon, client = running
    # JSON's escape for half of a UTF-16 pair: a str Python holds, and nothing can encode (it was a 500).
    lone = b'{"template": "std", "source": {"targets": ["ok", "\\ud800"]}}'
    answer = client.put("/api/v1/jobs/lone", headers={**REGISTER, "content-type": "application/json"}, content=lone)
    assert answer.status_code == 422, answer.text
    [problem] = answer.json()["problems"]
    assert problem["path"] == "source.targets[1]" and "lone surrogate" in problem["message"]
    # 100,000 characters was accepted, then logged and sent in every tick; 255 is the most a target ID has.
    longest = client.put("/api/v1/jobs/long", headers=REGISTER, json=job_body("b" * MAX_TARGET_LENGTH))
    assert longest.status_code == 201, longest.text
    answer = client.put("/api/v1/jobs/long", headers=REGISTER, json=job_body("a", "b" * 100_000))
    assert answer.status_code == 422, answer.text
    [problem] = answer.json()["problems"]
    assert problem["path"] == "source.targets[1]" and f"at most {MAX_TARGET_LENGTH} characters" in problem["message"]
    assert "b" * 1000 not in answer.text
    assert client.get("/api/v1/jobs/lone").status_code == 404
    assert "Traceback" not in daemon.output


def test_token_scopes(running) -> None:
    daemon, client = running
    assert client.put("/api/v1/jobs/scoped", headers=REGISTER, json=job_body("w")).status_code == 201
    # A pipeline's register-only token cannot pause anything, not even its own job.
    assert client.post("/api/v1/jobs/scoped/pause", headers=REGISTER).status_code == 403
    assert client.post("/api/v1/jobs/filed/check-now", headers=REGISTER).status_code == 403
    # A control-only token cannot register or remove.
    assert client.put("/api/v1/jobs/other", headers=CONTROL, json=job_body("w")).status_code == 403
    assert client.delete("/api/v1/jobs/scoped", headers=CONTROL).status_code == 403
    assert client.post("/api/v1/jobs/scoped/pause", headers=CONTROL).status_code == 200
    # http.api_token: both scopes, as before http.tokens existed.
    assert client.post("/api/v1/jobs/scoped/resume", headers=BOTH).status_code == 200
    assert client.delete("/api/v1/jobs/scoped", headers=BOTH).status_code == 200
    wrong = client.put("/api/v1/jobs/x", headers={"Authorization": "Bearer wrong"}, json=job_body("w"))
    assert wrong.status_code == 401
    assert client.put("/api/v1/jobs/x", json=job_body("w")).status_code == 401
    assert "audit: register job='other' from 127.0.0.1: denied (403)" in daemon.output
    assert "audit: pause job='scoped' from 127.0.0.1: denied (403)" in daemon.output
    assert REGISTER_TOKEN not in daemon.output and CONTROL_TOKEN not in daemon.output


def test_file_jobs_are_read_only(running, setup: Setup) -> None:
    _, client = running
    place = f"{setup.config}:16"  # the line of "- name: filed"
    put = client.put("/api/v1/jobs/filed", headers=REGISTER, json=job_body("x"))
    assert put.status_code == 409 and place in put.json()["error"], put.text
    delete = client.delete("/api/v1/jobs/filed", headers=REGISTER)
    assert delete.status_code == 409 and place in delete.json()["error"]


def test_a_name_in_a_file_and_registered_the_file_wins_and_it_is_reported(
    running, setup: Setup, plugin_env: dict[str, str]
) -> None:
    daemon, client = running
    assert client.put("/api/v1/jobs/clash", headers=REGISTER, json=job_body("wait9")).status_code == 201
    drop_in = setup.dir / "jobs.d" / "clash.yaml"
    drop_in.write_text("jobs:\n  - {name: clash, template: std, source: {targets: [never5]}}\n")
    daemon.wait_for("the file's job runs")
    note = f"job 'clash' is registered (api) and also defined at {drop_in}:2: the file's job runs; remove one of them"
    assert note in daemon.output
    wait_until(lambda: note in client.get("/api/v1/status").json()["registered"], "the note in status", daemon)
    job = client.get("/api/v1/jobs/clash").json()
    assert job["origin"] == "file" and job["targets"][-1]["target"] == "never5"
    page = client.get("/").text
    assert '<ul class="registered-notes"><li>job &#x27;clash&#x27; is registered (api) and also defined at' in page
    status = run_cli("--config", str(setup.config), "status", env=setup.env(plugin_env), cwd=setup.dir)
    assert note in status.stdout, status.stdout + status.stderr
    # The registered row is still there (the API may remove it); the file job is untouched by that.
    assert client.delete("/api/v1/jobs/clash", headers=REGISTER).status_code == 200
    assert client.get("/api/v1/jobs/clash").json()["removed"] is False


def test_rows_written_by_another_process_are_picked_up_and_survive_a_restart(
    setup: Setup, plugin_env: dict[str, str]
) -> None:
    env = setup.env(plugin_env)
    daemon, client = start(setup, env)
    try:
        # As a replica (or discovery) would: straight into the shared state store.
        store = StateStore.open(f"sqlite:///{setup.state}")
        try:
            now = dt.datetime.now(dt.UTC)
            store.put_registered_job("elsewhere", JobOrigin.API, {"name": "elsewhere", **job_body("done1")}, now=now)
        finally:
            store.close()
        daemon.wait_for("job elsewhere: completed", timeout=20)  # within the 5 s poll, plus a tick
        assert len(read_ledger(setup.ledger)) == 1
    finally:
        client.close()
        assert daemon.stop()[0] == 0
    daemon, client = start(setup, env)
    try:
        job = client.get("/api/v1/jobs/elsewhere").json()
        assert job["origin"] == "api" and job["state"] == "completed" and job["removed"] is False
        time.sleep(0.5)
        assert len(read_ledger(setup.ledger)) == 1
    finally:
        client.close()
        assert daemon.stop()[0] == 0


def test_jobs_add_and_remove_with_url(running, setup: Setup, plugin_env: dict[str, str]) -> None:
    daemon, client = running
    base = str(client.base_url)
    env = {**setup.env(plugin_env), "TECKOCHECKER_TOKEN": REGISTER_TOKEN}
    cli = ("--config", str(setup.config), "jobs")
    added = run_cli(
        *cli, "add", "remote", "-t", "std", "-b", "wait1", "-b", "wait2", "--url", base, env=env, cwd=setup.dir
    )
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == f"job 'remote' created at {base}: watching 2 target(s)"
    assert client.get("/api/v1/jobs/remote").json()["origin"] == "api"
    assert not (setup.dir / "jobs.d" / "remote.yaml").exists()  # over the API, not a drop-in
    again = run_cli(
        *cli, "add", "remote", "-t", "std", "-b", "wait1", "-b", "wait2", "--url", base, env=env, cwd=setup.dir
    )
    assert "job 'remote' unchanged" in again.stdout

    # The token from a file; none at all is a clear error; a bad job prints every problem and exits 1.
    token_file = setup.dir / "token"
    token_file.write_text(REGISTER_TOKEN + "\n")
    no_env = setup.env(plugin_env)
    bad = run_cli(
        *cli,
        "add",
        "bad",
        "-t",
        "nope",
        "-b",
        "x",
        "--url",
        base,
        "--token-file",
        str(token_file),
        env=no_env,
        cwd=setup.dir,
    )
    assert bad.returncode == 1 and "template: unknown template 'nope' (defined: std)" in bad.stderr, bad.stderr
    missing = run_cli(*cli, "remove", "remote", "--url", base, env=no_env, cwd=setup.dir)
    assert missing.returncode == 2 and "--token-file PATH or the TECKOCHECKER_TOKEN" in missing.stderr
    filed = run_cli(*cli, "remove", "filed", "--url", base, "--token-file", str(token_file), env=no_env, cwd=setup.dir)
    assert filed.returncode == 2 and f"{setup.config}:16" in filed.stderr
    removed = run_cli(
        *cli, "remove", "remote", "--url", base, "--token-file", str(token_file), env=no_env, cwd=setup.dir
    )
    assert removed.returncode == 0 and removed.stdout.strip() == f"job 'remote' removed at {base}"
    assert REGISTER_TOKEN not in daemon.output


def test_export_is_a_drop_in_that_validates_to_the_same_jobs(
    running, setup: Setup, plugin_env: dict[str, str], registry
) -> None:
    _, client = running
    body = {**job_body("wait1"), "interval": "45s", "actions": [{"follow": True}]}
    assert client.put("/api/v1/jobs/one", headers=REGISTER, json=body).status_code == 201
    assert client.put("/api/v1/jobs/two", headers=REGISTER, json=job_body("wait2", "wait3")).status_code == 201
    env = setup.env(plugin_env)
    exported = run_cli("--config", str(setup.config), "jobs", "export", env=env, cwd=setup.dir)
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout.startswith("# 2 job(s) registered over the API")

    # Into git: the same jobs, now from a file in a copy of the config (this one would shadow the API jobs).
    copy = setup.dir / "copy"
    (copy / "jobs.d").mkdir(parents=True)
    (copy / "teckochecker.yaml").write_text(setup.config.read_text())
    (copy / "jobs.d" / "exported.yaml").write_text(exported.stdout)
    valid = run_cli("validate-config", str(copy / "teckochecker.yaml"), env=env, cwd=setup.dir)
    assert valid.returncode == 0 and "OK: 3 job(s)" in valid.stdout, valid.stdout + valid.stderr
    from_file = load_config(copy / "teckochecker.yaml", registry)
    running_config = load_config(setup.config, registry)
    store = StateStore.open(f"sqlite:///{setup.state}", readonly=True)
    try:
        rows = store.registered_jobs()
    finally:
        store.close()
    assert [r.name for r in rows] == ["one", "two"]
    for row in rows:
        definition, problems = validate_job_body(row.body, running_config, registry, where="api")
        assert problems == [] and from_file.jobs[row.name].fingerprint == definition.fingerprint


def test_the_readme_snippet_for_the_submitting_script_registers(
    running, setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon, client = running
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    (snippet,) = [b for b in readme.split("```python\n")[1:] if "def register(" in b]
    code = snippet.split("```")[0].replace("http://teckochecker.internal:9718", str(client.base_url))
    monkeypatch.setenv("TECKOCHECKER_TOKEN", REGISTER_TOKEN)
    namespace: dict[str, object] = {}
    exec(code.replace('"template": "classify"', '"template": "std"'), namespace)
    register = namespace["register"]
    register("from-readme", ["done1"])
    register("from-readme", ["done1"])  # the retry of a lost answer: nothing changes
    daemon.wait_for("job from-readme: completed")
    assert len(read_ledger(setup.ledger)) == 1
    assert "audit: register job='from-readme' from 127.0.0.1: unchanged" in daemon.output


def test_a_config_change_revalidates_registered_jobs(running, setup: Setup) -> None:
    daemon, client = running
    assert client.put("/api/v1/jobs/api-job", headers=REGISTER, json=job_body("wait1")).status_code == 201
    before = client.get("/api/v1/jobs/api-job").json()["fingerprint"]
    # The template the registered job uses changes: its definition changes with it, as a file job's would.
    setup.config.write_text(setup.config.read_text().replace("follow: false", "follow: true"))
    wait_until(lambda: client.get("/api/v1/jobs/api-job").json()["fingerprint"] != before, "a new fingerprint", daemon)
    # The template goes away: the stored job no longer validates; it is left out and that is reported.
    text = setup.config.read_text().replace("  std:", "  renamed:").replace("template: std", "template: renamed")
    setup.config.write_text(text)
    note = "registered job 'api-job' no longer validates and is not run: template: unknown template 'std'"
    wait_until(lambda: any(n.startswith(note) for n in client.get("/api/v1/status").json()["registered"]), note, daemon)
    assert client.get("/api/v1/jobs/api-job").json()["removed"] is True
    assert note in daemon.output


def test_a_discovered_job_is_not_replaced_or_removed_over_the_api(running, setup: Setup) -> None:
    daemon, client = running
    store = StateStore.open(f"sqlite:///{setup.state}")
    try:
        body = {"name": "group-1", **job_body("wait1")}
        store.put_registered_job("group-1", JobOrigin.DISCOVERED, body, {"expected": 2}, now=dt.datetime.now(dt.UTC))
    finally:
        store.close()
    put = client.put("/api/v1/jobs/group-1", headers=REGISTER, json=job_body("wait1", "wait2"))
    assert put.status_code == 409 and "was discovered" in put.json()["error"]
    assert client.delete("/api/v1/jobs/group-1", headers=REGISTER).status_code == 409
    wait_until(lambda: client.get("/api/v1/jobs/group-1").status_code == 200, "the discovered job", daemon)
    assert client.get("/api/v1/jobs/group-1").json()["origin"] == "discovered"


def test_a_file_edit_takes_targets_out_as_a_put_does(running, setup: Setup) -> None:
    # The same code applies a changed file job and a changed registered one: the answer of neither may lie.
    daemon, client = running
    drop_in = setup.dir / "jobs.d" / "edited.yaml"
    drop_in.write_text("jobs:\n  - {name: edited, template: std, source: {targets: [wait1, wait2]}}\n")
    wait_until(lambda: client.get("/api/v1/jobs/edited").status_code == 200, "the file job", daemon)
    drop_in.write_text("jobs:\n  - {name: edited, template: std, source: {targets: [wait2, wait3]}}\n")

    def targets() -> list[str]:
        return [t["target"] for t in client.get("/api/v1/jobs/edited").json()["targets"]]

    wait_until(lambda: targets() == ["wait2", "wait3"], "the edit applied", daemon)
    assert client.put("/api/v1/jobs/put", headers=REGISTER, json=job_body("wait1", "wait2")).status_code == 201
    assert client.put("/api/v1/jobs/put", headers=REGISTER, json=job_body("wait2", "wait3")).status_code == 200
    assert [t["target"] for t in client.get("/api/v1/jobs/put").json()["targets"]] == ["wait2", "wait3"]
