"""Fuzzing `validate-config`: whatever the file holds, the answer is exit 0, or exit 1 with FILE:LINE:COL lines.

Examples are real configs (teckochecker.yaml.example and the shapes other tests use), mutated as data
(random values anywhere, wrong types, unknown keys, bad and huge durations, control characters, NUL) and then
as text (anchors and aliases, deep nesting, duplicate keys, broken indentation, random splices and bytes).
The in-process property calls ``teckochecker.cli.main.main`` itself, the function behind the command; a smaller
property runs the real command in a subprocess, with a timeout and a memory cap, so a hang or a runaway read
fails the test instead of the machine. Sizes: tests/fuzz_profiles.py.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import re
import resource
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import SUPPORT, TEST_PLUGINS
from daemon import TECKOCHECKER
from fuzz_profiles import examples
from hypothesis import example, given, settings
from hypothesis import strategies as st

from teckochecker.cli.exitcodes import EXIT_INVALID, EXIT_OK
from teckochecker.cli.main import main

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "teckochecker.yaml.example"
FERNET = "gAAAAABpAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=="
DROP_IN_DIR = "jobs.d"
SUBPROCESS_TIMEOUT = 15.0
SUBPROCESS_MEMORY = 1024 * 1024 * 1024  # bytes of address space: a reader that never stops dies, not the machine


def _seeds() -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """(main file, drop-in file or None) as data: every top-level section and both plugin sets."""
    example = yaml.safe_load(EXAMPLE.read_text())
    status_job = {
        "name": "nightly",
        "interval": "45s",
        "deadline": "25h",
        "trigger": "all_succeeded",
        "source": {"type": "status_file", "path": "/tmp/status.json", "token": "tok", "targets": ["a", "b"]},
        "actions": [{"type": "record", "ledger": "/tmp/ledger.jsonl", "when": "all_succeeded", "follow": False}],
    }
    plain = {
        "state": {"url": "sqlite:////tmp/tc-fuzz.db"},
        "http": {"listen": "127.0.0.1", "port": 0, "api_token": "control"},
        "log_level": "DEBUG",
        "secrets": {
            "tok": {"env": "TEST_TOKEN"},
            "control": {"file": "/run/secrets/control"},
            "cred": {"credential": "keboola"},
            "enc": {"encrypted": FERNET},
        },
        "defaults": {"interval": "45s", "concurrency": 3, "deadline": "1h30m", "startup_spread": "0s"},
        "jobs": [status_job],
    }
    templated = {
        "include": [f"{DROP_IN_DIR}/*.yaml"],
        "secrets": {"tok": {"env": "TEST_TOKEN"}},
        "templates": {
            "standard": {
                "interval": "1m",
                "source": {"type": "status_file", "path": "/tmp/s.json"},
                "actions": [{"type": "record", "ledger": "/tmp/l"}],
            }
        },
        "jobs": [{"name": "main-job", "template": "standard", "source": {"targets": ["x"]}}],
    }
    drop_in = {
        "jobs": [
            {"name": "a", "template": "standard", "source": {"targets": ["b1", "b2"]}},
            {**status_job, "name": "b"},
        ]
    }
    return [(example, None), (plain, None), (templated, drop_in)]


SEEDS = _seeds()


def _walk_keys(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _walk_keys(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk_keys(item)


KEYS = sorted(
    {"type", "targets", "when", "template"} | {k for m, d in SEEDS for doc in (m, d) if doc for k in _walk_keys(doc)}
)

# ----- values -----

DURATION_UNITS = ("ms", "s", "m", "h", "d", "", "us", "w")
durations = st.one_of(
    st.sampled_from(["45s", "2m", "1h30m", "500ms", "0s", "-1s", "1.5h", "1e3s", "s", "", " ", "2 m", "1h 1h"]),
    st.builds(
        lambda n, unit: f"{n}{unit}", st.integers(0, 10**500), st.sampled_from(DURATION_UNITS)
    ),  # 3000000d, 400 nines, ...
    st.builds(lambda digits, unit: f"{'9' * digits}{unit}", st.integers(1, 500), st.sampled_from(DURATION_UNITS)),
    st.text(alphabet="0123456789.smhd -", max_size=12),
)
# Text that YAML and a one-line report find hard: line breaks, control characters, quotes, indicators.
awkward_text = st.text(
    alphabet=st.one_of(st.sampled_from("\n\r\t\x00\x1b\x85\u2028\u202e\ufeff :#&*!|>'\"%@`{}[],-?"), st.characters()),
    max_size=12,
)
names = st.one_of(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True), st.text(max_size=20))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([0, -1, 65535, 65536, 2**31, 2**63, 2**64, 10**400, -(10**400)]),
    st.floats(),
    st.text(max_size=40),  # every code point but surrogates: control characters, NUL, RTL marks, emoji
    awkward_text,
    st.binary(max_size=16),  # a !!binary value
    st.datetimes(),  # a YAML timestamp
    durations,
    names,
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.one_of(st.sampled_from(KEYS), awkward_text, st.integers()), children, max_size=4)
    ),
    max_leaves=12,
)


# ----- mutations of the data -----

TreePath = tuple[Any, ...]


def _paths(node: Any, path: TreePath = ()) -> Iterator[TreePath]:
    yield path
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*path, index))


def _parent(tree: Any, path: TreePath) -> Any:
    for part in path[:-1]:
        tree = tree[part]
    return tree


@st.composite
def mutated_tree(draw: st.DrawFn, tree: Any) -> Any:
    tree = copy.deepcopy(tree)
    for _ in range(draw(st.integers(0, 4))):
        paths = list(_paths(tree))
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["replace", "delete", "add_key", "duplicate", "known_key", "wrap"]))
        target = _parent(tree, path)[path[-1]] if path else tree
        if op == "replace" and path:
            _parent(tree, path)[path[-1]] = draw(values)
        elif op == "delete" and path:
            del _parent(tree, path)[path[-1]]
        elif op in ("add_key", "known_key") and isinstance(target, dict):
            key = draw(st.sampled_from(KEYS)) if op == "known_key" else draw(st.one_of(awkward_text, scalars))
            if isinstance(key, (str, int, float, bool)) or key is None:
                target[key] = draw(values)
        elif op == "duplicate" and isinstance(target, list) and target:
            target.append(copy.deepcopy(draw(st.sampled_from(target))))
        elif op == "wrap" and path:
            value = _parent(tree, path)[path[-1]]
            _parent(tree, path)[path[-1]] = draw(st.sampled_from([[value], {"value": value}, [[value]]]))
    return tree


def _dump(data: Any, draw: st.DrawFn) -> str:
    return yaml.safe_dump(
        data,
        sort_keys=False,
        allow_unicode=draw(st.booleans()),
        default_flow_style=draw(st.sampled_from([False, None, True])),
        width=draw(st.sampled_from([80, 10**6])),
    )


# ----- mutations of the text -----

SNIPPETS = [
    "x: &a [*a]\n",  # an alias inside its own anchor
    "x: &a {k: *a}\n",
    "base: &b {interval: 45s}\nmore: {<<: *b, concurrency: 2}\n",
    "y: *undefined\n",
    "<<: [*x]\n",
    "? [complex, key]\n: value\n",
    "!!python/object:os.system {}\n",
    "z: !!binary 'AAAA'\n",
    "t: !custom 1\n",
    "%YAML 1.1\n---\n",
    "---\n---\n",
    "...\n",
    "l: |\n  block\n x\n",
    "\tjobs: []\n",
    "\ufeffjobs: []\n",
]


def _line_edit(text: str, draw: st.DrawFn) -> str:
    lines = text.splitlines(keepends=True) or [""]
    index = draw(st.integers(0, len(lines) - 1))
    line = lines[index]
    op = draw(st.sampled_from(["duplicate", "indent", "dedent", "tab", "delete", "anchor", "alias"]))
    if op == "duplicate":  # a duplicate key, or a duplicate list item
        lines.insert(index, line)
    elif op == "indent":
        lines[index] = " " * draw(st.integers(1, 3)) + line
    elif op == "dedent":
        lines[index] = line[draw(st.integers(1, 3)) :]
    elif op == "tab":
        lines[index] = "\t" + line
    elif op == "delete":
        del lines[index]
    elif ": " in line:  # put an anchor or an alias in a value
        head, _, tail = line.partition(": ")
        name = draw(st.sampled_from(["a", "b"]))
        lines[index] = f"{head}: &{name} {tail}" if op == "anchor" else f"{head}: *{name}\n"
    return "".join(lines)


def _nesting(draw: st.DrawFn) -> str:
    depth = draw(st.integers(1, 3000))
    kind = draw(st.sampled_from(["flow_list", "flow_map", "block"]))
    if kind == "flow_list":
        return "deep: " + "[" * depth + "]" * depth + "\n"
    if kind == "flow_map":
        return "deep: " + "{a: " * depth + "1" + "}" * depth + "\n"
    depth = min(depth, 300)
    return "deep:\n" + "".join(" " * (i + 1) + f"k{i}:\n" for i in range(depth)) + " " * (depth + 1) + "v\n"


@st.composite
def mutated_text(draw: st.DrawFn, text: str) -> bytes:
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["line", "line", "snippet", "nesting", "insert", "cut", "replace"]))
        position = draw(st.integers(0, len(text)))
        if op == "line":
            text = _line_edit(text, draw)
        elif op == "snippet":
            text = _at_line_start(text, position) + draw(st.sampled_from(SNIPPETS)) + text[position:]
        elif op == "nesting":
            text = _at_line_start(text, position) + _nesting(draw) + text[position:]
        elif op == "insert":
            text = text[:position] + draw(st.text(max_size=8)) + text[position:]
        elif op == "cut":
            text = text[:position] + text[position + draw(st.integers(1, 40)) :]
        else:
            text = draw(st.text(max_size=200))
    data = text.encode("utf-8")
    if draw(st.integers(0, 9)) == 0:  # not UTF-8 at all, or a stray byte in it
        position = draw(st.integers(0, len(data)))
        data = data[:position] + draw(st.binary(min_size=1, max_size=8)) + data[position:]
    return data


def _at_line_start(text: str, position: int) -> str:
    start = text.rfind("\n", 0, position) + 1
    return text[:start]


@dataclass(frozen=True)
class Files:
    """The bytes of the main file and of one drop-in (written when the main file may include it)."""

    main: bytes
    drop_in: bytes | None

    def write(self, directory: Path) -> tuple[Path, Path | None]:
        main = directory / "teckochecker.yaml"
        main.write_bytes(self.main)
        if self.drop_in is None:
            return main, None
        (directory / DROP_IN_DIR).mkdir()
        drop = directory / DROP_IN_DIR / "extra.yaml"
        drop.write_bytes(self.drop_in)
        return main, drop


@st.composite
def config_files(draw: st.DrawFn) -> Files:
    main, drop_in = draw(st.sampled_from(SEEDS))
    mutate_drop_in = drop_in is not None and draw(st.booleans())
    main_text = _dump(main if mutate_drop_in else draw(mutated_tree(main)), draw)
    main_bytes = main_text.encode() if mutate_drop_in else draw(mutated_text(main_text))
    if drop_in is None:
        return Files(main_bytes, None)
    if not mutate_drop_in:
        return Files(main_bytes, _dump(drop_in, draw).encode())
    return Files(main_bytes, draw(mutated_text(_dump(draw(mutated_tree(drop_in)), draw))))


# ----- the property -----


def check_answer(code: int, stdout: str, stderr: str, files: list[Path]) -> None:
    """Exit 0 with the summary line, or exit 1 with one FILE:LINE:COL line per problem and their count."""
    assert "Traceback" not in stderr, stderr
    if code == EXIT_OK:
        assert stdout.startswith(f"{files[0]}: OK: ") and stderr == "", (stdout, stderr)
        return
    assert code == EXIT_INVALID, (code, stdout, stderr)
    *problems, count = stderr.rstrip("\n").split("\n")
    assert problems, stderr
    assert count == f"{len(problems)} problem(s) found", stderr
    located = re.compile("^(?:" + "|".join(re.escape(str(f)) for f in files) + r"):[1-9][0-9]*:[1-9][0-9]*: \S")
    for line in problems:
        assert located.match(line), f"not a FILE:LINE:COL line: {line!r}"


@pytest.fixture(scope="module", autouse=True)
def _test_plugins() -> Iterator[None]:
    """``main`` reads os.environ, as the command does: the test plugins (status_file, record) must be in it."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in TEST_PLUGINS.items():
            patch.setenv(name, value)
        yield


def validate_in_process(path: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["validate-config", str(path)])
    return code, out.getvalue(), err.getvalue()


def _example_with(old: str, new: str) -> Files:
    return Files(EXAMPLE.read_text().replace(old, new, 1).encode(), None)


# Inputs the fuzzer found once, kept so that every run tries them.
@example(Files(b"jobs: []\nx: \x00\n", None))  # a raw NUL: PyYAML's two-line message
@example(Files(b'"a\\nb": 1\n', None))  # a line break in an unknown key's name
@example(Files(b"%YAML 1.1\n---\n", None))  # an explicit empty document: exit 1 with no problem line
@example(Files(b"x: &a [*a]\n", None))  # an alias inside its own anchor
@example(Files(b"deep: " + b"[" * 3000 + b"]" * 3000 + b"\n", None))
@example(_example_with("deadline: 25h ", f"deadline: {'9' * 400}s "))  # infinite seconds
@given(files=config_files())
def test_validate_config_answers_every_file_with_located_problems(files: Files) -> None:
    with tempfile.TemporaryDirectory(prefix="tc-fuzz-") as directory:
        main_path, drop_in = files.write(Path(directory))
        code, stdout, stderr = validate_in_process(main_path)
        check_answer(code, stdout, stderr, [p for p in (main_path, drop_in) if p])


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (SUBPROCESS_MEMORY, SUBPROCESS_MEMORY))


def validate_in_subprocess(path: Path) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TECKOCHECKER_")}
    env.update(TEST_PLUGINS, PYTHONPATH=os.pathsep.join(filter(None, [str(SUPPORT), env.get("PYTHONPATH")])))
    out = subprocess.run(
        [TECKOCHECKER, "validate-config", str(path)],
        env=env,
        cwd=path.parent,
        capture_output=True,
        text=True,
        errors="backslashreplace",
        timeout=SUBPROCESS_TIMEOUT,
        preexec_fn=_limit_memory,
    )
    return out.returncode, out.stdout, out.stderr


@settings(max_examples=examples(0.05), deadline=None)  # a process start per example; the timeout bounds it
@given(files=config_files())
def test_the_real_command_answers_every_file_with_located_problems(files: Files) -> None:
    with tempfile.TemporaryDirectory(prefix="tc-fuzz-") as directory:
        main_path, drop_in = files.write(Path(directory))
        code, stdout, stderr = validate_in_subprocess(main_path)
        check_answer(code, stdout, stderr, [p for p in (main_path, drop_in) if p])


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "directory", "dangling_symlink", "symlink_loop"])
def test_a_config_path_that_is_not_a_regular_file(kind: str, tmp_path: Path) -> None:
    """Not random, but the same property: a FIFO nobody writes to, or an endless device, must not hang it."""
    path = tmp_path / "teckochecker.yaml"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev_zero":
        path.symlink_to("/dev/zero")
    elif kind == "directory":
        path.mkdir()
    elif kind == "dangling_symlink":
        path.symlink_to(tmp_path / "missing.yaml")
    else:
        path.symlink_to(path)
    try:
        code, stdout, stderr = validate_in_subprocess(path)
    except subprocess.TimeoutExpired:
        pytest.fail(f"validate-config did not answer within {SUBPROCESS_TIMEOUT:g}s on a {kind}")
    check_answer(code, stdout, stderr, [path])
    assert code == EXIT_INVALID
