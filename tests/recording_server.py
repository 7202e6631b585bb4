"""A recording HTTP endpoint on loopback for the end-to-end tests.

``RecordingServer`` is a real ``http.server`` on 127.0.0.1 (port 0, in a thread). Every POST is
recorded -- path with query, headers, the body as sent (gzip) and decompressed -- *before* it is
answered, then ``respond`` decides the answer: an HTTP status, or :data:`DROP` to close the
connection without a word (a server that stored the batch and then lost the link). ``respond`` may
also sleep, to keep a request in flight while the test kills the client; it may forward the body to
a real server and answer with that server's status (a recording proxy).

``exchanges`` lists every request with the answer the server decided on (``status``; None when it
dropped the connection). A 2xx is recorded before it is written, as a real server stores a batch and
then answers: a client killed meanwhile never learns of it, which is exactly the replay case. A
request whose body did not arrive complete (the client was killed mid-upload) is recorded with
``complete`` False and is never answered.
"""

from __future__ import annotations

import gzip
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

DROP = None  # an answer from ``respond``: close the connection without answering


@dataclass
class Exchange:
    """One request and the server's answer; the times are monotonic seconds: ``answered`` when
    the answer was decided, ``finished`` when the handler was done with the request (answer
    written, connection dropped, or given up on an incomplete body)."""

    path: str
    headers: dict[str, str]  # lower-case names
    raw: bytes  # as sent, still gzip-compressed
    body: bytes  # decompressed; empty when incomplete
    complete: bool
    received: float
    status: int | None = None  # the answer decided on; None: dropped, or not answered yet
    answered: float | None = None
    finished: float | None = None

    @property
    def accepted(self) -> bool:
        """The server answered 2xx: it keeps what the body holds."""
        return self.status is not None and 200 <= self.status < 300


Respond = Callable[[Exchange], "int | None"]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the uplink's Session expects
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        owner = self.server.owner
        length = int(self.headers.get("Content-Length", "0"))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            raw = self.rfile.read(length)
        except OSError:
            raw = b""
        complete = len(raw) == length
        body = b""
        if complete:
            gzipped = headers.get("content-encoding") == "gzip"
            body = gzip.decompress(raw) if gzipped else raw
        exchange = Exchange(self.path, headers, raw, body, complete, time.monotonic())
        with owner.lock:
            owner.exchanges.append(exchange)
            owner.arrived.notify_all()
        try:
            self._answer(exchange)
        finally:
            with owner.lock:
                exchange.finished = time.monotonic()

    def _answer(self, exchange: Exchange) -> None:
        if not exchange.complete:
            self.close_connection = True
            return
        status = self.server.owner.respond(exchange)
        if status is DROP:
            self.close_connection = True
            return
        with self.server.owner.lock:
            exchange.status, exchange.answered = status, time.monotonic()
        try:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            self.wfile.flush()
        except OSError:  # the client is gone (killed while we took our time)
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: RecordingServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client killed with its connection open resets it: expected here, not worth a
        traceback on stderr. Anything else is reported as usual."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class RecordingServer:
    """See the module docstring. Use as a context manager."""

    def __init__(self, respond: Respond | None = None) -> None:
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)  # notified on every request
        self.exchanges: list[Exchange] = []
        self.respond: Respond = respond or (lambda exchange: 204)
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def url(self, path: str = "/write") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def snapshot(self) -> list[Exchange]:
        """A copy of the list of exchanges so far."""
        with self.lock:
            return list(self.exchanges)

    def wait_for_request(self, after: int, timeout: float) -> bool:
        """Wait until more than ``after`` requests have arrived; False if none came in time."""
        with self.arrived:
            return self.arrived.wait_for(lambda: len(self.exchanges) > after, timeout)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> RecordingServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
