"""docs/plugins.md stays true: the hooks' signatures are hookspecs.py's, the Source and Action methods are
plugin_api.py's, and every object a plugin sees is mentioned."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

from teckochecker import errors, plugin_api
from teckochecker.clock import Clock

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "plugins.md"
CODE_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def signature(function: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    returns = f" -> {ast.unparse(function.returns)}" if function.returns else ""
    return f"{function.name}({ast.unparse(function.args)}){returns}"


def functions(tree: ast.AST) -> dict[str, str]:
    return {
        node.name: signature(node)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("teckochecker_")
    }


def test_every_hook_is_in_the_guide_with_the_signature_of_hookspecs() -> None:
    specs = functions(ast.parse((ROOT / "teckochecker" / "hookspecs.py").read_text()))
    documented: dict[str, str] = {}
    for block in CODE_BLOCK.findall(GUIDE.read_text()):
        if "def teckochecker_" in block:
            documented.update(functions(ast.parse(block)))
    assert specs, "no hooks found in hookspecs.py"
    assert documented == specs, "docs/plugins.md's hook blocks differ from teckochecker/hookspecs.py"


def _methods(class_name: str) -> list[str]:
    tree = ast.parse((ROOT / "teckochecker" / "plugin_api.py").read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name]
    return [signature(n) for n in cls.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


@pytest.mark.parametrize("class_name", ["Source", "Action"])
def test_every_method_of_the_base_classes_is_in_the_guide_as_written(class_name: str) -> None:
    text = GUIDE.read_text()
    methods = _methods(class_name)
    assert len(methods) >= 3
    for method in methods:
        assert f"def {method}" in text, f"docs/plugins.md: {class_name}.{method} is missing or differs"


def test_every_object_a_plugin_sees_is_mentioned() -> None:
    text = GUIDE.read_text()
    names: set[str] = set(plugin_api.__all__)
    names |= {"TransientError", "PermanentError", "Rejected", "NotStarted", "InDoubt", "SecretLookup", "Clock"}
    for cls in (
        plugin_api.Observation,
        plugin_api.CheckReport,
        plugin_api.ActionRequest,
        plugin_api.ActionResult,
        plugin_api.Cancellation,
        plugin_api.PluginContext,
    ):
        names |= {f.name for f in dataclasses.fields(cls)}
    names |= {state.value for state in plugin_api.TargetState} | {"is_terminal", "is_success"}
    names |= {outcome.value for outcome in plugin_api.ActionOutcome} | {"is_finished"}
    names |= {n for n in vars(plugin_api.Action) if not n.startswith("_")}
    names |= {n for n in vars(plugin_api.Source) if not n.startswith("_")}
    names |= {"client", "get"}  # HttpClients.client, SharedObjects.get
    names |= {n for n in vars(Clock) if not n.startswith("_")}
    assert all(hasattr(errors, n) for n in ("TransientError", "PermanentError", "Rejected", "NotStarted", "InDoubt"))
    missing = sorted(n for n in names if not re.search(rf"\b{re.escape(n)}\b", text))
    assert missing == [], f"docs/plugins.md does not mention: {missing}"
