"""A fault-injecting HTTP server on loopback, for the uplink's failure matrix.

``FaultServer`` is a real ``http.server`` on 127.0.0.1 (port 0, in a thread) that answers each
request with the next scripted :data:`Action`, then with its default (204 and keep the body).
Actions behave like the failures a field unit meets: timeouts, 5xx, throttling, resets while the
request or the answer is on the wire, a server that commits and then loses the connection, poison
data, a redirect, an answer dribbled one byte at a time, a gzip bomb, an answer that never ends.
Every request is recorded with its body
(gzip undone) and every body the server *kept* is in ``committed``, in order, so tests can check
that nothing was lost and that any duplicate is a byte-identical replay.

``FaultServer(accepting=False)`` fills its one-slot listen queue and accepts nothing, so a
connect times out, until :meth:`FaultServer.start_accepting`. ``FaultServer(tls=context)``
speaks HTTPS with the context's certificate.
"""

from __future__ import annotations

import gzip
import socket
import ssl
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    raw: bytes  # as sent, still gzip-compressed
    body: bytes  # decompressed

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


Action = Callable[["Handler", Received], None]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the uplink's Session expects
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        fault = self.server.fault
        length = int(self.headers.get("Content-Length", "0"))
        if fault.before_body is not None:  # e.g. reset while the request is on the wire
            action, fault.before_body = fault.before_body, None
            action(self, Received("POST", self.path, {}, b"", b""))
            return
        raw = self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        body = gzip.decompress(raw) if headers.get("content-encoding") == "gzip" else raw
        request = Received("POST", self.path, headers, raw, body)
        with fault.lock:
            fault.requests.append(request)
            action = fault.script.popleft() if fault.script else fault.default
        action(self, request)

    do_PUT = do_POST  # noqa: N815

    # --- building blocks for actions ----------------------------------------------------------

    def answer(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def commit(self, request: Received) -> None:
        with self.server.fault.lock:
            self.server.fault.committed.append(request.body)

    def reset(self) -> None:
        """Abort the connection with a TCP RST (SO_LINGER 0), as a crashing peer does."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 0  # one pending connection fills the queue: see FaultServer.accepting
    fault: FaultServer


class FaultServer:
    """See the module docstring. Use as a context manager."""

    def __init__(self, *, accepting: bool = True, tls: ssl.SSLContext | None = None) -> None:
        self.lock = threading.Lock()
        self.requests: list[Received] = []
        self.committed: list[bytes] = []
        self.script: deque[Action] = deque()
        self.default: Action = ok()
        self.before_body: Action | None = None
        self.released = threading.Event()  # ends every hang and drip at close
        self._server = _Server(("127.0.0.1", 0), Handler)
        self._server.fault = self
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self.port = self._server.server_address[1]
        self._thread: threading.Thread | None = None
        self._fillers: list[socket.socket] = []
        if accepting:
            self.start_accepting()
        else:
            self._fill_backlog()

    def url(self, path: str = "/write") -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def then(self, *actions: Action) -> FaultServer:
        """Answer the next requests with ``actions``, in order, then with ``default``."""
        self.script.extend(actions)
        return self

    def _fill_backlog(self) -> None:
        filler = socket.create_connection(("127.0.0.1", self.port), timeout=1.0)
        self._fillers.append(filler)

    def start_accepting(self) -> None:
        for filler in self._fillers:
            filler.close()
        self._fillers.clear()
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.released.set()
        for filler in self._fillers:
            filler.close()
        if self._thread is not None:
            self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


# --- actions -----------------------------------------------------------------------------------


def ok(status: int = 204) -> Action:
    """Keep the body and answer 2xx (InfluxDB 2 and VictoriaMetrics answer 204)."""

    def act(handler: Handler, request: Received) -> None:
        handler.commit(request)
        handler.answer(status)

    return act


def status(code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Action:
    """Answer ``code`` without keeping anything."""

    def act(handler: Handler, request: Received) -> None:
        handler.answer(code, body, headers)

    return act


def hang(seconds: float) -> Action:
    """Say nothing for ``seconds`` (longer than the read timeout), then hang up."""

    def act(handler: Handler, request: Received) -> None:
        handler.server.fault.released.wait(seconds)
        handler.close_connection = True

    return act


def commit_then_drop() -> Action:
    """Keep the body, then close the connection without answering."""

    def act(handler: Handler, request: Received) -> None:
        handler.commit(request)
        handler.close_connection = True

    return act


def reset_mid_response() -> Action:
    """Start a 200 answer with 100 bytes announced, send 10, then reset."""

    def act(handler: Handler, request: Received) -> None:
        handler.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        handler.wfile.flush()
        time.sleep(0.05)
        handler.reset()

    return act


def reset_mid_request() -> Action:
    """Read part of the request body, then reset (use as ``server.before_body``)."""

    def act(handler: Handler, request: Received) -> None:
        handler.rfile.read(16)
        handler.reset()

    return act


def drip(interval: float) -> Action:
    """Answer 204, one byte every ``interval`` seconds, until the client gives up."""

    def act(handler: Handler, request: Received) -> None:
        answer = b"HTTP/1.1 204 No Content\r\nX-Drip: " + b"." * 10_000 + b"\r\n\r\n"
        for byte in answer:
            if handler.server.fault.released.wait(interval):
                break
            try:
                handler.wfile.write(bytes([byte]))
                handler.wfile.flush()
            except OSError:
                break
        handler.close_connection = True

    return act


def inflating_to(size: int) -> bytes:
    """About ``size`` / 1000 bytes of gzip that inflate to ``size`` bytes of zeros, with no
    trailer (a decoder runs out of input; it never reaches a CRC to refuse). After a full
    flush the compressor starts afresh, so one compressed MiB of zeros repeats byte for byte."""
    mib = b"\0" * (1 << 20)
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)
    first = deflate.compress(mib) + deflate.flush(zlib.Z_FULL_FLUSH)
    again = deflate.compress(mib) + deflate.flush(zlib.Z_FULL_FLUSH)
    return first + again * (max(size // len(mib), 1) - 1)


def gzip_bomb(code: int = 503, inflated: int = 1 << 30) -> Action:
    """Answer ``code`` with ~1 MiB of ``Content-Encoding: gzip`` inflating to ``inflated``."""
    body = inflating_to(inflated)

    def act(handler: Handler, request: Received) -> None:
        head = (f"HTTP/1.1 {code} Busy\r\nContent-Encoding: gzip\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        _write_until_gone(handler, head, body)

    return act


def endless(code: int = 503, *, chunked: bool = True, gzipped: bool = False) -> Action:
    """Answer ``code`` with a body that never ends: chunked, or announced as a terabyte
    (``chunked=False``); ``gzipped``: deflate-encoded zeros. Until the client hangs up."""
    data = zlib.compress(b"\0" * (1 << 22), 9) if gzipped else b"x" * 65536
    piece = b"%x\r\n%s\r\n" % (len(data), data) if chunked else data
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: 1000000000000"
    encoding = b"Content-Encoding: deflate\r\n" if gzipped else b""

    def act(handler: Handler, request: Received) -> None:
        head = b"HTTP/1.1 %d Busy\r\n%s\r\n%s\r\n" % (code, framing, encoding)
        _write_until_gone(handler, head, piece, again=True)

    return act


def _write_until_gone(handler: Handler, head: bytes, body: bytes, *, again: bool = False) -> None:
    """Write ``head`` and ``body`` (``again``: over and over, until the server closes); a
    client hanging up early is what a bounded reader does, not an error."""
    handler.close_connection = True
    try:
        handler.wfile.write(head + body)
        while again and not handler.server.fault.released.is_set():
            handler.wfile.write(body)
        handler.wfile.flush()
    except OSError:
        pass


def reject_marker(marker: bytes, code: int = 400) -> Action:
    """A picky backend: refuse any body containing ``marker``, keep every other."""

    def act(handler: Handler, request: Received) -> None:
        if marker in request.body:
            handler.answer(code, b'{"error":"unparsable point"}',
                           {"Content-Type": "application/json"})
        else:
            handler.commit(request)
            handler.answer(204)

    return act


def limit_size(max_body: int) -> Action:
    """Answer 413 to a (decompressed) body over ``max_body`` bytes, keep the others."""

    def act(handler: Handler, request: Received) -> None:
        if len(request.body) > max_body:
            handler.answer(413, b"request entity too large")
        else:
            handler.commit(request)
            handler.answer(204)

    return act


# --- reading line protocol back ------------------------------------------------------------


def split_unescaped(text: str, separator: str, *, strings: bool = False) -> list[str]:
    """Split at ``separator`` where it is not backslash-escaped (nor, with ``strings``, inside a
    string field value: a double quote right after ``=`` up to the next unescaped one)."""
    parts, current, i, quoted = [], [], 0, False
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            current.append(text[i:i + 2])
            i += 2
            continue
        if strings and char == '"' and (quoted or (current and current[-1] == "=")):
            quoted = not quoted
        if char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    parts.append("".join(current))
    return parts


def unescape(text: str) -> str:
    """InfluxDB 2's reading: a backslash escapes a separator, a quote or a backslash."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in ',= "\\':
            out.append(text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def parse_line(line: str) -> tuple[str, dict[str, str], dict[str, object], int]:
    """One line of line protocol: measurement, tags, fields (float, int or str), timestamp."""
    series = split_unescaped(line, " ")[0]
    field_text, stamp = line[len(series) + 1:].rsplit(" ", 1)
    measurement, *tag_parts = split_unescaped(series, ",")
    tags = {}
    for part in tag_parts:
        key, value = split_unescaped(part, "=")
        tags[unescape(key)] = unescape(value)
    fields: dict[str, object] = {}
    for part in split_unescaped(field_text, ",", strings=True):
        key, *values = split_unescaped(part, "=")
        value = "=".join(values)
        if value.startswith('"'):
            fields[unescape(key)] = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        elif value.endswith("i"):
            fields[unescape(key)] = int(value[:-1])
        else:
            fields[unescape(key)] = float(value)
    return unescape(measurement), tags, fields, int(stamp)
