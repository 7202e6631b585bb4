"""Real-time data (HJ 212-2017 CN 2011): a batch of readings -> per sample time the samples the
archive keeps and the packets that go now.

A sample time is one second of the platform's local time (``timezone``, default
Asia/Shanghai): the sensors of one sampling slot start within it, since slots are aligned to
whole seconds. Its CP is ``DataTime=yyyyMMddHHmmss;<code>-Rtd=<value>,<code>-Flag=<flag>;...``
(6.3.3 and 6.6.4; codes, units and flags: agent.uplink.hj212.codes). A batch is cut into runs
of readings of one second, in the batch's (the outbox's) order; a run the batch boundary cut in
two goes as two messages of the same DataTime, each with codes the other has not.

QN (6.3.2) is the DataTime with, for milliseconds, 100 + (30 x the place of the message's
first code among the upstream's codes + its number of codes - 1) modulo 900: a number from 100
to 999 (the places: CodeTable.codes, then any code of a failed sensor the table lacks). The
platform acknowledges by QN and may take a repeated QN for a repeated message, so:

- a message sent again -- a resend, or a replay after a restart with the same config --
  carries the same QN and the same bytes;
- no real-time QN is ever an aggregate's: those end in 031, 051 or 061
  (agent.uplink.hj212.archive), and a sample time at the start of a minute, hour or day has
  the DataTime of its aggregates;
- two messages of one DataTime never share a QN when they differ in their first code or in
  their number of codes. The parts a batch boundary cut have no code in common, so differ in
  the first; a part that starts where another did (a restart can cut the second elsewhere)
  ends elsewhere, so differs in the second -- while both are cut from the second's readings
  in the same order (an alert reading taken ahead of them, agent.uplink.worker, can change it).

The last holds while the upstream has at most 30 codes (7 are the defaults); past that the
numbers go round, modulo 900.

With ``realtime_interval`` (or the platform's RtdInterval, CN 1062) only sample times on its
multiples are sent; the archive keeps every one.
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
from agent.uplink.hj212.packet import FLAG_A, FLAG_VERSION_2017, Segment, message

CN_REALTIME = "2011"  # 6.6.2 / appendix C: 上传污染物实时数据
SENSOR_STATE = "sensor_state"  # a sensor's health reading (agent.runtime.health)
SENSOR_FAILED = 2.0  # its code for a failed sensor (agent.runtime.health.SENSOR_STATE)
QN_FIRST = 100  # real-time QNs end in 100-999, above the aggregates' (archive.QN_MS)
QN_BLOCK = 30  # QN numbers per first code, one per number of codes: 30 blocks fill 100-999


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
        # Each code's place, for QNs. A failed sensor's codes are the table's in a running
        # agent (transport.sources looks them up there); one the table lacks goes after them,
        # a place of its own all the same.
        codes = dict.fromkeys([*table.codes, *(c for cs in self.codes_of.values() for c in cs)])
        self._place = {code: i for i, code in enumerate(codes)}

    def groups(self, readings: Sequence[Reading]) -> Iterator[Group]:
        for run in runs(readings):
            yield self.group(run)

    def group(self, run: Sequence[Reading]) -> Group:
        second = run[0].time_ns // NS
        air = conditions(run)
        samples: list[Sample] = []
        items: list[str] = []
        seen: list[str] = []  # the codes of items, in their order
        for r in run:
            if r.quantity == SENSOR_STATE and r.value == SENSOR_FAILED:
                failed = [c for c in self.codes_of.get(r.sensor, ()) if c not in seen]
                items += [f"{c}-Flag=D" for c in failed]
                seen += failed
                continue
            code = self.table.lookup(r)
            if code is None or code.code in seen:
                continue
            value = self.table.value(code, r, air) if math.isfinite(r.value) else math.nan
            if value is None:
                continue  # a default code, in a unit it cannot convert from
            seen.append(code.code)
            flag = data_flag(r.quality, value)
            finite = math.isfinite(value)
            samples.append(Sample(code.code, r.time_ns, value if finite else None, flag))
            items.append(f"{code.code}-Rtd={number(value)},{code.code}-Flag={flag}" if finite
                         else f"{code.code}-Flag={flag}")
        segments: list[Segment] = []
        if items:
            when = local_time(second, self.zone)
            ms = (self._place[seen[0]] * QN_BLOCK + len(seen) - 1) % (1000 - QN_FIRST)
            qn = f"{when}{QN_FIRST + ms:03d}"
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
