"""Real-time data (HJ 212-2017 CN 2011): readings in, data segments out -- one message per
sample time (the readings of one ``time_ns``), split into packets when it is too long.

A message's CP is ``DataTime=yyyyMMddHHmmss;<code>-Rtd=<value>,<code>-Flag=<flag>;...``
(6.3.3, table 5 and 6.6.4): ``DataTime`` is the sample time in the platform's local time
(``timezone``, default Asia/Shanghai), and QN (6.3.2) is the same instant to the millisecond,
so a replay -- after a retry or a restart -- is byte-identical and carries the same QN.

Codes and units (appendix B; a quantity with no code is not sent; ``codes`` in the upstream's
config overrides or adds a code per quantity, and values of an added code go as stored):

===========  =======  ===========  ==============================
quantity     code     sent in      from
===========  =======  ===========  ==============================
temperature  a01001   °C           °C
humidity     a01002   %            %RH
pressure     a01006   kPa          hPa (divided by 10)
pm2_5        a34004   µg/m³        µg/m³
pm10         a34002   µg/m³        µg/m³
pm1          a34005   µg/m³        µg/m³
===========  =======  ===========  ==============================

A reading of a default code in a unit the table cannot convert is not sent. Values go with at
most 4 decimals (the finest of appendix B's formats), trailing zeros dropped.

Data flags (6.6.4, table 8: N normal, F stopped, M maintenance, S set manually, D fault,
C calibration, T over the upper measuring limit, B communication fault) from a reading's
quality bits (drivers.base.Quality), the first that applies:

=======================================================  ====  ==============================
quality                                                  flag  why
=======================================================  ====  ==============================
a non-finite value (no ``-Rtd`` is sent, only the flag)  D     the instrument gave no value
stuck; clock never synchronised; a bit this agent        D     not to be trusted: a frozen
does not know                                                  sensor, a time that is wrong
out of range; clipped                                    T     beyond the measuring range
warm-up                                                  F     not yet measuring normally
spike; re-stamped; good                                  N     a spike may be real pollution
                                                               (the platform judges it); a
                                                               re-stamped time is true
=======================================================  ====  ==============================

M (maintenance mode), C (calibration) and S are not produced by this version. A sensor that
failed gives no reading, so nothing of it is sent for that sample time. Two readings of one
sample time with the same code: the first is sent.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from agent.core.reading import Reading
from agent.core.timebase import NS
from agent.uplink.hj212.packet import (
    FLAG_A,
    FLAG_D,
    FLAG_VERSION_2017,
    MAX_PW,
    MAX_SEGMENT,
    Segment,
)
from drivers.base import Quality

CN_REALTIME = "2011"  # 6.6.2 / appendix C: 上传污染物实时数据
DECIMALS = 4
MAX_PNUM = 9999  # PNUM is at most 4 digits (table 4)
MS_PER_S = 1000


@dataclass(frozen=True, slots=True)
class Code:
    """A quantity's pollutant code, the unit it is sent in and the factor from each stored
    unit it can be converted from."""

    code: str
    unit: str
    factors: Mapping[str, float]


DEFAULT_CODES: Mapping[str, Code] = {
    "temperature": Code("a01001", "°C", {"°C": 1.0}),
    "humidity": Code("a01002", "%", {"%RH": 1.0, "%": 1.0}),
    "pressure": Code("a01006", "kPa", {"hPa": 0.1, "kPa": 1.0}),
    "pm2_5": Code("a34004", "µg/m³", {"µg/m³": 1.0}),
    "pm10": Code("a34002", "µg/m³", {"µg/m³": 1.0}),
    "pm1": Code("a34005", "µg/m³", {"µg/m³": 1.0}),
}
_TRUSTED = int(Quality.SPIKE | Quality.CLOCK_RESTAMPED)
_FAULT = int(Quality.STUCK | Quality.CLOCK_UNSYNCED)
_OVER = int(Quality.OUT_OF_RANGE | Quality.CLIPPED)
_KNOWN = _TRUSTED | _FAULT | _OVER | int(Quality.WARMUP)


def code_table(overrides: Sequence[tuple[str, str]]) -> dict[str, Code]:
    """The defaults with the upstream's ``codes``: a code of its own for a quantity means its
    values go as stored (unit conversions are for the defaults only)."""
    table = dict(DEFAULT_CODES)
    for quantity, code in overrides:
        default = DEFAULT_CODES.get(quantity)
        if default is None or default.code != code:
            table[quantity] = Code(code, "", {})
    return table


def data_flag(quality: int, value: float) -> str:
    """The standard's data flag of a reading (the table in the module docstring)."""
    if not math.isfinite(value):
        return "D"
    if quality & _FAULT or quality & ~_KNOWN:  # a bit of a newer agent: not trusted
        return "D"
    if quality & _OVER:
        return "T"
    if quality & Quality.WARMUP:
        return "F"
    return "N"


def number(value: float) -> str:
    """``value`` with at most DECIMALS decimals, no exponent, no trailing zeros."""
    text = f"{round(value, DECIMALS):.{DECIMALS}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def local_times(time_ns: int, zone: ZoneInfo) -> tuple[str, str]:
    """QN (``YYYYMMDDhhmmsszzz``) and DataTime (``yyyyMMddHHmmss``) of a sample time."""
    seconds, rest = divmod(time_ns, NS)
    when = datetime.fromtimestamp(seconds, zone).strftime("%Y%m%d%H%M%S")
    return f"{when}{rest * MS_PER_S // NS:03d}", when


class RealtimeEncoder:
    """Readings -> this transport's body: per sample time, how many readings it covers and the
    data segments of its packets (PW left for the sink to fill in at send time)."""

    def __init__(self, *, st: int, mn: str, zone: ZoneInfo,
                 codes: Sequence[tuple[str, str]] = ()) -> None:
        self.st, self.mn, self.zone = f"{st:02d}", mn, zone
        self.table = code_table(codes)

    def items(self, readings: Sequence[Reading]) -> list[str]:
        """The ``<code>-Rtd=...,<code>-Flag=...`` items of one sample time's readings."""
        items, seen = [], set()
        for r in readings:
            code = self.table.get(r.quantity)
            if code is None or code.code in seen:
                continue
            factor = code.factors.get(r.unit) if code.factors else 1.0
            if factor is None:
                continue  # a default code, in a unit it cannot convert from
            seen.add(code.code)
            flag = data_flag(r.quality, r.value)
            if math.isfinite(r.value):
                items.append(f"{code.code}-Rtd={number(r.value * factor)},"
                             f"{code.code}-Flag={flag}")
            else:
                items.append(f"{code.code}-Flag={flag}")
        return items

    def segments(self, readings: Sequence[Reading]) -> list[Segment]:
        """The packets of one sample time: one, or split (Flag's D bit, PNUM, PNO) so that
        each data segment fits MAX_SEGMENT with the longest PW the standard allows."""
        items = self.items(readings)
        if not items:
            return []
        qn, data_time = local_times(readings[0].time_ns, self.zone)
        head = f"DataTime={data_time}"
        whole = Segment(qn, self.st, CN_REALTIME, "x" * MAX_PW, self.mn,
                        FLAG_VERSION_2017 | FLAG_A, ";".join([head, *items]))
        if len(whole.render()) <= MAX_SEGMENT:
            return [whole]
        probe = Segment(qn, self.st, CN_REALTIME, "x" * MAX_PW, self.mn,
                        FLAG_VERSION_2017 | FLAG_A | FLAG_D, head, MAX_PNUM, MAX_PNUM)
        room = MAX_SEGMENT - len(probe.render())
        parts: list[list[str]] = [[]]
        used = 0
        for item in items:
            if len(item) + 1 > room:
                continue  # one code's item alone cannot fit: never, with table 4's limits
            if used + len(item) + 1 > room:
                parts.append([])
                used = 0
            parts[-1].append(item)
            used += len(item) + 1
        flag = FLAG_VERSION_2017 | FLAG_A | FLAG_D
        return [Segment(qn, self.st, CN_REALTIME, "", self.mn, flag,
                        ";".join([head, *part]), len(parts), number_)
                for number_, part in enumerate(parts, start=1)][:MAX_PNUM]

    def encode(self, readings: Sequence[Reading]) -> bytes:
        """The body: per sample time a line ``G <readings>`` and a line ``P <qn>\\t<flag>\\t
        <pnum>\\t<pno>\\t<cp>`` per packet -- this transport's own, read back by :func:`plan`."""
        lines = []
        for group in sample_times(readings):
            lines.append(f"G {len(group)}")
            for s in self.segments(group):
                pnum = "" if s.pnum is None else str(s.pnum)
                pno = "" if s.pno is None else str(s.pno)
                lines.append(f"P {s.qn}\t{s.flag}\t{pnum}\t{pno}\t{s.cp}")
        return "".join(line + "\n" for line in lines).encode("utf-8")


def sample_times(readings: Sequence[Reading]) -> Iterator[Sequence[Reading]]:
    """Runs of consecutive readings of one ``time_ns``, in the batch's order."""
    start = 0
    for i in range(1, len(readings) + 1):
        if i == len(readings) or readings[i].time_ns != readings[start].time_ns:
            yield readings[start:i]
            start = i


@dataclass(frozen=True, slots=True)
class Group:
    """One sample time in a body: how many readings of the batch it covers, its packets."""

    readings: int
    segments: tuple[Segment, ...]


def plan(body: bytes, *, st: str, mn: str, pw: str) -> list[Group]:
    """A body from :meth:`RealtimeEncoder.encode`, with the PW filled in."""
    groups: list[Group] = []
    segments: list[Segment] = []
    count = 0
    for line in body.decode("utf-8").splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "G":
            if groups or segments or count:
                groups.append(Group(count, tuple(segments)))
            count, segments = int(rest), []
        elif kind == "P":
            qn, flag, pnum, pno, cp = rest.split("\t", 4)
            segments.append(Segment(qn, st, CN_REALTIME, pw, mn, int(flag), cp,
                                    int(pnum) if pnum else None, int(pno) if pno else None))
    if count or segments:
        groups.append(Group(count, tuple(segments)))
    return groups
