"""validate-config: every kind of problem, located as FILE:LINE:COL: path: message, all at once."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from daemon import run_cli

from teckochecker.config.durations import format_duration, parse_duration
from teckochecker.config.loader import MAX_DEPTH, MAX_FILE_BYTES
from teckochecker.config.models import Condition, TriggerRule
from teckochecker.config.validate import load_config
from teckochecker.errors import ConfigError
from teckochecker.plugins import PluginRegistry

VALID = """\
secrets:
  tok: {env: TEST_TOKEN}
defaults:
  interval: 45s
jobs:
  - name: nightly
    source:
      type: status_file
      path: /tmp/status.json
      token: tok
      targets: [a, b]
    actions:
      - type: record
        ledger: /tmp/ledger.jsonl
        when: all_succeeded
"""


def write(tmp_path: Path, text: str, name: str = "tc.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems(tmp_path: Path, registry: PluginRegistry, text: str) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, registry)
    return [str(d) for d in info.value.diagnostics]


def test_valid_config_loads_typed_values(tmp_path: Path, registry: PluginRegistry) -> None:
    config = load_config(write(tmp_path, VALID), registry)
    job = config.jobs["nightly"]
    assert job.interval == 45.0
    assert job.deadline == 25 * 3600
    assert job.trigger is TriggerRule.ALL_TERMINAL
    assert job.source.targets == ("a", "b")
    assert job.actions[0].when is Condition.ALL_SUCCEEDED
    assert config.http.listen == "127.0.0.1"
    assert "1 job(s), 2 target(s), 1 secret(s)" in config.summary()


def test_defaults_apply(tmp_path: Path, registry: PluginRegistry) -> None:
    config = load_config(write(tmp_path, VALID.replace("  interval: 45s\n", "  concurrency: 3\n")), registry)
    assert config.jobs["nightly"].interval == 120.0
    assert config.defaults.concurrency == 3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("45s", 45.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("500ms", 0.5),
        (" 2m ", 120.0),
    ],
)
def test_durations(text: str, expected: float) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("bad", ["2", "2x", "", "m", "1h 2", "-5s", 5, True])
def test_bad_durations_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_format_duration_round_trips() -> None:
    assert format_duration(150) == "2m30s"
    assert parse_duration(format_duration(5400)) == 5400


def test_yaml_syntax_error_is_located(tmp_path: Path, registry: PluginRegistry) -> None:
    found = problems(tmp_path, registry, "jobs: [\n  - name: a\n")
    assert len(found) == 1
    assert found[0].startswith(f"{tmp_path / 'tc.yaml'}:2:3: YAML syntax error: expected the node content")


def test_every_problem_is_reported_at_once(tmp_path: Path, registry: PluginRegistry) -> None:
    text = """\
    secrets:
      tok: {env: TEST_TOKEN}
      plain: hunter2-secret
    defaults:
      interval: 10s
      concurency: 5
    jobs:
      - name: a
        interval: 2x
        source:
          type: nope
          targets: [x]
        actions:
          - type: record
            ledger: /tmp/l
      - name: a
        source:
          type: status_file
          path: /tmp/s
          token: missing
          targets: [x]
        actions:
          - type: ghost
      - name: c
        deadline: 1h
        source: {type: status_file, path: 5, targets: x}
        actions:
          - {type: record, ledger: /tmp/l, when: sometimes, extra_key: 1}
    """
    found = problems(tmp_path, registry, text)
    f = str(tmp_path / "tc.yaml")
    expected_fragments = [
        f"{f}:3:3: secrets.plain: a secret is a reference, not a value",
        f"{f}:5:3: defaults.interval: must be between 30s and 1h (got 10s)",
        f"{f}:6:3: defaults.concurency: unknown key",
        f"{f}:9:5: jobs[0].interval: invalid duration '2x'",
        f"{f}:20:7: jobs[1].source.token: secret 'missing' is not defined under 'secrets:' (defined: plain, tok)",
        # Every installed plugin counts (the example plugin in CI, new built-ins): the list comes from the registry.
        f"{f}:23:9: jobs[1].actions[0].type: unknown action type 'ghost'; known: {', '.join(sorted(registry.actions))}",
        f"{f}:26:33: jobs[2].source.path: input should be a valid string",
        f"{f}:26:42: jobs[2].source.targets: input should be a valid list",
        f"{f}:28:40: jobs[2].actions[0].when: input should be 'always', 'all_succeeded' or 'any_failed'",
        f"{f}:28:57: jobs[2].actions[0].extra_key: unknown key",
    ]
    for fragment in expected_fragments:
        assert any(line.startswith(fragment) for line in found), f"missing {fragment!r} in:\n" + "\n".join(found)
    # The secret's value never appears in the messages.
    assert not any("hunter2" in line for line in found)


def test_unknown_source_type_lists_known_ones(tmp_path: Path, registry: PluginRegistry) -> None:
    found = problems(tmp_path, registry, VALID.replace("type: status_file", "type: status_fil"))
    assert found == [
        f"{tmp_path / 'tc.yaml'}:8:7: jobs[0].source.type: unknown source type 'status_fil'; "
        f"known: {', '.join(sorted(registry.sources))}"
    ]


def test_duplicate_keys_and_job_names(tmp_path: Path, registry: PluginRegistry) -> None:
    text = VALID + VALID.split("jobs:\n")[1] + "defaults:\n  interval: 1m\n"
    found = problems(tmp_path, registry, text)
    f = str(tmp_path / "tc.yaml")
    assert f"{f}:26:1: defaults: duplicate key (first defined at line 3)" in found
    assert f"{f}:16:5: jobs[1].name: duplicate job name 'nightly' (also in {f})" in found


@pytest.mark.parametrize(
    ("snippet", "message"),
    [
        ("interval: 3601s", "must be between 30s and 1h (got 3601s)"),
        ("interval: 29s", "must be between 30s and 1h (got 29s)"),
        ("interval: 90", "a duration is written with a unit"),
        ("trigger: whenever", "input should be 'all_terminal' or 'all_succeeded'"),
        ("name: 'bad name!'", "use letters, digits"),
    ],
)
def test_job_field_checks(tmp_path: Path, registry: PluginRegistry, snippet: str, message: str) -> None:
    key = snippet.split(":")[0]
    text = (
        VALID.replace("  - name: nightly\n", f"  - name: nightly\n    {snippet}\n")
        if key != "name"
        else VALID.replace("name: nightly", snippet)
    )
    found = problems(tmp_path, registry, text)
    assert len(found) == 1 and message in found[0], found


def test_missing_required_keys(tmp_path: Path, registry: PluginRegistry) -> None:
    found = problems(tmp_path, registry, "jobs:\n  - name: x\n")
    f = str(tmp_path / "tc.yaml")
    assert f"{f}:2:5: jobs[0].source: required key is missing" in found
    assert f"{f}:2:5: jobs[0].actions: required key is missing" in found


def test_secret_needs_exactly_one_source(tmp_path: Path, registry: PluginRegistry) -> None:
    found = problems(tmp_path, registry, VALID.replace("{env: TEST_TOKEN}", "{}"))
    assert any("secrets.tok: give exactly one of" in line for line in found), found


def test_not_a_mapping_and_missing_file(tmp_path: Path, registry: PluginRegistry) -> None:
    assert problems(tmp_path, registry, "- a\n- b\n")[0].endswith(
        "the file must be a mapping of keys (state, secrets, jobs, ...)"
    )
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.yaml", registry)
    assert str(info.value.diagnostics[0]) == f"{tmp_path / 'absent.yaml'}:1:1: file not found"


def test_alias_bomb_is_refused(tmp_path: Path, registry: PluginRegistry) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 7)]
    found = problems(tmp_path, registry, "\n".join(lines) + "\n")
    assert len(found) == 1 and "expands to more than" in found[0]


def test_empty_file_is_a_valid_config_with_no_jobs(tmp_path: Path, registry: PluginRegistry) -> None:
    assert load_config(write(tmp_path, ""), registry).jobs == {}


def test_fingerprint_changes_with_plugin_options(tmp_path: Path, registry: PluginRegistry) -> None:
    a = load_config(write(tmp_path, VALID, "a.yaml"), registry).jobs["nightly"].fingerprint
    b = (
        load_config(write(tmp_path, VALID.replace("/tmp/ledger.jsonl", "/tmp/other"), "b.yaml"), registry)
        .jobs["nightly"]
        .fingerprint
    )
    c = load_config(write(tmp_path, VALID, "c.yaml"), registry).jobs["nightly"].fingerprint
    assert a != b and a == c


def test_templates_and_drop_ins(tmp_path: Path, registry: PluginRegistry) -> None:
    main = write(
        tmp_path,
        """\
    include: [jobs.d/*.yaml]
    templates:
      standard:
        interval: 1m
        source: {type: status_file, path: /tmp/s.json}
        actions:
          - {type: record, ledger: /tmp/l}
    jobs: []
    """,
    )
    (tmp_path / "jobs.d").mkdir()
    (tmp_path / "jobs.d" / "a.yaml").write_text(
        "jobs:\n  - name: a\n    template: standard\n    source: {targets: [b1, b2]}\n"
    )
    (tmp_path / "jobs.d" / "b.yaml").write_text(
        "jobs:\n  - name: b\n    template: standard\n    interval: 2m\n    source: {targets: [c1], path: /tmp/other}\n"
    )
    (tmp_path / "jobs.d" / ".hidden.yaml").write_text("not: [valid")
    config = load_config(main, registry)
    assert sorted(config.jobs) == ["a", "b"]
    a, b = config.jobs["a"], config.jobs["b"]
    assert a.interval == 60 and a.source.targets == ("b1", "b2") and a.file == str(tmp_path / "jobs.d" / "a.yaml")
    assert b.interval == 120 and b.source.options.path == "/tmp/other"
    assert config.files == (str(main), str(tmp_path / "jobs.d" / "a.yaml"), str(tmp_path / "jobs.d" / "b.yaml"))
    assert "2 drop-in file(s)" in config.summary()


def test_drop_in_problems_are_located_in_their_file_and_template(tmp_path: Path, registry: PluginRegistry) -> None:
    main = write(
        tmp_path,
        """\
    include: [jobs.d/*.yaml]
    templates:
      standard:
        source: {type: status_file, path: 7}
        actions: [{type: record, ledger: /tmp/l}]
    jobs:
      - name: dup
        template: standard
        source: {targets: [x]}
    """,
    )
    (tmp_path / "jobs.d").mkdir()
    drop = tmp_path / "jobs.d" / "x.yaml"
    drop.write_text(
        "secrets: {}\njobs:\n  - name: dup\n    template: nope\n"
        "    source: {type: status_file, path: p, targets: [y]}\n    actions: [{type: record, ledger: l}]\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(main, registry)
    found = [str(d) for d in info.value.diagnostics]
    assert f"{main}:4:33: jobs[0].source.path: input should be a valid string" in found
    assert f"{drop}:1:1: secrets: unknown key (a drop-in file holds only 'jobs:')" in found
    assert f"{drop}:4:5: jobs[0].template: unknown template 'nope' (defined: standard)" in found


# --- hostile input: special files, self-references, deep nesting, huge numbers --------------------------


def test_special_and_oversized_config_files_are_refused_at_once(tmp_path: Path, plugin_env: dict[str, str]) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    (tmp_path / "jobs.d").mkdir()
    (tmp_path / "jobs.d" / "zero.yaml").symlink_to("/dev/zero")
    (tmp_path / "jobs.d" / "pipe.yaml").symlink_to(fifo)
    (tmp_path / "jobs.d" / "dir.yaml").mkdir()
    (tmp_path / "jobs.d" / "big.yaml").write_text("jobs: []\n" + "#" * (MAX_FILE_BYTES + 10) + "\n")
    main = write(tmp_path, "include: [jobs.d/*.yaml]\n")
    # Real processes: on a FIFO or /dev/zero the old reader blocked or ate memory instead of answering.
    out = run_cli("validate-config", str(fifo), env=plugin_env, cwd=tmp_path)
    assert out.returncode == 1 and out.stderr.splitlines() == [
        f"{fifo}:1:1: file is a FIFO (named pipe), not a regular file",
        "1 problem(s) found",
    ]
    out = run_cli("validate-config", str(main), env=plugin_env, cwd=tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    d = tmp_path / "jobs.d"
    assert out.stderr.splitlines() == [
        f"{d / 'big.yaml'}:1:1: file is larger than the limit of 1 MiB; is it the right file?",
        f"{d / 'dir.yaml'}:1:1: file is a directory, not a regular file",
        f"{d / 'pipe.yaml'}:1:1: file is a FIFO (named pipe), not a regular file",
        f"{d / 'zero.yaml'}:1:1: file is a character device, not a regular file",
        "4 problem(s) found",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("x: &a [*a]\n", "1:4: x[0]: alias refers to itself (a value that contains itself)"),
        ("x: &a {y: *a}\n", "1:4: x.y: alias refers to itself (a value that contains itself)"),
        ("x: &a {<<: *a}\n", "1:8: x: alias refers to itself (a mapping that merges itself)"),
        ("x: " + "[" * 1000 + "]" * 1000 + "\n", f"1:{4 + MAX_DEPTH - 1}: nesting deeper than {MAX_DEPTH} levels"),
        ("x: " + "{a: " * 1000 + "1" + "}" * 1000 + "\n", f"nesting deeper than {MAX_DEPTH} levels"),
    ],
)
def test_self_references_and_deep_nesting_are_located_errors(
    tmp_path: Path, plugin_env: dict[str, str], text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    out = run_cli("validate-config", str(path), env=plugin_env, cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr and "RecursionError" not in out.stderr
    first, summary = out.stderr.splitlines()
    assert first.startswith(f"{path}:") and expected in first and summary == "1 problem(s) found"


def test_aliases_cannot_nest_deeper_than_the_text(tmp_path: Path, registry: PluginRegistry) -> None:
    # Each anchor is shallow, but each wraps the previous one: the value nests about 300 levels deep.
    lines = ["a0: &a0 " + "[" * 60 + "]" * 60]
    lines += [f"a{i}: &a{i} " + "[" * 59 + f"*a{i - 1}" + "]" * 59 for i in range(1, 5)]
    found = problems(tmp_path, registry, "\n".join(lines) + "\n")
    assert len(found) == 1 and found[0].endswith(f"nesting deeper than {MAX_DEPTH} levels"), found


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("3000000d", "duration '3000000d' is longer than the maximum of 366d"),
        ("367d", "duration '367d' is longer than the maximum of 366d"),
        ("9" * 400 + "d", "duration '" + "9" * 37 + "...' is longer than the maximum of 366d"),
        ("9" * 400, "a duration is written with a unit, like 45s, 2m or 1h (got " + "9" * 37 + "...)"),
        ("9" * 5000, "invalid value: exceeds the limit (4300 digits) for integer string conversion"),
        ("0s", "input should be greater than 0"),
    ],
)
def test_durations_are_bounded_where_they_are_parsed(
    tmp_path: Path, registry: PluginRegistry, value: str, message: str
) -> None:
    found = problems(tmp_path, registry, f"defaults:\n  deadline: {value}\n")
    assert len(found) == 1 and found[0].startswith(f"{tmp_path / 'tc.yaml'}:2:"), found
    assert found[0].endswith(f"defaults.deadline: {message}"), found


def test_longest_duration_is_accepted() -> None:
    assert parse_duration("366d") == 366 * 86400


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("targets: [a, b]", 'targets: [a, "b\\0c"]', "jobs[0].source.targets: target 'b\\x00c' contains a control"),
        ("targets: [a, b]", 'targets: [a, "b\\nc"]', "jobs[0].source.targets: target 'b\\nc' contains a control"),
        ("name: nightly", 'name: "night\\0ly"', "jobs[0].name: use letters, digits"),
        ("{env: TEST_TOKEN}", '{file: "/run/x\\0y"}', "secrets.tok.file: a path may not contain control characters"),
    ],
)
def test_nul_and_control_characters_are_refused(
    tmp_path: Path, registry: PluginRegistry, old: str, new: str, message: str
) -> None:
    found = problems(tmp_path, registry, VALID.replace(old, new))
    assert len(found) == 1 and message in found[0], found


def test_many_jobs_from_a_template_keep_their_marks(tmp_path: Path, registry: PluginRegistry) -> None:
    # The template's marks are shared by every job without copying; a problem in a template part is still
    # located in the template, and a job's own keys in the job.
    jobs = "".join(f"  - name: j{i}\n    template: std\n    source: {{targets: [t{i}]}}\n" for i in range(2000))
    text = (
        "templates:\n  std:\n    source: {type: status_file, path: 7}\n    actions: [{type: record, ledger: /l}]\n"
        + "jobs:\n"
        + jobs
        + "  - name: last\n    template: std\n    source: {targets: [x], path: 8}\n"
    )
    found = problems(tmp_path, registry, text)
    f = str(tmp_path / "tc.yaml")
    assert len(found) == 2001
    assert found[0] == f"{f}:3:33: jobs[0].source.path: input should be a valid string"
    assert found[1999] == f"{f}:3:33: jobs[1999].source.path: input should be a valid string"
    assert found[2000] == f"{f}:{6 + 3 * 2000 + 2}:28: jobs[2000].source.path: input should be a valid string"


def test_the_size_cap_is_exact(tmp_path: Path, registry: PluginRegistry) -> None:
    head = "jobs: []\n#"
    at_cap = write(tmp_path, head + "x" * (MAX_FILE_BYTES - len(head) - 1) + "\n", "at.yaml")
    assert at_cap.stat().st_size == MAX_FILE_BYTES
    assert load_config(at_cap, registry).jobs == {}
    over = write(tmp_path, head + "x" * (MAX_FILE_BYTES - len(head)) + "\n", "over.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(over, registry)
    assert [str(d) for d in info.value.diagnostics] == [
        f"{over}:1:1: file is larger than the limit of 1 MiB; is it the right file?"
    ]
