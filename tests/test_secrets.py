"""Secrets: every source, master keys and rotation, the `secrets` commands, and no value in any output.

The resolver is tested in-process; the commands run as real subprocesses, as an operator would run them.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from daemon import run_cli
from pydantic import ValidationError

from teckochecker.config.models import SecretRef
from teckochecker.errors import SecretError
from teckochecker.secrets.masterkey import load_master_keys
from teckochecker.secrets.resolving import MASK, Redactor, SecretResolver

# Canaries: if one of these shows up in any output or message, a value leaked.
CANARY = "sk-CANARYCANARY-0123456789abcdef"
CANARY_FILE = "CANARY-file-6f1d2c3b4a"
CANARY_CRED = "CANARY-cred-9e8d7c6b5a"
CANARY_ENC = "CANARY-enc-1a2b3c4d5e"
CANARIES = (CANARY, CANARY_FILE, CANARY_CRED, CANARY_ENC)

TOKEN = re.compile(r"gAAAAA[A-Za-z0-9_-]+=*")
KEY_OLD = Fernet.generate_key().decode()
KEY_NEW = Fernet.generate_key().decode()


Refs = dict[str, dict[str, str]]


def resolver(refs: Refs, environ: dict[str, str], redactor: Redactor | None = None) -> SecretResolver:
    parsed = {name: SecretRef.model_validate(ref) for name, ref in refs.items()}
    return SecretResolver(parsed, environ, redactor or Redactor())


def encrypt(value: str, key: str = KEY_OLD) -> str:
    return Fernet(key).encrypt(value.encode()).decode()


def failure(refs: Refs, environ: dict[str, str], name: str = "s") -> str:
    with pytest.raises(SecretError) as info:
        resolver(refs, environ)(name)
    message = str(info.value)
    assert message.startswith(f"secret {name!r}: "), message
    assert not any(canary in message for canary in CANARIES), message
    return message


def assert_no_canary(*outputs: subprocess.CompletedProcess[str]) -> None:
    for out in outputs:
        for canary in CANARIES:
            assert canary not in out.stdout and canary not in out.stderr, (canary, out.stdout, out.stderr)


# --- each source --------------------------------------------------------------------------------------


def test_env_source() -> None:
    assert resolver({"s": {"env": "TOKEN"}}, {"TOKEN": CANARY})("s") == CANARY
    assert failure({"s": {"env": "TOKEN"}}, {}) == ("secret 's': environment variable TOKEN is not set or empty")
    assert "not set or empty" in failure({"s": {"env": "TOKEN"}}, {"TOKEN": ""})


@pytest.mark.parametrize(
    ("content", "value"),
    [
        (CANARY_FILE + "\n", CANARY_FILE),
        (CANARY_FILE + "\r\n", CANARY_FILE),
        (CANARY_FILE, CANARY_FILE),
        # Exactly one newline is stripped; a tab inside is part of the value, and a header may hold it.
        (CANARY_FILE + "\tpart\n", CANARY_FILE + "\tpart"),
    ],
)
def test_file_source_strips_one_trailing_newline(tmp_path: Path, content: str, value: str) -> None:
    path = tmp_path / "secret"
    path.write_bytes(content.encode())
    assert resolver({"s": {"file": str(path)}}, {})("s") == value


def test_file_source_problems(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    assert failure({"s": {"file": str(missing)}}, {}) == (
        f"secret 's': file {missing} not readable: No such file or directory"
    )
    assert failure({"s": {"file": str(tmp_path)}}, {}) == (
        f"secret 's': file {tmp_path} is a directory, not a regular file"
    )
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert failure({"s": {"file": str(empty)}}, {}) == f"secret 's': file {empty} is empty"


def finishes(call: Callable[[], str], seconds: float = 10.0) -> str:
    """``call()``'s SecretError message, failing (not hanging) if it blocks: a FIFO read used to wait forever."""
    outcome: list[str] = []

    def run() -> None:
        with pytest.raises(SecretError) as info:
            call()
        outcome.append(str(info.value))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still blocked after {seconds}s"
    return outcome[0]


def test_special_files_are_refused_at_once_naming_the_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    zero = tmp_path / "zero"
    zero.symlink_to("/dev/zero")
    assert finishes(lambda: resolver({"s": {"file": str(fifo)}}, {})("s")) == (
        f"secret 's': file {fifo} is a FIFO (named pipe), not a regular file"
    )
    assert finishes(lambda: resolver({"s": {"file": str(zero)}}, {})("s")) == (
        f"secret 's': file {zero} is a character device, not a regular file"
    )
    os.mkfifo(tmp_path / "cred")
    assert finishes(lambda: resolver({"s": {"credential": "cred"}}, {"CREDENTIALS_DIRECTORY": str(tmp_path)})("s")) == (
        f"secret 's': credential 'cred' ({tmp_path / 'cred'}) is a FIFO (named pipe), not a regular file"
    )
    ref = {"s": {"encrypted": encrypt(CANARY_ENC)}}
    assert finishes(lambda: resolver(ref, {"TECKOCHECKER_MASTER_KEY_FILE": str(fifo)})("s")) == (
        f"secret 's': key file {fifo} ($TECKOCHECKER_MASTER_KEY_FILE) is a FIFO (named pipe), not a regular file"
    )
    os.mkfifo(tmp_path / "teckochecker_master_key")
    assert "is a FIFO (named pipe), not a regular file" in finishes(
        lambda: resolver(ref, {"CREDENTIALS_DIRECTORY": str(tmp_path)})("s")
    )


def test_oversized_secret_and_key_files_name_the_file_and_the_cap(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_text(CANARY_FILE * 10_000)
    assert failure({"s": {"file": str(big)}}, {}) == (
        f"secret 's': file {big} is larger than the limit of 64 KiB; is it the right file?"
    )
    ref = {"s": {"encrypted": encrypt(CANARY_ENC)}}
    assert failure(ref, {"TECKOCHECKER_MASTER_KEY_FILE": str(big)}) == (
        f"secret 's': key file {big} ($TECKOCHECKER_MASTER_KEY_FILE) is larger than the limit of 64 KiB; "
        "is it the right file?"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_file_without_permission(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(CANARY_FILE)
    path.chmod(0)
    assert failure({"s": {"file": str(path)}}, {}) == (f"secret 's': file {path} not readable: Permission denied")


def test_file_is_read_at_each_call(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("first-value\n")
    resolve = resolver({"s": {"file": str(path)}}, {})
    assert resolve("s") == "first-value"
    path.write_text("second-value\n")
    assert resolve("s") == "second-value"


def test_credential_source(tmp_path: Path) -> None:
    (tmp_path / "keboola_token").write_text(CANARY_CRED + "\n")
    environ = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert resolver({"s": {"credential": "keboola_token"}}, environ)("s") == CANARY_CRED


def test_credential_problems(tmp_path: Path) -> None:
    ref = {"s": {"credential": "keboola_token"}}
    assert failure(ref, {}) == (
        "secret 's': credential 'keboola_token': CREDENTIALS_DIRECTORY is not set "
        "(is it running under systemd with LoadCredential=?)"
    )
    message = failure(ref, {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert message.startswith(
        f"secret 's': credential 'keboola_token' not found in $CREDENTIALS_DIRECTORY ({tmp_path})"
    )
    assert "LoadCredential=keboola_token:" in message


def test_encrypted_source() -> None:
    environ = {"TECKOCHECKER_MASTER_KEY": KEY_OLD}
    assert resolver({"s": {"encrypted": encrypt(CANARY_ENC)}}, environ)("s") == CANARY_ENC


def test_wrong_master_key() -> None:
    message = failure({"s": {"encrypted": encrypt(CANARY_ENC)}}, {"TECKOCHECKER_MASTER_KEY": KEY_NEW})
    assert message == (
        "secret 's': cannot decrypt: the master key from $TECKOCHECKER_MASTER_KEY does not match (was it rotated away?)"
    )
    assert KEY_NEW not in message


def test_no_master_key() -> None:
    message = failure({"s": {"encrypted": encrypt(CANARY_ENC)}}, {})
    assert message.startswith("secret 's': no master key: make one with `teckochecker secrets keygen`")
    assert "TECKOCHECKER_MASTER_KEY_FILE" in message


def test_two_keys_newest_first_old_tokens_still_decrypt() -> None:
    environ = {"TECKOCHECKER_MASTER_KEY": f"{KEY_NEW}, {KEY_OLD}"}
    resolve = resolver(
        {"old": {"encrypted": encrypt("old-value", KEY_OLD)}, "new": {"encrypted": encrypt("new-value", KEY_NEW)}},
        environ,
    )
    assert (resolve("old"), resolve("new")) == ("old-value", "new-value")
    # The newest key is the one that encrypts.
    token = load_master_keys(environ).fernet().encrypt(b"x")
    assert Fernet(KEY_NEW).decrypt(token) == b"x"


def test_master_key_file_and_credential(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text(f"# rotated 2024-06\n{KEY_NEW}\n{KEY_OLD}  # previous, drop after deploy\n")
    ref = {"s": {"encrypted": encrypt(CANARY_ENC, KEY_OLD)}}
    assert resolver(ref, {"TECKOCHECKER_MASTER_KEY_FILE": str(key_file)})("s") == CANARY_ENC
    (tmp_path / "teckochecker_master_key").write_text(KEY_OLD + "\n")
    assert resolver(ref, {"CREDENTIALS_DIRECTORY": str(tmp_path)})("s") == CANARY_ENC
    # The variable wins over the file, which wins over the credential.
    assert "does not match" in failure(
        ref, {"TECKOCHECKER_MASTER_KEY": KEY_NEW, "TECKOCHECKER_MASTER_KEY_FILE": str(key_file)}
    )
    assert load_master_keys(
        {"TECKOCHECKER_MASTER_KEY_FILE": str(key_file), "CREDENTIALS_DIRECTORY": str(tmp_path)}
    ).keys == (KEY_NEW, KEY_OLD)


def test_bad_master_keys_are_explained_not_shown(tmp_path: Path) -> None:
    ref = {"s": {"encrypted": encrypt(CANARY_ENC)}}
    not_a_key = "CANARY-enc-not-a-key-at-all"
    message = failure(ref, {"TECKOCHECKER_MASTER_KEY": f"{KEY_OLD},{not_a_key}"})
    assert message == (
        "secret 's': $TECKOCHECKER_MASTER_KEY: key 2 of 2 is not a Fernet key "
        "(44 url-safe base64 characters, as printed by `teckochecker secrets keygen`)"
    )
    assert not_a_key not in message and KEY_OLD not in message
    missing = tmp_path / "nokeys"
    assert failure(ref, {"TECKOCHECKER_MASTER_KEY_FILE": str(missing)}) == (
        f"secret 's': key file {missing} ($TECKOCHECKER_MASTER_KEY_FILE) not readable: No such file or directory"
    )
    comments_only = tmp_path / "comments"
    comments_only.write_text("# nothing yet\n")
    assert "holds no key" in failure(ref, {"TECKOCHECKER_MASTER_KEY_FILE": str(comments_only)})


def test_resolved_values_and_master_keys_are_registered_for_redaction(tmp_path: Path) -> None:
    redactor = Redactor()
    (tmp_path / "c").write_text(CANARY_CRED)
    environ = {"TOKEN": CANARY, "TECKOCHECKER_MASTER_KEY": KEY_OLD, "CREDENTIALS_DIRECTORY": str(tmp_path)}
    refs = {"e": {"env": "TOKEN"}, "c": {"credential": "c"}, "x": {"encrypted": encrypt(CANARY_ENC)}}
    resolve = resolver(refs, environ, redactor)
    assert resolve.check_all() == {"c": None, "e": None, "x": None}
    text = f"sent {CANARY} and {CANARY_CRED} and {CANARY_ENC} with {KEY_OLD}"
    assert redactor.redact(text) == f"sent {MASK} and {MASK} and {MASK} with {MASK}"


def test_check_all_gives_each_reason() -> None:
    problems = resolver({"a": {"env": "SET"}, "b": {"env": "UNSET"}}, {"SET": CANARY}).check_all()
    assert problems == {"a": None, "b": "secret 'b': environment variable UNSET is not set or empty"}


# --- the reference's shape ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ({}, "give exactly one of: env, file, credential, encrypted"),
        ({"env": "A", "file": "/x"}, "give exactly one of: env, file, credential, encrypted"),
        ({"credential": "dir/name"}, "a plain file name"),
        ({"credential": ".."}, "a plain file name"),
        ({"file": "relative/path"}, "use an absolute path"),
        ({"env": CANARY}, "an environment variable's name"),
        ({"encrypted": "gAAAAAB-truncated"}, "is not a Fernet token"),
        ({"value": CANARY}, "Extra inputs are not permitted"),
        (CANARY, "a secret is a reference, not a value"),
    ],
)
def test_secret_ref_shape(ref: object, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        SecretRef.model_validate(ref)
    assert message in str(info.value)
    assert not any(canary in str(e["msg"]) for e in info.value.errors() for canary in CANARIES)


def test_describe_names_the_source_never_the_token() -> None:
    token = encrypt(CANARY_ENC)
    assert SecretRef(env="OPENAI_API_KEY").describe() == "env OPENAI_API_KEY"
    assert SecretRef(file="/etc/x").describe() == "file /etc/x"
    assert SecretRef(credential="openai_api_key").describe() == "credential openai_api_key"
    assert SecretRef(encrypted=token).describe() == "encrypted value"


# --- the commands -------------------------------------------------------------------------------------


@pytest.fixture
def env(plugin_env: dict[str, str]) -> dict[str, str]:
    return {**plugin_env, "TECKOCHECKER_MASTER_KEY": KEY_OLD}


def write_config(tmp_path: Path, secrets: str, name: str = "tc.yaml") -> Path:
    path = tmp_path / name
    path.write_text("# test config\nsecrets:\n" + secrets + "jobs: []\n")
    return path


def test_secrets_help(plugin_env: dict[str, str], tmp_path: Path) -> None:
    for command in ([], ["keygen"], ["encrypt"], ["rotate"], ["check"]):
        out = run_cli("secrets", *command, "--help", env=plugin_env, cwd=tmp_path)
        assert out.returncode == 0 and "usage: teckochecker secrets" in out.stdout, out.stderr
    out = run_cli("secrets", "--help", env=plugin_env, cwd=tmp_path)
    assert "AES-128-CBC with HMAC-SHA256" in " ".join(out.stdout.split())


def test_keygen_prints_one_valid_key(plugin_env: dict[str, str], tmp_path: Path) -> None:
    out = run_cli("secrets", "keygen", env=plugin_env, cwd=tmp_path)
    assert out.returncode == 0
    key = out.stdout.strip()
    assert out.stdout == key + "\n"
    Fernet(key)  # raises if not a key
    assert key not in out.stderr and "secrets rotate" in out.stderr
    again = run_cli("secrets", "keygen", env=plugin_env, cwd=tmp_path).stdout.strip()
    assert again != key


def test_encrypt_reads_stdin_and_output_is_valid_config(env: dict[str, str], tmp_path: Path) -> None:
    out = run_cli("secrets", "encrypt", "keboola", env=env, cwd=tmp_path, stdin=CANARY_ENC + "\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("  keboola: {encrypted: gAAAAA") and out.stdout.endswith("}\n")
    assert out.stdout.count("\n") == 1
    assert "under 'secrets:'" in out.stderr
    config = write_config(tmp_path, out.stdout)
    validated = run_cli("validate-config", str(config), env=env, cwd=tmp_path)
    assert validated.returncode == 0, validated.stderr
    checked = run_cli("--config", str(config), "secrets", "check", env=env, cwd=tmp_path)
    assert checked.returncode == 0 and checked.stdout == "keboola: OK (encrypted value)\n"
    # The trailing newline from stdin is not part of the value.
    token = out.stdout.split("encrypted: ")[1].rstrip("}\n")
    assert Fernet(KEY_OLD).decrypt(token).decode() == CANARY_ENC
    assert_no_canary(out, validated, checked)


def test_encrypt_refusals(plugin_env: dict[str, str], env: dict[str, str], tmp_path: Path) -> None:
    empty = run_cli("secrets", "encrypt", "x", env=env, cwd=tmp_path, stdin="\n")
    assert empty.returncode == 1 and "the value is empty" in empty.stderr and empty.stdout == ""
    no_key = run_cli("secrets", "encrypt", "x", env=plugin_env, cwd=tmp_path, stdin=CANARY_ENC)
    assert no_key.returncode == 2 and no_key.stdout == ""
    assert "teckochecker: error: no master key: make one with `teckochecker secrets keygen`" in no_key.stderr
    # A value is never taken from the command line: there is no place for it.
    argv = run_cli("secrets", "encrypt", "x", CANARY_ENC, env=env, cwd=tmp_path, stdin="")
    assert argv.returncode == 2 and "unrecognized arguments" in argv.stderr
    two_newlines = run_cli("secrets", "encrypt", "x", env=env, cwd=tmp_path, stdin=CANARY_ENC + "\n\n")
    assert two_newlines.returncode == 1 and two_newlines.stdout == ""
    assert (
        f"the value contains a line break (character {len(CANARY_ENC) + 1}); it cannot be sent as an HTTP header"
        in two_newlines.stderr
    )
    assert_no_canary(two_newlines)
    bad_name = run_cli("secrets", "encrypt", "a: b", env=env, cwd=tmp_path, stdin=CANARY_ENC)
    assert bad_name.returncode == 2 and "not a usable secret name" in bad_name.stderr
    assert_no_canary(empty, no_key, bad_name)


def test_check_prints_names_and_reasons(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "cred").mkdir()
    (tmp_path / "cred" / "openai_api_key").write_text(CANARY_CRED + "\n")
    (tmp_path / "token").write_text(CANARY_FILE + "\n")
    for private in (tmp_path / "cred" / "openai_api_key", tmp_path / "token"):
        private.chmod(0o600)  # no permission warning in this listing
    config = write_config(
        tmp_path,
        (
            "  a_env: {env: TC_CANARY}\n"
            f"  b_file: {{file: {tmp_path / 'token'}}}\n"
            "  c_cred: {credential: openai_api_key}\n"
            f"  d_enc: {{encrypted: {encrypt(CANARY_ENC)}}}\n"
        ),
    )
    env = {**env, "TC_CANARY": CANARY, "CREDENTIALS_DIRECTORY": str(tmp_path / "cred")}
    out = run_cli("--config", str(config), "secrets", "check", env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "a_env: OK (env TC_CANARY)",
        f"b_file: OK (file {tmp_path / 'token'})",
        "c_cred: OK (credential openai_api_key)",
        "d_enc: OK (encrypted value)",
    ]
    broken = {**env, "TECKOCHECKER_MASTER_KEY": KEY_NEW}
    del broken["TC_CANARY"], broken["CREDENTIALS_DIRECTORY"]
    failed = run_cli("secrets", "check", str(config), env=broken, cwd=tmp_path)
    assert failed.returncode == 1
    assert failed.stdout.splitlines() == [
        "a_env: FAILED: environment variable TC_CANARY is not set or empty",
        f"b_file: OK (file {tmp_path / 'token'})",
        "c_cred: FAILED: credential 'openai_api_key': CREDENTIALS_DIRECTORY is not set "
        "(is it running under systemd with LoadCredential=?)",
        "d_enc: FAILED: cannot decrypt: the master key from $TECKOCHECKER_MASTER_KEY does not match "
        "(was it rotated away?)",
    ]
    assert_no_canary(out, failed)


def test_plain_text_secret_is_a_located_error(env: dict[str, str], tmp_path: Path) -> None:
    config = write_config(tmp_path, f"  openai: {CANARY}\n")
    for args in (["validate-config", str(config)], ["secrets", "check", str(config)]):
        out = run_cli(*args, env=env, cwd=tmp_path)
        assert out.returncode == 1
        first = out.stderr.splitlines()[0]
        assert first.startswith(f"{config}:3:3: secrets.openai: a secret is a reference, not a value"), first
        for alternative in ("{env:", "{file:", "{credential:", "{encrypted:", "teckochecker secrets encrypt"):
            assert alternative in first
        assert_no_canary(out)


ROTATE_TEXT = """\
# Production config.   Odd spacing and comments must survive.
secrets:
  # the Keboola token, flow style
  keboola: {{encrypted: {flow}}}   # keep this comment
  openai:
    encrypted: {block}
  quoted:
    encrypted: "{double}"
  single: {{ encrypted: '{single}' }}
  plain: {{env: OPENAI_API_KEY}}
jobs: []   # none yet
"""


@pytest.fixture
def rotatable(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "tc.yaml"
    parts = ("flow", "block", "double", "single")
    tokens = {part: encrypt(f"{CANARY_ENC}-{part}", KEY_OLD) for part in parts}
    path.write_text(ROTATE_TEXT.format(**tokens))
    path.chmod(0o640)
    yield path


def decrypt_all(path: Path, key: str) -> dict[str, str]:
    from teckochecker.config.loader import load_file

    document, _ = load_file(path)
    return {
        name: Fernet(key).decrypt(ref["encrypted"]).decode()
        for name, ref in document.data["secrets"].items()
        if "encrypted" in ref
    }


@pytest.fixture
def rotating(env: dict[str, str]) -> dict[str, str]:
    """The new key put first, the old one still there: the state in which `secrets rotate` is run."""
    return {**env, "TECKOCHECKER_MASTER_KEY": f"{KEY_NEW},{KEY_OLD}"}


def test_rotate_re_encrypts_under_the_newest_key(
    rotating: dict[str, str],
    rotatable: Path,
    tmp_path: Path,
) -> None:
    before = rotatable.read_text()
    out = run_cli("--config", str(rotatable), "secrets", "rotate", env=rotating, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"rotated 4 secret(s) in {rotatable}\n"
    after = rotatable.read_text()
    # Only the newest key is needed now.
    assert decrypt_all(rotatable, KEY_NEW) == {
        "keboola": f"{CANARY_ENC}-flow",
        "openai": f"{CANARY_ENC}-block",
        "quoted": f"{CANARY_ENC}-double",
        "single": f"{CANARY_ENC}-single",
    }
    # Everything but the tokens is byte-for-byte the same: comments, spacing, quotes.
    assert TOKEN.sub("TOKEN", after) == TOKEN.sub("TOKEN", before)
    assert set(TOKEN.findall(after)).isdisjoint(TOKEN.findall(before))
    assert "# keep this comment" in after and '"gAAAA' in after and "'gAAAA" in after
    assert stat.S_IMODE(rotatable.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left
    # A second run has nothing to do and leaves the file alone.
    again = run_cli("secrets", "rotate", str(rotatable), env=rotating, cwd=tmp_path)
    assert again.stdout == f"rotated 0 secret(s) in {rotatable} (4 already under the newest key)\n"
    assert rotatable.read_text() == after
    assert_no_canary(out, again)


def test_rotate_with_an_undecryptable_token_changes_nothing(
    rotating: dict[str, str],
    rotatable: Path,
    tmp_path: Path,
) -> None:
    stranger = encrypt(CANARY_ENC, Fernet.generate_key().decode())
    text = rotatable.read_text().replace("  plain: {env: OPENAI_API_KEY}\n", f"  stray: {{encrypted: {stranger}}}\n")
    rotatable.write_text(text)
    out = run_cli("secrets", "rotate", str(rotatable), env=rotating, cwd=tmp_path)
    assert out.returncode == 1
    assert f"{rotatable}:10:22: secrets.stray.encrypted: cannot decrypt with any master key" in out.stderr
    assert out.stderr.rstrip().endswith(f"nothing rotated; {rotatable} left unchanged")
    assert rotatable.read_text() == text
    assert_no_canary(out)


def test_rotate_keeps_crlf_line_endings_and_symlinks(
    rotating: dict[str, str],
    rotatable: Path,
    tmp_path: Path,
) -> None:
    crlf = rotatable.read_text().replace("\n", "\r\n").encode()
    rotatable.write_bytes(crlf)
    link = tmp_path / "link.yaml"
    link.symlink_to(rotatable)
    out = run_cli("secrets", "rotate", str(link), env=rotating, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert link.is_symlink()
    data = rotatable.read_bytes()
    assert data.count(b"\r\n") == crlf.count(b"\r\n") and data.count(b"\n") == crlf.count(b"\n")
    assert len(decrypt_all(rotatable, KEY_NEW)) == 4


def test_rotate_without_a_master_key(plugin_env: dict[str, str], rotatable: Path, tmp_path: Path) -> None:
    before = rotatable.read_text()
    out = run_cli("secrets", "rotate", str(rotatable), env=plugin_env, cwd=tmp_path)
    assert out.returncode == 2 and "no master key" in out.stderr
    assert rotatable.read_text() == before


# --- values that cannot be sent, and files others can read ---------------------------------------------

HEADER_REFUSALS = [
    # (how the value is stored, its bytes, the reason named): positions count from 1, after the one newline
    # a file may end in was removed.
    ("file", (CANARY_FILE + "\n\n").encode(), f"contains a line break (character {len(CANARY_FILE) + 1})"),
    ("file", (CANARY_FILE + "\r\n\r\n").encode(), f"contains a line break (character {len(CANARY_FILE) + 1})"),
    ("file", (CANARY_FILE + " \n").encode(), "starts or ends with a space or tab"),
    (
        "file",
        (CANARY_FILE + "\x00x").encode(),
        f"contains a control character (U+0000, character {len(CANARY_FILE) + 1})",
    ),
    ("credential", ("é" + CANARY_CRED).encode(), "contains a non-ASCII character (character 1)"),
    ("credential", (CANARY_CRED + "\rX\n").encode(), f"contains a line break (character {len(CANARY_CRED) + 1})"),
    ("env", (CANARY + "\n").encode(), f"contains a line break (character {len(CANARY) + 1})"),
    ("env", ("\t" + CANARY).encode(), "starts or ends with a space or tab"),
    (
        "encrypted",
        (CANARY_ENC + "\x1b[0m").encode(),
        f"contains a control character (U+001B, character {len(CANARY_ENC) + 1})",
    ),
    (
        "encrypted",
        (CANARY_ENC + "\u2028").encode(),
        f"contains a non-ASCII character (character {len(CANARY_ENC) + 1})",
    ),
]


def stored_secret(tmp_path: Path, kind: str, raw: bytes) -> tuple[dict[str, str], dict[str, str], str]:
    """The secret stored the given way: its reference, the environment it needs, and its description."""
    if kind == "file":
        path = tmp_path / "secret"
        path.write_bytes(raw)
        path.chmod(0o600)
        return {"file": str(path)}, {}, f"file {path}"
    if kind == "credential":
        (tmp_path / "creds").mkdir()
        (tmp_path / "creds" / "token").write_bytes(raw)
        (tmp_path / "creds" / "token").chmod(0o400)
        return {"credential": "token"}, {"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")}, "credential token"
    if kind == "env":
        return {"env": "TC_SECRET"}, {"TC_SECRET": raw.decode()}, "env TC_SECRET"
    return {"encrypted": Fernet(KEY_OLD).encrypt(raw).decode()}, {"TECKOCHECKER_MASTER_KEY": KEY_OLD}, "encrypted value"


@pytest.mark.parametrize(("kind", "raw", "reason"), HEADER_REFUSALS)
def test_a_value_that_cannot_be_an_http_header_is_refused_naming_the_secret(
    tmp_path: Path, plugin_env: dict[str, str], kind: str, raw: bytes, reason: str
) -> None:
    ref, environ, where = stored_secret(tmp_path, kind, raw)
    redactor = Redactor()
    with pytest.raises(SecretError) as info:
        resolver({"keboola": ref}, environ, redactor)("keboola")
    message = str(info.value)
    assert message.startswith(f"secret 'keboola': {where}: the value {reason}; it cannot be sent as an HTTP header")
    assert not any(canary in message for canary in CANARIES), message
    # Refused, yet known to the redactor: whatever quotes it later (httpx, a log) cannot show it.
    quoted = redactor.redact(f"Illegal header value {raw!r}; in JSON {json.dumps(raw.decode())}")
    assert not any(canary in quoted for canary in CANARIES), quoted

    # `secrets check` refuses it the same way, and says nothing of the value.
    config = write_config(tmp_path, f"  keboola: {json_flow(ref)}\n")
    out = run_cli("--config", str(config), "secrets", "check", env={**plugin_env, **environ}, cwd=tmp_path)
    assert out.returncode == 1
    assert out.stdout == f"keboola: FAILED: {where}: the value {reason}; it cannot be sent as an HTTP header" + (
        " (one trailing newline is removed from a file; more is part of the value)\n" if kind != "env" else "\n"
    )
    assert_no_canary(out)


def json_flow(ref: dict[str, str]) -> str:
    return "{" + ", ".join(f"{key}: {json.dumps(value)}" for key, value in ref.items()) + "}"


def test_redactor_masks_every_spelling_of_a_value() -> None:
    redactor = Redactor()
    value = "kbc-CANARY\té-42"
    redactor.register(value)
    spellings = [
        value,
        json.dumps(value)[1:-1],  # JSON, as stored in the event log's data
        json.dumps(value, ensure_ascii=False)[1:-1],
        repr(value.encode())[2:-1],  # httpx quoting a refused header
        repr(value)[1:-1],
        "kbc-CANARY%09%C3%A9-42",  # in a URL
    ]
    for spelling in spellings:
        assert redactor.redact(f"<{spelling}>") == f"<{MASK}>", spelling


def test_secrets_readable_by_others_are_warned_about_by_name(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "cred").mkdir()
    shared_cred = tmp_path / "cred" / "openai_api_key"
    shared_cred.write_text(CANARY_CRED)
    shared_cred.chmod(0o640)
    shared_file = tmp_path / "token"
    shared_file.write_text(CANARY_FILE)
    shared_file.chmod(0o604)
    private = tmp_path / "private"
    private.write_text(CANARY_FILE)
    private.chmod(0o600)
    key_file = tmp_path / "master.key"
    key_file.write_text(KEY_OLD + "\n")
    key_file.chmod(0o644)
    config = write_config(
        tmp_path,
        (
            f"  a_file: {{file: {shared_file}}}\n"
            f"  b_private: {{file: {private}}}\n"
            "  c_cred: {credential: openai_api_key}\n"
            f"  d_enc: {{encrypted: {encrypt(CANARY_ENC)}}}\n"
        ),
    )
    environ = {k: v for k, v in env.items() if k != "TECKOCHECKER_MASTER_KEY"}
    environ |= {"CREDENTIALS_DIRECTORY": str(tmp_path / "cred"), "TECKOCHECKER_MASTER_KEY_FILE": str(key_file)}
    out = run_cli("--config", str(config), "secrets", "check", env=environ, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    warnings = [line for line in out.stdout.splitlines() if line.startswith("WARNING")]
    assert warnings == [
        f"WARNING: secret 'a_file': file {shared_file} is readable or writable by group or others (mode 0604); "
        f"restrict it with `chmod 600 {shared_file}` (or 400)",
        f"WARNING: secret 'c_cred': credential 'openai_api_key' ({shared_cred}) is readable or writable by group "
        f"or others (mode 0640); restrict it with `chmod 600 {shared_cred}` (or 400)",
        f"WARNING: master key file {key_file} is readable or writable by group or others (mode 0644); "
        f"restrict it with `chmod 600 {key_file}` (or 400)",
    ]
    assert KEY_OLD not in out.stdout + out.stderr
    assert_no_canary(out)
