"""A batch of readings as MQTT messages: one topic per sensor (the ``topic`` template), each
topic's readings split into messages of at most ``max_message_bytes``, in one of three payloads:

- ``json``: the JSON batch (``envagent-batch/1``, agent.uplink.encoders), each message a whole
  batch document with its readings' stable ids, so a subscriber can drop the duplicates an
  at-least-once delivery brings.
- ``lineprotocol``: InfluxDB line protocol (agent.uplink.lineprotocol), for Telegraf's
  ``mqtt_consumer`` (``data_format = "influx"``); a sample's line is never cut in two.
- ``thingsboard``: ThingsBoard's device telemetry, ``[{"ts": <ms>, "values": {...}}]`` on
  ``v1/devices/me/telemetry``; keys are ``<sensor>.<quantity>`` (a quantity has no ``.``, so
  no two readings share a key), ``<key>_q`` the quality bits when not 0, ``<key>_nonfinite``
  ``"NaN"``/``"+Inf"``/``"-Inf"`` in place of a value JSON cannot carry.

Every message knows the position in the batch of its first reading (``first``). The worker acks
*leading* readings (agent.uplink.sink's ``accepted``); with messages grouped by topic, the
readings acknowledged for sure are those before the first reading of the earliest message not
acknowledged (:func:`acknowledged_prefix`). The body the worker keeps and resends is
:func:`pack`'s framing of the messages: the same readings give the same bytes.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from agent.core.reading import Reading
from agent.uplink.encoders import JsonEncoder
from agent.uplink.lineprotocol import Epochs, LineProtocolEncoder, nonfinite_name, quality_of
from agent.uplink.mqtt.topics import Topics

MS = 1_000_000  # ns per millisecond: ThingsBoard's ts
# The body's framing: a magic, the batch's reading count and message count; then per message
# its first reading's position, its reading count, topic and payload lengths, topic, payload.
MAGIC = b"envagent-mqtt/1\n"
_HEAD = struct.Struct(">II")
_MESSAGE = struct.Struct(">IIHI")
FILL = 0.95  # aim a message at this share of the limit when guessing how many units fit


class BodyError(ValueError):
    """A body that is not :func:`pack`'s framing (a bug, never the network's doing)."""


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    first: int  # the position in the batch of its first reading
    count: int  # how many readings of the batch it carries


def pack(count: int, messages: Sequence[Message]) -> bytes:
    """The body of a batch of ``count`` readings sent as ``messages``."""
    parts = [MAGIC, _HEAD.pack(count, len(messages))]
    for m in messages:
        topic = m.topic.encode("utf-8")
        parts += [_MESSAGE.pack(m.first, m.count, len(topic), len(m.payload)), topic, m.payload]
    return b"".join(parts)


def unpack(body: bytes) -> tuple[int, list[Message]]:
    """:func:`pack`'s arguments back from its body."""
    view = memoryview(body)
    if bytes(view[:len(MAGIC)]) != MAGIC:
        raise BodyError("not an MQTT body")
    at = len(MAGIC)
    count, number = _HEAD.unpack_from(view, at)
    at += _HEAD.size
    messages = []
    for _ in range(number):
        first, readings, topic_len, payload_len = _MESSAGE.unpack_from(view, at)
        at += _MESSAGE.size
        topic = bytes(view[at:at + topic_len]).decode("utf-8")
        at += topic_len
        payload = bytes(view[at:at + payload_len])
        at += payload_len
        if len(payload) != payload_len:
            raise BodyError("an MQTT body cut short")
        messages.append(Message(topic, payload, first, readings))
    return count, messages


def acknowledged_prefix(messages: Sequence[Message], acked: Sequence[bool], count: int) -> int:
    """How many leading readings of the batch are in acknowledged messages: all readings
    before the first reading of the earliest message not acknowledged."""
    firsts = [m.first for m, ok in zip(messages, acked, strict=True) if not ok]
    return min(firsts) if firsts else count


Unit = list[int]  # positions in the batch that travel in one message (a line, a ts entry)
Render = Callable[[int, int], bytes]  # the payload of units[i:j]


def split(units: Sequence[Unit], render: Render, limit: int, topic: str) -> list[Message]:
    """``units`` in order, in messages of at most ``limit`` bytes where one unit alone fits
    (one that does not goes alone: the sink answers too large for it). Guesses how many
    units fit from the last message's size, so a message is rendered about once."""
    messages: list[Message] = []
    if not units:
        return messages
    one = len(render(0, 1))  # a first guess of how many fit, from one unit's size
    i, guess = 0, max(1, int(limit * FILL / max(one, 1)))
    while i < len(units):
        n = min(guess, len(units) - i)
        payload = render(i, i + n)
        while len(payload) > limit and n > 1:
            n = max(1, min(n - 1, int(n * limit * FILL / len(payload))))
            payload = render(i, i + n)
        count = sum(len(u) for u in units[i:i + n])
        messages.append(Message(topic, payload, units[i][0], count))
        i += n
        guess = max(1, int(n * limit * FILL / max(len(payload), 1)))
    return messages


class MessageEncoder:
    """A batch of readings in, its messages out (see the module docstring)."""

    def __init__(self, payload: str, topics: Topics | str, *, unit: str, site: str,
                 drivers: Mapping[str, str], measurement: str = "envagent",
                 simulated: bool = False, max_bytes: int = 65536) -> None:
        self.payload, self.max_bytes = payload, max_bytes
        self._topics = topics
        self._json = JsonEncoder(unit=unit, site=site, drivers=drivers, simulated=simulated)
        self._lines = LineProtocolEncoder(unit=unit, site=site, drivers=drivers,
                                          measurement=measurement, simulated=simulated)
        self._simulated = simulated

    def set_epochs(self, epochs: Epochs) -> None:
        """The commissioning tags in force (JSON and line protocol; ThingsBoard has no tags)."""
        self._json.set_epochs(epochs)
        self._lines.set_epochs(epochs)

    def encode(self, readings: Sequence[Reading]) -> bytes:
        return pack(len(readings), self.messages(readings))

    def messages(self, readings: Sequence[Reading]) -> list[Message]:
        if self.payload == "thingsboard":
            assert isinstance(self._topics, str)
            return self._thingsboard(readings, self._topics)
        topics = self._topics
        assert isinstance(topics, Topics)
        groups: dict[str, list[int]] = {}
        for position, r in enumerate(readings):
            groups.setdefault(topics(r.sensor), []).append(position)
        messages: list[Message] = []
        for topic, positions in groups.items():  # in order of their first reading
            if self.payload == "lineprotocol":
                messages += self._line_protocol(readings, positions, topic)
            else:
                def render(i: int, j: int, positions: list[int] = positions) -> bytes:
                    return self._json.encode([readings[p] for p in positions[i:j]])

                messages += split([[p] for p in positions], render, self.max_bytes, topic)
        return messages

    def _line_protocol(self, readings: Sequence[Reading], positions: list[int],
                       topic: str) -> list[Message]:
        """One unit per sample (sensor and time), so a line is never cut in two."""
        samples: dict[tuple[str, int], Unit] = {}
        for p in positions:
            r = readings[p]
            samples.setdefault((r.sensor, r.time_ns), []).append(p)

        units = list(samples.values())

        def render(i: int, j: int) -> bytes:
            return self._lines.encode([readings[p] for unit in units[i:j] for p in unit])

        return split(units, render, self.max_bytes, topic)

    def _thingsboard(self, readings: Sequence[Reading], topic: str) -> list[Message]:
        """One unit per telemetry entry: the readings of one millisecond, a key at most once
        in each (a repeat opens another entry with the same ts)."""
        entries: list[tuple[int, dict[str, object], Unit]] = []
        open_at: dict[int, int] = {}  # ms -> the index of its entry taking more keys
        for position, r in enumerate(readings):
            ms = r.time_ns // MS
            key = f"{r.sensor}.{r.quantity}"
            index = open_at.get(ms)
            if index is None or key in entries[index][1]:
                index = open_at[ms] = len(entries)
                entries.append((ms, {"simulated": True} if self._simulated else {}, []))
            _, values, unit = entries[index]
            quality, nonfinite = quality_of(r), nonfinite_name(r.value)
            if nonfinite is None:
                values[key] = r.value
            else:
                values[key + "_nonfinite"] = nonfinite
            if quality or nonfinite:
                values[key + "_q"] = quality
            unit.append(position)

        def render(i: int, j: int) -> bytes:
            text = json.dumps([{"ts": ms, "values": values} for ms, values, _ in entries[i:j]],
                              ensure_ascii=False, allow_nan=False, separators=(",", ":"))
            return text.encode("utf-8")

        return split([unit for _, _, unit in entries], render, self.max_bytes, topic)
