"""The JSON batch format: content-derived ids, deterministic batch ids, byte-identical replays."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pytest

from agent.core.reading import Reading
from agent.store.outbox import Outbox
from agent.uplink.encoders import JSON_FORMAT, JsonEncoder, batch_id, reading_id
from drivers.base import Quality

T0 = 1_767_225_600_000_000_000
SITE = "汉中 wetland, east"


def reading(quantity: str = "temperature", value: float = 21.5, *, sensor: str = "air",
            time_ns: int = T0, quality: int = 0, synced: bool | None = True,
            calibration: str | None = None) -> Reading:
    return Reading(sensor, quantity, value, "°C", time_ns, 5_000_000_000, "boot-1", synced,
                   quality, calibration)


def encoder() -> JsonEncoder:
    return JsonEncoder(unit="demo-001", site=SITE, drivers={"air": "bme280"})


def no_constants(name: str) -> object:
    raise AssertionError(f"{name} is not JSON")


def decode(body: bytes) -> dict[str, Any]:
    doc = json.loads(body.decode("utf-8"), parse_constant=no_constants)
    assert isinstance(doc, dict)
    return doc


def test_the_documented_shape() -> None:
    r = reading(quality=Quality.WARMUP, calibration="cal-2026-01")
    doc = decode(encoder().encode([r]))
    rid = hashlib.sha256(f"demo-001\nair\ntemperature\n{T0}".encode()).hexdigest()[:32]
    assert doc == {
        "format": JSON_FORMAT,
        "batch": hashlib.sha256(rid.encode()).hexdigest()[:32],
        "unit": "demo-001",
        "site": SITE,
        "count": 1,
        "readings": [{
            "id": rid, "sensor": "air", "driver": "bme280", "quantity": "temperature",
            "value": 21.5, "unit": "°C", "time_ns": T0, "quality": 1, "synced": True,
            "boot_id": "boot-1", "boot_ns": 5_000_000_000, "calibration": "cal-2026-01",
        }],
    }


def test_ids_come_from_the_content_not_from_the_outbox_rows(tmp_path: Path) -> None:
    batch = [reading(q, i + 0.5, time_ns=T0 + i * 10**9) for i in range(20)
             for q in ("temperature", "humidity")]
    bodies = []
    for name, earlier in (("a", 0), ("b", 137)):  # different row ids for the same readings
        with Outbox(tmp_path / f"{name}.sqlite", max_bytes=1 << 20) as outbox:
            outbox.append([reading("other", time_ns=T0 - k) for k in range(1, earlier + 1)])
            if earlier:
                outbox.ack(s.id for s in outbox.take(earlier))
            outbox.append(batch)
            taken = outbox.take(1000)
            bodies.append(encoder().encode([s.reading for s in taken]))
            rows = [s.id for s in taken]
        assert rows[0] == earlier + 1
    assert bodies[0] == bodies[1]  # byte-identical, whatever the row ids


def test_a_replay_is_byte_identical_and_the_batch_id_is_deterministic() -> None:
    batch = [reading(value=math.nan), reading("humidity", 50.0, synced=False)]
    first = encoder().encode(batch)
    assert encoder().encode(batch) == first
    ids = [item["id"] for item in decode(first)["readings"]]
    assert decode(first)["batch"] == batch_id(ids)


def test_a_half_of_a_batch_has_its_own_batch_id_and_the_same_reading_ids() -> None:
    batch = [reading(time_ns=T0 + i) for i in range(4)]
    whole, half = decode(encoder().encode(batch)), decode(encoder().encode(batch[:2]))
    assert whole["batch"] != half["batch"]
    assert whole["readings"][:2] == half["readings"]


@pytest.mark.parametrize(("key", "other"), [
    ("unit", None), ("sensor", reading(sensor="water")),
    ("quantity", reading("humidity")), ("time_ns", reading(time_ns=T0 + 1)),
])
def test_the_identity_is_unit_sensor_quantity_and_time(key: str, other: Reading | None) -> None:
    base = reading()
    if other is None:
        assert reading_id("demo-001", base) != reading_id("demo-002", base)
    else:
        assert reading_id("demo-001", base) != reading_id("demo-001", other)
    # a new value for the same identity (a re-sent correction) keeps the id: the backend decides
    assert reading_id("demo-001", base) == reading_id("demo-001", reading(value=-3.0))


@pytest.mark.parametrize(("value", "name"), [(math.nan, "NaN"), (math.inf, "+Inf"),
                                             (-math.inf, "-Inf")])
def test_nan_and_infinities_become_null_with_a_name(value: float, name: str) -> None:
    (item,) = decode(encoder().encode([reading(value=value)]))["readings"]
    assert item["value"] is None and item["nonfinite"] == name


def test_an_unsynchronised_clock_is_flagged_and_kept_as_sent() -> None:
    items = decode(encoder().encode([reading(synced=False), reading("humidity", synced=None)]))
    first, second = items["readings"]
    assert (first["quality"], first["synced"]) == (int(Quality.CLOCK_UNSYNCED), False)
    assert (second["quality"], second["synced"]) == (0, None)


def test_text_is_utf8_not_escaped() -> None:
    body = encoder().encode([reading()])
    assert SITE.encode("utf-8") in body and "°C".encode() in body
    assert b" " not in body.replace(SITE.encode("utf-8"), b"")  # compact separators


def test_an_unknown_sensor_has_a_null_driver() -> None:
    (item,) = decode(encoder().encode([reading(sensor="gone")]))["readings"]
    assert item["driver"] is None


def test_commissioning_keys_are_those_in_force_at_the_sample_time() -> None:
    enc = encoder()
    enc.set_epochs([(T0 + 10, {"mounting_height": "2.5", "shield": "screen"}),
                    (T0 + 20, {"mounting_height": "3"})])
    items = enc.document([reading(time_ns=T0 + t) for t in (0, 10, 25)])["readings"]
    assert [(i.get("mounting_height"), i.get("shield")) for i in items] == [
        (None, None), ("2.5", "screen"), ("3", None)]
    assert "mounting_height" not in items[0] and "shield" not in items[0]  # absent, not null
    own = enc.document([reading(sensor="envagent", time_ns=T0 + 25)])["readings"]
    assert "mounting_height" not in own[0]  # the agent's own readings: no installation keys
    assert items[0] == encoder().document([reading(time_ns=T0)])["readings"][0]
