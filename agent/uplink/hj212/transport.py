"""The HJ 212 transport: real-time data (CN 2011) over one TCP connection kept open to the
platform, each packet delivered only when its data acknowledgement has come back.

Delivery (HJ 212-2017 6.4 and appendix C): every packet asks for an acknowledgement (Flag's A
bit); the platform answers with CN 9014 and the same QN. A packet with no such answer within
``overtime`` (default 10 s) is sent again, byte-identical (same QN: it derives from the
reading's time, not the send time, so a replay after a restart is identical too), ``recount``
times (default 3); then the connection is dropped and the worker backs off with full jitter.
Packets go one at a time (stop and wait), so an acknowledgement always answers the packet on
the wire; a sample time split into packets counts only once all of them are acknowledged.
The worker hears, in its words (agent.uplink.sink):

=================================================  ============================================
every packet acknowledged                          delivered
a packet unacknowledged after its resends, a       retry, with ``accepted`` = the readings of
connection refused, reset or timed out, a          the sample times acknowledged so far (the
platform that sends what is not HJ 212             worker acks those, keeps the rest)
no password (PW), or one the standard cannot       auth (the worker reads the file again every
carry                                              ``auth_retry``)
a stop (:meth:`Hj212Sink.refuse`) between          stopped, with ``accepted`` as above
packets, or :meth:`Hj212Sink.abort`
=================================================  ============================================

What else the platform sends on the connection (requests, acks of other QNs) is read, checked
and left unanswered by this version. HJ 212 has no TLS and no authentication beyond the
platform's acknowledgement: the PW travels in clear, so networks carry it over a private APN or
a VPN (README). The PW is never logged: log lines name the upstream, host and MN only.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from agent.config import Config, UplinkConfig
from agent.config.hj212 import Hj212Config
from agent.core.credentials import Secret
from agent.core.reading import Reading
from agent.uplink.hj212.packet import (
    PW_FORBIDDEN,
    PW_PATTERN,
    PacketError,
    Reader,
    frame,
    parse_segment,
    unframe,
)
from agent.uplink.hj212.realtime import Group, RealtimeEncoder, plan
from agent.uplink.lineprotocol import Epochs
from agent.uplink.sink import Answer, Endpoint, Outcome, Transport, Verdict

log = logging.getLogger("envagent.uplink.hj212")

CN_DATA_ACK = "9014"  # 6.6.3 / appendix C: 数据应答
RECV_BYTES = 4096
NO_PW_HINT = ("put the platform's password (PW) in the file named by password_file, or in the "
              "systemd credential upload-token-<name>; it is read again every auth_retry")


class Hj212Sink:
    """One platform's connection; a :class:`~agent.uplink.sink.Sink`."""

    documents = False  # commissioning records have no place in HJ 212

    def __init__(self, host: str, port: int, settings: Hj212Config, *, name: str = "default",
                 connect_timeout: float = 10.0,
                 connect: Callable[..., socket.socket] = socket.create_connection) -> None:
        self.host, self.port, self.settings = host, port, settings
        self.where = f"'{name}' at hj212://{host}:{port} (MN {settings.mn})"
        self.encoder = RealtimeEncoder(st=settings.st, mn=settings.mn,
                                       zone=ZoneInfo(settings.timezone), codes=settings.codes)
        self.connect_timeout = connect_timeout
        self._connect = connect
        self._sock: socket.socket | None = None
        self._reader = Reader()
        self._lock = threading.Lock()
        self._refused = False
        self._aborted = False

    def encode(self, readings: Sequence[Reading]) -> bytes:
        return self.encoder.encode(readings)

    def set_epochs(self, epochs: Epochs) -> None:
        """HJ 212 carries no tags: the commissioning epochs change nothing."""

    def send(self, body: bytes, token: Secret | None) -> Answer:
        """Every packet of ``body``, each acknowledged (see the module docstring)."""
        if token is None:
            return Answer(Outcome.AUTH, f"no password (PW) for {self.where}", NO_PW_HINT)
        pw = token.reveal()
        if not PW_PATTERN.fullmatch(pw) or PW_FORBIDDEN & set(pw):
            return Answer(Outcome.AUTH, "the password (PW) file does not hold 1 to 6 visible "
                          "characters without ; & = , (HJ 212-2017 table 4)", NO_PW_HINT)
        groups = plan(body, st=f"{self.settings.st:02d}", mn=self.settings.mn, pw=pw)
        with self._lock:
            if self._refused:
                return Answer(Outcome.STOPPED, "stopping")
            self._aborted = False
        accepted = 0
        for group in groups:
            answer = self._deliver(group, accepted)
            if answer is not None:
                return answer
            accepted += group.readings
        return Answer(Outcome.DELIVERED, f"{len(groups)} sample time(s) acknowledged")

    def _deliver(self, group: Group, accepted: int) -> Answer | None:
        """Send one sample time's packets; None when all were acknowledged."""
        for segment in group.segments:
            if self._refused or self._aborted:
                return self._answer(Outcome.STOPPED, "stopping", accepted)
            packet = frame(segment.render())
            failure = self._exchange(packet, segment.qn)
            if failure is not None:
                self._drop()
                outcome = Outcome.STOPPED if self._aborted else Outcome.RETRY
                return self._answer(outcome, failure, accepted)
        return None

    def _exchange(self, packet: bytes, qn: str) -> str | None:
        """Send ``packet`` until its acknowledgement comes: None, or why it did not."""
        attempts = 1 + self.settings.recount
        for _ in range(attempts):
            try:
                sock = self._open()
                sock.sendall(packet)
                if self._await_ack(sock, qn):
                    return None
            except PacketError as exc:
                return f"the platform sent what is not HJ 212: {exc}"
            except OSError as exc:
                return f"{type(exc).__name__}: {exc.strerror or exc} ({self.host}:{self.port})"
        return (f"no data acknowledgement (CN {CN_DATA_ACK}) for QN={qn} within "
                f"{self.settings.overtime:g} s, {attempts} time(s)")

    def _await_ack(self, sock: socket.socket, qn: str) -> bool:
        """Whether the acknowledgement of ``qn`` came within ``overtime``; other packets are
        read, checked and passed over."""
        deadline = time.monotonic() + self.settings.overtime
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data = sock.recv(RECV_BYTES)
            except TimeoutError:
                return False
            if not data:
                raise ConnectionResetError(0, "the platform closed the connection")
            for raw in self._reader.feed(data):
                segment = parse_segment(unframe(raw))
                if segment.cn == CN_DATA_ACK and segment.qn == qn:
                    return True
                log.debug("%s: passed over CN %s QN %s", self.where, segment.cn, segment.qn)
        return False

    def _open(self) -> socket.socket:
        if self._sock is None:
            self._sock = self._connect((self.host, self.port), timeout=self.connect_timeout)
            self._reader = Reader()
            log.debug("%s: connected", self.where)
        return self._sock

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    @staticmethod
    def _answer(outcome: Outcome, detail: str, accepted: int) -> Answer:
        hint = "delivery retries by itself; if this lasts, check the link and the platform"
        return Answer(outcome, detail, hint if outcome is Outcome.RETRY else "",
                      accepted=accepted or None)

    def refuse(self) -> None:
        """No packet starts from now on; the one on the wire gets its answer."""
        with self._lock:
            self._refused = True

    def abort(self) -> None:
        """Cut the exchange in flight short (from another thread)."""
        with self._lock:
            self._aborted = True
            sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.refuse()
        self.abort()
        self._drop()


# --- the registry's entry -----------------------------------------------------------------------


def endpoint(url: str) -> Endpoint:
    """Where doctor's DNS and TCP probes go; HJ 212 has no TLS."""
    parts = urlsplit(url)
    return Endpoint(parts.hostname or "", parts.port or 0, tls=False)


def build(config: Config, settings: UplinkConfig, *, simulated: bool = False,
          wall: Callable[[], float] = time.time) -> Hj212Sink:
    """The sink of an hj212:// ``[[uplink]]``. ``simulated`` marks nothing: HJ 212 has no
    place for it (a rehearsal must not be pointed at a bureau's platform)."""
    if settings.hj212 is None:
        raise ValueError(f"uplink '{settings.name}' has no HJ 212 settings")
    where = endpoint(settings.url)
    return Hj212Sink(where.host, where.port, settings.hj212, name=settings.name,
                     connect_timeout=settings.connect_timeout)


def check_write(config: Config, settings: UplinkConfig, token: Secret | None,
                named: str | None) -> Verdict:
    """Doctor's probe: a TCP connection to the platform, opened and closed. HJ 212 has no way
    to check the password without sending data: the platform's data acknowledgement is the
    only word on it."""
    if token is None:
        return Verdict("FAIL", "no password (PW) for the platform", NO_PW_HINT)
    where = endpoint(settings.url)
    try:
        with socket.create_connection((where.host, where.port),
                                      timeout=settings.connect_timeout):
            pass
    except OSError as exc:
        return Verdict("FAIL", f"cannot connect to {where.host}:{where.port}: "
                       f"{exc.strerror or exc}", "see the dns and tcp checks")
    return Verdict("PASS", f"the platform takes TCP connections; a password from {named} is "
                   "ready. HJ 212 has no TLS and no authentication check beyond the platform's "
                   "data acknowledgement (CN 9014): the first delivery says whether PW and MN "
                   "are right", None)


TRANSPORT = Transport("HJ 212", build, endpoint, check_write)
