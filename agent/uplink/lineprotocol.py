"""InfluxDB line protocol: readings in, one deterministic UTF-8 body out.

Reference: https://docs.influxdata.com/influxdb/v2/reference/syntax/line-protocol/ -- also what
InfluxDB 1.x ``/write``, VictoriaMetrics, Telegraf's ``http_listener_v2`` and QuestDB parse.

Shape: one line per sensor sample -- every reading of one sensor with the same ``time_ns`` --
with the quantities as float fields, ns timestamps, and the tags ``driver``, ``sensor``,
``site`` and ``unit`` (sorted by key, as InfluxDB recommends)::

    envagent,driver=bme280,sensor=air,site=汉中\\ wetland\\,\\ east,unit=demo-001 humidity=52.1,
    pressure=1003.2,temperature=21.5,temperature_q=16i 1767225600000000000

(shown wrapped; it is one line). Quality: ``<quantity>_q`` is an integer field holding the
reading's :class:`drivers.base.Quality` bits, present only when they are not 0 (so "no ``_q``
field" means good). A reading whose wall clock was not synchronised (``synced is False``) gets
``CLOCK_UNSYNCED`` added. NaN and infinities are never sent as numbers: the value field is left
out and ``<quantity>_nonfinite`` (a string: ``"NaN"``, ``"+Inf"`` or ``"-Inf"``) plus
``<quantity>_q`` (even when 0) are sent instead, so the sample is visible upstream and every line
keeps at least one field. Units of measure are not sent: each driver quantity has one fixed unit.

Escaping follows the spec: measurement -- comma and space; tag keys, tag values and field keys
-- comma, equals sign and space; string field values -- double quote and backslash. Beyond the
spec, where a value could otherwise break the line: a run of backslashes that would escape the
next separator (or the one after the token) is doubled; tab, line feed, form feed and carriage
return become ``\\t``, ``\\n``, ``\\f``, ``\\r`` (as Telegraf writes them); other control
characters become U+FFFD. Everything else, non-ASCII text included, goes through as UTF-8.

Epochs (:meth:`LineProtocolEncoder.set_epochs`): extra tags in force from a time on -- the
commissioning facts ``mounting_height`` and ``shield`` (agent.uplink.metadata). A line gets the
tags of
the epoch its *sample time* falls in, not the latest ones, so a re-commissioning never changes
how an earlier reading is encoded.

A rehearsal's readings (``envagent run --simulate --deliver``, agent.store.rehearsal) carry the tag
``simulated=true`` on every line, so a dashboard or a query can leave them out (``simulated!=
"true"``); a real unit's lines have no such tag, so its series are not split by it.

The output depends only on the readings, the tags and the epochs given, so a replayed batch is
byte-identical and stores that collapse identical points keep one copy.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence

from agent.core.reading import RESERVED_SENSOR_ID, Reading, agent_sensor
from agent.core.wire import (
    NONFINITE_SUFFIX,
    QUALITY_SUFFIX,
    SIMULATED_TAG,
    TAG_KEYS,
    UPSTREAM_TAG,
)
from drivers.base import Quality

CONTENT_TYPE = "text/plain; charset=utf-8"

_CONTROLS = {"\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
_MEASUREMENT_SPECIAL = ", "
_KEY_SPECIAL = ",= "
# A run of backslashes right before a separator or the end would escape it: doubled, each pair
# reads as one escaped backslash and the separator stays a separator.
_MEASUREMENT_RUN = re.compile(r"\\+(?=[, ]|\Z)")
_KEY_RUN = re.compile(r"\\+(?=[,= ]|\Z)")
_REPLACEMENT = "\ufffd"
_UNSYNCED = int(Quality.CLOCK_UNSYNCED)


def _escape(text: str, special: str, runs: re.Pattern[str]) -> str:
    """Backslash-escape ``special`` characters, keeping the token on one line."""
    out: list[str] = []
    for char in runs.sub(lambda run: run.group() * 2, text):
        if char in special:
            out.append("\\" + char)
        elif char in _CONTROLS:
            out.append(_CONTROLS[char])
        elif char < " " or "\x7f" <= char <= "\x9f":
            out.append(_REPLACEMENT)
        else:
            out.append(char)
    return "".join(out)


def escape_measurement(name: str) -> str:
    return _escape(name, _MEASUREMENT_SPECIAL, _MEASUREMENT_RUN)


def escape_key(key: str) -> str:
    """For tag keys, tag values and field keys."""
    return _escape(key, _KEY_SPECIAL, _KEY_RUN)


def escape_string_field(value: str) -> str:
    """A string field value, with its double quotes."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quality_of(reading: Reading) -> int:
    """The quality bits sent upstream: the stored ones, plus CLOCK_UNSYNCED when not synced."""
    quality = int(reading.quality)
    return quality | _UNSYNCED if reading.synced is False else quality


def nonfinite_name(value: float) -> str | None:
    """``"NaN"``, ``"+Inf"`` or ``"-Inf"`` for a value that cannot be a number upstream."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return None


# quantity -> its escaped field keys: "value=", quality, non-finite name (bounded, rebuilt when
# full). A plain dict: the encoder looks one up per reading, and a draining backlog encodes
# ~100,000 readings a second (bench/bench_drain.py).
_FIELD_KEYS: dict[str, tuple[str, str, str]] = {}
_FIELD_KEYS_MAX = 1024
_isfinite = math.isfinite


def _field_keys(quantity: str) -> tuple[str, str, str]:
    """The escaped field keys of a quantity: its value (with "="), its quality, its non-finite
    name."""
    keys = _FIELD_KEYS.get(quantity)
    if keys is None:
        if len(_FIELD_KEYS) >= _FIELD_KEYS_MAX:
            _FIELD_KEYS.clear()
        keys = _FIELD_KEYS[quantity] = (escape_key(quantity) + "=",
                                        escape_key(quantity + QUALITY_SUFFIX),
                                        escape_key(quantity + NONFINITE_SUFFIX))
    return keys


def _fields(readings: Iterable[Reading]) -> str:
    """The field set of one line; the hot path of a drain, so :func:`quality_of` is inlined."""
    parts: list[str] = []
    for r in readings:
        value = r.value
        value_prefix, quality_key, nonfinite_key = (_FIELD_KEYS.get(r.quantity)
                                                    or _field_keys(r.quantity))
        quality = r.quality
        if r.synced is False:
            quality = int(quality) | _UNSYNCED
        if _isfinite(value):
            parts.append(value_prefix + repr(value))
            if quality:
                parts.append(f"{quality_key}={int(quality)}i")
        else:
            name = escape_string_field(nonfinite_name(value) or "NaN")
            parts.append(f"{nonfinite_key}={name},{quality_key}={int(quality)}i")
    return ",".join(parts)


def samples(readings: Iterable[Reading]) -> list[list[Reading]]:
    """Readings grouped into lines: one per sensor and ``time_ns``, in order of first appearance.

    A quantity seen twice in one sample (which no driver does) opens a further line rather
    than overwrite the first value upstream.
    """
    readings = list(readings)
    groups: dict[tuple[str, int], list[Reading]] = {}
    for r in readings:  # the usual case, fast: no quantity twice in a sample
        key = (r.sensor, r.time_ns)
        group = groups.get(key)
        if group is None:
            groups[key] = [r]
            continue
        quantity = r.quantity
        for other in group:
            if other.quantity == quantity:
                return _samples_with_repeats(readings)
        group.append(r)
    return list(groups.values())


def _samples_with_repeats(readings: Iterable[Reading]) -> list[list[Reading]]:
    """:func:`samples` when a quantity repeats: its n-th occurrence goes to the n-th line."""
    lines: dict[tuple[str, int, int], list[Reading]] = {}
    seen: dict[tuple[str, int, str], int] = {}
    for r in readings:
        occurrence = seen.get((r.sensor, r.time_ns, r.quantity), 0)
        seen[(r.sensor, r.time_ns, r.quantity)] = occurrence + 1
        lines.setdefault((r.sensor, r.time_ns, occurrence), []).append(r)
    return list(lines.values())


Epochs = Sequence[tuple[int, Mapping[str, str]]]  # (start time_ns, extra tags) pairs


def ordered_epochs(epochs: Epochs) -> tuple[list[int], list[dict[str, str]]]:
    """The start times, ascending, and each epoch's tags in the same order; of two epochs with
    the same start the later given wins (a stable sort, looked up with ``bisect_right``)."""
    ordered = sorted(epochs, key=lambda epoch: epoch[0])
    return [start for start, _ in ordered], [dict(tags) for _, tags in ordered]


class LineProtocolEncoder:
    """Encodes a batch of readings from one unit; ``drivers`` maps sensor id to driver name.

    Tags with an empty value are left out (line protocol has no empty tag values); so is the
    ``driver`` tag of a sensor no longer in the configuration. ``simulated``: every line gets
    the tag ``simulated=true`` (a rehearsal's readings).
    """

    content_type = CONTENT_TYPE

    def __init__(self, *, unit: str, site: str, drivers: Mapping[str, str],
                 measurement: str = "envagent", simulated: bool = False) -> None:
        self._measurement = escape_measurement(measurement)
        self._unit, self._site = unit, site
        self._mark = dict([SIMULATED_TAG]) if simulated else {}
        self._drivers = dict(drivers)
        self._starts: list[int] = []  # epoch start times, ascending
        self._extra: list[Mapping[str, str]] = [{}]  # per epoch + 1: index 0 is before any
        self._prefixes: list[dict[str, str]] = [{}]  # per epoch + 1: sensor id -> "m,tags "

    def set_epochs(self, epochs: Epochs) -> None:
        """Tags added to the configured sensors' readings sampled from each start time on
        (until the next start); readings before the first start get none."""
        self._starts, extra = ordered_epochs(epochs)
        self._extra = [{}, *extra]
        self._prefixes = [{} for _ in self._extra]

    def _prefix(self, sensor: str, epoch: int) -> str:
        """The measurement and tags of a line of ``sensor`` in ``epoch`` (-1: before any)."""
        prefixes = self._prefixes[epoch + 1]
        prefix = prefixes.get(sensor)
        if prefix is None:
            # installation tags describe the sensors, not the agent's own readings (health,
            # alerts): those series stay whole across a re-commissioning
            extra = self._extra[epoch + 1] if sensor in self._drivers else {}
            shown = sensor
            _, upstream = agent_sensor(sensor)
            if upstream is not None:  # the agent's reading about one upstream: tagged with it
                extra, shown = {UPSTREAM_TAG: upstream}, RESERVED_SENSOR_ID
            own = (self._drivers.get(sensor, ""), shown, self._site, self._unit)
            tags = {**extra, **dict(zip(TAG_KEYS, own, strict=True)), **self._mark}
            tag_text = "".join(f",{escape_key(k)}={escape_key(v)}"
                               for k, v in sorted(tags.items()) if v)
            prefix = prefixes[sensor] = f"{self._measurement}{tag_text} "
        return prefix

    def _lines(self, readings: Sequence[Reading], end: str) -> list[str]:
        """Each sample's line followed by ``end``; the hot path of a drain. Epochs are decided
        per batch: when all of it falls in one (always, without epochs) its prefixes come from
        one table; only a batch across an epoch start looks each line's epoch up."""
        groups = samples(readings)
        starts, epoch = self._starts, -1
        if starts and groups:
            times = [group[0].time_ns for group in groups]
            epoch = bisect_right(starts, min(times)) - 1
            if epoch != bisect_right(starts, max(times)) - 1:
                return [f"{self._prefix(group[0].sensor, bisect_right(starts, t) - 1)}"
                        f"{_fields(group)} {t}{end}"
                        for group, t in zip(groups, times, strict=True)]
        cached = self._prefixes[epoch + 1].get
        return [f"{cached(group[0].sensor) or self._prefix(group[0].sensor, epoch)}"
                f"{_fields(group)} {group[0].time_ns}{end}" for group in groups]

    def lines(self, readings: Sequence[Reading]) -> list[str]:
        return self._lines(readings, "")

    def encode(self, readings: Sequence[Reading]) -> bytes:
        """The request body: the lines, each ending in a line feed, as UTF-8."""
        return "".join(self._lines(readings, "\n")).encode("utf-8")
