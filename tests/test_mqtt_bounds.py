"""What an MQTT upstream reads from its broker is bounded (agent.uplink.mqtt.bounds): a packet
above MAX_PACKET_BYTES ends the connection before its body is read, a malformed CONNACK is no
connection, and either way the batch stays in the outbox and the next connection delivers it.

The broker here is a plain socket server on loopback that speaks just enough MQTT 5 (a CONNACK,
a PUBACK per QoS 1 PUBLISH, a PINGRESP) and misbehaves as each connection's plan says; no
Mosquitto needed. A "huge" packet announces 200 MiB and streams STREAM_BYTES of it: enough that
a client buffering it shows, little enough to be quick.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import tomllib
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.cli.statusview import trouble_words
from agent.config import Config, parse_config
from agent.core.reading import Reading
from agent.store.outbox import Outbox
from agent.store.outbox import Subscriber as Cursor
from agent.uplink.mqtt.bounds import MAX_PACKET_BYTES, Packets, Violation, connack_problem
from agent.uplink.mqtt.transport import MqttSink, check_write
from agent.uplink.sink import NOT_ACKNOWLEDGED, Answer, Outcome
from agent.uplink.state import UplinkState
from agent.uplink.transports import build_sink
from agent.uplink.worker import Step, Uplink, state_file
from drivers.sim.clock import FakeClock

HUGE = 200 * 1024 * 1024  # the Remaining Length a huge packet announces
STREAM_BYTES = 32 * 1024 * 1024  # what of it is sent (more than loopback buffers take)
CHUNK = bytes(1 << 20)  # made before any measurement: sending it allocates nothing
GROWTH_LIMIT = 4 * 1024 * 1024  # what an attempt may allocate at its peak, paho included
IO_TIMEOUT_S = 20.0  # the fake broker's sockets: a generous bound, never a wait in a pass
GOOD_CONNACK = b"\x20\x03\x00\x00\x00"  # success, no session, no properties
NS = 1_000_000_000
T0 = 1_767_225_600 * NS
STATION = '[unit]\nid = "u1"\nsite = "Roof"\n[[sensor]]\nid = "air"\ndriver = "bme280"\n' \
          'address = 0x76\n'


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, byte = n >> 7, n & 0x7F
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


# --- the fake broker -----------------------------------------------------------------------------


@dataclass
class Seen:
    """One connection as the broker saw it."""

    plan: str
    connect_properties: dict[str, object] = field(default_factory=dict)
    topics: list[str] = field(default_factory=list)
    streamed: int = 0  # bytes of a huge packet the client took before it closed


class FakeBroker:
    """MQTT 5 on loopback; the n-th connection follows ``plans[n]`` (then ``sane``):

    - ``sane``: CONNACK success, a PUBACK (success) for every QoS 1 PUBLISH;
    - ``huge-connack``: a CONNACK announcing 200 MiB, streamed until the client goes;
    - ``huge-puback``: a good CONNACK, then the first PUBLISH answered by a huge PUBACK;
    - ``huge-publish``: a good CONNACK, then at once a huge unsolicited PUBLISH;
    - raw bytes: sent instead of the CONNACK, then as ``sane``.
    """

    def __init__(self, *plans: str | bytes) -> None:
        self.plans = list(plans)
        self.seen: list[Seen] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)  # wakes accept() (close alone does not)
        self.server.close()
        self._accepting.join(IO_TIMEOUT_S)
        for thread in self._threads:
            thread.join(IO_TIMEOUT_S)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            n = len(self.seen)
            plan = self.plans[n] if n < len(self.plans) else "sane"
            seen = Seen(plan if isinstance(plan, str) else f"raw {plan!r}")
            self.seen.append(seen)
            thread = threading.Thread(target=self._serve, args=(client, plan, seen),
                                      daemon=True)
            thread.start()  # before close() can see it, which joins it
            self._threads.append(thread)

    def _serve(self, sock: socket.socket, plan: str | bytes, seen: Seen) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        sock.settimeout(IO_TIMEOUT_S)
        with sock, contextlib.suppress(OSError):
            header, body = read_packet(sock)
            assert header >> 4 == 1, f"expected CONNECT, got 0x{header:02X}"
            properties = Properties(PacketTypes.CONNECT)
            properties.unpack(body[10:])  # after "MQTT", the level, the flags, the keep alive
            seen.connect_properties = properties.json()
            if plan == "huge-connack":
                self._huge(sock, 0x20, seen)
                return
            sock.sendall(plan if isinstance(plan, bytes) else GOOD_CONNACK)
            if plan == "huge-publish":
                self._huge(sock, 0x30, seen)
                return
            while True:
                header, body = read_packet(sock)
                kind = header >> 4
                if kind == 14:  # DISCONNECT
                    return
                if kind == 12:  # PINGREQ
                    sock.sendall(b"\xd0\x00")
                elif kind == 3:  # PUBLISH
                    topic_length = int.from_bytes(body[:2], "big")
                    seen.topics.append(body[2:2 + topic_length].decode())
                    mid = body[2 + topic_length:4 + topic_length]
                    if plan == "huge-puback":
                        self._huge(sock, 0x40, seen)
                        return
                    if (header >> 1) & 3:
                        sock.sendall(b"\x40\x02" + mid)

    @staticmethod
    def _huge(sock: socket.socket, header: int, seen: Seen) -> None:
        """A packet announcing HUGE bytes, streamed until STREAM_BYTES or the client goes."""
        sock.sendall(bytes([header]) + varint(HUGE))
        while seen.streamed < STREAM_BYTES:
            sock.sendall(CHUNK)
            seen.streamed += len(CHUNK)


def read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        more = sock.recv(n - len(data))
        if not more:
            raise ConnectionError("the client closed the connection")
        data += more
    return data


def read_packet(sock: socket.socket) -> tuple[int, bytes]:
    header = read_exactly(sock, 1)[0]
    length, shift = 0, 0
    while True:
        byte = read_exactly(sock, 1)[0]
        length += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return header, read_exactly(sock, length)


@contextlib.contextmanager
def fake_broker(*plans: str | bytes) -> Iterator[FakeBroker]:
    broker = FakeBroker(*plans)
    try:
        yield broker
    finally:
        broker.close()


# --- the agent's side ----------------------------------------------------------------------------


def config_of(broker: FakeBroker) -> Config:
    return parse_config(tomllib.loads(
        STATION + f'[[uplink]]\nname = "broker"\nurl = "{broker.url}"\nallow_insecure = true\n'
                  'backoff_min = "100ms"\nbackoff_max = "1s"\nconnect_timeout = "3s"\n'
                  'read_timeout = "5s"\nbatch_size = 1000\n'), source="t.toml")


def readings(n: int) -> list[Reading]:
    return [Reading("air", "temperature", 20.0 + i, "°C", T0 + i * NS, i, "boot-1", True)
            for i in range(n)]


def worker(outbox: Outbox, config: Config, tmp_path: Path) -> Uplink:
    (settings,) = config.uplinks
    return Uplink(outbox, build_sink(config, settings), settings, clock=FakeClock(),
                  token=lambda: None, state_path=tmp_path / state_file(settings.name),
                  rng=random.Random(3))


def warm_up() -> None:
    """Load what the first connection loads (paho, ssl), so it is not counted as growth."""
    import ssl  # noqa: F401

    import paho.mqtt.client  # noqa: F401
    import paho.mqtt.packettypes  # noqa: F401
    import paho.mqtt.properties  # noqa: F401
    import paho.mqtt.reasoncodes  # noqa: F401


def peak_growth_of_step(uplink: Uplink) -> tuple[Step, int]:
    """One worker step, and how far the memory Python allocated rose above where it began."""
    warm_up()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        step = uplink.step()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return step, peak - before


BATCH = 300


def refused_then_delivered(tmp_path: Path, plan: str, packet: str) -> FakeBroker:
    """The first connection follows ``plan``: the attempt fails, says ``packet`` was too large,
    allocates little, acknowledges nothing; the next connection (sane) delivers all."""
    batch = readings(BATCH)
    with fake_broker(plan) as broker, \
            Outbox(tmp_path / "o.sqlite", max_bytes=64 * 1024**2,
                   subscribers=[Cursor("broker")]) as outbox:
        outbox.append(batch)
        uplink = worker(outbox, config_of(broker), tmp_path)
        try:
            step, growth = peak_growth_of_step(uplink)
            assert growth < GROWTH_LIMIT, f"{growth / 2**20:.1f} MiB at the peak"
            answer = step.answer
            assert step.outcome is Outcome.RETRY and answer is not None, answer
            assert answer.accepted is None, answer
            assert answer.detail.startswith(f"{NOT_ACKNOWLEDGED}: the broker sent a {packet} "
                                            f"of 209,715,205 bytes, more than the "
                                            f"{MAX_PACKET_BYTES:,} this agent reads"), answer
            assert f"127.0.0.1:{broker.port}" in answer.detail
            assert "MQTT 5 broker" in answer.hint
            stats = outbox.stats()
            assert (stats.backlog, stats.delivered, stats.dropped, stats.rejected) == \
                (BATCH, 0, 0, 0), stats
            state = UplinkState.load(tmp_path / state_file("broker"))
            assert state is not None and state.state == "retrying"
            assert trouble_words(state) == "server does not acknowledge"

            again = uplink.step()
            assert again.outcome is Outcome.DELIVERED, again.answer
            assert outbox.stats().backlog == 0
        finally:
            uplink.sink.close()
    first, second = broker.seen[:2]
    assert first.streamed < STREAM_BYTES, "the client read the huge packet to its end"
    assert second.connect_properties["MaximumPacketSize"] == MAX_PACKET_BYTES
    assert len([t for t in second.topics if t.endswith("/air")]) >= 1
    return broker


def test_a_huge_connack_is_refused_before_its_body_is_read(tmp_path: Path) -> None:
    broker = refused_then_delivered(tmp_path, "huge-connack", "CONNACK")
    assert not broker.seen[0].topics  # nothing was published on it


@pytest.mark.parametrize(("plan", "packet"), [("huge-puback", "PUBACK"),
                                              ("huge-publish", "PUBLISH")])
def test_a_huge_packet_after_a_good_connack_ends_that_connection(tmp_path: Path, plan: str,
                                                                 packet: str) -> None:
    refused_then_delivered(tmp_path, plan, packet)


@pytest.mark.parametrize(("connack", "words"), [
    (b"\x20\x64" + bytes(100), "a malformed CONNACK (100 bytes after the fixed header where its "
                               "0 byte(s) of properties make 3)"),
    (b"\x20\x03\xfe\x00\x00", "a malformed CONNACK (reserved acknowledge flags set: 0xFE)"),
    (b"\x2f\x03\x00\x00\x00", "a malformed CONNACK (fixed header 0x2F, not 0x20)"),
    (b"\x20\x02\x00\x00", "a malformed CONNACK (a success without properties)"),
    (b"\x20\x04\x00\x00\x05\x00", "a malformed CONNACK (4 bytes after the fixed header where "
                                  "its 5 byte(s) of properties make 8)"),
    (GOOD_CONNACK + GOOD_CONNACK, "a second CONNACK"),
    (b"\x30\x03\x00\x00\x00", "what is not a CONNACK first (byte 0x30, as an MQTT fixed header "
                              "a PUBLISH)"),
    (b"HTTP/1.1 400 Bad Request\r\n\r\n", "what is not a CONNACK first (byte 0x48"),
])
def test_a_malformed_connack_is_no_connection(tmp_path: Path, connack: bytes,
                                              words: str) -> None:
    """Each of these paho-mqtt 2.2 takes for a successful connect, or waits on, unchecked."""
    batch = readings(20)
    with fake_broker(connack) as broker, \
            Outbox(tmp_path / "o.sqlite", max_bytes=64 * 1024**2,
                   subscribers=[Cursor("broker")]) as outbox:
        outbox.append(batch)
        uplink = worker(outbox, config_of(broker), tmp_path)
        try:
            step = uplink.step()
            assert step.outcome is Outcome.RETRY, step.answer
            assert step.answer is not None
            assert step.answer.detail.startswith(f"{NOT_ACKNOWLEDGED}: the broker sent {words}"), \
                step.answer
            assert outbox.stats().backlog == len(batch)
            assert uplink.step().outcome is Outcome.DELIVERED
            assert outbox.stats().backlog == 0
        finally:
            uplink.sink.close()



def send_two(broker: FakeBroker) -> Answer:
    """One send of two readings by a fresh sink to ``broker``."""
    config = config_of(broker)
    sink = build_sink(config, config.uplinks[0])
    try:
        return sink.send(sink.encode(readings(2)), None)
    finally:
        sink.close()

def test_a_refusal_of_a_broker_without_mqtt5_is_still_read() -> None:
    """MQTT 3.1.1's two-byte CONNACK refusing the protocol version: refused, with its hint."""
    with fake_broker(b"\x20\x02\x00\x01") as broker:
        answer = send_two(broker)
    assert answer.outcome is Outcome.FAILED, answer
    assert "0x84" in answer.detail and "does not speak MQTT 5" in answer.hint


def test_doctor_s_probe_is_bounded_too(tmp_path: Path) -> None:
    with fake_broker("huge-connack") as broker:
        config = config_of(broker)
        verdict = check_write(config, config.uplinks[0], None, None)
        assert broker.seen[0].streamed < STREAM_BYTES
    assert verdict.level == "FAIL" and "a CONNACK of 209,715,205 bytes" in verdict.detail


def test_a_paho_whose_socket_cannot_be_bounded_gets_no_connection(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """If paho read the broker other than through the socket its socket() returns (a renamed
    attribute, say), the transport refuses to connect rather than read unbounded."""
    from paho.mqtt.client import Client

    original = Client.socket
    monkeypatch.setattr(Client, "socket", lambda self: getattr(original(self), "raw",
                                                               original(self)))
    with fake_broker() as broker:
        answer = send_two(broker)
    assert answer.outcome is Outcome.FAILED, answer
    assert "cannot be made to bound what it reads" in answer.detail


def test_a_connack_read_around_the_bounds_is_not_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """If paho got a CONNACK that did not pass the checks (read past the socket), the
    transport does not take it for a connection."""
    monkeypatch.setattr(Packets, "feed", lambda self, data: None)
    with fake_broker() as broker:
        config = config_of(broker)
        sink = build_sink(config, config.uplinks[0])
        assert isinstance(sink, MqttSink)
        try:
            conn, answer = sink.connect(None)
        finally:
            sink.close()
    assert conn is None and answer is not None and answer.outcome is Outcome.RETRY
    assert "paho-mqtt read a CONNACK that envagent did not check" in answer.detail


# --- the parser alone ----------------------------------------------------------------------------


def packet(header: int, body: bytes) -> bytes:
    return bytes([header]) + varint(len(body)) + body


def test_a_packet_of_exactly_the_limit_passes_and_one_more_byte_does_not() -> None:
    body = bytes(MAX_PACKET_BYTES - 3)  # 1 byte of type and flags, 2 of Remaining Length
    assert len(packet(0x40, body)) == MAX_PACKET_BYTES
    packets = Packets()
    packets.feed(GOOD_CONNACK + packet(0x40, body))
    assert packets.packets == 2
    with pytest.raises(Violation, match=f"a PUBACK of {MAX_PACKET_BYTES + 1:,} bytes"):
        Packets().feed(GOOD_CONNACK + packet(0x40, body + b"\0"))


def test_the_refusal_comes_with_the_length_before_any_of_the_body() -> None:
    packets = Packets()
    packets.feed(GOOD_CONNACK + b"\x30")
    packets.feed(b"\xff\xff\xff")
    with pytest.raises(Violation, match="a PUBLISH of 268,435,4"):
        packets.feed(b"\x7f")  # the last length byte: 256 MiB


def test_a_remaining_length_of_five_bytes_is_refused() -> None:
    with pytest.raises(Violation, match="runs past 4 bytes"):
        Packets(limit=2**40).feed(GOOD_CONNACK + b"\x30\x80\x80\x80\x80\x01")


@pytest.mark.parametrize(("header", "body", "problem"), [
    (0x20, b"\x00\x00\x00", None),
    (0x20, b"\x01\x00\x00", None),  # session present
    (0x20, b"\x00\x87\x00", None),  # refused: not authorized
    (0x20, b"\x00\x00\x03\x21\x00\x0a", None),  # Receive Maximum 10
    (0x20, b"\x00\x01", None),  # MQTT 3.1.1: unacceptable protocol version
    (0x20, b"\x00", "1 byte(s) after the fixed header, fewer than 2"),
    (0x20, b"\x00\x00\x80\x80\x80\x80\x01", "its property length is cut off or too long"),
    (0x20, b"\x00\x00\x80", "its property length is cut off or too long"),
    (0x20, b"\x00\x00\x03\x21\x00\x0a\xff", "7 bytes after the fixed header where its 3 byte(s) "
                                            "of properties make 6"),
])
def test_connack_checks(header: int, body: bytes, problem: str | None) -> None:
    assert connack_problem(header, body) == problem


KINDS = (0x30, 0x40, 0xD0, 0xE0)  # PUBLISH, PUBACK, PINGRESP, DISCONNECT (bodies: any bytes)


def stream_of(sizes: list[tuple[int, int]]) -> bytes:
    return GOOD_CONNACK + b"".join(packet(KINDS[kind], bytes(size)) for kind, size in sizes)


@given(sizes=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3000)), max_size=12),
       cuts=st.lists(st.integers(0, 40_000), max_size=30))
def test_any_chunking_of_packets_within_the_limit_passes(sizes: list[tuple[int, int]],
                                                        cuts: list[int]) -> None:
    data = stream_of(sizes)
    points = sorted({c for c in cuts if c < len(data)} | {0, len(data)})
    packets = Packets()
    for start, end in zip(points, points[1:], strict=False):
        packets.feed(data[start:end])
    assert (packets.packets, packets.connack_checked) == (1 + len(sizes), True)


@given(cut=st.integers(1, 4000))
def test_any_chunking_of_an_oversized_packet_is_refused_at_its_length(cut: int) -> None:
    data = GOOD_CONNACK + packet(0x30, bytes(MAX_PACKET_BYTES))
    cut = min(cut, len(data) - 1)
    packets = Packets()
    with pytest.raises(Violation, match="a PUBLISH of"):
        packets.feed(data[:cut])
        packets.feed(data[cut:])
    assert packets.packets == 1

