"""Hooks are called through pluggy's relay: only ``@hookimpl`` functions count, and every call can be traced."""

from __future__ import annotations

import logging
import sys
import textwrap
from pathlib import Path

import pluggy
import pytest
from daemon import run_cli

from teckochecker.errors import PluginError
from teckochecker.plugins import load_plugins
from teckochecker.plugintrace import describe, trace_hook_calls, tracing_requested

PLUGIN_SOURCE = """
from teckochecker import hookimpl
from teckochecker.plugin_api import OptionsModel, Source, CheckReport

class Marked(Source):
    type_name = "{marked}"
    Options = OptionsModel
    async def check(self, targets):
        return CheckReport()

class Unmarked(Marked):
    type_name = "{unmarked}"

@hookimpl
def teckochecker_source_types():
    return [Marked]

def teckochecker_action_types():  # no @hookimpl: pluggy must not call it
    raise AssertionError("an unmarked function was called")
"""


def write_module(directory: Path, name: str, text: str, monkeypatch: pytest.MonkeyPatch) -> str:
    (directory / f"{name}.py").write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(directory))
    sys.modules.pop(name, None)
    return name


def test_a_function_without_hookimpl_is_not_registered_and_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    module = write_module(
        tmp_path, "half_marked_plugin", PLUGIN_SOURCE.format(marked="marked", unmarked="unmarked"), monkeypatch
    )
    with caplog.at_level(logging.WARNING, "teckochecker.plugins"):
        registry = load_plugins({}, entry_points=False, modules=[module])
    assert set(registry.sources) == {"marked"}
    assert registry.actions == {}
    assert [r.getMessage() for r in caplog.records] == [
        "plugin 'half_marked_plugin' defines teckochecker_action_types() without @teckochecker.hookimpl, "
        "so it is not registered"
    ]


def test_an_unmarked_module_registers_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = write_module(
        tmp_path,
        "unmarked_plugin",
        """
        from teckochecker_openai import OpenAIBatchSource

        def teckochecker_source_types():
            return [OpenAIBatchSource]
        """,
        monkeypatch,
    )
    # With getattr-style calls this registered openai_batch a second time, a duplicate-type error.
    registry = load_plugins({}, entry_points=False, modules=["teckochecker_openai", module])
    assert sorted(registry.sources) == ["azure_openai_batch", "openai_batch"]
    assert [p.name for p in registry.plugins] == ["teckochecker_openai"]


def test_a_failing_hook_names_the_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = write_module(
        tmp_path,
        "failing_plugin",
        """
        from teckochecker import hookimpl

        @hookimpl
        def teckochecker_action_types():
            raise RuntimeError("boom")
        """,
        monkeypatch,
    )
    with pytest.raises(PluginError, match=r"plugin 'failing_plugin' failed in teckochecker_action_types\(\): boom"):
        load_plugins({}, entry_points=False, modules=[module])


def test_trace_plugins_logs_every_hook_call_of_every_plugin(plugin_env: dict[str, str], tmp_path: Path) -> None:
    out = run_cli("plugins", env={**plugin_env, "TECKOCHECKER_TRACE_PLUGINS": "1"}, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for line in [
        "plugin hook teckochecker_source_types() calling openai_batch",
        (
            "plugin hook teckochecker_source_types returned [[teckochecker_openai.source.OpenAIBatchSource, "
            "teckochecker_openai.azure.AzureOpenAIBatchSource]]"
        ),
        "plugin hook teckochecker_action_types() calling keboola_job",
        "plugin hook teckochecker_action_types returned [[teckochecker_keboola.action.KeboolaJobAction]]",
        "plugin hook teckochecker_source_types() calling teckotest_plugin",
        "plugin hook teckochecker_action_types returned [[teckotest_plugin.RecordAction]]",
    ]:
        assert line in out.stderr, out.stderr
    quiet = run_cli("plugins", env=plugin_env, cwd=tmp_path)
    assert "plugin hook" not in quiet.stderr


def test_the_trace_shows_argument_and_result_shapes_never_values(caplog: pytest.LogCaptureFixture) -> None:
    spec, impl = pluggy.HookspecMarker("tracetest"), pluggy.HookimplMarker("tracetest")
    secret = "sk-live-0123456789abcdef"

    class Specs:
        @spec
        def tracetest_token(self, token: str) -> str:  # type: ignore[empty-body]
            """A hook that receives and returns a secret."""

    class Plugin:
        @impl
        def tracetest_token(self, token: str) -> str:
            return token

    manager = pluggy.PluginManager("tracetest")
    manager.add_hookspecs(Specs)
    manager.register(Plugin(), name="secretive")
    trace_hook_calls(manager, logging.getLogger("test.trace"))
    with caplog.at_level(logging.INFO, "test.trace"):
        assert manager.hook.tracetest_token(token=secret) == [secret]
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "plugin hook tracetest_token(token=<str>) calling secretive",
        "plugin hook tracetest_token returned [<str>]",
    ]
    assert secret not in caplog.text


def test_describe_and_the_switch() -> None:
    assert describe([[int], None, ("x", 1)]) == "[[builtins.int], None, [<str>, <int>]]"
    assert tracing_requested({"TECKOCHECKER_TRACE_PLUGINS": "1"})
    assert not tracing_requested({"TECKOCHECKER_TRACE_PLUGINS": "0"})
    assert not tracing_requested({})
