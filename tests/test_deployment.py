"""The Dockerfile and config/kubernetes/: what operations rely on stays true (two replicas, probes on the
daemon's health paths, non-root and read-only, config from the ConfigMap, secrets as files, one port
everywhere), the embedded config passes the daemon's own validator, and the linters that install through
pip (the test extra) accept the files."""

from __future__ import annotations

import datetime as dt
import json
import posixpath
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from teckochecker.config.validate import Config, load_config
from teckochecker.plugins import PluginRegistry, load_plugins
from teckochecker.state.store import StateStore

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "config" / "kubernetes"
DOCKERFILE = ROOT / "Dockerfile"
VENV_BIN = Path(sys.executable).parent
README_INSTALL = ("python3 -m venv /opt/teckochecker/venv", "/opt/teckochecker/venv/bin/pip install")


def manifests() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found[doc["kind"]] = doc
    return found


@pytest.fixture(scope="module")
def kinds() -> dict[str, dict[str, Any]]:
    return manifests()


@pytest.fixture(scope="module")
def pod(kinds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = kinds["Deployment"]["spec"]["template"]["spec"]
    return spec


@pytest.fixture(scope="module")
def container(pod: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod["containers"]
    return dict(only)


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def mount_of(pod: dict[str, Any], container: dict[str, Any], **source: str) -> str:
    """Where the volume built from e.g. configMap=NAME is mounted."""
    ((kind, name),) = source.items()
    key = {"configMap": "name", "secret": "secretName"}[kind]
    volumes = [v["name"] for v in pod["volumes"] if v.get(kind, {}).get(key) == name]
    assert len(volumes) == 1, f"one volume from {kind} {name}: {pod['volumes']}"
    (path,) = [m["mountPath"] for m in container["volumeMounts"] if m["name"] == volumes[0]]
    return str(path)


@pytest.fixture(scope="module")
def config(kinds: dict[str, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Config:
    path = tmp_path_factory.mktemp("configmap") / "teckochecker.yaml"
    path.write_text(kinds["ConfigMap"]["data"]["teckochecker.yaml"])
    registry: PluginRegistry = load_plugins({})
    return load_config(path, registry)


def test_two_replicas_rolled_one_at_a_time_and_never_both_drained(kinds: dict[str, dict[str, Any]]) -> None:
    deployment = kinds["Deployment"]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 1
    assert kinds["PodDisruptionBudget"]["spec"]["minAvailable"] == 1
    labels = deployment["spec"]["selector"]["matchLabels"]
    assert deployment["spec"]["template"]["metadata"]["labels"] == labels
    assert (
        kinds["Service"]["spec"]["selector"]
        == labels
        == kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]
    )


def test_probes_use_the_daemons_health_paths_on_its_configured_port(
    kinds: dict[str, dict[str, Any]], container: dict[str, Any], config: Config
) -> None:
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": config.http.port}
    assert config.http.listen == "0.0.0.0", "the kubelet probes the pod IP, not loopback"
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    (service_port,) = kinds["Service"]["spec"]["ports"]
    assert service_port["targetPort"] == "http" and service_port["port"] == config.http.port
    dockerfile = DOCKERFILE.read_text()
    assert f"EXPOSE {config.http.port}" in dockerfile and f"127.0.0.1:{config.http.port}/healthz" in dockerfile
    (allowed,) = kinds["NetworkPolicy"]["spec"]["ingress"]
    assert allowed["ports"] == [{"port": config.http.port, "protocol": "TCP"}]


def test_non_root_read_only_no_privileges_with_resources(pod: dict[str, Any], container: dict[str, Any]) -> None:
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0 and security["runAsGroup"] != 0
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    own = container["securityContext"]
    assert own["readOnlyRootFilesystem"] is True and own["allowPrivilegeEscalation"] is False
    assert own["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False
    assert {"cpu", "memory"} <= set(container["resources"]["requests"]) and "memory" in container["resources"]["limits"]
    # SIGTERM ends the daemon within 5 s; the pod must wait at least that long before SIGKILL.
    assert pod["terminationGracePeriodSeconds"] >= 5
    assert f"USER {security['runAsUser']}:{security['runAsGroup']}" in dockerfile_instructions("USER")[0]


def test_the_config_comes_from_the_configmap_and_secrets_are_files_of_the_secret(
    kinds: dict[str, dict[str, Any]], pod: dict[str, Any], container: dict[str, Any], config: Config
) -> None:
    config_file = env_of(container)["TECKOCHECKER_CONFIG"]
    config_dir = mount_of(pod, container, configMap=kinds["ConfigMap"]["metadata"]["name"])
    assert posixpath.dirname(config_file) == config_dir
    assert posixpath.basename(config_file) in kinds["ConfigMap"]["data"]
    secret_dir = mount_of(pod, container, secret="teckochecker-secrets")
    assert config.secrets and all(
        ref.file is not None and posixpath.dirname(ref.file) == secret_dir for ref in config.secrets.values()
    ), config.secrets
    assert config.http.api_token in config.secrets, "the control endpoints are on, behind a token"
    assert posixpath.dirname(env_of(container)["PGSERVICEFILE"]) == secret_dir
    url = make_url(config.state.url or "")
    assert url.get_backend_name() == "postgresql" and url.password is None and url.query.get("service")


def test_the_state_url_of_the_manifests_connects_through_a_service_file(
    config: Config, postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the Secret's pg_service.conf does in the pod: libpq takes host, database and user from it."""
    target = make_url(postgres_url)
    service = make_url(config.state.url or "").query["service"]
    (tmp_path / "pg_service.conf").write_text(
        f"[{service}]\nhost={target.host}\nport={target.port}\ndbname={target.database}\nuser={target.username}\n"
    )
    monkeypatch.setenv("PGSERVICEFILE", str(tmp_path / "pg_service.conf"))
    store = StateStore.open(config.state.url or "")
    try:
        store.sync_jobs([], dt.datetime.now(dt.timezone.utc))
        assert store.jobs() == []
    finally:
        store.close()


def dockerfile_instructions(keyword: str) -> list[str]:
    """Each instruction of that keyword, continuation lines joined."""
    joined = DOCKERFILE.read_text().replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip().startswith(f"{keyword} ")]


def test_the_image_installs_as_the_readme_does_and_runs_the_daemon(container: dict[str, Any]) -> None:
    readme = (ROOT / "README.md").read_text()
    runs = " ".join(dockerfile_instructions("RUN"))
    for command in README_INSTALL:
        assert command in readme and command in runs, command
    assert dockerfile_instructions("FROM")[0].startswith("FROM python:3.12-slim")
    assert dockerfile_instructions("ENTRYPOINT") == ['ENTRYPOINT ["teckochecker"]']
    (cmd,) = dockerfile_instructions("CMD")
    command = json.loads(cmd.removeprefix("CMD "))
    assert command[0] == "run" and container["args"] == command, (cmd, container["args"])
    rules = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    # An allowlist: everything is left out of the build context (.venv, .git, local state) but the package.
    assert rules[0] == "*" and {"!pyproject.toml", "!teckochecker/", "!plugins/"} <= set(rules), rules


# ----- linters from the test extra -----


def tool(name: str) -> str:
    path = VENV_BIN / name
    if not path.exists():
        pytest.fail(f"{name} is missing: it comes with the test extra (pip install -e '.[test]')")
    return str(path)


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_hadolint_accepts_the_dockerfile() -> None:
    out = run(tool("hadolint"), "Dockerfile")
    assert out.returncode == 0, out.stdout + out.stderr


def test_yamllint_accepts_the_manifests() -> None:
    out = run(
        tool("yamllint"), "--strict", "-d", "{extends: default, rules: {line-length: {max: 120}}}", str(KUBERNETES)
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_manifests_match_the_kubernetes_schemas() -> None:
    files = sorted(str(p) for p in KUBERNETES.glob("*.yaml"))
    out = run(tool("kubernetes-validate"), "--strict", *files)
    assert out.returncode == 0 and out.stdout.count("passed") == len(files), out.stdout + out.stderr
