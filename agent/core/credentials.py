"""The upload token: read from a file only, kept out of every log line, message and traceback.

Where it comes from, in order: ``uplink.token_file``; else ``$CREDENTIALS_DIRECTORY/upload-token``,
which systemd provides for ``LoadCredential=upload-token:/etc/envagent/upload-token`` (a copy
readable only by the service, on a non-swappable tmpfs); else no token (a loopback Telegraf
listener may need none). Each upstream has its own credential: ``upload-token`` is the one of
the upstream named ``default`` (the single ``[uplink]`` table), ``upload-token-<name>`` any
other's -- so a token is never sent to a server it was not made for. Never from the config
file (the config module refuses a ``token`` key), the command line (the CLI refuses
``--token``) or the environment (:func:`check_environment` refuses the usual variables): all
three leak to other users through ``ps``, ``/proc``, backups and support tickets.

The token is a :class:`Secret`, whose ``str`` and ``repr`` are a placeholder, so an accidental
``log.info("%s", token)`` shows nothing; only :func:`authorization` reveals it, for the one
header that needs it. Every error message here names the file and the problem, never content --
nor the file, when its name looks like the token itself (a token pasted into ``token_file``).

What a server answers, and the text of a network error, can hold the token too: a careless
server echoes the header it refused. :func:`redact` is the one way such text reaches a log line,
``uplink-state.json`` or a command's output: control characters stripped, the token removed in
every form a server may echo it, and only then shortened -- shortening first could cut a token
into a prefix that no longer matches.
"""

from __future__ import annotations

import base64
import functools
import logging
import re
import stat
from collections.abc import Mapping
from pathlib import Path

from agent.core.atomic import DamagedFileError, FileTooLargeError, read_bounded_stat
from agent.core.errors import AgentError, ConfigError
from agent.core.reading import DEFAULT_UPSTREAM

log = logging.getLogger("envagent.credentials")

CREDENTIAL_NAME = "upload-token"  # the name in the unit's LoadCredential=
CREDENTIALS_DIRECTORY = "CREDENTIALS_DIRECTORY"  # set by systemd for LoadCredential=
# Variables people reach for; refused so a token never sits in an environment.
REFUSED_VARIABLES = ("ENVAGENT_TOKEN", "ENVAGENT_UPLOAD_TOKEN", "ENVAGENT_UPLINK_TOKEN",
                     "INFLUX_TOKEN", "INFLUXDB_TOKEN")
MAX_TOKEN_BYTES = 4096  # InfluxDB tokens are 88 characters; anything this long is the wrong file
AUTH_SCHEMES = ("token", "bearer", "basic")  # uplink.auth
REDACTED = "<redacted>"
# C0 controls, DEL and C1 controls: a terminal obeys escape sequences, a journal line ends at a
# line feed; none is written out as it came.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# What a server may put between the characters of a secret it echoes: white space and control
# characters (a folded line, an escape sequence), a backslash (JSON's "\/").
_GAP = r"[\s\x00-\x1f\x7f-\x9f\\]*"
_GAP_NO_BACKSLASH = r"[\s\x00-\x1f\x7f-\x9f]*"
# The password of a URL's user information (scheme://user:password@host).
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s/?#@:]*):[^\s/?#@]*@")
# A path a token file is named by: absolute (the service runs in /) and not ending like base64.
_PATH_STARTS = ("/", "./", "../", "~")
# A server that shortens what it echoes ("Basic ZmllbGQt...") still shows the start of the
# secret: a run of this many of its first characters is removed wherever it stands.
PARTIAL_MIN = 4


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


def credential_name(upstream: str) -> str:
    """The systemd credential holding upstream ``upstream``'s token (see the module docstring)."""
    return CREDENTIAL_NAME if upstream == DEFAULT_UPSTREAM else f"{CREDENTIAL_NAME}-{upstream}"


def token_path(token_file: Path | None, environ: Mapping[str, str],
               upstream: str = DEFAULT_UPSTREAM) -> Path | None:
    """The file upstream ``upstream``'s token is read from, or None when none is configured."""
    if token_file is not None:
        return token_file
    directory = environ.get(CREDENTIALS_DIRECTORY)
    return Path(directory) / credential_name(upstream) if directory else None


def looks_like_token(path: Path) -> bool:
    """Whether a ``token_file`` value is more likely the token itself than a path to it:
    relative (the service runs in ``/``, so a real one is absolute) or ending like base64."""
    text = str(path)
    return not text.startswith(_PATH_STARTS) or text.endswith("=")


def read_token(path: Path, *, what: str = "upload token", key: str = "uplink.token_file"
               ) -> Secret:
    """The token in ``path``: one line of visible ASCII; a final line break is ignored.
    ``what`` and ``key`` name the secret and its setting in messages (an HJ 212 upstream's
    password, ``password_file``)."""
    try:  # O_NONBLOCK and a regular file only: a FIFO named here must not hang the worker
        raw, found = read_bounded_stat(path, MAX_TOKEN_BYTES)
        mode = found.st_mode
    except DamagedFileError as exc:
        named = f"named by {key}" if looks_like_token(path) else str(path)
        if isinstance(exc, FileTooLargeError):
            raise CredentialError(f"the {what} file {named} is larger than {MAX_TOKEN_BYTES} "
                                  "bytes: is it the right file?") from None
        raise CredentialError(f"the {what} file {named} is not a regular file (a FIFO, a "
                              f"socket or a device): put the {what} in a plain file and set "
                              f"{key} to it") from None
    except OSError as exc:
        if looks_like_token(path):  # never repeated: it may be the token, pasted in
            raise CredentialError(
                f"{key} names no readable file, and its value ({len(str(path))} "
                "characters, not repeated here) looks like a token rather than a path; put "
                f"the {what} in a file readable by the agent's user only and set {key} to "
                "that file's absolute path, such as /etc/envagent/upload-token") from None
        reason = exc.strerror or type(exc).__name__
        raise CredentialError(
            f"cannot read the {what} file {path}: {reason}; create it (one line, readable "
            f"by the agent's user only) or fix {key}") from None
    text = raw.rstrip(b"\r\n")
    if not text:
        raise CredentialError(f"the {what} file {path} is empty; write the {what} in it")
    bad = next((i for i, byte in enumerate(text) if not 0x21 <= byte <= 0x7E), None)
    if bad is not None:
        raise CredentialError(
            f"the {what} file {path} has a space, line break, control or non-ASCII "
            f"character at byte {bad + 1}; it must hold the {what} alone, on one line") from None
    exposed = exposure(path, mode)
    if exposed is not None:
        log.warning("%s", exposed)
    return Secret(text.decode("ascii"))


def exposure(path: Path, mode: int) -> str | None:
    """Why a token file with ``mode`` is too open, or None: the one rule of ``run``'s warning
    and of ``doctor``'s check, so the two never disagree."""
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        named = "named by uplink.token_file" if looks_like_token(path) else str(path)
        return (f"the upload token file {named} can be read by other users (mode "
                f"{stat.S_IMODE(mode):04o}); chmod 600 it")
    return None


def load_token(token_file: Path | None, environ: Mapping[str, str],
               upstream: str = DEFAULT_UPSTREAM, *, what: str = "upload token",
               key: str = "uplink.token_file") -> Secret | None:
    """Read the configured token now (the file may have been fixed since the last call)."""
    path = token_path(token_file, environ, upstream)
    return None if path is None else read_token(path, what=what, key=key)


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


def redact(text: str, token: Secret | None, *, cut: bool = False,
           limit: int | None = None) -> str:
    """``text`` (a server's answer, an exception) made fit to log or save, on one line.

    In this order: a URL's password goes; the token goes wherever it appears -- as is, in its
    ``Basic`` form, the basic-auth password alone, even spread over white space, control
    characters or JSON escapes; with ``cut`` (the text is the start of something longer) an
    end that could be the start of one of those goes too; control characters become spaces
    and white space is squeezed; at last the text is shortened to ``limit`` characters, so
    what the shortening cuts is never a piece of the token.
    """
    if not text:  # most answers (a 204): nothing to do, on the hot path
        return text
    text = _USERINFO.sub(r"\1:***@", text)
    if token is not None:
        forms = _forms(token)
        for form, partial in forms:
            text = _remove(text, form, PARTIAL_MIN if partial else len(form))
        if cut and forms:
            text = _drop_cut_secret(text, tuple(form for form, _ in forms))
    text = " ".join(CONTROL.sub(" ", text).split())
    if limit is not None and len(text) > limit:
        text = text[:max(limit - 1, 0)] + "…"
    return text


def _forms(token: Secret) -> tuple[tuple[str, bool], ...]:
    """The token as a server may echo it, longest first; each with whether the start of it
    alone is a secret too (for basic auth, ``user:password``, it is the password's start)."""
    value = token.reveal()
    forms = {(base64.b64encode(value.encode("utf-8")).decode("ascii"), True)}
    _, colon, password = value.partition(":")  # basic: user:password (RFC 7617)
    if colon and password:
        forms |= {(value, False), (password, True)}
    else:
        forms.add((value, True))
    return tuple(sorted((f for f in forms if f[0]), key=lambda f: len(f[0]), reverse=True))


def _remove(text: str, form: str, least: int) -> str:
    """``text`` without any run of ``form``'s first ``least`` or more characters."""
    head = _pattern(form[:least])
    pieces, i = [], 0
    while (found := head.search(text, i)) is not None:
        pieces += [text[i:found.start()], REDACTED]
        i = _extend(text, found.end(), form, min(least, len(form)))
    return "".join([*pieces, text[i:]])


def _extend(text: str, at: int, form: str, matched: int) -> int:
    """Where a match of ``form``'s first ``matched`` characters, ending at ``at``, ends when
    it takes as much more of ``form`` as follows (gaps allowed within it)."""
    while matched < len(form):
        j = at
        while j < len(text) and _is_gap(text[j]) and text[j] != form[matched]:
            j += 1
        if j >= len(text) or text[j] != form[matched]:
            return at
        at, matched = j + 1, matched + 1
    return at


@functools.lru_cache(maxsize=16)
def _pattern(form: str) -> re.Pattern[str]:
    """``form``, with anything :data:`_GAP` allows between its characters."""
    gap = _GAP_NO_BACKSLASH if "\\" in form else _GAP
    return re.compile(gap.join(re.escape(char) for char in form))


def _is_gap(char: str) -> bool:
    return char.isspace() or char == "\\" or CONTROL.match(char) is not None


def _drop_cut_secret(text: str, forms: tuple[str, ...]) -> str:
    """``text`` without an end that could be the start of a form (gaps allowed within it)."""
    squeezed_forms = [form.replace("\\", "") for form in forms]
    firsts = {form[0] for form in squeezed_forms if form}
    longest = max(len(form) for form in squeezed_forms)
    where: list[int] = []  # the positions of the last non-gap characters, last first
    i = len(text)
    while i > 0 and len(where) < longest:
        i -= 1
        if not _is_gap(text[i]):
            where.append(i)
    where.reverse()
    tail = "".join(text[i] for i in where)
    for start, char in enumerate(tail):
        if char in firsts and any(form.startswith(tail[start:]) for form in squeezed_forms):
            return text[:where[start]] + REDACTED
    return text
