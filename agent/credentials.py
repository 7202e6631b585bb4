"""The upload token: read from a file only, kept out of every log line, message and traceback.

Where it comes from, in order: ``uplink.token_file``; else ``$CREDENTIALS_DIRECTORY/upload-token``,
which systemd provides for ``LoadCredential=upload-token:/etc/envagent/upload-token`` (a copy
readable only by the service, on a non-swappable tmpfs); else no token (a loopback Telegraf
listener may need none). Never from the config file (the config module refuses a ``token``
key), the command line (the CLI refuses ``--token``) or the environment (:func:`check_environment`
refuses the usual variables): all three leak to other users through ``ps``, ``/proc``, backups
and support tickets.

The token is a :class:`Secret`, whose ``str`` and ``repr`` are a placeholder, so an accidental
``log.info("%s", token)`` shows nothing; only :func:`authorization` reveals it, for the one
header that needs it. Every error message here names the file and the problem, never content.
"""

from __future__ import annotations

import base64
import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from agent.errors import AgentError, ConfigError

log = logging.getLogger(__name__)

CREDENTIAL_NAME = "upload-token"  # the name in the unit's LoadCredential=
CREDENTIALS_DIRECTORY = "CREDENTIALS_DIRECTORY"  # set by systemd for LoadCredential=
# Variables people reach for; refused so a token never sits in an environment.
REFUSED_VARIABLES = ("ENVAGENT_TOKEN", "ENVAGENT_UPLOAD_TOKEN", "ENVAGENT_UPLINK_TOKEN",
                     "INFLUX_TOKEN", "INFLUXDB_TOKEN")
MAX_TOKEN_BYTES = 4096  # InfluxDB tokens are 88 characters; anything this long is the wrong file
AUTH_SCHEMES = ("token", "bearer", "basic")  # uplink.auth


class CredentialError(AgentError, PermissionError):
    """The upload token cannot be used; the message says which file and why, never the token."""


class Secret:
    """A string that does not show itself: ``str``, ``repr`` and f-strings print a placeholder."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('<redacted>')"

    def __str__(self) -> str:
        return "<redacted>"

    def __format__(self, spec: str) -> str:
        return "<redacted>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def check_environment(environ: Mapping[str, str]) -> None:
    """Refuse to start when a token variable is set; names the variable, never its value."""
    found = [name for name in REFUSED_VARIABLES if environ.get(name)]
    if found:
        raise ConfigError([
            f"{name} is set in the environment: envagent never takes the upload token from the "
            "environment (other processes and crash reports can read it); unset it and put "
            "the token in the file named by uplink.token_file, or in "
            f"LoadCredential={CREDENTIAL_NAME}:... of the systemd unit"
            for name in found
        ])


def token_path(token_file: Path | None, environ: Mapping[str, str]) -> Path | None:
    """The file the token is read from, or None when none is configured."""
    if token_file is not None:
        return token_file
    directory = environ.get(CREDENTIALS_DIRECTORY)
    return Path(directory) / CREDENTIAL_NAME if directory else None


def read_token(path: Path) -> Secret:
    """The token in ``path``: one line of visible ASCII; a final line break is ignored."""
    try:
        with path.open("rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            raw = file.read(MAX_TOKEN_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise CredentialError(
            f"cannot read the upload token file {path}: {reason}; create it (one line, readable "
            "by the agent's user only) or fix uplink.token_file") from None
    if len(raw) > MAX_TOKEN_BYTES:
        raise CredentialError(f"the upload token file {path} is larger than {MAX_TOKEN_BYTES} "
                              "bytes: is it the right file?")
    text = raw.rstrip(b"\r\n")
    if not text:
        raise CredentialError(f"the upload token file {path} is empty; write the token in it")
    bad = next((i for i, byte in enumerate(text) if not 0x21 <= byte <= 0x7E), None)
    if bad is not None:
        raise CredentialError(
            f"the upload token file {path} has a space, line break, control or non-ASCII "
            f"character at byte {bad + 1}; it must hold the token alone, on one line") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("the upload token file %s can be read by other users (mode %04o); "
                    "chmod 600 it", path, stat.S_IMODE(mode))
    return Secret(text.decode("ascii"))


def load_token(token_file: Path | None, environ: Mapping[str, str]) -> Secret | None:
    """Read the configured token now (the file may have been fixed since the last call)."""
    path = token_path(token_file, environ)
    return None if path is None else read_token(path)


def authorization(scheme: str, token: Secret) -> str:
    """The Authorization header value: InfluxDB's ``Token``, OAuth ``Bearer`` or HTTP ``Basic``.

    For ``basic`` the file holds ``user:password``.
    """
    if scheme == "token":
        return f"Token {token.reveal()}"
    if scheme == "bearer":
        return f"Bearer {token.reveal()}"
    if scheme == "basic":
        return "Basic " + base64.b64encode(token.reveal().encode("ascii")).decode("ascii")
    raise ValueError(f"unknown auth scheme {scheme!r}; expected one of {AUTH_SCHEMES}")


def redact(text: str, token: Secret | None) -> str:
    """``text`` (a server's answer, an exception) with the token and its header forms removed."""
    if token is None:
        return text
    value = token.reveal()
    for form in (value, base64.b64encode(value.encode("ascii")).decode("ascii")):
        text = text.replace(form, "<redacted>")
    return text
