"""A platform for the tests, written from HJ 212-2017 itself (not from the agent's code): a TCP
server on loopback that validates every packet -- framing, length, CRC (appendix A), the data
segment's fields (table 4), real-time data's CP (DataTime, ``<code>-Rtd``, ``<code>-Flag``) --
stores what it got and acknowledges each packet with CN 9014 and the same QN (appendix C).

It can misbehave on request (:attr:`Hj212Receiver.mode`): ``"no_ack"`` never answers,
``"late_ack"`` answers after ``late_s``, ``"wrong_qn"`` answers with another QN,
``"disconnect"`` reads half of the next packet and drops the connection. ``ack_limit`` stops
acknowledging after that many packets. A packet that breaks the standard is recorded in
:attr:`errors` and the connection is closed, as a platform would.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from dataclasses import dataclass, field

MAX_SEGMENT = 1024  # 6.3.1
FLAGS = "NFMSDCTB"  # 6.6.4
SEGMENT = re.compile(
    r"QN=(?P<QN>[0-9]{17});ST=(?P<ST>[0-9]{2});CN=(?P<CN>[0-9]{4});PW=(?P<PW>[!-~]{1,6});"
    r"MN=(?P<MN>[0-9A-Za-z]{1,24});Flag=(?P<Flag>[0-9]{1,3});"
    r"(?:PNUM=(?P<PNUM>[0-9]{1,4});PNO=(?P<PNO>[0-9]{1,4});)?CP=&&(?P<CP>.*)&&")
ITEM = re.compile(r"(?P<code>[a-z][0-9]{5})-(?P<kind>Rtd|Min|Avg|Max|Flag)=(?P<value>[^,;]*)")
DATA_CNS = {"2011": ("Rtd",), "2051": ("Min", "Avg", "Max"), "2061": ("Min", "Avg", "Max"),
            "2031": ("Min", "Avg", "Max")}  # appendix C: real-time, minute, hourly, daily
ANSWERS = {"9011": re.compile(r"QnRtn=[0-9]{1,3}"), "9012": re.compile(r"ExeRtn=[0-9]{1,3}"),
           "1011": re.compile(r"SystemTime=[0-9]{14}"),
           "1061": re.compile(r"RtdInterval=[0-9]{1,4}")}
NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


def crc(data: bytes) -> int:
    """Appendix A, written out again."""
    value = 0xFFFF
    for byte in data:
        value = (value >> 8) ^ byte
        for _ in range(8):
            carry = value & 1
            value >>= 1
            if carry:
                value ^= 0xA001
    return value


def packet(segment: str) -> bytes:
    data = segment.encode("ascii")
    return b"##%04d%s%04X\r\n" % (len(data), data, crc(data))


@dataclass
class Received:
    """One valid packet: its bytes, the data segment's fields and CP's items."""

    raw: bytes
    fields: dict[str, str]
    data_time: str
    values: dict[str, float] = field(default_factory=dict)  # code -> Rtd
    flags: dict[str, str] = field(default_factory=dict)
    stats: dict[str, dict[str, float]] = field(default_factory=dict)  # code -> Min, Avg, Max

    @property
    def cn(self) -> str:
        return self.fields["CN"]


class Hj212Receiver:
    def __init__(self, *, port: int = 0, password: str = "123456") -> None:
        self.password = password
        self.mode = "ok"
        self.late_s = 0.5
        self.ack_limit: int | None = None
        self.received: list[Received] = []
        self.errors: list[str] = []
        self.acked = 0
        self.heartbeat_cn: str | None = None
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", port))
        self.port = self._listener.getsockname()[1]
        self._listener.settimeout(0.05)  # accept() looks at the stop this often
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"hj212://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._listener.close()
        with self._lock:
            for conn in self._conns:
                with _quiet():
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()

    def __enter__(self) -> Hj212Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            with self._lock:
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        with conn:
            while not self._stop.is_set():
                try:
                    data = conn.recv(4096)
                except OSError:
                    return
                if not data:
                    return
                buffer += data
                if self.mode == "disconnect" and buffer:
                    self.mode = "ok"  # once: the next connection is served
                    return  # half a packet read, the rest never
                while len(buffer) >= 6:
                    if buffer[:2] != b"##" or not buffer[2:6].isdigit():
                        self.errors.append(f"bad framing: {buffer[:10]!r}")
                        return
                    total = 6 + int(buffer[2:6]) + 6
                    if int(buffer[2:6]) > MAX_SEGMENT:
                        self.errors.append(f"data segment of {int(buffer[2:6])} characters")
                        return
                    if len(buffer) < total:
                        break
                    raw, buffer = buffer[:total], buffer[total:]
                    got = self._check(raw)
                    if got is None:
                        return
                    self._answer(conn, got)

    def _check(self, raw: bytes) -> Received | None:
        length = int(raw[2:6])
        data, tail = raw[6:6 + length], raw[6 + length:]
        if tail[4:] != b"\r\n" or not re.fullmatch(rb"[0-9A-F]{4}", tail[:4]):
            self.errors.append(f"bad CRC digits or trailer: {tail!r}")
            return None
        if int(tail[:4], 16) != crc(data):
            self.errors.append(f"CRC {tail[:4]!r} != {crc(data):04X}")
            return None
        match = SEGMENT.fullmatch(data.decode("ascii"))
        if match is None:
            self.errors.append(f"bad data segment: {data[:120]!r}")
            return None
        fields = {k: v for k, v in match.groupdict().items() if v is not None}
        if fields["PW"] != self.password:
            self.errors.append("wrong PW")
            return None
        cn, cp = fields["CN"], fields["CP"]
        if cn in ANSWERS or cn == self.heartbeat_cn:
            if cn in ANSWERS and not ANSWERS[cn].fullmatch(cp):
                self.errors.append(f"bad CP of CN {cn}: {cp[:60]!r}")
                return None
            got = Received(raw, fields, "")
        else:
            got = self._data(raw, fields)
            if got is None:
                return None
        with self._lock:
            self.received.append(got)
        return got

    def _data(self, raw: bytes, fields: dict[str, str]) -> Received | None:
        """Data of CN 2011, 2051, 2061 or 2031: a DataTime and per code its items."""
        items = fields["CP"].split(";")
        time_match = re.fullmatch(r"DataTime=([0-9]{14})", items[0])
        kinds = DATA_CNS.get(fields["CN"])
        if kinds is None or time_match is None:
            self.errors.append(f"not data with a DataTime: CN {fields['CN']}, "
                               f"{fields['CP'][:60]!r}")
            return None
        got = Received(raw, fields, time_match[1])
        for item in items[1:]:
            for part in item.split(","):
                m = ITEM.fullmatch(part)
                if m is None or (m["kind"] != "Flag" and (
                        m["kind"] not in kinds or not NUMBER.fullmatch(m["value"]))) or (
                        m["kind"] == "Flag" and m["value"] not in FLAGS):
                    self.errors.append(f"bad CP item {part!r} in CN {fields['CN']}")
                    return None
                if m["kind"] == "Rtd":
                    got.values[m["code"]] = float(m["value"])
                elif m["kind"] == "Flag":
                    got.flags[m["code"]] = m["value"]
                else:
                    got.stats.setdefault(m["code"], {})[m["kind"]] = float(m["value"])
        return got

    def request(self, cn: str, cp: str, *, qn: str = "20260101120000123",
                mn: str | None = None, password: str | None = None) -> str:
        """Send the platform's request on the newest connection; its QN."""
        mn = mn or next(r.fields["MN"] for r in self.data_packets())
        with self._lock:
            conn = self._conns[-1]
        conn.sendall(packet(f"QN={qn};ST=22;CN={cn};PW={password or self.password};MN={mn};"
                            f"Flag=5;CP=&&{cp}&&"))
        return qn

    def _answer(self, conn: socket.socket, got: Received) -> None:
        if not int(got.fields["Flag"]) & 1 or self.mode == "no_ack":
            return
        if self.ack_limit is not None and self.acked >= self.ack_limit:
            return
        qn = got.fields["QN"]
        if self.mode == "wrong_qn":
            qn = "19700101000000000"
        if self.mode == "late_ack":
            time.sleep(self.late_s)
        ack = packet(f"QN={qn};ST=91;CN=9014;PW={self.password};MN={got.fields['MN']};"
                     "Flag=4;CP=&&&&")
        with _quiet():
            conn.sendall(ack)
            self.acked += 1

    def data_packets(self, cn: str = "2011") -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.cn == cn]


class _quiet:
    """Ignore OSError: a client gone is part of the tests."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> bool:
        return kind is not None and issubclass(kind, OSError)
