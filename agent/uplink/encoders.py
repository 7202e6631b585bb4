"""Encoders: readings in, one deterministic body out -- the *format*, apart from the transport
that carries it (as Telegraf's serializers): line protocol (agent.uplink.lineprotocol) and the
JSON batch format for custom backends, documented in the README.

Encoders are pure: the same readings (and epochs) give the same bytes, so a retried batch is
byte-identical and upstream can collapse the copies. The JSON format gives every reading a
stable id (:func:`reading_id`), which the offline export (agent.uplink.export) shows too.
"""

from __future__ import annotations

import hashlib
import json
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from agent.core.reading import RESERVED_SENSOR_ID, Reading, agent_sensor
from agent.core.wire import UPSTREAM_TAG
from agent.uplink.lineprotocol import (
    Epochs,
    LineProtocolEncoder,
    nonfinite_name,
    ordered_epochs,
    quality_of,
)

JSON_CONTENT_TYPE = "application/json; charset=utf-8"
JSON_FORMAT = "envagent-batch/1"
ID_HEX_DIGITS = 32  # 128 bits of SHA-256: collisions are out of reach for any network


class Encoder(Protocol):
    content_type: str

    def encode(self, readings: Sequence[Reading]) -> bytes: ...

    def set_epochs(self, epochs: Epochs) -> None: ...


def reading_id(unit: str, reading: Reading) -> str:
    """The stable id of a reading: first 32 hex digits of SHA-256 over its identity.

    The identity is ``unit, sensor, quantity, time_ns`` joined by line feeds, in UTF-8 -- the same
    reading sent twice, from any process, after any restart, has the same id.
    """
    identity = f"{unit}\n{reading.sensor}\n{reading.quantity}\n{reading.time_ns}"
    return hashlib.sha256(identity.encode("utf-8")).hexdigest()[:ID_HEX_DIGITS]


def batch_id(reading_ids: Sequence[str]) -> str:
    """First 32 hex digits of SHA-256 over the reading ids in batch order, one per line."""
    return hashlib.sha256("\n".join(reading_ids).encode("ascii")).hexdigest()[:ID_HEX_DIGITS]


class JsonEncoder:
    """The JSON batch format for custom backends (documented in the README). ``simulated``: a
    rehearsal's batches say ``"simulated": true`` (agent.store.rehearsal); a real unit's have no
    such key, so their bytes are what they always were."""

    content_type = JSON_CONTENT_TYPE

    def __init__(self, *, unit: str, site: str, drivers: Mapping[str, str],
                 simulated: bool = False) -> None:
        self._unit, self._site, self._drivers = unit, site, dict(drivers)
        self._mark = {"simulated": True} if simulated else {}
        self._starts: list[int] = []
        self._extra: list[dict[str, str]] = []

    def set_epochs(self, epochs: Epochs) -> None:
        """Keys added to the readings sampled from each start time on, as the line protocol's
        tags (agent.uplink.lineprotocol): by sample time, so a replay is byte-identical."""
        self._starts, self._extra = ordered_epochs(epochs)

    def document(self, readings: Sequence[Reading]) -> dict[str, Any]:
        items = [self._item(r) for r in readings]
        return {
            "format": JSON_FORMAT,
            "batch": batch_id([item["id"] for item in items]),
            "unit": self._unit,
            "site": self._site,
            **self._mark,
            "count": len(items),
            "readings": items,
        }

    def _item(self, r: Reading) -> dict[str, Any]:
        nonfinite = nonfinite_name(r.value)
        item: dict[str, Any] = {
            "id": reading_id(self._unit, r),
            "sensor": r.sensor,
            "driver": self._drivers.get(r.sensor),
            "quantity": r.quantity,
            "value": None if nonfinite else r.value,
            "unit": r.unit,
            "time_ns": r.time_ns,
            "quality": quality_of(r),
            "synced": r.synced,
            "boot_id": r.boot_id,
            "boot_ns": r.boot_ns,
            "calibration": r.calibration,
        }
        if nonfinite:
            item["nonfinite"] = nonfinite
        _, upstream = agent_sensor(r.sensor)
        if upstream is not None:  # the agent's reading about one upstream, as line protocol has it
            item["sensor"], item[UPSTREAM_TAG] = RESERVED_SENSOR_ID, upstream
        if self._starts and r.sensor in self._drivers:  # as the line protocol's tags
            epoch = bisect_right(self._starts, r.time_ns) - 1
            if epoch >= 0:
                item.update(self._extra[epoch])
        return item

    def encode(self, readings: Sequence[Reading]) -> bytes:
        text = json.dumps(self.document(readings), ensure_ascii=False, allow_nan=False,
                          separators=(",", ":"))
        return text.encode("utf-8")


def make_encoder(format: str, *, unit: str, site: str, drivers: Mapping[str, str],
                 measurement: str, simulated: bool = False) -> Encoder:
    """The encoder of ``uplink.format``; ``simulated`` marks every batch a rehearsal's."""
    if format == "json":
        return JsonEncoder(unit=unit, site=site, drivers=drivers, simulated=simulated)
    return LineProtocolEncoder(unit=unit, site=site, drivers=drivers, measurement=measurement,
                               simulated=simulated)
