"""``[[sensor]]``: one table per chip, its driver's options as further keys, and the names its
quantities take upstream.

A sensor's address must be one its chip can have (agent.config.placement). Options are checked
against the driver's declared :class:`~drivers.base.Option`s; an option that names a quantity
must leave the fields upstream free (:func:`quantity_name_problem`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from agent.config.checks import duration, identifier, is_kind, unquote_hint, whole, within
from agent.config.fields import NO_VALUE, REQUIRED, Bad, Field, Problems, Registry, read_table
from agent.config.health import SENSOR_HEALTH_QUANTITIES
from agent.config.perquantity import PER_QUANTITY
from agent.config.pins import gpio
from agent.config.placement import (
    CHANNEL_RANGE,
    DEFAULT_BUS,
    Seen,
    bus_number,
    check_chip_address,
    check_mux_pair,
    i2c_address,
    mux_address,
)
from agent.config.processing import AVERAGE_RANGE, Calibration, Plausible
from agent.core.reading import RESERVED_SENSOR_ID
from agent.core.units import toml_hex, toml_key, toml_quote, toml_value
from agent.core.wire import (
    DERIVED_FIELDS,
    EPOCH_TAG_KEYS,
    SIMULATED_TAG,
    TAG_KEYS,
    TIME_KEYS,
    UPSTREAM_TAG,
)
from drivers.base import Driver, Option

DEFAULT_INTERVAL = 60.0
INTERVAL_RANGE = (1.0, 24 * 3600.0)

SENSOR_KEYS = (  # the rest of a sensor: options
    "id", "driver", "bus", "address", "interval",
    "mux", "channel", "average", "power_pin", "calibration", "plausible",
)

QUANTITY_OPTION = "_quantity"  # the end of a driver option that names a quantity (ads1115)


@dataclass(frozen=True, slots=True)
class SensorConfig:
    """One ``[[sensor]]``; ``options`` is read-only and holds every driver option.

    ``options`` is left out of the hash (a mapping proxy is not hashable); equality still compares
    it, so equal configs hash equal.
    """

    id: str
    driver: str
    bus: int
    address: int
    interval: float
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    mux: int | None = None  # the TCA9548A in front of the sensor, with ``channel``
    channel: int | None = None
    average: int = 1  # driver reads per reading (agent.sampling.processing)
    # GPIO of a load switch that can power-cycle it (agent.sampling.power)
    power_pin: int | None = None
    calibration: Mapping[str, Calibration] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )
    plausible: Mapping[str, Plausible] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )

    @property
    def where(self) -> str:
        """``bus:0xAA`` (and the mux channel), as in every log line about this sensor."""
        if self.mux is None:
            return f"{self.bus}:0x{self.address:02x}"
        return f"{self.bus}:0x{self.address:02x} (mux 0x{self.mux:02x} channel {self.channel})"


def _sensor_id(value: object) -> str:
    sensor_id = identifier(value)
    if sensor_id == RESERVED_SENSOR_ID:
        raise Bad("reserved for the agent's own health readings; choose another id")
    return sensor_id


def _sensor_fields(drivers: Registry) -> dict[str, Field]:
    return {
        "id": Field(_sensor_id, REQUIRED, 'id = "air"'),
        "driver": Field(_driver_name(drivers), REQUIRED, 'driver = "bme280"'),
        "bus": Field(bus_number, DEFAULT_BUS, ""),
        "address": Field(i2c_address, REQUIRED, "address = 0x76", toml_hex),
        "interval": Field(duration(*INTERVAL_RANGE), DEFAULT_INTERVAL, ""),
    }


def _driver_name(drivers: Registry) -> Callable[[object], str]:
    def check(value: object) -> str:
        if not isinstance(value, str) or value not in drivers:
            names = ", ".join(toml_quote(name) for name in sorted(drivers)) or "(none installed)"
            raise Bad(f"unknown driver; expected one of {names}")
        return value

    return check


def _option(option: Option) -> Callable[[object], Any]:
    """A check for one driver option: its type (bool is not an int), choices and bounds."""

    def check(value: object) -> Any:
        expected = "expected " + _option_expected(option)
        if not is_kind(value, option.kind):
            raise Bad(expected + unquote_hint(value))
        if option.kind is float:
            value = float(value)  # type: ignore[arg-type]  # is_kind allowed only int | float
            if not math.isfinite(value):
                raise Bad(expected)
        if option.choices is not None and value not in option.choices:
            raise Bad(expected)
        if isinstance(value, int | float) and not within(value, option.minimum, option.maximum):
            raise Bad(expected)
        return value

    return check


def _option_expected(option: Option) -> str:
    if option.choices is not None:
        return "one of " + ", ".join(toml_value(choice) for choice in option.choices)
    kinds = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    kind = kinds.get(option.kind, option.kind.__name__)
    low, high = option.minimum, option.maximum
    if low is not None and high is not None:
        return f"{kind} from {low:g} to {high:g}"
    if low is not None:
        return f"{kind} of at least {low:g}"
    if high is not None:
        return f"{kind} of at most {high:g}"
    return kind


_PLACEMENT_FIELDS = {
    "mux": Field(mux_address, None, "", toml_hex),
    "channel": Field(whole(*CHANNEL_RANGE, " (the multiplexer channel)"), None, ""),
    "average": Field(whole(*AVERAGE_RANGE, " (driver reads per reading)"), 1, ""),
    "power_pin": Field(gpio, None, ""),
}


def parse_sensors(problems: Problems, value: object) -> tuple[SensorConfig, ...] | None:
    if not isinstance(value, list):
        hint = "expected [[sensor]] tables, with double brackets, one per sensor"
        problems.add("sensor", hint, value)
        return None
    problems.name("sensor", value)
    sensors: list[SensorConfig] = []
    seen = Seen("sensor")
    read: list[tuple[int, dict[str, Any]]] = []
    for index, item in enumerate(value):
        path = f"sensor[{index}]"
        if not isinstance(item, Mapping):
            problems.add(path, "expected a [[sensor]] table", item)
            continue
        values, ok = _read_sensor(problems, path, item)
        seen.check(problems, index, values)
        read.append((index, values))
        if ok:
            schema = {k: v for k, v in values.items() if k in SENSOR_KEYS}
            options = {k: v for k, v in values.items() if k not in SENSOR_KEYS}
            sensors.append(SensorConfig(**schema, options=MappingProxyType(options)))
    seen.finish(problems)
    _check_references(problems, read)
    for _, values in read:  # for [[alert]]: the quantities of each sensor, where known
        driver = problems.drivers.get(values.get("driver", ""))
        if driver is not None and isinstance(values.get("id"), str):
            given = {k: values[k] for k in driver.options if k in values}
            complete = all(k in values for k in driver.options)
            quantities = driver.configured_quantities(given) if complete else None
            problems.sensors.setdefault(values["id"], (driver.name, quantities))
    return tuple(sensors)


# Driver options that name another sensor of the station, and what that sensor must report:
# the scd4x's pressure_from passes the named sensor's pressure on to the chip
# (agent.sampling.daemon).
SENSOR_REFERENCES = {"pressure_from": ("pressure", "hPa")}


def _check_references(problems: Problems, read: list[tuple[int, dict[str, Any]]]) -> None:
    """Each reference names a sensor of this station that reports the quantity in its unit."""
    reports: dict[str, tuple[str, Mapping[str, str]]] = {}  # id -> driver, quantities
    for _, values in read:
        driver = problems.drivers.get(values.get("driver", ""))
        if driver is not None and "id" in values:
            given = {k: values[k] for k in driver.options if k in values}
            reports.setdefault(values["id"], (driver.name, driver.configured_quantities(given)))
    for index, values in read:
        for key, (quantity, unit) in SENSOR_REFERENCES.items():
            target = values.get(key)
            if not target or not isinstance(target, str):
                continue
            found = [i for i, (_, q) in reports.items() if q.get(quantity) == unit]
            expected = f"expected the id of a sensor that reports {quantity} in {unit}"
            if found:
                expected += ": " + ", ".join(toml_quote(i) for i in found)
            else:
                expected += f", and this station has none; add one or leave {key} out"
            if target not in reports:
                problem = f"no sensor has this id; {expected}"
            elif reports[target][1].get(quantity) != unit:
                problem = (f"sensor {target!r} ({reports[target][0]}) reports no {quantity} "
                           f"in {unit}; {expected}")
            else:
                continue
            problems.add(toml_key(f"sensor[{index}]", key), problem, target)


def _read_sensor(
    problems: Problems, path: str, table: Mapping[str, Any]
) -> tuple[dict[str, Any], bool]:
    """A sensor's keys, with the options of its driver as further fields."""
    fields = _sensor_fields(problems.drivers)
    known = fields | _PLACEMENT_FIELDS
    nested = {k: table[k] for k in PER_QUANTITY if k in table}
    table = {k: v for k, v in table.items() if k not in PER_QUANTITY}
    name = table.get("driver")
    driver = problems.drivers.get(name) if isinstance(name, str) else None
    if driver is None:
        # Options cannot be told from typos without a known driver; the next check will see them.
        values, _ = read_table(problems, path, {k: table[k] for k in known if k in table}, known)
        return values, False
    options = {k: Field(_option(o), o.default, "") for k, o in driver.options.items()}
    options = {k: f for k, f in options.items() if k not in SENSOR_KEYS}  # the schema's keys win
    listed = ", ".join(driver.options) if driver.options else "(none)"
    valid = f"valid keys are {', '.join(SENSOR_KEYS)}, and the {driver.name} options {listed}"
    values, ok = read_table(problems, path, table, known | options, valid)
    if "address" in values:
        ok = check_chip_address(problems, path, driver.name, driver.addresses,
                                values["address"]) and ok
    given = {k: values[k] for k in driver.options if k in values}
    options_ok = all(k in values for k in driver.options if k in table)
    if options_ok:  # rules spanning several options (the ads1115's channels)
        for key, message in driver.check_options(given):
            problems.add(toml_key(path, key), message, table.get(key, NO_VALUE))
            ok = options_ok = False
    # With bad options the quantities are unknown, so any quantity name is let through.
    quantities = driver.configured_quantities(given) if options_ok else None
    if quantities is not None:
        ok = _check_quantity_names(problems, path, driver, values, quantities) and ok
    for key, parse in PER_QUANTITY.items():
        at = toml_key(path, key)
        values[key], good = parse(problems, at, nested.get(key, {}), driver.name, quantities)
        ok = ok and good
    return values, check_mux_pair(problems, path, table) and ok


def quantity_name_problem(quantity: str) -> str | None:
    """Why readings of ``quantity`` would take a field key upstream that is not theirs: another
    quantity's derived field, the time, a tag, or the sensor's health (see
    agent.uplink.lineprotocol).
    Quantities of different sensors may share a name: the ``sensor`` tag tells them apart."""
    for suffix, what in DERIVED_FIELDS.items():
        if quantity.endswith(suffix):
            others = " or ".join(DERIVED_FIELDS)
            return (f"must not end in {suffix}: upstream that names {what} of quantity "
                    f"{quantity.removesuffix(suffix)!r}; choose a name that does not end in "
                    f"{others}")
    if quantity in TIME_KEYS:
        why = "the time of each point"
    elif (quantity in TAG_KEYS or quantity in EPOCH_TAG_KEYS
          or quantity in (SIMULATED_TAG[0], UPSTREAM_TAG)):
        why = (f"the tag {quantity} on every reading (a field of the same name would clash "
               "with it)")
    elif quantity in SENSOR_HEALTH_QUANTITIES:
        why = "the agent's health reading of this sensor"
    else:
        return None
    return f"reserved upstream for {why}; choose another name"


def _check_quantity_names(problems: Problems, path: str, driver: type[Driver],
                          values: Mapping[str, Any], quantities: Mapping[str, str]) -> bool:
    """The names the options give quantities are free upstream (a driver's own names are kept
    free by tests/test_config.py); a problem names the option that gave the name."""
    ok = True
    for quantity in quantities:
        problem = None if quantity in driver.quantities else quantity_name_problem(quantity)
        if problem is None:
            continue
        named = [k for k in driver.options if k.endswith(QUANTITY_OPTION)
                 and values.get(k) == quantity]
        if named:
            problems.add(toml_key(path, named[0]), problem, quantity)
        else:
            problems.add(path, f"quantity {quantity!r}: {problem}")
        ok = False
    return ok
