"""The station record: what ``status``, ``export`` and ``doctor`` need of the config, kept by the
running agent in its data directory (``station.json``).

Why: a technician given a unit's data directory -- a copied SD card, a USB stick, a unit whose
``/etc/envagent/envagent.toml`` was lost or is not theirs to read -- can still see what it holds
with ``--data-dir`` alone. The record names the unit and its site, each sensor (id, driver, bus,
address, multiplexer channel, interval, the quantities it reports), the outbox's bound, the
alert rules (``status`` shows the firing ones) and the uplink by name, with its URL (never a
credential: the config refuses them, and they are stripped here again) -- and whether the data
directory is a rehearsal's (``--simulate``).

What it is not: a config. It holds no driver options, calibrations, token file or timeouts, so
it never drives sensors or delivery; :func:`as_config` rebuilds only what the read-only
commands look at.

SD-card wear: written by ``run`` once at start, atomically (agent.core.atomic), and only when it
differs from the record already there -- a service restarting in a loop rewrites nothing. Read
with a size bound; a damaged record is an error naming the file, never a traceback.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from agent import __version__
from agent.config import (
    SECRET_PARAMS,
    AlertConfig,
    Config,
    SensorConfig,
    StorageConfig,
    UnitConfig,
    UplinkConfig,
)
from agent.core.atomic import DamagedFileError, read_json, write_json
from agent.core.reading import DEFAULT_UPSTREAM

FILE = "station.json"
FORMAT = "envagent-station/1"
# A station of many sensors and alerts is a few KiB: the bound only keeps a wrong file (a log,
# /dev/zero) from costing a command its memory.
MAX_BYTES = 256 * 1024
# What a record of the right JSON but the wrong shape raises on its way into the dataclasses.
_SHAPE_ERRORS = (KeyError, TypeError, ValueError, AttributeError)

Record = dict[str, Any]


class StationRecordError(DamagedFileError):
    """The station record is not what the agent writes (too large, not JSON, wrong shape)."""


def describe(config: Config, *, simulated: bool) -> Record:
    """The record of ``config``: only what the read-only commands use (module docstring)."""
    unit = config.unit
    return {
        "format": FORMAT,
        "simulated": simulated,
        "config": config.source,
        "agent_version": __version__,
        "unit": {"id": unit.id, "site": unit.site, "latitude": unit.latitude,
                 "longitude": unit.longitude, "elevation_m": unit.elevation_m},
        "storage": {"max_bytes": config.storage.max_bytes},
        "sensors": [_sensor(s) for s in config.sensors],
        "uplinks": [_uplink(u) for u in config.uplinks],
        "alerts": [{"id": a.id, "sensor": a.sensor, "quantity": a.quantity, "above": a.above,
                    "below": a.below, "clear": a.clear, "for_s": a.hold}
                   for a in config.alerts],
    }


def _sensor(sensor: SensorConfig) -> Record:
    # loaded already by the `run` that writes the record; the readers never need the drivers
    from drivers.registry import DRIVERS

    driver = DRIVERS.get(sensor.driver)
    quantities = None if driver is None else dict(driver.configured_quantities(sensor.options))
    return {"id": sensor.id, "driver": sensor.driver, "bus": sensor.bus,
            "address": sensor.address, "mux": sensor.mux, "channel": sensor.channel,
            "interval_s": sensor.interval, "quantities": quantities}


def _uplink(uplink: UplinkConfig) -> Record:
    return {"name": uplink.name, "url": public_url(uplink.url), "format": uplink.format,
            "measurement": uplink.measurement}


def public_url(url: str) -> str:
    """``url`` without a user name, password or credential parameter (the config refuses them
    already; a record is copied around more freely than a config)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                       if k.lower() not in SECRET_PARAMS])
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def save(data_dir: Path, record: Record) -> bool:
    """Write ``record`` unless the same one is there already; whether it wrote. OSError when
    the directory cannot be written."""
    path = data_dir / FILE
    try:
        if read_json(path, MAX_BYTES) == record:
            return False
    except (OSError, ValueError):
        pass  # none yet, or damaged: replaced by the true one
    data_dir.mkdir(parents=True, exist_ok=True)
    write_json(path, record, indent=1)
    return True


def load(data_dir: Path) -> Record | None:
    """The record in ``data_dir``; None when there is none. StationRecordError when it is
    damaged, OSError when it cannot be read."""
    path = data_dir / FILE
    try:
        record = read_json(path, MAX_BYTES)
    except FileNotFoundError:
        return None
    except DamagedFileError as exc:
        raise StationRecordError(str(exc)) from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise StationRecordError(f"{path} is not a station record of this agent version "
                                 f"(expected format {FORMAT!r})")
    return record


def as_config(record: Record, data_dir: Path) -> Config:
    """What the read-only commands read of a config, from ``record``; ``source`` names the
    record. StationRecordError for a record of the wrong shape."""
    path = data_dir / FILE
    try:
        unit = record["unit"]
        return Config(
            unit=UnitConfig(_text(unit["id"]), _text(unit["site"]), _number(unit["latitude"]),
                            _number(unit["longitude"]), _number(unit["elevation_m"])),
            storage=StorageConfig(path=data_dir, max_bytes=_whole(record["storage"]["max_bytes"])),
            sensors=tuple(_sensor_config(s) for s in record["sensors"]),
            uplinks=tuple(_uplink_config(u) for u in record["uplinks"]),
            alerts=tuple(_alert_config(a) for a in record["alerts"]),
            source=str(path),
        )
    except _SHAPE_ERRORS as exc:
        what = f"no {exc.args[0]!r}" if isinstance(exc, KeyError) else str(exc)
        raise StationRecordError(f"{path} is damaged ({what}); the agent writes it again when "
                                 "it next starts") from None


def simulated(record: Record) -> bool:
    """Whether the record is a rehearsal's (``--simulate``)."""
    return record.get("simulated") is True


def _sensor_config(item: Mapping[str, Any]) -> SensorConfig:
    mux, channel = item["mux"], item["channel"]
    return SensorConfig(id=_text(item["id"]), driver=_text(item["driver"]),
                        bus=_whole(item["bus"]), address=_whole(item["address"]),
                        interval=float(_number(item["interval_s"]) or 0.0),
                        mux=None if mux is None else _whole(mux),
                        channel=None if channel is None else _whole(channel))


def _uplink_config(item: Mapping[str, Any]) -> UplinkConfig:
    return UplinkConfig(url=_text(item["url"]), name=_text(item.get("name", DEFAULT_UPSTREAM)),
                        format=_text(item["format"]), measurement=_text(item["measurement"]))


def _alert_config(item: Mapping[str, Any]) -> AlertConfig:
    clear = _number(item["clear"])
    if clear is None:
        raise ValueError("an alert without clear")
    return AlertConfig(id=_text(item["id"]), sensor=_text(item["sensor"]),
                       quantity=_text(item["quantity"]), above=_number(item["above"]),
                       below=_number(item["below"]), clear=clear,
                       hold=float(_number(item["for_s"]) or 0.0))


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value


def _whole(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected a whole number, got {type(value).__name__}")
    return value


def _number(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)
