"""The upload token: from a file only, and never in a log line, a message or a traceback.

The end-to-end tests run the real ``envagent sync`` against a server that answers 401 and echoes
the Authorization header back, against a closed port, and with unusable URLs, then search
everything the process printed for the token.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from httpfaults import FaultServer, Handler, Received

from agent.core.credentials import (
    CREDENTIAL_NAME,
    CredentialError,
    Secret,
    authorization,
    check_environment,
    load_token,
    read_token,
    redact,
    token_path,
)
from agent.core.errors import ConfigError
from agent.core.reading import Reading
from agent.store.outbox import Outbox

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "tok-SECRET-4b7e0a91c2"


def write(path: Path, content: bytes | str, mode: int = 0o600) -> Path:
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    path.chmod(mode)
    return path


# --- reading the file --------------------------------------------------------------------------


@pytest.mark.parametrize("content", [TOKEN, TOKEN + "\n", TOKEN + "\r\n"])
def test_the_token_is_the_files_one_line(tmp_path: Path, content: str) -> None:
    assert read_token(write(tmp_path / "t", content)).reveal() == TOKEN


@pytest.mark.parametrize(("content", "problem"), [
    ("", "is empty"),
    ("\n", "is empty"),
    (f"{TOKEN} trailing words", "has a space"),
    (f"{TOKEN}\nsecond line", "line break"),
    (f"{TOKEN}\x00", "control"),
    ("tök-" + TOKEN, "non-ASCII"),
    ("x" * 5000, "larger than 4096 bytes"),
])
def test_a_bad_token_file_is_described_without_its_content(tmp_path: Path, content: str,
                                                           problem: str) -> None:
    path = write(tmp_path / "upload-token", content)
    with pytest.raises(CredentialError) as caught:
        read_token(path)
    message = str(caught.value)
    assert problem in message and str(path) in message
    assert TOKEN not in message and "second" not in message and "xxxxxxxx" not in message


def in_a_process(code: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """``code`` run by a fresh interpreter, killed (TimeoutExpired) if it hangs."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_a_fifo_as_the_token_file_is_refused_without_hanging(tmp_path: Path) -> None:
    # a blocking open of a FIFO waits for a writer: the worker would hang at its first batch
    fifo = tmp_path / "upload-token"
    os.mkfifo(fifo, 0o600)
    code = ("import sys\nfrom pathlib import Path\n"
            "from agent.core.credentials import CredentialError, read_token\n"
            f"try:\n    read_token(Path({str(fifo)!r}))\n"
            "except CredentialError as exc:\n    print(exc)\n")
    result = in_a_process(code, timeout=10.0)
    assert "is not a regular file" in result.stdout, result.stderr
    assert "plain file" in result.stdout


def test_a_device_as_the_token_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "upload-token").symlink_to("/dev/zero")
    with pytest.raises(CredentialError, match="is not a regular file"):
        read_token(tmp_path / "upload-token")


def test_a_missing_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(CredentialError, match="cannot read the upload token file .*No such file"):
        read_token(tmp_path / "nope")
    assert issubclass(CredentialError, PermissionError)


def test_a_token_file_others_can_read_is_warned_about(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    read_token(write(tmp_path / "t", TOKEN, mode=0o644))
    assert "can be read by other users (mode 0644); chmod 600 it" in caplog.text
    assert TOKEN not in caplog.text


@pytest.mark.parametrize("value", [
    TOKEN, "dGhpcyBpcyBhIHRva2Vu+/c2VjcmV0MTIzNDU2==", "abc/def/ghijklmnopqrstuvwxyz0123456789",
    "/Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA==",
])
def test_a_token_file_that_looks_like_the_token_is_refused_without_echoing_it(
        value: str, caplog: pytest.LogCaptureFixture) -> None:
    for read in (lambda: read_token(Path(value)), lambda: load_token(Path(value), {})):
        with pytest.raises(CredentialError) as caught:
            read()
        message = str(caught.value)
        assert "uplink.token_file" in message and "looks like" in message, message
        assert not any(value[i:i + 4] in message for i in range(len(value) - 3)), message
    assert value[:4] not in caplog.text


def test_a_missing_token_file_that_looks_like_a_path_is_named(tmp_path: Path) -> None:
    for path in (tmp_path / "upload-token", Path("/etc/envagent/upload-token.missing")):
        with pytest.raises(CredentialError, match=f"file {path}: No such file"):
            read_token(path)


def test_each_upstream_has_its_own_systemd_credential(tmp_path: Path) -> None:
    """The single [uplink] keeps LoadCredential=upload-token; another upstream reads
    upload-token-<name>, so the network's token never goes to the partner's server."""
    credentials = tmp_path / "creds"
    credentials.mkdir()
    write(credentials / "upload-token", TOKEN)
    write(credentials / "upload-token-partner", "partner-" + TOKEN)
    systemd = {"CREDENTIALS_DIRECTORY": str(credentials)}
    assert token_path(None, systemd, "partner") == credentials / "upload-token-partner"
    default, partner = load_token(None, systemd), load_token(None, systemd, "partner")
    assert default is not None and default.reveal() == TOKEN
    assert partner is not None and partner.reveal() == "partner-" + TOKEN
    with pytest.raises(CredentialError):  # no credential of its own: never another's
        load_token(None, systemd, "bureau")


def test_where_the_token_comes_from(tmp_path: Path) -> None:
    explicit = tmp_path / "mine"
    systemd = {"CREDENTIALS_DIRECTORY": "/run/credentials/envagent.service"}
    assert token_path(explicit, systemd) == explicit
    assert token_path(None, systemd) == Path(f"/run/credentials/envagent.service/{CREDENTIAL_NAME}")
    assert token_path(None, {}) is None
    assert load_token(None, {}) is None  # no token configured: send without one
    credentials = tmp_path / "creds"
    credentials.mkdir()
    write(credentials / "upload-token", TOKEN)
    token = load_token(None, {"CREDENTIALS_DIRECTORY": str(credentials)})
    assert token is not None and token.reveal() == TOKEN


# --- keeping it secret -------------------------------------------------------------------------


def test_a_secret_never_shows_itself(caplog: pytest.LogCaptureFixture) -> None:
    secret = Secret(TOKEN)
    logging.getLogger("test").warning("token %s %r %s", secret, secret, f"{secret}")
    assert TOKEN not in caplog.text and "<redacted>" in caplog.text
    assert TOKEN not in str([secret]) and TOKEN not in repr({"t": secret})


def test_authorization_header_forms() -> None:
    assert authorization("token", Secret("abc")) == "Token abc"
    assert authorization("bearer", Secret("abc")) == "Bearer abc"
    assert authorization("basic", Secret("me:pw")) == "Basic " + base64.b64encode(b"me:pw").decode()


def test_redact_removes_the_token_and_its_basic_form() -> None:
    secret = Secret("me:pw-123")
    echoed = f"bad header Basic {base64.b64encode(b'me:pw-123').decode()} or me:pw-123"
    assert redact(echoed, secret) == "bad header Basic <redacted> or <redacted>"
    assert redact("nothing here", None) == "nothing here"


@pytest.mark.parametrize("name", ["ENVAGENT_TOKEN", "INFLUX_TOKEN", "INFLUXDB_TOKEN"])
def test_a_token_in_the_environment_is_refused_by_name(name: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_environment({name: TOKEN, "PATH": "/usr/bin"})
    (line,) = caught.value.problems
    assert line.startswith(f"{name} is set in the environment") and "unset it" in line
    assert TOKEN not in line
    check_environment({"PATH": "/usr/bin", name: ""})  # empty is not a token


# --- end to end: what `envagent sync` prints in failure scenarios --------------------------------


def echo_401(handler: Handler, request: Received) -> None:
    """A careless server that repeats the credentials it refused."""
    sent = request.headers.get("authorization", "")
    handler.answer(401, f"refused {sent}".encode())


def envagent(*args: str, cwd: Path, env: dict[str, str] | None = None,
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], cwd=cwd, capture_output=True, text=True,
        timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


def station(tmp_path: Path, url: str, token: str = TOKEN, extra: str = "") -> Path:
    """A config, a token file and an outbox with a few readings in the data directory."""
    token_file = write(tmp_path / "upload-token", token + "\n")
    data = tmp_path / "data"
    with Outbox(data / "outbox.sqlite", max_bytes=1 << 20) as outbox:
        outbox.append([Reading("air", "temperature", 21.5, "°C", 1_767_225_600_000_000_000 + i,
                               i, "boot", True) for i in range(5)])
    config = tmp_path / "envagent.toml"
    config.write_text(f'[unit]\nid = "u1"\nsite = "Roof"\n[storage]\npath = "{data}"\n'
                      f'[uplink]\nurl = "{url}"\nallow_insecure_http = true\n'
                      f'token_file = "{token_file}"\nconnect_timeout = "1s"\n'
                      f'read_timeout = "2s"\ndeadline = "3s"\n{extra}', encoding="utf-8")
    return config


def test_sync_with_a_refused_token_never_prints_it(tmp_path: Path) -> None:
    with FaultServer() as server:
        server.default = echo_401
        config = station(tmp_path, server.url())
        result = envagent("sync", "--config", str(config), cwd=tmp_path)
        as_json = envagent("sync", "--config", str(config), "--json", cwd=tmp_path)
    assert result.returncode == 1 == as_json.returncode
    assert "HTTP 401" in result.stderr and "<redacted>" in result.stderr
    report = json.loads(as_json.stdout)
    assert report["ok"] is False and report["url"] == server.url()  # the URL, not a label
    state = (tmp_path / "data" / "uplink-state.json").read_text()
    for output in (result.stdout, result.stderr, as_json.stdout, as_json.stderr, state):
        assert TOKEN not in output


def test_sync_with_the_token_in_place_of_the_token_file_never_prints_it(tmp_path: Path) -> None:
    config = station(tmp_path, "http://127.0.0.1:9/write")
    config.write_text(config.read_text().replace(str(tmp_path / "upload-token"), TOKEN))
    result = envagent("sync", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 1 and "uplink.token_file" in result.stderr, result.stderr
    state = (tmp_path / "data" / "uplink-state.json").read_text()
    for output in (result.stdout, result.stderr, state):
        assert TOKEN[:8] not in output and TOKEN[-8:] not in output


def test_sync_against_a_closed_port_never_prints_the_token(tmp_path: Path) -> None:
    with FaultServer() as closed:
        url = closed.url()
    result = envagent("sync", "--config", str(station(tmp_path, url)), cwd=tmp_path)
    assert result.returncode == 1 and "connection failed" in result.stderr
    assert TOKEN not in result.stdout + result.stderr


@pytest.mark.parametrize("url", [
    f"https://user:{TOKEN}@example.org/write",
    f"https://example.org/write?db=x&p={TOKEN}",
    f"https://example.org/api/v2/write?token={TOKEN}",
])
def test_a_token_in_the_url_is_refused_and_not_repeated(tmp_path: Path, url: str) -> None:
    result = envagent("config", "check", "--config", str(station(tmp_path, url)), cwd=tmp_path)
    assert result.returncode == 2 and "uplink.url" in result.stderr
    assert TOKEN not in result.stdout + result.stderr


def test_a_token_in_the_config_file_is_refused_and_not_repeated(tmp_path: Path) -> None:
    config = station(tmp_path, "https://example.org/write", extra=f'token = "{TOKEN}"\n')
    result = envagent("sync", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert "uplink.token: a secret never goes in the config file" in result.stderr
    assert TOKEN not in result.stdout + result.stderr


def command_paths() -> list[list[str]]:
    """Every command line envagent parses: none, each command, each subcommand."""
    import argparse

    from agent.cli.main import build_parser

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> list[list[str]]:
        found = [path]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    found += walk(child, [*path, name])
        return found

    return walk(build_parser(), [])


TOKEN_ARGVS = [["--token", TOKEN], [f"--token={TOKEN}"], ["--upload-token", TOKEN],
               [f"--upload-token={TOKEN}"], ["--tok", TOKEN], [f"--toke={TOKEN}"],
               ["--uplo", TOKEN], ["--token", TOKEN, "--no-such-option", TOKEN]]


def test_every_command_is_walked() -> None:
    paths = command_paths()
    assert ["doctor"] in paths and ["config", "check"] in paths and ["maintenance"] in paths
    assert len(paths) >= 13


@pytest.mark.parametrize("argv", TOKEN_ARGVS)
@pytest.mark.parametrize("command", command_paths(), ids=lambda c: "/".join(c) or "none")
def test_no_command_repeats_a_token_given_on_the_command_line(
        command: list[str], argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from agent.cli.main import main

    with pytest.raises(SystemExit) as stopped:
        main([*command, *argv])
    out, err = capsys.readouterr()
    assert stopped.value.code == 2
    assert "never taken from the command line" in err
    assert TOKEN not in out + err


def test_an_option_that_only_looks_like_the_token_is_still_taken() -> None:
    from agent.cli.main import build_parser

    parsed = build_parser().parse_args(["commission", "--t", "Alice"])  # --technician
    assert parsed.technician == "Alice"
    assert build_parser().parse_args(["sync", "--upl", "cloud"]).uplink == "cloud"


def test_a_token_on_the_command_line_is_refused_and_not_repeated(tmp_path: Path) -> None:
    config = station(tmp_path, "https://example.org/write")
    for command in command_paths():
        result = envagent(*command, "--config", str(config), "--token", TOKEN, cwd=tmp_path)
        assert result.returncode == 2, command
        assert "never taken from the command line" in result.stderr
        assert TOKEN not in result.stdout + result.stderr, command


def test_a_token_in_the_environment_stops_sync_and_run(tmp_path: Path) -> None:
    config = station(tmp_path, "https://example.org/write")
    for command in ("sync", "run"):
        result = envagent(command, "--config", str(config), cwd=tmp_path,
                          env={"ENVAGENT_TOKEN": TOKEN})
        assert result.returncode == 2, result.stderr
        assert "ENVAGENT_TOKEN is set in the environment" in result.stderr
        assert TOKEN not in result.stdout + result.stderr
