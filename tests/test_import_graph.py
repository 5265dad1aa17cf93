"""The package's import structure: no cycle between modules, and the read-only commands stay light.

A cycle (``cli.main`` ↔ ``cli.secrets`` used to be one, hidden in a function-level import) makes the
import order matter and hides which module owns what. The read-only commands are run by people and
scripts on a host where the daemon runs; they must not pay for (or depend on) the HTTP client, the web
server or the scheduler.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = [ROOT / "teckochecker", ROOT / "plugins" / "teckochecker_openai", ROOT / "plugins" / "teckochecker_keboola"]
HEAVY = {"httpx", "uvicorn", "apscheduler", "uvloop"}


def _modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for file in package.rglob("*.py"):
            parts = list(file.relative_to(package.parent).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = file
    return modules


def _imports(module: str, file: Path, known: set[str]) -> Iterator[str]:
    """Every module of ours that ``module`` imports, at the top or inside a function, outside TYPE_CHECKING."""
    package = module.split(".") if file.name == "__init__.py" else module.split(".")[:-1]

    def visit(node: ast.AST) -> Iterator[str]:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (name for child in node.orelse for name in visit(child))
            return
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            yield from visit(child)

    return (name for name in visit(ast.parse(file.read_text())) if name in known and name != module)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_no_import_cycle_between_our_modules() -> None:
    modules = _modules()
    graph = {m: set(_imports(m, f, set(modules))) for m, f in modules.items()}
    assert graph["teckochecker.cli.main"], "the graph must see imports at all"
    assert _cycles(graph) == []


def test_cycle_finder_sees_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


READ_ONLY = {
    "version": ["--version"],
    "validate-config": ["--config", "{config}", "validate-config"],
    "plugins": ["--config", "{config}", "plugins"],
    "status": ["--config", "{config}", "status", "--state-url", "{state}"],
    "show": ["--config", "{config}", "show", "nightly", "--state-url", "{state}"],
    "secrets check": ["--config", "{config}", "secrets", "check"],
    "db current": ["--config", "{config}", "db", "current", "--state-url", "{state}"],
}

PROBE = """
import json, sys
from teckochecker.cli.main import main
try:
    code = main(json.loads(sys.argv[1]))
except SystemExit as exc:
    code = exc.code
loaded = {m.split('.')[0] for m in sys.modules}
print(json.dumps({"code": code, "heavy": sorted(loaded & set(json.loads(sys.argv[2])))}))
"""


@pytest.mark.parametrize("command", sorted(READ_ONLY))
def test_read_only_commands_do_not_import_http_web_or_scheduler(command: str, tmp_path: Path) -> None:
    config = tmp_path / "teckochecker.yaml"
    config.write_text(
        "secrets:\n  key: {env: H10_TOKEN}\n"
        "jobs:\n  - name: nightly\n    source: {type: openai_batch, api_key: key, targets: [batch_1]}\n"
        "    action: {type: keboola_job, token: key, stack_url: 'https://connection.keboola.com',"
        " component: keboola.orchestrator, config: '1'}\n"
    )
    state = f"sqlite:///{tmp_path / 'state.db'}"
    argv = [a.format(config=config, state=state) for a in READ_ONLY[command]]
    env = {"PATH": "/usr/bin:/bin", "H10_TOKEN": "sk-not-a-real-key", "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argv), json.dumps(sorted(HEAVY))],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "Traceback" not in done.stderr, done.stderr
    assert result["heavy"] == [], (result, done.stderr)
