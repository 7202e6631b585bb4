"""Sinks: encode a batch of readings, POST it once, and report what came back.

A sink never decides what to delete or when to retry -- :mod:`agent.uplink.worker` does, from the
:class:`Reply`. Encoders are pure: the same readings give the same bytes, so a retried batch is
byte-identical (gzip included: its header carries no time stamp here).

HTTP: one keep-alive ``requests.Session`` that ignores the environment (``trust_env = False``:
no proxy variables, no ``~/.netrc`` credentials), verifies TLS (optionally against ``ca_file``,
optionally with a client certificate) and never follows a redirect for a write.

The total deadline. ``requests`` bounds the connect and each single read, not an exchange: a
server that dribbles one byte per read timeout keeps a request alive forever. A deadline armed
for every POST shuts down (``shutdown(SHUT_RDWR)``) this process's TCP connections to the upload
port when it expires, which makes the blocked send or receive in the worker fail at once. The
connections are found by listing the process's own file descriptors (``/proc/self/fd``), since
``requests`` does not hand out its sockets; the agent has no other TCP client, so the match on
the peer port is exact enough. What that guarantees: a POST whose connection is up returns
within ``deadline`` plus a few milliseconds, and one still resolving or connecting at the
deadline is cut off within ``RECHECK_S`` of connecting. What it does not: name resolution
(bounded by the resolver's own timeouts, ``/etc/resolv.conf``) and each connection attempt
(``connect_timeout`` per address the name resolves to) cannot be interrupted this way -- the
config requires ``deadline >= connect_timeout`` so the usual single-address case stays within
it. A complete answer that arrives as the timer fires is treated as cut off (a shut-down socket
can make a 204 look complete), so the batch is sent again: a duplicate, never a loss.

The deadlines are kept by one thread per sink (:class:`Deadlines`), not a timer thread per
POST: starting a thread cost more CPU than the rest of a small POST, and the watcher is not
even woken by a new POST while it already sleeps towards an earlier deadline.

The answer is read with a bound, whatever its Content-Length, chunking or Content-Encoding say:
at most ``REPLY_READ_BYTES`` come off the wire (as sent, still compressed) and at most
``REPLY_KEEP_BYTES`` of them, inflated, are kept -- a gzip bomb or an endless body costs a few
KiB, never the Pi's memory. An answer read to its end leaves the connection to be used again; a
longer one's connection is closed rather than drained. Only the status and the headers decide
what happens to the batch; the text, made fit to log (agent.core.credentials.redact), is for people.
A stop (:meth:`HttpSink.refuse`) lets the POST in flight go on and refuses the next ones.
"""

from __future__ import annotations

import contextlib
import enum
import gzip
import hashlib
import json
import os
import socket
import stat
import threading
import time
import zlib
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from agent import __version__
from agent.core.credentials import Secret, authorization, redact
from agent.core.reading import Reading
from agent.uplink.lineprotocol import (
    Epochs,
    LineProtocolEncoder,
    nonfinite_name,
    ordered_epochs,
    quality_of,
)

if TYPE_CHECKING:  # imported by make_session: commands that never POST do not load it (~15 MiB)
    import requests

JSON_CONTENT_TYPE = "application/json; charset=utf-8"
JSON_FORMAT = "envagent-batch/1"
ID_HEX_DIGITS = 32  # 128 bits of SHA-256: collisions are out of reach for any network
GZIP_LEVEL = 6  # zlib's default: most of level 9's ratio at a third of its CPU
REPLY_TEXT_CHARS = 300  # of a server's answer kept for the log and `envagent status`
MAX_CAUSES = 16  # exceptions looked at for why a connection failed (requests nests ~5)
REPLY_READ_BYTES = 8192  # of an answer read off the wire at most, as sent (compressed or not)
REPLY_KEEP_BYTES = 4096  # of it kept at most, inflated: a gzip bomb inflates no further
READ_CHUNK = 4096
# Content-Encoding -> zlib's wbits: 47 takes a zlib or a gzip header (HTTP's "deflate" means
# zlib, RFC 9110 8.4.1.2; some servers send it raw, tried next).
INFLATE_WBITS = {"gzip": 47, "x-gzip": 47, "deflate": 47}
RAW_DEFLATE_WBITS = -15
FD_DIRS = ("/proc/self/fd", "/dev/fd")  # Linux, then macOS/BSD
RECHECK_S = 0.1  # after the deadline, how often to look for a connection made late


class Encoder(Protocol):
    content_type: str

    def encode(self, readings: Sequence[Reading]) -> bytes: ...

    def set_epochs(self, epochs: Epochs) -> None: ...


# --- the JSON batch format ---------------------------------------------------------------------


def reading_id(unit: str, reading: Reading) -> str:
    """The stable id of a reading: first 32 hex digits of SHA-256 over its identity.

    The identity is ``unit, sensor, quantity, time_ns`` joined by line feeds, in UTF-8 -- the same
    reading sent twice, from any process, after any restart, has the same id.
    """
    identity = f"{unit}\n{reading.sensor}\n{reading.quantity}\n{reading.time_ns}"
    return hashlib.sha256(identity.encode("utf-8")).hexdigest()[:ID_HEX_DIGITS]


def batch_id(reading_ids: Sequence[str]) -> str:
    """First 32 hex digits of SHA-256 over the reading ids in batch order, one per line."""
    return hashlib.sha256("\n".join(reading_ids).encode("ascii")).hexdigest()[:ID_HEX_DIGITS]


class JsonEncoder:
    """The JSON batch format for custom backends (documented in the README). ``simulated``: a
    rehearsal's batches say ``"simulated": true`` (agent.store.rehearsal); a real unit's have no
    such
    key, so their bytes are what they always were."""

    content_type = JSON_CONTENT_TYPE

    def __init__(self, *, unit: str, site: str, drivers: Mapping[str, str],
                 simulated: bool = False) -> None:
        self._unit, self._site, self._drivers = unit, site, dict(drivers)
        self._mark = {"simulated": True} if simulated else {}
        self._starts: list[int] = []
        self._extra: list[dict[str, str]] = []

    def set_epochs(self, epochs: Epochs) -> None:
        """Keys added to the readings sampled from each start time on, as the line protocol's
        tags (agent.uplink.lineprotocol): by sample time, so a replay is byte-identical."""
        self._starts, self._extra = ordered_epochs(epochs)

    def document(self, readings: Sequence[Reading]) -> dict[str, Any]:
        items = [self._item(r) for r in readings]
        return {
            "format": JSON_FORMAT,
            "batch": batch_id([item["id"] for item in items]),
            "unit": self._unit,
            "site": self._site,
            **self._mark,
            "count": len(items),
            "readings": items,
        }

    def _item(self, r: Reading) -> dict[str, Any]:
        nonfinite = nonfinite_name(r.value)
        item: dict[str, Any] = {
            "id": reading_id(self._unit, r),
            "sensor": r.sensor,
            "driver": self._drivers.get(r.sensor),
            "quantity": r.quantity,
            "value": None if nonfinite else r.value,
            "unit": r.unit,
            "time_ns": r.time_ns,
            "quality": quality_of(r),
            "synced": r.synced,
            "boot_id": r.boot_id,
            "boot_ns": r.boot_ns,
            "calibration": r.calibration,
        }
        if nonfinite:
            item["nonfinite"] = nonfinite
        if self._starts and r.sensor in self._drivers:  # as the line protocol's tags
            epoch = bisect_right(self._starts, r.time_ns) - 1
            if epoch >= 0:
                item.update(self._extra[epoch])
        return item

    def encode(self, readings: Sequence[Reading]) -> bytes:
        text = json.dumps(self.document(readings), ensure_ascii=False, allow_nan=False,
                          separators=(",", ":"))
        return text.encode("utf-8")


def make_encoder(format: str, *, unit: str, site: str, drivers: Mapping[str, str],
                 measurement: str, simulated: bool = False) -> Encoder:
    """The encoder of ``uplink.format``; ``simulated`` marks every batch a rehearsal's."""
    if format == "json":
        return JsonEncoder(unit=unit, site=site, drivers=drivers, simulated=simulated)
    return LineProtocolEncoder(unit=unit, site=site, drivers=drivers, measurement=measurement,
                               simulated=simulated)


def influx_url(url: str) -> str:
    """``url`` with ``precision=ns`` added unless it has it (config refuses any other precision)."""
    parts = urlsplit(url)
    params = parse_qsl(parts.query, keep_blank_values=True)
    if any(key == "precision" for key, _ in params):
        return url
    query = urlencode([*params, ("precision", "ns")])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


# --- HTTP --------------------------------------------------------------------------------------


class Failure(enum.Enum):
    """Why a POST got no HTTP answer."""

    CONNECT_TIMEOUT = "connect timeout"
    READ_TIMEOUT = "read timeout"
    DEADLINE = "total deadline exceeded"
    CONNECTION = "connection failed"  # refused, reset, DNS, broken mid-answer
    TLS = "TLS error"  # handshake failures other than verification
    TLS_VERIFY = "TLS certificate verification failed"
    STOPPED = "stopped"  # abort() from another thread, e.g. at shutdown
    INVALID = "invalid request"  # a URL or header requests refused to send


@dataclass(frozen=True, slots=True)
class Reply:
    """One attempt: the HTTP status, or the failure that prevented one."""

    status: int | None
    failure: Failure | None = None
    text: str = ""  # the start of the server's answer or the error: credentials.redact'ed
    retry_after: str | None = None
    location: str | None = None  # of a redirect, for the error message

    def describe(self) -> str:
        if self.status is None:
            what = self.failure.value if self.failure else "no answer"
            return f"{what}: {self.text}" if self.text else what
        where = f" to {self.location}" if self.location else ""
        return f"HTTP {self.status}{where}" + (f": {self.text}" if self.text else "")


def make_session(*, ca_file: Path | None = None, client_cert: Path | None = None,
                 client_key: Path | None = None) -> requests.Session:
    """The one Session of the uplink: keep-alive, no environment, TLS verified."""
    import requests

    session = requests.Session()
    session.trust_env = False
    session.verify = str(ca_file) if ca_file is not None else True
    if client_cert is not None:
        session.cert = (str(client_cert), str(client_key)) if client_key else str(client_cert)
    session.headers["User-Agent"] = f"envagent/{__version__}"
    session.headers["Accept-Encoding"] = "identity"  # a short answer gains nothing compressed
    return session


class Deadlines:
    """Calls ``expire(attempt, why)`` once the deadline of the attempt in flight passes, on one
    long-lived thread.

    Arming a new attempt wakes the thread only when it is idle; while it sleeps towards an
    earlier deadline it finds the new one when it wakes, so a POST every few seconds costs it a
    wake-up per deadline period rather than one per POST. Disarming never wakes it.
    """

    def __init__(self, expire: Callable[[int, Failure], None], *, name: str) -> None:
        self._expire = expire
        self._name = name
        self._cond = threading.Condition()
        self._armed: tuple[int, float, Failure] | None = None  # attempt, monotonic due, why
        self._idle = False  # the thread waits for an attempt, without a timeout
        self._closed = False
        self._thread: threading.Thread | None = None

    def arm(self, attempt: int, seconds: float, why: Failure) -> None:
        with self._cond:
            self._armed = (attempt, time.monotonic() + seconds, why)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            elif self._idle:
                self._cond.notify()

    def disarm(self, attempt: int) -> None:
        with self._cond:
            if self._armed is not None and self._armed[0] == attempt:
                self._armed = None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                if self._armed is None:
                    self._idle = True
                    self._cond.wait()
                    self._idle = False
                    continue
                attempt, due, why = self._armed
                remaining = due - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                self._armed = None
                self._cond.release()  # expire may arm again (a late connection)
                try:
                    self._expire(attempt, why)
                finally:
                    self._cond.acquire()


class HttpSink:
    """POSTs encoded batches to one URL, each within a total deadline (see the module doc)."""

    def __init__(self, url: str, encoder: Encoder, session: requests.Session, *,
                 auth: str = "token", connect_timeout: float = 10.0, read_timeout: float = 30.0,
                 deadline: float = 60.0) -> None:
        self.url = influx_url(url) if isinstance(encoder, LineProtocolEncoder) else url
        parts = urlsplit(self.url)
        self.where = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))  # for logs
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        host = parts.hostname or ""
        self.address = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        self.encoder = encoder
        self.session = session
        self.auth = auth
        self.timeouts = (connect_timeout, read_timeout)
        self.deadline = deadline
        self._lock = threading.Lock()
        self._attempts = 0
        self._in_flight: int | None = None  # the number of the attempt on the wire
        self._ended: Failure | None = None  # why the deadline or abort() ended it early
        self._closed = False
        self._deadlines = Deadlines(self._end, name="uplink-deadline")

    def encode(self, readings: Sequence[Reading]) -> bytes:
        return self.encoder.encode(readings)

    def post(self, body: bytes, token: Secret | None) -> Reply:
        """Send one encoded batch; never raises for anything the network or server does."""
        headers = {"Content-Type": self.encoder.content_type, "Content-Encoding": "gzip"}
        if token is not None:
            headers["Authorization"] = authorization(self.auth, token)
        data = gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)
        with self._lock:
            if self._closed:
                return Reply(None, Failure.STOPPED)
            self._attempts += 1
            attempt = self._in_flight = self._attempts
            self._ended = None
        self._deadlines.arm(attempt, self.deadline, Failure.DEADLINE)
        import requests  # loaded already: make_session built self.session
        from urllib3.exceptions import HTTPError as TransportError  # requests' transport

        try:
            response = self.session.post(self.url, data=data, headers=headers,
                                         timeout=self.timeouts, allow_redirects=False,
                                         stream=True)  # the body is read below, bounded
        except requests.RequestException as exc:
            failure = self._finish(attempt) or _failure_of(exc)
            return Reply(None, failure, redact(self._explain(failure, exc), token,
                                               limit=REPLY_TEXT_CHARS))
        except (ValueError, OSError) as exc:  # e.g. an unreadable ca_file or client_cert
            self._finish(attempt)
            return Reply(None, Failure.INVALID, redact(str(exc), token, limit=REPLY_TEXT_CHARS))
        try:
            content, cut = read_bounded(response.raw)
        except (TransportError, OSError) as exc:  # requests does not wrap these: raw read
            failure = self._finish(attempt) or _failure_of(exc)
            return Reply(None, failure, redact(self._explain(failure, exc), token,
                                               limit=REPLY_TEXT_CHARS))
        finally:
            response.close()  # after a cut the connection is closed, never drained
        ended = self._finish(attempt)
        if ended is not None:  # the answer may be cut short (a 204's headers, say): not trusted
            return Reply(None, ended, f"HTTP {response.status_code} answer cut off")
        text, cut = inflate(content, response.headers.get("Content-Encoding"), cut=cut)
        location = response.headers.get("Location")
        return Reply(response.status_code, None,
                     redact(text, token, cut=cut, limit=REPLY_TEXT_CHARS),
                     response.headers.get("Retry-After"),
                     None if location is None else redact(location, token,
                                                          limit=REPLY_TEXT_CHARS))

    def _explain(self, failure: Failure, exc: BaseException) -> str:
        """A failed exchange for people: ``cannot connect to host:443: connection refused``,
        never requests' ``HTTPSConnectionPool(...): Max retries exceeded ...``."""
        connect, read = self.timeouts
        where = self.address
        if failure is Failure.DEADLINE:
            return f"no complete answer from {where} within {self.deadline:g} s"
        if failure is Failure.STOPPED:
            return ""
        if failure is Failure.CONNECT_TIMEOUT:
            return f"cannot connect to {where}: timed out after {connect:g} s"
        if failure is Failure.READ_TIMEOUT:
            return f"no answer from {where} within {read:g} s"
        if failure in (Failure.TLS, Failure.TLS_VERIFY):
            return f"TLS with {where} failed: {_tls_reason(exc)}"
        if failure is Failure.CONNECTION:
            return _connection_failure(exc, where)
        return str(exc)

    def refuse(self) -> None:
        """Refuse every POST from now on (a stop begins); the one in flight goes on."""
        with self._lock:
            self._closed = True

    def abort(self) -> None:
        """End the POST in flight now (from another thread), e.g. to stop the agent."""
        with self._lock:
            attempt = self._in_flight
        if attempt is not None:
            self._end(attempt, Failure.STOPPED)

    def close(self) -> None:
        """Abort the POST in flight and refuse further ones."""
        self.refuse()
        self.abort()
        self._deadlines.close()
        self.session.close()

    def _finish(self, attempt: int) -> Failure | None:
        """Disarm the attempt; return why it was ended early, if it was."""
        self._deadlines.disarm(attempt)
        with self._lock:
            ended, self._ended, self._in_flight = self._ended, None, None
        return ended

    def _end(self, attempt: int, why: Failure) -> None:
        with self._lock:
            if attempt != self._in_flight:
                return  # finished meanwhile
            self._ended = self._ended or why
            if shutdown_connections(self.port) == 0:  # still resolving or connecting: look again
                self._deadlines.arm(attempt, RECHECK_S, why)


def _failure_of(exc: Exception) -> Failure:
    """What a failed exchange means: ``requests``' errors, or ``urllib3``'s from the body."""
    import requests
    from urllib3 import exceptions as urllib3_errors

    if isinstance(exc, requests.exceptions.SSLError | urllib3_errors.SSLError):
        text = str(exc)
        verify = "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text
        return Failure.TLS_VERIFY if verify else Failure.TLS
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return Failure.CONNECT_TIMEOUT
    if isinstance(exc, requests.exceptions.ReadTimeout | urllib3_errors.ReadTimeoutError):
        return Failure.READ_TIMEOUT
    if isinstance(exc, requests.exceptions.InvalidURL | requests.exceptions.InvalidHeader
                  | requests.exceptions.InvalidSchema | requests.exceptions.MissingSchema):
        return Failure.INVALID
    return Failure.CONNECTION


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it wraps: requests wraps urllib3's MaxRetryError, whose ``reason`` wraps
    a NewConnectionError raised from the socket's OSError; a ProtocolError carries it in
    ``args``."""
    found: list[BaseException] = []
    todo = [exc]
    while todo and len(found) < MAX_CAUSES:
        cause = todo.pop(0)
        if any(cause is seen for seen in found):
            continue
        found.append(cause)
        reason = getattr(cause, "reason", None)
        todo += [c for c in (reason, cause.__cause__, cause.__context__, *cause.args)
                 if isinstance(c, BaseException)]
    return found


def _connection_failure(exc: BaseException, where: str) -> str:
    """Why the connection to ``where`` failed or broke, in words."""
    import http.client

    from urllib3.exceptions import NameResolutionError, NewConnectionError

    causes = _causes(exc)

    def has(kind: type[BaseException] | tuple[type[BaseException], ...]) -> bool:
        return any(isinstance(c, kind) for c in causes)

    if has((NameResolutionError, socket.gaierror)):
        return f"cannot connect to {where}: name not resolved"
    if has(ConnectionRefusedError):
        return f"cannot connect to {where}: connection refused"
    system = next((c for c in causes if isinstance(c, OSError) and c.strerror), None)
    if has(NewConnectionError):
        why = _lower(system.strerror) if system is not None and system.strerror else "failed"
        return f"cannot connect to {where}: {why}"
    if has(http.client.RemoteDisconnected):
        return f"{where} closed the connection without answering"
    if has(ConnectionResetError):
        return f"the connection to {where} broke: reset by the server"
    if system is not None and system.strerror:
        return f"the connection to {where} broke: {_lower(system.strerror)}"
    return f"the connection to {where} broke before the answer was complete"


def _tls_reason(exc: BaseException) -> str:
    """What went wrong in TLS: the verification's message (``self-signed certificate``), else
    OpenSSL's reason (``WRONG_VERSION_NUMBER`` -> ``wrong version number``)."""
    import ssl

    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLCertVerificationError) and cause.verify_message:
            return f"the certificate is not trusted: {cause.verify_message}"
        if isinstance(cause, ssl.SSLError) and cause.reason:
            return str(cause.reason).lower().replace("_", " ")
    return "handshake failed"


def _lower(strerror: str) -> str:
    """``Network is unreachable`` as it reads inside a sentence."""
    return strerror[:1].lower() + strerror[1:]


def shutdown_connections(port: int) -> int:
    """Shut down this process's TCP connections whose peer port is ``port``; return how many.

    Each file descriptor is checked through a duplicate, so nothing of the owner's is closed; a
    shut-down connection makes its owner's blocked send or receive return at once.
    """
    fd_dir = next((d for d in FD_DIRS if os.path.isdir(d)), None)
    if fd_dir is None:
        return 0
    count = 0
    for name in os.listdir(fd_dir):
        try:
            fd = int(name)
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            copy = os.dup(fd)
        except (ValueError, OSError):
            continue  # not a number, or closed meanwhile
        try:
            sock = socket.socket(fileno=copy)
        except OSError:
            os.close(copy)
            continue
        with sock, contextlib.suppress(OSError):  # not connected, or gone meanwhile
            if (sock.family in (socket.AF_INET, socket.AF_INET6)
                    and sock.type == socket.SOCK_STREAM and sock.getpeername()[1] == port):
                sock.shutdown(socket.SHUT_RDWR)
                count += 1
    return count


def read_bounded(raw: Any) -> tuple[bytes, bool]:
    """At most ``REPLY_READ_BYTES`` of an answer's body as sent (``raw``: urllib3's response,
    not decoding), and whether more followed. An answer read to its end frees its connection
    for the next POST."""
    chunks: list[bytes] = []
    size = 0
    while size <= REPLY_READ_BYTES:
        chunk = raw.read(min(READ_CHUNK, REPLY_READ_BYTES + 1 - size), decode_content=False)
        if not chunk:
            return b"".join(chunks), False
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)[:REPLY_READ_BYTES], True


def inflate(content: bytes, encoding: str | None, *, cut: bool) -> tuple[str, bool]:
    """The start of an answer as text: inflated when gzip or deflate, never beyond
    ``REPLY_KEEP_BYTES``; and whether it is cut short (``cut``: the bytes already were)."""
    coding = (encoding or "").strip().lower()
    if coding in ("", "identity"):
        data = content
    elif coding in INFLATE_WBITS:
        try:
            data, more = _inflate(content, INFLATE_WBITS[coding])
        except zlib.error:
            try:
                data, more = _inflate(content, RAW_DEFLATE_WBITS)
            except zlib.error:
                return f"(a {coding} answer that does not inflate)", False
        cut = cut or more
    else:  # br, zstd, several codings: asked for none of them, decoded by none
        return f"(a {coding} answer, not decoded)", False
    cut = cut or len(data) > REPLY_KEEP_BYTES
    return data[:REPLY_KEEP_BYTES].decode("utf-8", "replace"), cut


def _inflate(content: bytes, wbits: int) -> tuple[bytes, bool]:
    """Up to one byte more than is kept (so a cut shows), and whether more would follow."""
    inflater = zlib.decompressobj(wbits)
    data = inflater.decompress(content, REPLY_KEEP_BYTES + 1)
    return data, bool(inflater.unconsumed_tail)
