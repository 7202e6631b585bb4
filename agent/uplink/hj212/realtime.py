"""Real-time data (HJ 212-2017 CN 2011): a batch of readings -> per sample time the samples the
archive keeps and the packets that go now.

A sample time is one second of the platform's local time (``timezone``, default
Asia/Shanghai): the sensors of one sampling slot start within it, since slots are aligned to
whole seconds. Its CP is ``DataTime=yyyyMMddHHmmss;<code>-Rtd=<value>,<code>-Flag=<flag>;...``
(6.3.3 and 6.6.4; codes, units and flags: agent.uplink.hj212.codes). A batch is cut into runs
of readings of one second, in the batch's (the outbox's) order; a run the batch boundary cut in
two goes as two messages of the same DataTime, each with codes the other has not.

QN (6.3.2) is the DataTime with, for milliseconds, a number derived from the message's
content, so a message sent again -- a resend, or a replay after a restart -- carries the same
QN and the same bytes, and two different messages never share one (but for a 1 in 1,000
chance within the same second). With ``realtime_interval`` (or the platform's RtdInterval,
CN 1062) only sample times on its multiples are sent; the archive keeps every one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from agent.core.reading import Reading
from agent.core.timebase import NS
from agent.uplink.hj212.archive import Sample
from agent.uplink.hj212.codes import CodeTable, conditions, data_flag, number
from agent.uplink.hj212.packet import FLAG_A, FLAG_VERSION_2017, Segment, crc16, message

CN_REALTIME = "2011"  # 6.6.2 / appendix C: 上传污染物实时数据
SENSOR_STATE = "sensor_state"  # a sensor's health reading (agent.runtime.health)
SENSOR_FAILED = 2.0  # its code for a failed sensor (agent.runtime.health.SENSOR_STATE)


@dataclass(frozen=True, slots=True)
class Group:
    """One sample time of a batch: how many readings it covers, its second, what the archive
    keeps of it and its packets (PW left for the sink to fill in)."""

    readings: int
    second: int
    samples: tuple[Sample, ...]
    segments: tuple[Segment, ...]


def local_time(second: int, zone: ZoneInfo) -> str:
    """``yyyyMMddHHmmss`` in the platform's local time."""
    return datetime.fromtimestamp(second, zone).strftime("%Y%m%d%H%M%S")


class Realtime:
    """Readings -> groups, for one upstream's MN, ST, codes and time zone."""

    def __init__(self, *, st: int, mn: str, zone: ZoneInfo, table: CodeTable,
                 codes_of: Mapping[str, Sequence[str]] | None = None) -> None:
        """``codes_of``: per sensor, the codes it reports here -- sent flagged D, without a
        value, at the time its health reading says it failed."""
        self.st, self.mn, self.zone, self.table = f"{st:02d}", mn, zone, table
        self.codes_of = dict(codes_of or {})

    def groups(self, readings: Sequence[Reading]) -> Iterator[Group]:
        for run in runs(readings):
            yield self.group(run)

    def group(self, run: Sequence[Reading]) -> Group:
        second = run[0].time_ns // NS
        air = conditions(run)
        samples, items, seen = [], [], set()
        for r in run:
            if r.quantity == SENSOR_STATE and r.value == SENSOR_FAILED:
                failed = [c for c in self.codes_of.get(r.sensor, ()) if c not in seen]
                items += [f"{c}-Flag=D" for c in failed]
                seen.update(failed)
                continue
            code = self.table.lookup(r)
            if code is None or code.code in seen:
                continue
            value = self.table.value(code, r, air) if math.isfinite(r.value) else math.nan
            if value is None:
                continue  # a default code, in a unit it cannot convert from
            seen.add(code.code)
            flag = data_flag(r.quality, value)
            finite = math.isfinite(value)
            samples.append(Sample(code.code, r.time_ns, value if finite else None, flag))
            items.append(f"{code.code}-Rtd={number(value)},{code.code}-Flag={flag}" if finite
                         else f"{code.code}-Flag={flag}")
        segments: list[Segment] = []
        if items:
            when = local_time(second, self.zone)
            cp = ";".join(items)
            qn = f"{when}{crc16(cp.encode('utf-8')) % 1000:03d}"
            segments = message(qn, self.st, CN_REALTIME, self.mn,
                               FLAG_VERSION_2017 | FLAG_A, f"DataTime={when}", items)
        return Group(len(run), second, tuple(samples), tuple(segments))


def runs(readings: Sequence[Reading]) -> Iterator[Sequence[Reading]]:
    """Runs of consecutive readings of one second, in the batch's order."""
    start = 0
    for i in range(1, len(readings) + 1):
        if (i == len(readings)
                or readings[i].time_ns // NS != readings[start].time_ns // NS):
            yield readings[start:i]
            start = i
