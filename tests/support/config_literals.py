"""Every YAML config written in the tests' source, for checks that must hold for all of them (the JSON
Schema accepts whatever the validator accepts).

Configs are string literals and f-strings in tests/*.py. The holes of an f-string or of a str.format
template are filled with a stand-in chosen by the hole's name (a port gets a number, a URL a loopback URL,
an encrypted value a Fernet-shaped token, a path a path), and then with each stand-in for every hole.
Every filling that reads as a config mapping is a candidate; the caller keeps those its validator accepts.
"""

from __future__ import annotations

import ast
import base64
import re
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

URL, NUMBER, PATH = "http://127.0.0.1:9", "0", "/tmp/teckochecker-test"
FERNET = base64.urlsafe_b64encode(b"\x80" + bytes(72)).decode()
# (words in the hole's name, stand-in); the first match wins, PATH otherwise.
BY_NAME = (
    (("port", "count", "limit"), NUMBER),
    (("url", "stack"), URL),
    (("token", "flow", "block", "encrypted"), FERNET),
    (("extra", "options", "jobs", "action"), ""),
    (("interval", "deadline", "lag", "timeout"), "30s"),
    (("trigger",), "all_terminal"),
    (("name", "job"), "job-name"),
)
FIELD = re.compile(r"(?<!\{)\{([A-Za-z_][A-Za-z0-9_.\[\]'\"]*)(?:![rsa])?(?::[^{}]*)?\}(?!\})")
CONFIG_KEYS = {"jobs", "secrets", "defaults", "state", "http", "templates", "include", "log_level"}


@dataclass(frozen=True)
class ConfigLiteral:
    where: str  # FILE:LINE of the literal
    text: str


def config_literals(tests_dir: Path) -> Iterator[ConfigLiteral]:
    for path in sorted(tests_dir.glob("test_*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            for text in _texts(node):
                data = _yaml(text)
                if isinstance(data, dict) and set(data) & CONFIG_KEYS and set(data) <= CONFIG_KEYS:
                    yield ConfigLiteral(f"{path.name}:{node.lineno}", text)


def _texts(node: ast.AST) -> list[str]:
    pieces: list[str | None]  # None: a hole
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and "\n" in node.value:
        if not (FIELD.search(node.value) or "{{" in node.value):
            return [textwrap.dedent(node.value)]
        split = FIELD.split(node.value)  # text, field name, text, field name, ..., text
        pieces = [_unescape(p) if i % 2 == 0 else None for i, p in enumerate(split)]
        names = split[1::2]
        texts = [textwrap.dedent(node.value)]
    elif isinstance(node, ast.JoinedStr):
        pieces = [str(p.value) if isinstance(p, ast.Constant) else None for p in node.values]
        names = [ast.unparse(p.value) for p in node.values if isinstance(p, ast.FormattedValue)]
        texts = []
    else:
        return []
    fillings = [[_stand_in(name) for name in names]] + [[s] * len(names) for s in (URL, NUMBER, PATH, FERNET)]
    for holes in fillings:
        it = iter(holes)
        texts.append(textwrap.dedent("".join(next(it) if p is None else p for p in pieces)))
    return texts


def _stand_in(name: str) -> str:
    lowered = name.lower()
    return next((value for words, value in BY_NAME if any(w in lowered for w in words)), PATH)


def _unescape(text: str) -> str:
    return text.replace("{{", "{").replace("}}", "}")


def _yaml(text: str) -> object:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None
