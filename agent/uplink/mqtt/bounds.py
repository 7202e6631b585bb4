"""What this agent reads from a broker: every packet's size bounded before its body is read,
and the CONNACK checked whole before paho-mqtt may take it for a connection.

paho-mqtt reads a packet's body into memory, as much as its Remaining Length announces (up to
256 MiB, MQTT 5 1.5.5), before it looks at it: a broken or hostile broker, or another service on
the broker's port, could take a Pi's memory with one fixed header. And paho takes a CONNACK of
any length whose first bytes say success for a connection. So paho reads the broker through
:class:`BoundedSocket`, which follows the packets in the bytes as they pass (:class:`Packets`)
and refuses, before paho gets the byte that would let it buffer the body:

- a packet larger than :data:`MAX_PACKET_BYTES` (fixed header included, as MQTT 5's Maximum
  Packet Size counts it; the same number goes to the broker in CONNECT, so a conforming broker
  never sends one);
- a first packet that is not a CONNACK, or a second CONNACK (MQTT 5 3.2.0-1, 3.2.0-2);
- a CONNACK that is not well formed: flags in its fixed header or reserved acknowledge flags
  set, or a length other than its two bytes and its properties (3.2.2; a broker that does not
  speak MQTT 5 may refuse with the two bytes of MQTT 3.1.1).

A refusal ends the connection (the read fails as a lost connection does; the socket is shut
down) and is reported to the transport, which answers the send ``retry`` in its own words.

Why the bound is 16 KiB: the agent publishes only and never subscribes, so all a broker sends it
is a CONNACK, PUBACKs, PINGRESPs and perhaps a DISCONNECT -- 2 to 5 bytes each, plus MQTT 5
properties: a CONNACK's fixed-size ones come to about 30 bytes, its strings (an assigned client
id -- never, the agent sends one --, a server reference) to a few hundred; a reason string and
user properties are diagnostics a broker must leave out when they would pass the client's
Maximum Packet Size (3.2.2.3.9, 3.2.2.3.10, 3.4.2.2.2, 3.14.2.2.3). Real brokers (Mosquitto,
EMQX, HiveMQ, ThingsBoard) send CONNACKs under 100 bytes. 16 KiB is fifty times anything
legitimate, a few thousandths of a percent of a Pi Zero 2 W's 512 MB, and 1/16384 of what paho
would buffer (and before this, allocate at each read: it asks the socket for the whole body at
once). A subscription, if the agent ever takes one, needs a bound of its own.

Why a socket and not an override of paho's reading: the socket is where every byte paho reads
comes from, whatever its reading code looks like -- paho 2.x's ``_packet_read`` asks for one
byte, then one byte per length byte, then the whole body, but a release that read ahead in
larger chunks would be bounded the same, since :class:`Packets` parses any chunking. paho's own
websocket transport is such a wrapper; the methods paho 2.x calls on a socket are its
``SocketLike`` protocol (``recv``, ``send``, ``close``, ``fileno``, ``setblocking``, and
``pending`` when present), and :class:`BoundedSocket` has those only: a paho that called
another (``recv_into``) would fail the connection, not read around the bound. It is put in
place by :func:`install` between CONNECT and the start of paho's network thread (no byte has
been read then); the one private name it relies on, ``Client._sock`` (paho's since 1.0), is
checked through the public ``Client.socket()`` -- a paho without it gets no connection, with a
clear reason, rather than an unbounded one -- and the transport takes a CONNACK only if this
module checked it (:attr:`Packets.connack_checked`).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # paho is imported by the first connection only
    from paho.mqtt.client import Client

MAX_PACKET_BYTES = 16 * 1024  # the largest packet taken from a broker, fixed header included
MAX_LENGTH_BYTES = 4  # MQTT 5 1.5.5: a Variable Byte Integer has at most four bytes
CONNACK = 2
NAMES = ("reserved type 0", "CONNECT", "CONNACK", "PUBLISH", "PUBACK", "PUBREC", "PUBREL",
         "PUBCOMP", "SUBSCRIBE", "SUBACK", "UNSUBSCRIBE", "UNSUBACK", "PINGREQ", "PINGRESP",
         "DISCONNECT", "AUTH")


class Violation(ConnectionError):
    """The broker sent what this agent does not read; the message says what, for people. An
    OSError: paho-mqtt takes a read that raises one for a lost connection."""


class Packets:
    """Follows MQTT packets through the bytes a broker sends, as they arrive in any chunks;
    :meth:`feed` raises :class:`Violation` for what is refused (see the module docstring).
    Holds at most one CONNACK's bytes, never a packet's body otherwise."""

    def __init__(self, limit: int = MAX_PACKET_BYTES) -> None:
        self.limit = limit
        self.packets = 0  # whole packets seen
        self.connack_checked = False  # a CONNACK arrived and passed the checks
        self._header: int | None = None  # the fixed header's first byte of the packet read
        self._length = self._length_bytes = self._left = 0
        self._in_body = False  # past the Remaining Length
        self._body: bytearray | None = None  # a CONNACK's, to check it whole

    @property
    def _name(self) -> str:
        assert self._header is not None
        return NAMES[self._header >> 4]

    def feed(self, data: bytes) -> None:
        """Follow ``data``, the next bytes from the broker."""
        i, n = 0, len(data)
        while i < n:
            if self._header is None:  # a packet begins
                self._header, i = data[i], i + 1
                self._length = self._length_bytes = 0
                kind = self._header >> 4
                if self.packets == 0 and kind != CONNACK:
                    raise Violation(f"what is not a CONNACK first (byte 0x{self._header:02X}, "
                                    f"as an MQTT fixed header a {self._name})")
                if self.packets > 0 and kind == CONNACK:
                    raise Violation("a second CONNACK")
            elif not self._in_body:  # its Remaining Length
                byte, i = data[i], i + 1
                self._length += (byte & 0x7F) << (7 * self._length_bytes)
                self._length_bytes += 1
                if byte & 0x80:
                    if self._length_bytes == MAX_LENGTH_BYTES:
                        raise Violation(f"a {self._name} whose Remaining Length runs past "
                                        f"{MAX_LENGTH_BYTES} bytes")
                    continue
                size = 1 + self._length_bytes + self._length
                if size > self.limit:
                    raise Violation(f"a {self._name} of {size:,} bytes, more than the "
                                    f"{self.limit:,} this agent reads from a broker")
                self._left, self._in_body = self._length, True
                if self._header >> 4 == CONNACK:
                    self._body = bytearray()
                if self._left == 0:
                    self._end()
            else:  # its body
                take = min(self._left, n - i)
                if self._body is not None:
                    self._body += data[i:i + take]
                i, self._left = i + take, self._left - take
                if self._left == 0:
                    self._end()

    def _end(self) -> None:
        """A whole packet passed: check it if it is the CONNACK."""
        if self._body is not None:
            assert self._header is not None
            problem = connack_problem(self._header, bytes(self._body))
            if problem is not None:
                raise Violation(f"a malformed CONNACK ({problem})")
            self.connack_checked = True
        self.packets += 1
        self._header, self._body, self._in_body = None, None, False


def connack_problem(header: int, body: bytes) -> str | None:
    """What is wrong with a CONNACK (its fixed header's first byte, then the rest), or None.
    MQTT 5 3.2: acknowledge flags, reason code, properties (their length, then themselves),
    nothing after. Whether the properties themselves are well formed is paho's to judge: it
    refuses a CONNACK whose properties it cannot read, and that is no connection either."""
    if header != CONNACK << 4:
        return f"fixed header 0x{header:02X}, not 0x20"
    if len(body) < 2:
        return f"{len(body)} byte(s) after the fixed header, fewer than 2"
    flags, code = body[0], body[1]
    if flags & 0xFE:
        return f"reserved acknowledge flags set: 0x{flags:02X}"
    if len(body) == 2:  # MQTT 3.1.1's CONNACK: a refusal from a broker without MQTT 5
        return "a success without properties" if code == 0 else None
    length, shift, at = 0, 0, 2
    while True:
        if at == len(body) or at - 2 == MAX_LENGTH_BYTES:
            return "its property length is cut off or too long"
        byte, at = body[at], at + 1
        length += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    if at + length != len(body):
        return (f"{len(body)} bytes after the fixed header where its {length} byte(s) of "
                f"properties make {at + length}")
    return None


class BoundedSocket:
    """The socket paho-mqtt reads a broker through: a connected socket (plain or TLS) whose
    incoming bytes pass through :class:`Packets`. The first refusal calls ``refused`` with
    what the broker sent, shuts the socket down, and fails this and every later read."""

    def __init__(self, sock: socket.socket, packets: Packets,
                 refused: Callable[[str], None]) -> None:
        self.raw, self.packets, self._refused = sock, packets, refused
        self.violation: str | None = None

    def recv(self, buffer_size: int) -> bytes:
        if self.violation is not None:
            raise Violation(self.violation)
        data = self.raw.recv(max(1, min(buffer_size, self.packets.limit)))
        try:
            self.packets.feed(data)
        except Violation as exc:
            self.violation = str(exc)
            self._refused(self.violation)  # before paho hears of it: the reason comes first
            self.shutdown()
            raise
        return data

    def send(self, buffer: bytes | bytearray) -> int:
        return self.raw.send(buffer)

    def close(self) -> None:
        self.raw.close()

    def fileno(self) -> int:
        return self.raw.fileno()

    def setblocking(self, flag: bool) -> None:
        self.raw.setblocking(flag)

    def pending(self) -> int:
        """TLS bytes decrypted but not read yet (paho reads them without select)."""
        pending = getattr(self.raw, "pending", None)
        return int(pending()) if pending is not None else 0

    def shutdown(self) -> None:
        """Cut the connection now, from any thread."""
        with contextlib.suppress(OSError):
            self.raw.shutdown(socket.SHUT_RDWR)


def install(client: Client, refused: Callable[[str], None]) -> BoundedSocket | None:
    """Have ``client`` -- connected (CONNECT sent), its network thread not started -- read the
    broker through a :class:`BoundedSocket`; None if this paho cannot be made to."""
    sock = client.socket()
    if not isinstance(sock, socket.socket):  # an SSLSocket is one too
        return None
    bounded = BoundedSocket(sock, Packets(), refused)
    client._sock = bounded  # paho's one socket, the one it reads and socket() returns
    return bounded if client.socket() is bounded else None
