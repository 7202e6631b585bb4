"""HTTP on the wire: the session, the total deadline, the bounded read of an answer, and why an
exchange failed in words -- the mechanics under the HTTP transport (agent.uplink.http).

The session: one keep-alive ``requests.Session`` that ignores the environment (``trust_env =
False``: no proxy variables, no ``~/.netrc`` credentials), verifies TLS (optionally against
``ca_file``, optionally with a client certificate) and never follows a redirect for a write.

The total deadline. ``requests`` bounds the connect and each single read, not an exchange: a
server that dribbles one byte per read timeout keeps a request alive forever. A deadline armed
for every POST shuts down (``shutdown(SHUT_RDWR)``) the TCP connections of that sink's session
when it expires, which makes the blocked send or receive in the worker fail at once. The session
notes each connection it opens (:class:`Connections`: its two ends, as the connection pool makes
it), since ``requests`` does not hand out its sockets, and the deadline finds them among the
process's own file descriptors (``/proc/self/fd``) by those ends -- never another upstream's
connection, even to the same port or server (several HTTPS upstreams all use 443; an MQTT or
HJ 212 upstream may too). What that guarantees: a POST whose connection is up returns
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
longer one's connection is closed rather than drained.
"""

from __future__ import annotations

import contextlib
import enum
import os
import socket
import stat
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import __version__

if TYPE_CHECKING:  # imported by make_session: commands that never POST do not load it (~15 MiB)
    import requests

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
MAX_NOTED = 32  # connections a session remembers (urllib3 keeps up to 10 per server)


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


class Connections:
    """The TCP connections one session opened, by their two ends ((address, port) here and
    there), the newest :data:`MAX_NOTED` of them: a pool keeps a few per server, and an end
    noted long ago may belong to someone else's connection by now."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ends: dict[tuple[tuple[Any, ...], tuple[Any, ...]], None] = {}  # oldest first

    def note(self, sock: socket.socket) -> None:
        ends = _ends(sock)
        with self._lock:
            self._ends.pop(ends, None)
            self._ends[ends] = None
            while len(self._ends) > MAX_NOTED:
                del self._ends[next(iter(self._ends))]

    def shutdown(self) -> int:
        """Shut down those of them still open; return how many. A connection found closed is
        forgotten."""
        with self._lock:
            noted = set(self._ends)
        found = shutdown_connections(lambda sock: _ends(sock) in noted)
        with self._lock:
            for gone in noted - found:
                self._ends.pop(gone, None)
        return len(found)


def _ends(sock: socket.socket) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """A TCP connection's (address, port) here and there; OSError when not connected."""
    return tuple(sock.getsockname()[:2]), tuple(sock.getpeername()[:2])


def _noting_adapter(connections: Connections) -> Any:
    """A ``requests`` adapter whose connection pools note every connection they open in
    ``connections`` (urllib3 makes each socket in ``HTTPConnection._new_conn``, for HTTPS
    too, before TLS wraps it)."""
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    class Noting:
        def _new_conn(self) -> socket.socket:
            sock: socket.socket = super()._new_conn()  # type: ignore[misc]
            with contextlib.suppress(OSError):  # reset already: nothing to shut down later
                connections.note(sock)
            return sock

    class Http(Noting, HTTPConnection):
        pass

    class Https(Noting, HTTPSConnection):
        pass

    class HttpPool(HTTPConnectionPool):
        ConnectionCls = Http

    class HttpsPool(HTTPSConnectionPool):
        ConnectionCls = Https

    class Adapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": HttpPool, "https": HttpsPool}

    return Adapter()


def connections_of(session: requests.Session) -> Connections:
    """The connections :func:`make_session` notes for ``session``."""
    connections = getattr(session, "connections", None)
    if not isinstance(connections, Connections):
        raise TypeError("the HTTP transport needs a session from make_session(): its deadline "
                        "shuts down the connections that session noted, and only those")
    return connections


def make_session(*, ca_file: Path | None = None, client_cert: Path | None = None,
                 client_key: Path | None = None) -> requests.Session:
    """The one Session of the uplink: keep-alive, no environment, TLS verified; its
    connections noted in ``session.connections`` (:class:`Connections`)."""
    import requests

    session = requests.Session()
    connections = Connections()
    adapter = _noting_adapter(connections)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.connections = connections  # type: ignore[attr-defined]
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


def failure_of(exc: Exception) -> Failure:
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


def explain(failure: Failure, exc: BaseException, *, address: str,
            timeouts: tuple[float, float], deadline: float) -> str:
    """A failed exchange with ``address`` for people: ``cannot connect to host:443: connection
    refused``, never requests' ``HTTPSConnectionPool(...): Max retries exceeded ...``."""
    connect, read = timeouts
    if failure is Failure.DEADLINE:
        return f"no complete answer from {address} within {deadline:g} s"
    if failure is Failure.STOPPED:
        return ""
    if failure is Failure.CONNECT_TIMEOUT:
        return f"cannot connect to {address}: timed out after {connect:g} s"
    if failure is Failure.READ_TIMEOUT:
        return f"no answer from {address} within {read:g} s"
    if failure in (Failure.TLS, Failure.TLS_VERIFY):
        return f"TLS with {address} failed: {_tls_reason(exc)}"
    if failure is Failure.CONNECTION:
        return _connection_failure(exc, address)
    return str(exc)


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


def shutdown_connections(
        chosen: Callable[[socket.socket], bool]) -> set[tuple[tuple[Any, ...], tuple[Any, ...]]]:
    """Shut down this process's TCP connections that ``chosen`` picks; return their ends.

    Each file descriptor is checked through a duplicate, so nothing of the owner's is closed; a
    shut-down connection makes its owner's blocked send or receive return at once.
    """
    fd_dir = next((d for d in FD_DIRS if os.path.isdir(d)), None)
    if fd_dir is None:
        return set()
    found = set()
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
                    and sock.type == socket.SOCK_STREAM and chosen(sock)):
                ends = _ends(sock)
                sock.shutdown(socket.SHUT_RDWR)
                found.add(ends)
    return found


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
