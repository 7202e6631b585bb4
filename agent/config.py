"""The configuration file: TOML in, typed frozen dataclasses out, every problem found up front.

Validation never stops at the first mistake: a field technician with twenty minutes per site
wants the whole list at once, one line per problem, each naming the file, the key, the bad value
and what to write instead. Bad input only ever raises :class:`~agent.errors.ConfigError`.

Adding a section (``[uplink]``) means a dataclass, a field on :class:`Config`, and one entry in
``_SECTIONS`` with its parser: ``_table_section`` over a dict of ``_Field``s for a plain table.
"""

from __future__ import annotations

import codecs
import dataclasses
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple, TypeVar

from agent.errors import ConfigError
from agent.units import (
    format_duration,
    format_size,
    one_line,
    parse_duration,
    parse_size,
    toml_hex,
    toml_key,
    toml_quote,
    toml_value,
)
from drivers.base import Driver, Option
from drivers.bus import FIRST_ADDRESS, LAST_ADDRESS

__all__ = [
    "Config",
    "ConfigError",
    "SensorConfig",
    "StorageConfig",
    "UnitConfig",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_size",
]

Registry = Mapping[str, type[Driver]]
T = TypeVar("T")

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # used with fullmatch
SITE_MAX_CHARS = 200
DEFAULT_STORAGE_PATH = "/var/lib/envagent"
DEFAULT_MAX_BYTES = 256 * 1024**2
MIN_MAX_BYTES = 1024**2
DEFAULT_COMMIT_INTERVAL = 10.0
COMMIT_INTERVAL_RANGE = (1.0, 5 * 60.0)
DEFAULT_BUS = 1
BUS_RANGE = (0, 255)  # the N of /dev/i2c-N
DEFAULT_INTERVAL = 60.0
INTERVAL_RANGE = (1.0, 24 * 3600.0)
SEVEN_BIT_MAX = 0x7F
SENSOR_KEYS = ("id", "driver", "bus", "address", "interval")  # the rest of a sensor: options


# --- the result ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UnitConfig:
    """``[unit]``: who this station is and where it stands."""

    id: str
    site: str
    latitude: float | None = None
    longitude: float | None = None
    elevation_m: float | None = None


@dataclass(frozen=True, slots=True)
class StorageConfig:
    """``[storage]``: the state directory (the outbox lives inside it) and the outbox's bounds."""

    path: Path = Path(DEFAULT_STORAGE_PATH)
    max_bytes: int = DEFAULT_MAX_BYTES
    commit_interval: float = DEFAULT_COMMIT_INTERVAL


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

    @property
    def where(self) -> str:
        """``bus:0xAA``, as in every log line about this sensor."""
        return f"{self.bus}:0x{self.address:02x}"


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration; ``source`` names the file it came from."""

    unit: UnitConfig
    storage: StorageConfig = StorageConfig()
    sensors: tuple[SensorConfig, ...] = ()
    source: str = "config"

    def with_storage_path(self, path: Path | str) -> Config:
        """A copy with another state directory (the CLI's ``--data-dir``)."""
        storage = dataclasses.replace(self.storage, path=Path(path))
        return dataclasses.replace(self, storage=storage)


# --- entry points ----------------------------------------------------------------------------


def load_config(path: Path | str, *, drivers: Registry | None = None) -> Config:
    """Read, parse and validate the file at ``path``; raise :class:`ConfigError` if unusable."""
    source = one_line(str(path))
    try:
        raw = Path(path).read_bytes()
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError([f"{source}: cannot read the configuration file: {reason}"]) from None
    skip = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0  # some editors add one
    try:
        text = raw[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = skip + e.start
        line = raw.count(b"\n", 0, at) + 1
        bad = f"byte 0x{raw[at]:02x} on line {line}"
        raise ConfigError([f"{source}: not UTF-8 text ({bad}); save it as UTF-8"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{source}: invalid TOML: {one_line(str(e))}"]) from None
    except RecursionError:
        raise ConfigError([f"{source}: invalid TOML: arrays nested too deeply"]) from None
    return parse_config(data, source=source, drivers=drivers)


def parse_config(
    data: Mapping[str, Any], *, source: str = "config", drivers: Registry | None = None
) -> Config:
    """Validate already-parsed TOML ``data``; raise :class:`ConfigError` listing every problem."""
    if drivers is None:
        from drivers.registry import DRIVERS  # late: the registry imports every driver module

        drivers = DRIVERS
    problems = _Problems(one_line(source), drivers)
    if not isinstance(data, Mapping):
        problems.add("(document)", "expected a TOML document (a table of sections)")
        raise ConfigError(problems.lines)
    values = _read_sections(problems, data)
    if problems.lines:
        raise ConfigError(problems.lines)
    return Config(**values, source=source)


# --- problems, tables and fields -------------------------------------------------------------

_NO_VALUE = object()
REQUIRED: Any = object()  # a _Field default: the key must be present


class _Bad(Exception):
    """A value is unusable; the message is what follows ``key = value:`` in the problem line."""


class _Problems:
    """Collects problem lines: ``source: key = value: what is wrong; what is expected``."""

    def __init__(self, source: str, drivers: Registry) -> None:
        self.source = source
        self.drivers = drivers
        self.lines: list[str] = []

    def add(
        self,
        path: str,
        message: str,
        value: object = _NO_VALUE,
        show: Callable[[Any], str] = toml_value,
    ) -> None:
        where = path if value is _NO_VALUE else f"{path} = {show(value)}"
        self.lines.append(f"{self.source}: {where}: {message}")


class _Field(NamedTuple):
    """One key of a table: how to check it, its default (or REQUIRED) and how to show it."""

    check: Callable[[object], Any]
    default: Any
    example: str  # shown when a required key is missing: 'id = "demo-001"'
    show: Callable[[Any], str] = toml_value


def _read_table(
    problems: _Problems,
    path: str,
    table: Mapping[str, Any],
    fields: Mapping[str, _Field],
    valid: str = "",
) -> tuple[dict[str, Any], bool]:
    """The values of ``fields`` that are good, and whether the whole table was.

    ``valid`` overrides the list of valid keys named for an unknown key.
    """
    before = len(problems.lines)
    for key in table:
        if key not in fields:
            problems.add(toml_key(path, key), f"unknown key; {valid or _valid_keys(fields)}")
    values: dict[str, Any] = {}
    for name, spec in fields.items():
        if name not in table:
            if spec.default is REQUIRED:
                problems.add(toml_key(path, name), f"missing; add it, such as {spec.example}")
            else:
                values[name] = spec.default
            continue
        try:
            values[name] = spec.check(table[name])
        except _Bad as e:
            problems.add(toml_key(path, name), str(e), table[name], spec.show)
    return values, len(problems.lines) == before


def _valid_keys(fields: Mapping[str, object]) -> str:
    return "valid keys are " + ", ".join(fields)


# --- value checks: each returns the clean value or raises _Bad --------------------------------


def _identifier(value: object) -> str:
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise _Bad(
            "expected 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return value


def _site(value: object) -> str:
    expected = f"expected a description of the place, 1 to {SITE_MAX_CHARS} characters on one line"
    if not isinstance(value, str) or not value.strip() or len(value) > SITE_MAX_CHARS:
        raise _Bad(expected)
    if not value.isprintable():  # would break log lines and line protocol
        raise _Bad(f"contains a line break or control character; {expected}")
    return value


def _number(low: float, high: float, unit: str) -> Callable[[object], float]:
    def check(value: object) -> float:
        expected = f"expected a number from {low:g} to {high:g} {unit}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Bad(expected + _unquote_hint(value))
        if not low <= value <= high:  # NaN fails this too
            raise _Bad(expected)
        return float(value)

    return check


def _bus(value: object) -> int:
    low, high = BUS_RANGE
    expected = f"expected an integer from {low} to {high} (the N of /dev/i2c-N)"
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(expected + _unquote_hint(value))
    if not low <= value <= high:
        raise _Bad(expected)
    return value


def _address(value: object) -> int:
    expected = f"expected 0x{FIRST_ADDRESS:02x} to 0x{LAST_ADDRESS:02x}"
    if isinstance(value, bool) or not isinstance(value, int):
        hint = _unquote_hint(value) or ", a number such as 0x76"
        raise _Bad(
            f"expected an I2C address from 0x{FIRST_ADDRESS:02x} to 0x{LAST_ADDRESS:02x}{hint}"
        )
    if 0 <= value <= SEVEN_BIT_MAX and not FIRST_ADDRESS <= value <= LAST_ADDRESS:
        raise _Bad(f"reserved I2C address (0x00-0x07 and 0x78-0x7F are reserved); {expected}")
    if not 0 <= value <= SEVEN_BIT_MAX:
        hint = ""
        if value <= 0xFF and FIRST_ADDRESS <= value >> 1 <= LAST_ADDRESS:
            hint = f" (an 8-bit address as some datasheets print it? Then write 0x{value >> 1:02x})"
        raise _Bad(f"not a 7-bit I2C address{hint}; {expected}")
    return value


def _unquote_hint(value: object) -> str:
    """A number written in quotes is told to drop them."""
    if not isinstance(value, str) or len(value) > 40:
        return ""
    for parse in (lambda text: int(text, 0), float):
        try:
            parse(value)
        except ValueError:
            continue
        return f"; write {one_line(value.strip())} without quotes"
    return ""


def _duration(low: float, high: float) -> Callable[[object], float]:
    def check(value: object) -> float:
        try:
            seconds = parse_duration(value)
        except ValueError as e:
            raise _Bad(str(e)) from None
        if not low <= seconds <= high:
            raise _Bad(
                f"expected a duration from {format_duration(low)} to {format_duration(high)}"
            )
        return seconds

    return check


def _size(low: int) -> Callable[[object], int]:
    def check(value: object) -> int:
        try:
            size = parse_size(value)
        except ValueError as e:
            raise _Bad(str(e)) from None
        if size < low:
            raise _Bad(f"expected at least {format_size(low)}")
        return size

    return check


def _path(value: object) -> Path:
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise _Bad(f'expected a directory path such as "{DEFAULT_STORAGE_PATH}"')
    return Path(value)


def _driver_name(drivers: Registry) -> Callable[[object], str]:
    def check(value: object) -> str:
        if not isinstance(value, str) or value not in drivers:
            names = ", ".join(toml_quote(name) for name in sorted(drivers)) or "(none installed)"
            raise _Bad(f"unknown driver; expected one of {names}")
        return value

    return check


def _option(option: Option) -> Callable[[object], Any]:
    """A check for one driver option: its type (bool is not an int), choices and bounds."""

    def check(value: object) -> Any:
        expected = "expected " + _option_expected(option)
        if not _is_kind(value, option.kind):
            raise _Bad(expected + _unquote_hint(value))
        if option.kind is float:
            value = float(value)  # type: ignore[arg-type]  # _is_kind allowed only int | float
            if not math.isfinite(value):
                raise _Bad(expected)
        if option.choices is not None and value not in option.choices:
            raise _Bad(expected)
        if isinstance(value, int | float) and not _within(value, option.minimum, option.maximum):
            raise _Bad(expected)
        return value

    return check


def _within(value: float, low: float | None, high: float | None) -> bool:
    return (low is None or value >= low) and (high is None or value <= high)


def _is_kind(value: object, kind: type) -> bool:
    if isinstance(value, bool):
        return kind is bool
    if kind is float:  # an int is fine where a number is expected, unless too big for a float
        return isinstance(value, float) or (isinstance(value, int) and abs(value) < 2**1023)
    return isinstance(value, kind)


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


# --- sections --------------------------------------------------------------------------------

_UNIT_FIELDS = {
    "id": _Field(_identifier, REQUIRED, 'id = "demo-001"'),
    "site": _Field(_site, REQUIRED, 'site = "Hanzhong wetland, east"'),
    "latitude": _Field(_number(-90, 90, "degrees"), None, ""),
    "longitude": _Field(_number(-180, 180, "degrees"), None, ""),
    "elevation_m": _Field(_number(-500, 9000, "metres"), None, ""),
}

_STORAGE_FIELDS = {
    "path": _Field(_path, Path(DEFAULT_STORAGE_PATH), ""),
    "max_bytes": _Field(_size(MIN_MAX_BYTES), DEFAULT_MAX_BYTES, ""),
    "commit_interval": _Field(_duration(*COMMIT_INTERVAL_RANGE), DEFAULT_COMMIT_INTERVAL, ""),
}


def _sensor_fields(drivers: Registry) -> dict[str, _Field]:
    return {
        "id": _Field(_identifier, REQUIRED, 'id = "air"'),
        "driver": _Field(_driver_name(drivers), REQUIRED, 'driver = "bme280"'),
        "bus": _Field(_bus, DEFAULT_BUS, ""),
        "address": _Field(_address, REQUIRED, "address = 0x76", toml_hex),
        "interval": _Field(_duration(*INTERVAL_RANGE), DEFAULT_INTERVAL, ""),
    }


def _table_section(
    name: str, fields: Mapping[str, _Field], make: Callable[..., T]
) -> Callable[[_Problems, object], T | None]:
    """The parser of a section that is one table of plain keys."""

    def parse(problems: _Problems, value: object) -> T | None:
        if not isinstance(value, Mapping):
            problems.add(name, f"expected a table [{name}]", value)
            return None
        values, ok = _read_table(problems, name, value, fields)
        return make(**values) if ok else None

    return parse


def _parse_sensors(problems: _Problems, value: object) -> tuple[SensorConfig, ...] | None:
    if not isinstance(value, list):
        hint = "expected [[sensor]] tables, with double brackets, one per sensor"
        problems.add("sensor", hint, value)
        return None
    sensors: list[SensorConfig] = []
    seen = _Seen()
    for index, item in enumerate(value):
        path = f"sensor[{index}]"
        if not isinstance(item, Mapping):
            problems.add(path, "expected a [[sensor]] table", item)
            continue
        values, ok = _read_sensor(problems, path, item)
        seen.check(problems, index, values)
        if ok:
            schema = {k: v for k, v in values.items() if k in SENSOR_KEYS}
            options = {k: v for k, v in values.items() if k not in SENSOR_KEYS}
            sensors.append(SensorConfig(**schema, options=MappingProxyType(options)))
    return tuple(sensors)


def _read_sensor(
    problems: _Problems, path: str, table: Mapping[str, Any]
) -> tuple[dict[str, Any], bool]:
    """A sensor's keys, with the options of its driver as further fields."""
    fields = _sensor_fields(problems.drivers)
    name = table.get("driver")
    driver = problems.drivers.get(name) if isinstance(name, str) else None
    if driver is None:
        # Options cannot be told from typos without a known driver; the next check will see them.
        values, _ = _read_table(problems, path, {k: table[k] for k in fields if k in table}, fields)
        return values, False
    options = {k: _Field(_option(o), o.default, "") for k, o in driver.options.items()}
    options = {k: f for k, f in options.items() if k not in fields}  # the schema's keys win
    listed = ", ".join(driver.options) if driver.options else "(none)"
    valid = f"{_valid_keys(fields)}, and the {driver.name} options {listed}"
    return _read_table(problems, path, table, fields | options, valid)


class _Seen:
    """Sensor ids and bus addresses seen so far, to report the second user of each."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.places: dict[tuple[int, int], str] = {}

    def check(self, problems: _Problems, index: int, values: Mapping[str, Any]) -> None:
        sensor_id = values.get("id")
        name = f"sensor[{index}]"
        if sensor_id is not None:
            if sensor_id in self.ids:
                message = (
                    f"already used by sensor[{self.ids[sensor_id]}]; give each sensor its own id"
                )
                problems.add(f"{name}.id", message, sensor_id)
            self.ids.setdefault(sensor_id, index)
            name = f"{name} ({sensor_id!r})"
        if "bus" in values and "address" in values:
            place = (values["bus"], values["address"])
            if place in self.places:
                message = (
                    f"bus {place[0]} address 0x{place[1]:02x} is already used by "
                    f"sensor {self.places[place]}; give each sensor its own address or bus"
                )
                problems.add(name, message)
            self.places.setdefault(place, repr(sensor_id) if sensor_id else name)


class _Section(NamedTuple):
    """A top-level key: the Config field it fills, its parser, and its value when absent."""

    field: str
    parse: Callable[[_Problems, object], Any]
    absent: object  # parsed when the key is missing; REQUIRED if it must be present
    example: str = ""


_SECTIONS: dict[str, _Section] = {
    "unit": _Section(
        "unit",
        _table_section("unit", _UNIT_FIELDS, UnitConfig),
        REQUIRED,
        "a [unit] table with at least id and site",
    ),
    "storage": _Section("storage", _table_section("storage", _STORAGE_FIELDS, StorageConfig), {}),
    "sensor": _Section("sensors", _parse_sensors, []),
}


def _read_sections(problems: _Problems, data: Mapping[str, Any]) -> dict[str, Any]:
    for key in data:
        if key not in _SECTIONS:
            problems.add(toml_key("", key), f"unknown key; {_valid_keys(_SECTIONS)}")
    values = {}
    for key, section in _SECTIONS.items():
        if key in data:
            values[section.field] = section.parse(problems, data[key])
        elif section.absent is REQUIRED:
            problems.add(key, f"missing; add {section.example}")
        else:
            values[section.field] = section.parse(problems, section.absent)
    return values
