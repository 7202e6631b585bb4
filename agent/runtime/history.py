"""A day of every series at 15-minute resolution, for the sparklines of ``envagent status``.

Why not the outbox: it holds only what is not delivered yet, and its ``latest`` table only the
last value. Why not a table beside ``latest``, updated in the append transaction: that would add
a page to every commit's WAL (every ``commit_interval``, ~1 KiB x 8,640 commits a day) for a
picture a technician looks at once a visit. Instead the daemon folds the values it sees into
15-minute means in memory and writes one small JSON file when a quarter of an hour is complete
(96 writes a day of ~7 bytes per point: ~17 KiB for the example station's 22 series), plus once at
a clean stop. A power cut loses at most the quarter hour in progress: a gap in a sparkline.

The file, ``history.json`` in the data directory::

    {"version": 1, "resolution_s": 900,
     "series": [{"sensor": "air", "quantity": "temperature", "unit": "°C",
                 "end": 1964321, "values": [21.3, null, 21.5, ...]}]}

``end`` is the index (unix time // resolution) of the last value; ``values`` holds at most
:data:`POINTS` means, oldest first, ``null`` where nothing was seen.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

VERSION = 1
HISTORY_FILE = "history.json"
RESOLUTION_S = 900  # 15 minutes
POINTS = 96  # 24 hours
SIGNIFICANT_DIGITS = 5  # plenty for a sparkline; keeps the file small

Key = tuple[str, str, str]  # sensor, quantity, unit


def bucket_of(time_s: float) -> int:
    return int(time_s // RESOLUTION_S)


@dataclass
class Series:
    end: int  # the bucket of values[-1]
    values: list[float | None] = field(default_factory=list)

    def add(self, bucket: int, value: float) -> None:
        """Put a bucket's mean in place; a second mean for the last bucket (a restart within
        the quarter hour) is averaged in; an older bucket is ignored unless the clock stepped
        back by more than a day, which starts the series again."""
        if not self.values or bucket > self.end:
            gap = 0 if not self.values else min(bucket - self.end - 1, POINTS)
            self.values += [None] * gap + [value]
            del self.values[:-POINTS]
            self.end = bucket
        elif bucket == self.end:
            last = self.values[-1]
            self.values[-1] = value if last is None else (last + value) / 2
        elif self.end - bucket > POINTS:
            self.values, self.end = [value], bucket

    def window(self, last: int, points: int = POINTS) -> list[float | None]:
        """The ``points`` buckets ending with bucket ``last``, None where there is nothing."""
        out: list[float | None] = []
        for bucket in range(last - points + 1, last + 1):
            index = len(self.values) - 1 - (self.end - bucket)
            out.append(self.values[index] if 0 <= index < len(self.values) else None)
        return out


@dataclass
class History:
    series: dict[Key, Series] = field(default_factory=dict)

    def add(self, key: Key, bucket: int, value: float) -> None:
        if not math.isfinite(value):
            return
        value = float(f"{value:.{SIGNIFICANT_DIGITS}g}")
        series = self.series.get(key)
        if series is None:
            self.series[key] = Series(bucket, [value])
        else:
            series.add(bucket, value)

    def to_json(self) -> dict[str, Any]:
        return {"version": VERSION, "resolution_s": RESOLUTION_S, "series": [
            {"sensor": k[0], "quantity": k[1], "unit": k[2], "end": s.end, "values": s.values}
            for k, s in sorted(self.series.items())]}

    @classmethod
    def from_json(cls, data: object) -> History:
        """The history in ``data``; empty when it is not one this version wrote."""
        history = cls()
        if not isinstance(data, Mapping) or data.get("version") != VERSION \
                or data.get("resolution_s") != RESOLUTION_S:
            return history
        for item in data.get("series") or ():
            try:
                key = (str(item["sensor"]), str(item["quantity"]), str(item["unit"]))
                values = [None if v is None else float(v) for v in item["values"]][-POINTS:]
                history.series[key] = Series(int(item["end"]), values)
            except (KeyError, TypeError, ValueError):
                continue
        return history


class Accumulator:
    """The quarter hours in progress: sums and counts per series and bucket."""

    def __init__(self) -> None:
        self._open: dict[tuple[Key, int], list[float]] = {}  # -> [sum, count]

    def add(self, key: Key, time_s: float, value: float) -> None:
        if math.isfinite(value):
            entry = self._open.setdefault((key, bucket_of(time_s)), [0.0, 0.0])
            entry[0] += value
            entry[1] += 1

    def close(self, history: History, before: int | None = None) -> int:
        """Move every bucket older than ``before`` (all, when None) into ``history``."""
        done = [k for k in self._open if before is None or k[1] < before]
        for key, bucket in sorted(done, key=lambda k: k[1]):
            total, count = self._open.pop((key, bucket))
            history.add(key, bucket, total / count)
        return len(done)

