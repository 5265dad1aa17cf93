"""`teckochecker secrets …`: make a master key, encrypt a value, rotate a file's tokens, check every secret.

No command takes a secret value from argv (it would sit in shell history and in /proc/PID/cmdline), and
none prints a value: only names, sources and reasons.
"""

from __future__ import annotations

import argparse
import copy
import getpass
import os
import re
import stat
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from cryptography.fernet import InvalidToken

from teckochecker.atomicfile import open_directory, write_atomically
from teckochecker.boundedread import read_bounded
from teckochecker.cli.exitcodes import EXIT_INVALID, EXIT_OK
from teckochecker.config.loader import MAX_FILE_BYTES, load_text
from teckochecker.config.location import find_config
from teckochecker.config.models import is_fernet_token
from teckochecker.errors import ConfigError, TeckoCheckerError, UnreadableFile
from teckochecker.secrets.masterkey import (
    MASTER_KEY_CREDENTIAL,
    MASTER_KEY_ENV,
    MASTER_KEY_FILE_ENV,
    MasterKeys,
    generate_key,
    load_master_keys,
)
from teckochecker.secrets.resolving import Redactor, SecretResolver, header_value_problem, strip_one_newline

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]

# `encrypt` writes the name as an unquoted YAML key, so it keeps to characters that need no quoting.
SECRET_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
PATH_HELP = "the config file (default: the --config resolution)"


def register_secrets_commands(subparsers: SubParsers) -> None:
    group = subparsers.add_parser(
        "secrets",
        help="make master keys, encrypt values, rotate keys, check every secret",
        description="Secrets in the config are references: {env: NAME}, {file: PATH}, {credential: NAME} "
        "(systemd LoadCredential=) or {encrypted: TOKEN}. Encrypted values are Fernet tokens "
        f"(AES-128-CBC with HMAC-SHA256) decrypted with the master keys from ${MASTER_KEY_ENV}, else the key "
        f"file named by ${MASTER_KEY_FILE_ENV}, else the systemd credential '{MASTER_KEY_CREDENTIAL}'; "
        "several keys, newest first.",
    )
    commands = group.add_subparsers(title="secrets commands", dest="secrets_command", required=True, metavar="COMMAND")

    keygen = commands.add_parser(
        "keygen",
        help="print a new master key",
        description="Print a new random Fernet key on stdout (nothing else goes there); guidance on stderr.",
    )
    keygen.set_defaults(handler=cmd_keygen)

    encrypt = commands.add_parser(
        "encrypt",
        help="encrypt a value read from stdin or a hidden prompt; print the YAML line",
        description="Encrypt a secret value with the newest master key and print the line to paste under "
        "'secrets:'. The value is read from stdin when it is not a terminal (one trailing newline is "
        "dropped), else from a hidden prompt, twice. It is never taken from the command line.",
    )
    encrypt.add_argument("name", type=_secret_name, help="the secret's name under 'secrets:'")
    encrypt.set_defaults(handler=cmd_encrypt)

    rotate = commands.add_parser(
        "rotate",
        help="re-encrypt a file's encrypted values under the newest master key",
        description="Re-encrypt every 'secrets.NAME.encrypted' value of the file under the newest master "
        "key, in place and atomically; comments and formatting are kept. Put the new key first, run this, "
        "deploy, then drop the old key. If any value cannot be decrypted, nothing is written (exit 1).",
    )
    rotate.add_argument("path", nargs="?", type=Path, help=PATH_HELP)
    rotate.set_defaults(handler=cmd_rotate)

    check = commands.add_parser(
        "check",
        help="resolve every secret and print its name and OK or the reason",
        description="Validate the config, then resolve every secret as the daemon would and print "
        "'NAME: OK (source)' or 'NAME: FAILED: reason'. Never prints a value. Exit 1 if any failed.",
    )
    check.add_argument("path", nargs="?", type=Path, help=PATH_HELP)
    check.set_defaults(handler=cmd_check)


def _secret_name(text: str) -> str:
    if not SECRET_NAME.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a usable secret name: use letters, digits, '_', '.' and '-' (max 128)"
        )
    return text


def _config_path(args: argparse.Namespace, environ: Mapping[str, str]) -> Path:
    if args.path is not None:
        return Path(args.path)
    return find_config(args.config, environ, Path.cwd())


def _fail(message: str) -> int:
    print(f"teckochecker: error: {message}", file=sys.stderr)
    return EXIT_INVALID


def cmd_keygen(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    print(generate_key())
    print(
        "# A new master key (Fernet: AES-128-CBC with HMAC-SHA256). Keep it out of the config file and out\n"
        f"# of version control: set {MASTER_KEY_ENV}=KEY, or put it in a mode-0600 file named by\n"
        f"# {MASTER_KEY_FILE_ENV}, or load it as the systemd credential '{MASTER_KEY_CREDENTIAL}'.\n"
        "# To rotate: put it first (NEW,OLD in the variable, or the first line of the file), run\n"
        "# `teckochecker secrets rotate`, deploy, then drop the old key.",
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_encrypt(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    # Before the prompt, so nobody types a secret only to hear there is no key. A SecretError is a
    # TeckoCheckerError: cli.main prints it, and it says how to make a key.
    keys = load_master_keys(environ)
    value = _read_value()
    if value is None:
        return _fail("the two entries differ; nothing was encrypted")
    if not value:
        return _fail("the value is empty; nothing was encrypted")
    problem = header_value_problem(value)
    if problem is not None:
        # The daemon would refuse it at start; say so now, while the person still has the value at hand.
        return _fail(f"{problem}; it cannot be sent as an HTTP header, so nothing was encrypted")
    # Ciphertext: safe to print, it is what goes into the YAML.
    ciphertext = keys.newest().encrypt(value.encode("utf-8")).decode("ascii")
    print(
        f"# add under 'secrets:' in the config file (encrypted with the newest key from {keys.source})", file=sys.stderr
    )
    print(f"  {args.name}: {{encrypted: {ciphertext}}}")
    return EXIT_OK


def _read_value() -> str | None:
    """The value from stdin when piped, else a hidden prompt asked twice; None when the two differ."""
    if not sys.stdin.isatty():
        return strip_one_newline(sys.stdin.read())
    first = getpass.getpass("Value (not shown): ")
    second = getpass.getpass("Again: ")
    return first if first == second else None


def cmd_check(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from teckochecker.config.validate import load_config
    from teckochecker.plugins import load_plugins

    path = _config_path(args, environ)
    config = load_config(path, load_plugins(environ))
    if not config.secrets:
        print(f"{path}: no secrets defined")
        return EXIT_OK
    redactor = Redactor()
    resolver = SecretResolver(config.secrets, environ, redactor)
    results = resolver.check_all()
    for warning in resolver.permission_warnings():
        print(f"WARNING: {warning}")
    for name, problem in results.items():
        if problem is None:
            line = f"{name}: OK ({config.secrets[name].describe()})"
        else:
            line = f"{name}: FAILED: {problem.removeprefix(f'secret {name!r}: ')}"
        # Reasons never hold a value; the redactor is the last line of defence should one ever do.
        print(redactor.redact(line))
    return EXIT_INVALID if any(results.values()) else EXIT_OK


@dataclass(frozen=True)
class _Token:
    """One ``secrets.NAME.encrypted`` scalar: where it sits in the text and how it is quoted."""

    name: str
    value: str
    start: int
    end: int
    quote: str
    line: int
    column: int


def cmd_rotate(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    path = _config_path(args, environ)
    keys = load_master_keys(environ)
    # Write through a symlink to its target, so the link itself stays a link.
    target = Path(os.path.realpath(path))
    text = _read_text(target, path)
    document, diagnostics = load_text(text, str(path))
    if diagnostics:
        raise ConfigError(diagnostics)
    tokens = list(_encrypted_tokens(text))
    rotated, current, problems = _rotate_tokens(tokens, keys, str(path))
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        return _fail(f"nothing rotated; {path} left unchanged")
    if rotated:
        new_text = _apply(text, rotated)
        _check_only_tokens_changed(document.data, new_text, str(path), rotated)
        try:
            _replace_file(target, new_text)
        except OSError as exc:
            raise TeckoCheckerError(f"cannot write {path}: {exc.strerror or exc}; left unchanged") from None
    note = f" ({current} already under the newest key)" if current else ""
    print(f"rotated {len(rotated)} secret(s) in {path}{note}")
    return EXIT_OK


def _read_text(target: Path, shown: Path) -> str:
    try:
        # Bytes, not read_text(): universal newlines would turn CRLF files into LF ones on rewrite.
        return read_bounded(target, MAX_FILE_BYTES).decode("utf-8")
    except UnreadableFile as exc:
        raise TeckoCheckerError(f"{shown} {exc.reason}") from None
    except UnicodeDecodeError:
        raise TeckoCheckerError(f"cannot read {shown}: not UTF-8 text") from None


def _encrypted_tokens(text: str) -> Iterator[_Token]:
    """Every scalar at ``secrets.NAME.encrypted``, once each (an alias points at the same node)."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    seen: set[int] = set()
    for key, ref in _pairs(root, "secrets"):
        for inner_key, node in _pairs_of(ref):
            if inner_key != "encrypted" or not isinstance(node, yaml.ScalarNode):
                continue
            if node.start_mark.index in seen:
                continue
            seen.add(node.start_mark.index)
            quote = node.style if node.style in ("'", '"') else ""
            yield _Token(
                key,
                node.value,
                node.start_mark.index,
                node.end_mark.index,
                quote,
                node.start_mark.line + 1,
                node.start_mark.column + 1,
            )


def _pairs(root: yaml.Node | None, section: str) -> Iterator[tuple[str, yaml.Node]]:
    for key, node in _pairs_of(root):
        if key == section:
            yield from _pairs_of(node)


def _pairs_of(node: yaml.Node | None) -> Iterator[tuple[str, yaml.Node]]:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                yield key_node.value, value_node


def _rotate_tokens(
    tokens: list[_Token],
    keys: MasterKeys,
    file: str,
) -> tuple[dict[_Token, str], int, list[str]]:
    """Each token → its re-encryption under the newest key; how many were current already; the problems."""
    newest, every = keys.newest(), keys.fernet()
    rotated: dict[_Token, str] = {}
    current = 0
    problems: list[str] = []
    for token in tokens:
        where = f"{file}:{token.line}:{token.column}: secrets.{token.name}.encrypted"
        if not is_fernet_token(token.value):
            problems.append(f"{where}: is not a Fernet token (re-create it with `secrets encrypt`)")
            continue
        try:
            newest.decrypt(token.value)
            current += 1  # re-encrypting would only churn the file
            continue
        except InvalidToken:
            pass
        try:
            rotated[token] = every.rotate(token.value).decode("ascii")
        except InvalidToken:
            problems.append(
                f"{where}: cannot decrypt with any master key from {keys.source} "
                "(was it encrypted under a key that has since been dropped?)"
            )
    return rotated, current, problems


def _apply(text: str, rotated: Mapping[_Token, str]) -> str:
    # From the end, so the earlier offsets stay valid.
    for token in sorted(rotated, key=lambda t: t.start, reverse=True):
        text = text[: token.start] + token.quote + rotated[token] + token.quote + text[token.end :]
    return text


def _check_only_tokens_changed(
    old_data: Any,
    new_text: str,
    file: str,
    rotated: Mapping[_Token, str],
) -> None:
    """Refuse to write unless the new text parses to the old data with just the tokens swapped."""
    swaps = {token.value: new for token, new in rotated.items()}
    expected = copy.deepcopy(old_data)
    for ref in expected["secrets"].values():
        if isinstance(ref, dict) and ref.get("encrypted") in swaps:
            ref["encrypted"] = swaps[ref["encrypted"]]
    document, diagnostics = load_text(new_text, file)
    if diagnostics or document.data != expected:
        raise TeckoCheckerError(f"rotating would change more than the encrypted values of {file}; left unchanged")


def _replace_file(path: Path, text: str) -> None:
    """Write ``text`` over ``path`` atomically, with the same mode and owner."""
    info = path.stat()

    def keep_mode_and_owner(fd: int) -> None:
        os.fchmod(fd, stat.S_IMODE(info.st_mode))
        _keep_owner(fd, info, path)

    with open_directory(path.parent) as dir_fd:
        write_atomically(dir_fd, path.name, text, replace=True, mode=0o600, before_commit=keep_mode_and_owner)


def _keep_owner(fd: int, info: os.stat_result, path: Path) -> None:
    # A config readable by the daemon's group must stay so: a new file would get the caller's group.
    if (info.st_uid, info.st_gid) == (os.geteuid(), os.getegid()):
        return
    try:
        os.fchown(fd, info.st_uid, info.st_gid)
    except PermissionError:
        raise TeckoCheckerError(
            f"cannot keep the owner and group of {path}; run as its owner or as root (file left unchanged)"
        ) from None
