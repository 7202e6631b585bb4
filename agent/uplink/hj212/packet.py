"""HJ 212-2017's packet layer: framing, the CRC, the data segment -- built and parsed.

A packet (HJ 212-2017 6.3.1, table 3) is ``##`` + the data segment's length as 4 decimal
digits + the data segment (0 to 1024 characters) + its CRC as 4 uppercase hex digits + CR LF.
The data segment (6.3.2, table 4) is ``QN=...;ST=..;CN=....;PW=...;MN=...;Flag=...;`` (with
``PNUM=...;PNO=...;`` after Flag when a message is split) + ``CP=&&...&&``.

The CRC is the standard's own (appendix A), NOT CRC-16/MODBUS, which several implementations
use by mistake: over the data segment's bytes, start with 0xFFFF; for each byte
``crc = (crc >> 8) ^ byte``, then 8 times ``crc = (crc >> 1) ^ 0xA001 if crc & 1 else
crc >> 1``. Conformance vector from the standard: the data segment
``QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;Flag=5;CP=&&RtdInterval=30&&``
has CRC ``1C80``.

The parser is for what comes back (the platform's acknowledgements) and for the test receiver:
it reads from a bounded buffer and refuses a bad length, CRC or field syntax with a
:class:`PacketError` saying which.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from agent.core.errors import AgentError

HEADER = b"##"  # 6.3.1, table 3: 包头
TRAILER = b"\r\n"  # 6.3.1: 包尾 <CR><LF>
LENGTH_DIGITS = 4  # 6.3.1: the data segment's length, 4 decimal digits
CRC_DIGITS = 4  # 6.3.1: the CRC, 4 hex digits
MAX_SEGMENT = 1024  # 6.3.1: the data segment is 0 to 1024 characters
MAX_PACKET = len(HEADER) + LENGTH_DIGITS + MAX_SEGMENT + CRC_DIGITS + len(TRAILER)
CRC_INIT = 0xFFFF  # appendix A
CRC_POLY = 0xA001  # appendix A
# Flag (6.3.2, table 4): V5..V0 D A; V = 000001 for HJ 212-2017, D: the message is split into
# packets (PNUM, PNO), A: the platform must acknowledge.
FLAG_A = 1
FLAG_D = 2
FLAG_VERSION_2017 = 1 << 2
MAX_MN = 24  # 6.3.2, table 4: MN, 27 characters with "MN="
MAX_PW = 6  # 6.3.2, table 4: PW, 9 characters with "PW="
QN_PATTERN = re.compile(r"[0-9]{17}")  # YYYYMMDDhhmmsszzz
MN_PATTERN = re.compile(r"[0-9A-Za-z]{1,24}")
ST_PATTERN = re.compile(r"[0-9]{2}")
CN_PATTERN = re.compile(r"[0-9]{4}")
PW_PATTERN = re.compile(r"[!-~]{1,6}")  # visible ASCII; ';', '&', '=', ',' refused below
PW_FORBIDDEN = frozenset(";&=,")
_PW_VALUE = re.compile(r"(^|;)(PW=?)[^;]*")  # a PW field (or a malformed one) and its value
FLAG_PATTERN = re.compile(r"[0-9]{1,3}")
PNUM_PATTERN = re.compile(r"[0-9]{1,4}")
HEAD_KEYS = ("QN", "ST", "CN", "PW", "MN", "Flag", "PNUM", "PNO")  # table 4's order
CP_OPEN = CP_CLOSE = "&&"


class PacketError(AgentError, ValueError):
    """A packet that breaks the standard; the message says what and where."""


def crc16(data: bytes) -> int:
    """HJ 212-2017 appendix A's CRC over ``data`` (see the module docstring)."""
    crc = CRC_INIT
    for byte in data:
        crc = (crc >> 8) ^ byte
        for _ in range(8):
            crc = (crc >> 1) ^ CRC_POLY if crc & 1 else crc >> 1
    return crc


def frame(segment: str) -> bytes:
    """The packet carrying ``segment`` (ASCII, at most MAX_SEGMENT characters)."""
    data = segment.encode("ascii")
    if len(data) > MAX_SEGMENT:
        raise PacketError(f"data segment of {len(data)} characters; the standard allows "
                          f"{MAX_SEGMENT} at most: split it into packets")
    return b"%s%04d%s%04X%s" % (HEADER, len(data), data, crc16(data), TRAILER)


@dataclass(frozen=True, slots=True)
class Segment:
    """A data segment's fields; ``cp`` is what stands between ``CP=&&`` and ``&&``. ``pw``, the
    platform's password, is left out of the repr (a log line, a traceback's locals)."""

    qn: str
    st: str
    cn: str
    pw: str = field(repr=False)
    mn: str
    flag: int
    cp: str
    pnum: int | None = None
    pno: int | None = None

    def render(self) -> str:
        parts = [f"QN={self.qn}", f"ST={self.st}", f"CN={self.cn}", f"PW={self.pw}",
                 f"MN={self.mn}", f"Flag={self.flag}"]
        if self.pnum is not None:
            parts += [f"PNUM={self.pnum}", f"PNO={self.pno}"]
        return ";".join(parts) + f";CP={CP_OPEN}{self.cp}{CP_CLOSE}"

    @property
    def wants_ack(self) -> bool:
        return bool(self.flag & FLAG_A)


MAX_PNUM = 9999  # PNUM is at most 4 digits (table 4)


def message(qn: str, st: str, cn: str, mn: str, flag: int, head: str,
            items: list[str]) -> list[Segment]:
    """The packets of one message (PW left empty, filled in at send time): one, or split
    (Flag's D bit, PNUM, PNO) so that each data segment fits MAX_SEGMENT with the longest PW
    the standard allows; ``head`` (such as DataTime) goes in every packet, each item whole
    in one."""
    whole = Segment(qn, st, cn, "x" * MAX_PW, mn, flag, ";".join([head, *items]))
    if len(whole.render()) <= MAX_SEGMENT:
        return [replace(whole, pw="")]
    probe = Segment(qn, st, cn, "x" * MAX_PW, mn, flag | FLAG_D, head, MAX_PNUM, MAX_PNUM)
    room = MAX_SEGMENT - len(probe.render())
    parts: list[list[str]] = [[]]
    used = 0
    for item in items:
        if len(item) + 1 > room:
            raise PacketError(f"one item of {len(item)} characters cannot fit a packet")
        if used + len(item) + 1 > room:
            parts.append([])
            used = 0
        parts[-1].append(item)
        used += len(item) + 1
    if len(parts) > MAX_PNUM:
        raise PacketError(f"a message of {len(parts)} packets; PNUM allows {MAX_PNUM}")
    return [Segment(qn, st, cn, "", mn, flag | FLAG_D, ";".join([head, *part]), len(parts),
                    number) for number, part in enumerate(parts, start=1)]


def pw_ok(pw: str) -> bool:
    """Whether ``pw`` is a PW table 4 allows: 1 to 6 visible characters, none of ; & = ,."""
    return bool(PW_PATTERN.fullmatch(pw)) and not PW_FORBIDDEN & set(pw)


def _masked(text: str) -> str:
    """``text`` (part of a data segment, for an error message) with the PW's value masked."""
    return _PW_VALUE.sub(r"\1\2***", text)


def parse_segment(text: str) -> Segment:
    """The fields of a data segment, each checked against table 4's syntax. A PacketError never
    quotes the PW."""
    head, sep, cp = text.partition(f"CP={CP_OPEN}")
    if not sep or not cp.endswith(CP_CLOSE):
        raise PacketError("no CP=&&...&& at the end of the data segment: "
                          f"{_masked(text)[:80]!r}")
    fields: dict[str, str] = {}
    for item in head.split(";"):
        if not item:
            continue
        key, eq, value = item.partition("=")
        if not eq or key not in HEAD_KEYS:
            raise PacketError(f"unknown field {_masked(item)[:20]!r} in the data segment")
        if key in fields:
            raise PacketError(f"field {key} twice in the data segment")
        fields[key] = value
    checks = {"QN": QN_PATTERN, "ST": ST_PATTERN, "CN": CN_PATTERN, "MN": MN_PATTERN,
              "Flag": FLAG_PATTERN, "PNUM": PNUM_PATTERN, "PNO": PNUM_PATTERN}
    for key, pattern in checks.items():
        if key in fields and not pattern.fullmatch(fields[key]):
            raise PacketError(f"{key}={fields[key][:30]!r} breaks the standard's syntax")
    pw = fields.get("PW", "")
    if "PW" in fields and not pw_ok(pw):
        raise PacketError("PW breaks the standard's syntax (1 to 6 visible characters)")
    for key in ("ST", "CN", "Flag"):
        if key not in fields:
            raise PacketError(f"no {key} in the data segment")
    if ("PNUM" in fields) != ("PNO" in fields):
        raise PacketError("PNUM and PNO come together")
    return Segment(qn=fields.get("QN", ""), st=fields["ST"], cn=fields["CN"], pw=pw,
                   mn=fields.get("MN", ""), flag=int(fields["Flag"]), cp=cp[:-len(CP_CLOSE)],
                   pnum=int(fields["PNUM"]) if "PNUM" in fields else None,
                   pno=int(fields["PNO"]) if "PNO" in fields else None)


def unframe(packet: bytes) -> str:
    """The data segment of one whole packet, its length and CRC checked."""
    if not packet.startswith(HEADER):
        raise PacketError(f"a packet starts with ##, not {packet[:2]!r}")
    if not packet.endswith(TRAILER):
        raise PacketError("a packet ends with CR LF")
    digits = packet[2:2 + LENGTH_DIGITS]
    if not digits.isdigit() or len(digits) != LENGTH_DIGITS:
        raise PacketError(f"the length is 4 decimal digits, not {digits!r}")
    length = int(digits)
    if length > MAX_SEGMENT:
        raise PacketError(f"a data segment of {length} characters; at most {MAX_SEGMENT}")
    start = len(HEADER) + LENGTH_DIGITS
    expected = start + length + CRC_DIGITS + len(TRAILER)
    if len(packet) != expected:
        raise PacketError(f"the length says {length} characters of data, the packet has "
                          f"{len(packet) - start - CRC_DIGITS - len(TRAILER)}")
    data = packet[start:start + length]
    crc_text = packet[start + length:start + length + CRC_DIGITS]
    if not re.fullmatch(rb"[0-9A-F]{4}", crc_text):
        raise PacketError(f"the CRC is 4 uppercase hex digits, not {crc_text!r}")
    if int(crc_text, 16) != crc16(data):
        raise PacketError(f"CRC {crc_text.decode()} does not match the data "
                          f"({crc16(data):04X})")
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise PacketError("the data segment is not ASCII") from None


class Reader:
    """Cuts packets out of a byte stream, holding at most one packet's worth (MAX_PACKET)."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        """The whole packets ``data`` completes; a PacketError for a stream that is not HJ 212
        (the connection is then of no further use: framing is lost)."""
        self._buffer += data
        packets = []
        while True:
            if len(self._buffer) < len(HEADER) + LENGTH_DIGITS:
                if self._buffer and not HEADER.startswith(self._buffer[:2]):
                    raise PacketError(f"expected ## at a packet's start, got "
                                      f"{self._buffer[:2]!r}")
                break
            if not self._buffer.startswith(HEADER):
                raise PacketError(f"expected ## at a packet's start, got {self._buffer[:2]!r}")
            digits = self._buffer[2:2 + LENGTH_DIGITS]
            if not digits.isdigit():
                raise PacketError(f"the length is 4 decimal digits, not {digits!r}")
            total = len(HEADER) + LENGTH_DIGITS + int(digits) + CRC_DIGITS + len(TRAILER)
            if total > MAX_PACKET:
                raise PacketError(f"a data segment of {int(digits)} characters; at most "
                                  f"{MAX_SEGMENT}")
            if len(self._buffer) < total:
                break
            packets.append(self._buffer[:total])
            self._buffer = self._buffer[total:]
        return packets

    @property
    def pending(self) -> int:
        """Bytes of a packet begun and not yet whole."""
        return len(self._buffer)
