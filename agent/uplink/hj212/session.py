"""One TCP connection to the platform and the thread that reads it.

The reader thread cuts packets out of the stream (agent.uplink.hj212.packet.Reader: framing,
length and CRC checked), hands data acknowledgements (CN 9014) to the sender waiting for that
QN, and passes every other packet -- the platform's requests -- to a handler, which answers on
the same connection. While nothing has been written for ``heartbeat`` seconds it sends the
heartbeat packet the platform expects (``heartbeat_cn``), if one is configured; TCP keepalive
is on in any case. A stream that is not HJ 212, a reset or a close ends the connection: the
sender waiting hears why, and the next send opens a new one.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable

from agent.uplink.hj212.packet import PacketError, Reader, Segment, parse_segment, unframe

log = logging.getLogger("envagent.uplink.hj212")

CN_DATA_ACK = "9014"  # 6.6.3 / appendix C: 数据应答
RECV_BYTES = 4096
TICK_S = 1.0  # the reader looks at the heartbeat this often when the line is quiet
MAX_ACKS = 64  # acknowledgements nobody waits for are forgotten beyond this many


class Closed(ConnectionError):
    """The connection ended; the message says why."""


class Connection:
    """A connected socket, its reader thread and the acknowledgements it has seen."""

    def __init__(self, sock: socket.socket, *, name: str,
                 on_request: Callable[[Segment, Connection], None],
                 heartbeat: Callable[[], bytes | None], heartbeat_s: float) -> None:
        self.sock = sock
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self._on_request, self._heartbeat, self._heartbeat_s = on_request, heartbeat, heartbeat_s
        self._write = threading.Lock()
        self._cond = threading.Condition()
        self._acks: list[str] = []
        self._why: str | None = None
        self.last_write = time.monotonic()
        self._thread = threading.Thread(target=self._read, name=f"hj212-{name}", daemon=True)
        self._thread.start()

    @property
    def closed(self) -> str | None:
        """Why the connection ended, or None while it is open."""
        with self._cond:
            return self._why

    def send(self, packet: bytes) -> None:
        if (why := self.closed) is not None:
            raise Closed(why)
        with self._write:
            self.sock.sendall(packet)
            self.last_write = time.monotonic()

    def forget(self, qn: str) -> None:
        """Drop an acknowledgement of ``qn`` that came before its packet was sent again."""
        with self._cond:
            self._acks = [a for a in self._acks if a != qn]

    def await_ack(self, qn: str, timeout: float) -> bool:
        """Whether the data acknowledgement of ``qn`` came within ``timeout``; Closed when the
        connection ended first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if qn in self._acks:
                    self._acks.remove(qn)
                    return True
                if self._why is not None:
                    raise Closed(self._why)
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)

    def close(self, why: str = "closed by the agent") -> None:
        self._end(why)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=2.0)

    def _end(self, why: str) -> None:
        with self._cond:
            if self._why is None:
                self._why = why
            self._cond.notify_all()

    def _read(self) -> None:
        reader = Reader()
        try:
            while self.closed is None:
                self.sock.settimeout(TICK_S)
                try:
                    data = self.sock.recv(RECV_BYTES)
                except TimeoutError:
                    self._beat()
                    continue
                if not data:
                    raise Closed("the platform closed the connection")
                for raw in reader.feed(data):
                    self._dispatch(parse_segment(unframe(raw)))
                self._beat()
        except PacketError as exc:
            self._end(f"the platform sent what is not HJ 212: {exc}")
        except OSError as exc:
            self._end(str(exc) if isinstance(exc, Closed)
                      else f"{type(exc).__name__}: {exc.strerror or exc}")

    def _dispatch(self, segment: Segment) -> None:
        if segment.cn == CN_DATA_ACK:
            with self._cond:
                self._acks = [*self._acks[-(MAX_ACKS - 1):], segment.qn]
                self._cond.notify_all()
            return
        try:
            self._on_request(segment, self)
        except Exception:  # noqa: BLE001 - a bad request never ends the connection
            log.exception("answering the platform's CN %s (QN %s) failed", segment.cn,
                          segment.qn)

    def _beat(self) -> None:
        if self._heartbeat_s <= 0 or time.monotonic() - self.last_write < self._heartbeat_s:
            return
        packet = self._heartbeat()
        if packet is not None:
            self.send(packet)
