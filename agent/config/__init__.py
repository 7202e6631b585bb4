"""The configuration file: TOML in, typed frozen dataclasses out, every problem found up front.

Validation never stops at the first mistake: a field technician with twenty minutes per site
wants the whole list at once, one line per problem, each naming the file, the key, the bad value
and what to write instead. Bad input only ever raises :class:`~agent.core.errors.ConfigError`.

Adding a section (``[uplink]``) means a dataclass, a field on :class:`Config`, and one entry in
``_SECTIONS`` with its parser: ``_table_section`` over a dict of ``_Field``s for a plain table.

A problem inside a ``[[sensor]]`` names the sensor by its id and, when the file's text is at
hand, the line of the key (agent.config.tomllines): ``sensor 'air' (line 14): intervall: unknown
key``.
A sensor's address must be one its chip can have (the driver's ``addresses``). The wiring file
of ``--simulate --sim-wiring`` (what is really on the bus) is checked the same way.
"""

from __future__ import annotations

import codecs
import dataclasses
import math
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple, TypeVar
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from agent.config.processing import (
    AVERAGE_RANGE,
    POLYNOMIAL_TERMS,
    STUCK_AFTER_MIN,
    Calibration,
    Plausible,
)
from agent.config.tomllines import TableLines, array_table_lines
from agent.core.atomic import read_bounded
from agent.core.credentials import AUTH_SCHEMES
from agent.core.errors import ConfigError
from agent.core.reading import RESERVED_SENSOR_ID
from agent.core.units import (
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
from agent.core.wire import (
    DERIVED_FIELDS,
    EPOCH_TAG_KEYS,
    QUALITY_SUFFIX,
    SIMULATED_TAG,
    TAG_KEYS,
    TIME_KEYS,
)
from drivers import tca9548a
from drivers.base import Driver, Option
from drivers.bus import FIRST_ADDRESS, LAST_ADDRESS

__all__ = [
    "AlertConfig",
    "Config",
    "ConfigError",
    "HealthConfig",
    "IndicatorConfig",
    "SensorConfig",
    "StorageConfig",
    "UnitConfig",
    "UplinkConfig",
    "WiredDevice",
    "load_config",
    "load_wiring",
    "parse_config",
    "parse_duration",
    "parse_size",
    "parse_wiring",
]

Registry = Mapping[str, type[Driver]]
T = TypeVar("T")

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # used with fullmatch
SITE_MAX_CHARS = 200
DEFAULT_STORAGE_PATH = "/var/lib/envagent"
DEFAULT_MAX_BYTES = 256 * 1024**2
MIN_MAX_BYTES = 1024**2
DEFAULT_COMMIT_INTERVAL = 30.0  # bench/README.md: the SD-card writes per reading
COMMIT_INTERVAL_RANGE = (1.0, 5 * 60.0)
DEFAULT_BUS = 1
BUS_RANGE = (0, 255)  # the N of /dev/i2c-N
DEFAULT_INTERVAL = 60.0
INTERVAL_RANGE = (1.0, 24 * 3600.0)
SEVEN_BIT_MAX = 0x7F
SENSOR_KEYS = (  # the rest of a sensor: options
    "id", "driver", "bus", "address", "interval",
    "mux", "channel", "average", "power_pin", "calibration", "plausible",
)
MUX_RANGE = (tca9548a.ADDRESSES[0], tca9548a.ADDRESSES[-1])  # the TCA9548A's, by its A0-A2
CHANNEL_RANGE = (0, tca9548a.CHANNELS - 1)
STUCK_AFTER_MAX = 1_000_000
# agent.runtime.health's readings of each sensor, under the sensor's own id: on its series upstream.
SENSOR_HEALTH_QUANTITIES = ("sensor_state", "sensor_errors")
QUANTITY_OPTION = "_quantity"  # the end of a driver option that names a quantity (ads1115)
DEFAULT_HEALTH_INTERVAL = 5 * 60.0
HEALTH_INTERVAL_RANGE = (30.0, 3600.0)
# Alert ids become part of a metric name (``envagent_alert_<id>``): health names' rule applies,
# lowercase letters, digits and ``_`` only (agent.runtime.health explains why; "-" and "." break
# them).
ALERT_ID_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,47}")  # used with fullmatch
ALERT_FOR_RANGE = (0.0, 24 * 3600.0)


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


@dataclass(frozen=True, slots=True)
class UplinkConfig:
    """``[uplink]``: where readings are delivered, and how patiently (seconds); see
    agent.uplink.worker."""

    url: str
    name: str = "default"  # [a-z0-9_-]: logs, status, health tags, state files, doctor
    format: str = "influx"
    allow_insecure_http: bool = False
    token_file: Path | None = None
    auth: str = "token"
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    measurement: str = "envagent"
    batch_size: int = 5000
    flush_interval: float = 60.0  # a fallback: each commit nudges delivery (agent.uplink.worker)
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    deadline: float = 60.0
    backoff_min: float = 1.0
    backoff_max: float = 300.0
    retry_after_max: float = 1800.0
    auth_retry: float = 600.0
    sensors: tuple[str, ...] | None = None  # which readings it takes; None: all
    quantities: tuple[str, ...] | None = None
    agent_readings: bool = True  # the agent's own health and alert readings, whatever selects
    start: str = "oldest"  # where an upstream new to the config starts: "oldest" | "now"


@dataclass(frozen=True, slots=True)
class IndicatorConfig:
    """``[indicator]``: status LED and service button, as BCM GPIO numbers; see
    agent.runtime.indicator."""

    led_pin: int
    button_pin: int | None = None
    hold_time: float = 3.0  # a press this long is a long press (identify)


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """``[health]``: how often the agent reports its own health upstream; see
    agent.runtime.health."""

    interval: float = DEFAULT_HEALTH_INTERVAL


@dataclass(frozen=True, slots=True)
class AlertConfig:
    """One ``[[alert]]``: a threshold on one quantity of one sensor; see agent.sampling.alerts.

    Exactly one of ``above`` and ``below`` is set; ``clear`` is where a firing alert clears
    (the hysteresis), ``hold`` how long (s) the condition must hold before it fires (``for``).
    """

    id: str
    sensor: str
    quantity: str
    above: float | None
    below: float | None
    clear: float
    hold: float = 0.0

    @property
    def threshold(self) -> float:
        return self.above if self.above is not None else self.below  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration; ``source`` names the file it came from."""

    unit: UnitConfig
    storage: StorageConfig = StorageConfig()
    sensors: tuple[SensorConfig, ...] = ()
    uplink: UplinkConfig | None = None
    indicator: IndicatorConfig | None = None
    health: HealthConfig = HealthConfig()
    alerts: tuple[AlertConfig, ...] = ()
    source: str = "config"

    def with_storage_path(self, path: Path | str) -> Config:
        """A copy with another state directory (the CLI's ``--data-dir``)."""
        storage = dataclasses.replace(self.storage, path=Path(path))
        return dataclasses.replace(self, storage=storage)


# --- entry points ----------------------------------------------------------------------------


# A station's file is a few KiB (the annotated example ~23 KiB): the bound only keeps a wrong
# file (a log, a disk image, /dev/zero) from costing the agent its memory.
MAX_CONFIG_BYTES = 1024 * 1024


def load_config(path: Path | str, *, drivers: Registry | None = None) -> Config:
    """Read, parse and validate the file at ``path``; raise :class:`ConfigError` if unusable."""
    source = one_line(str(path))
    data, text = _read_toml(Path(path), source, "configuration file")
    return parse_config(data, source=source, drivers=drivers, text=text)


def _read_toml(path: Path, source: str, what: str) -> tuple[dict[str, Any], str]:
    """The parsed TOML document at ``path`` and its text; a ConfigError names what is wrong."""
    try:
        raw = read_bounded(path, MAX_CONFIG_BYTES)
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError([f"{source}: cannot read the {what}: {reason}"]) from None
    skip = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0  # some editors add one
    try:
        text = raw[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = skip + e.start
        line = raw.count(b"\n", 0, at) + 1
        bad = f"byte 0x{raw[at]:02x} on line {line}"
        raise ConfigError([f"{source}: not UTF-8 text ({bad}); save it as UTF-8"]) from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{source}: invalid TOML: {one_line(str(e))}"]) from None
    except RecursionError:
        raise ConfigError([f"{source}: invalid TOML: arrays nested too deeply"]) from None


def _registry(drivers: Registry | None) -> Registry:
    if drivers is None:
        from drivers.registry import DRIVERS  # late: the registry imports every driver module

        return DRIVERS
    return drivers


def parse_config(
    data: Mapping[str, Any],
    *,
    source: str = "config",
    drivers: Registry | None = None,
    text: str | None = None,
) -> Config:
    """Validate already-parsed TOML ``data``; raise :class:`ConfigError` listing every problem.

    ``text``, the file ``data`` was parsed from, lets problems give the line of a sensor's key.
    """
    problems = _Problems(one_line(source), _registry(drivers), text)
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
    """Collects problem lines: ``source: key = value: what is wrong; what is expected``.

    Paths are TOML paths (``sensor[0].interval``) everywhere; a path into a ``[[table]]`` with
    :class:`_Labels` is shown the technician's way (``sensor 'air' (line 14): interval``).
    """

    def __init__(self, source: str, drivers: Registry, text: str | None = None) -> None:
        self.source = source
        self.drivers = drivers
        self.text = text
        self.lines: list[str] = []
        # sensor id -> its driver and quantities (name -> unit), for [[alert]]; None: unknown
        self.sensors: dict[str, tuple[str, Mapping[str, str] | None]] = {}
        self.labels: dict[str, _Labels] = {}  # "sensor" -> how its tables are named

    def add(
        self,
        path: str,
        message: str,
        value: object = _NO_VALUE,
        show: Callable[[Any], str] = toml_value,
    ) -> None:
        where = self._where(path)
        where = where if value is _NO_VALUE else f"{where} = {show(value)}"
        self.lines.append(f"{self.source}: {where}: {message}")

    def name(self, array: str, tables: Sequence[object], id_key: str | None = "id") -> _Labels:
        """Name the ``[[array]]`` tables in problem lines from now on (by ``id_key``)."""
        lines = None if self.text is None else array_table_lines(self.text, array, tables)
        labels = self.labels[array] = _Labels(array, tables, lines, id_key)
        return labels

    def _where(self, path: str) -> str:
        match = _IN_ARRAY.fullmatch(path)
        labels = None if match is None else self.labels.get(match[1])
        if match is None or labels is None:
            return path
        key = match[3] or ""
        label = labels.label(int(match[2]), key)
        return f"{label}: {key}" if key else label


_IN_ARRAY = re.compile(r"([a-z]+)\[([0-9]+)\](?:\.(.+))?", re.DOTALL)  # sensor[0].key


class _Labels:
    """How problem lines name the n-th ``[[sensor]]`` (or ``[[device]]``): by its id where it
    has a usable one, else by its place, and with the line of the key at issue where the text
    is known: ``sensor 'air' (line 14)``, ``sensor[2] (line 30)``."""

    def __init__(self, array: str, tables: Sequence[object], lines: list[TableLines] | None,
                 id_key: str | None) -> None:
        self.array = array
        self.lines = lines
        self.ids = [_usable_id(table, id_key) for table in tables]

    def line(self, index: int, key: str = "") -> int | None:
        """The line of ``key`` in the table, else of the nearest table above it, else none."""
        if self.lines is None or index >= len(self.lines):
            return None
        lines = self.lines[index]
        while key and key not in lines:
            key = key.rpartition(".")[0]
        return lines.get(key)

    def label(self, index: int, key: str = "") -> str:
        table_id = self.ids[index] if index < len(self.ids) else None
        label = f"{self.array}[{index}]" if table_id is None else f"{self.array} {table_id!r}"
        line = self.line(index, key)
        return label if line is None else f"{label} (line {line})"


def _usable_id(table: object, id_key: str | None) -> str | None:
    """The table's id if it can name the table in a problem line (a valid id prints plainly)."""
    if id_key is None or not isinstance(table, Mapping):
        return None
    value = table.get(id_key)
    return value if isinstance(value, str) and ID_PATTERN.fullmatch(value) else None


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


def _sensor_id(value: object) -> str:
    sensor_id = _identifier(value)
    if sensor_id == RESERVED_SENSOR_ID:
        raise _Bad("reserved for the agent's own health readings; choose another id")
    return sensor_id


def _sensor_fields(drivers: Registry) -> dict[str, _Field]:
    return {
        "id": _Field(_sensor_id, REQUIRED, 'id = "air"'),
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
    problems.name("sensor", value)
    sensors: list[SensorConfig] = []
    seen = _Seen("sensor")
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


def _check_references(problems: _Problems, read: list[tuple[int, dict[str, Any]]]) -> None:
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
    problems: _Problems, path: str, table: Mapping[str, Any]
) -> tuple[dict[str, Any], bool]:
    """A sensor's keys, with the options of its driver as further fields."""
    fields = _sensor_fields(problems.drivers)
    known = fields | _PLACEMENT_FIELDS
    nested = {k: table[k] for k in _PER_QUANTITY if k in table}
    table = {k: v for k, v in table.items() if k not in _PER_QUANTITY}
    name = table.get("driver")
    driver = problems.drivers.get(name) if isinstance(name, str) else None
    if driver is None:
        # Options cannot be told from typos without a known driver; the next check will see them.
        values, _ = _read_table(problems, path, {k: table[k] for k in known if k in table}, known)
        return values, False
    options = {k: _Field(_option(o), o.default, "") for k, o in driver.options.items()}
    options = {k: f for k, f in options.items() if k not in SENSOR_KEYS}  # the schema's keys win
    listed = ", ".join(driver.options) if driver.options else "(none)"
    valid = f"valid keys are {', '.join(SENSOR_KEYS)}, and the {driver.name} options {listed}"
    values, ok = _read_table(problems, path, table, known | options, valid)
    if "address" in values:
        ok = _chip_address(problems, path, driver.name, driver.addresses, values["address"]) and ok
    given = {k: values[k] for k in driver.options if k in values}
    options_ok = all(k in values for k in driver.options if k in table)
    if options_ok:  # rules spanning several options (the ads1115's channels)
        for key, message in driver.check_options(given):
            problems.add(toml_key(path, key), message, table.get(key, _NO_VALUE))
            ok = options_ok = False
    # With bad options the quantities are unknown, so any quantity name is let through.
    quantities = driver.configured_quantities(given) if options_ok else None
    if quantities is not None:
        ok = _check_quantity_names(problems, path, driver, values, quantities) and ok
    for key, parse in _PER_QUANTITY.items():
        at = toml_key(path, key)
        values[key], good = parse(problems, at, nested.get(key, {}), driver.name, quantities)
        ok = ok and good
    return values, _mux_pair(problems, path, table) and ok


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
    elif quantity in TAG_KEYS or quantity in EPOCH_TAG_KEYS or quantity == SIMULATED_TAG[0]:
        why = (f"the tag {quantity} on every reading (a field of the same name would clash "
               "with it)")
    elif quantity in SENSOR_HEALTH_QUANTITIES:
        why = "the agent's health reading of this sensor"
    else:
        return None
    return f"reserved upstream for {why}; choose another name"


def _check_quantity_names(problems: _Problems, path: str, driver: type[Driver],
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


def _chip_address(problems: _Problems, path: str, chip: str, addresses: Sequence[int],
                  address: int) -> bool:
    """Whether ``address`` is one the chip can have (its datasheet's, declared by its driver)."""
    if address in addresses:
        return True
    listed = [f"0x{a:02x}" for a in addresses]
    either = listed[0] if len(listed) == 1 else f"{', '.join(listed[:-1])} or {listed[-1]}"
    problems.add(toml_key(path, "address"), f"the {chip} answers only at {either}"
                 + _decimal_hint(address, addresses), address, toml_hex)
    return False


def _decimal_hint(value: int, addresses: Sequence[int]) -> str:
    """``address = 76`` for 0x76: the digits, read as hex, are an address that would fit."""
    try:
        as_hex = int(str(value), 16)
    except ValueError:
        return ""
    return f"; {value} is decimal: write 0x{as_hex:02x}" if as_hex in addresses else ""


Place = tuple[int, int | None, int | None, int]  # bus, mux, channel, address


class _Seen:
    """Ids and places of the ``[[sensor]]`` (or ``[[device]]``) tables seen so far, to report
    the second user of each; ``finish`` then checks every place against the multiplexers,
    which a later table may declare."""

    def __init__(self, array: str) -> None:
        self.array = array
        self.ids: dict[str, int] = {}
        self.places: dict[Place, str] = {}
        self.named: list[tuple[Place, str]] = []
        self.muxes: set[tuple[int, int]] = set()  # (bus, address) of every multiplexer

    def check(self, problems: _Problems, index: int, values: Mapping[str, Any],
              is_mux: bool = False) -> None:
        """One table's id and place; ``is_mux``: it is a multiplexer itself (wiring files)."""
        table_id = values.get("id")
        name, noun = f"{self.array}[{index}]", self.array
        labels = problems.labels[self.array]
        if table_id is not None:
            if table_id in self.ids:
                earlier = labels.line(self.ids[table_id])
                at = "" if earlier is None else f" (line {earlier})"
                problems.add(f"{name}.id", f"already used by an earlier [[{noun}]]{at}; give "
                             f"each {noun} its own id", table_id)
            self.ids.setdefault(table_id, index)
        if not {"bus", "address", "mux", "channel"} <= values.keys():
            return
        bus, address, mux, channel = (values[k] for k in ("bus", "address", "mux", "channel"))
        if (mux is None) != (channel is None):
            return  # reported by _mux_pair
        place = (bus, mux, channel, address)
        if place in self.places:
            where, fix = f"bus {bus}", "address or bus"
            if mux is not None:
                where, fix = f"bus {bus} mux 0x{mux:02x} channel {channel}", "address or channel"
            problems.add(name, f"{where} address 0x{address:02x} is already used by "
                         f"{self.places[place]}; give each {noun} its own {fix}")
        self.places.setdefault(place, labels.label(index))
        if mux is not None:
            self.muxes.add((bus, mux))
        if is_mux:
            self.muxes.add((bus, address))
        else:
            self.named.append((place, name))

    def finish(self, problems: _Problems) -> None:
        muxes = self.muxes
        for (bus, mux, channel, address), name in self.named:
            if (bus, address) in muxes:
                problems.add(name, (
                    f"address 0x{address:02x} is where the multiplexer mux = 0x{address:02x} "
                    f"answers on bus {bus}; give the sensor or the multiplexer (its A0-A2 pins) "
                    "another address"
                ))
            elif mux is not None and (bus, None, None, address) in self.places:
                problems.add(name, (
                    f"address 0x{address:02x} behind mux 0x{mux:02x} channel {channel} is also "
                    f"used on bus {bus} itself by {self.places[(bus, None, None, address)]}"
                    f"; both would answer whenever channel {channel} is selected, so move one"
                ))


# --- sensor placement behind a multiplexer, and per-quantity processing -----------------------


def _whole(low: int, high: int, what: str = "", *, noun: str = "an integer"
           ) -> Callable[[object], int]:
    def check(value: object) -> int:
        expected = f"expected {noun} from {low} to {high}{what}"
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad(expected + _unquote_hint(value))
        if not low <= value <= high:
            raise _Bad(expected)
        return value

    return check


def _mux(value: object) -> int:
    low, high = MUX_RANGE
    expected = f"expected the multiplexer's address, 0x{low:02x} to 0x{high:02x} (a TCA9548A)"
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(expected + _unquote_hint(value))
    if value not in tca9548a.ADDRESSES:
        raise _Bad(expected + _decimal_hint(value, tca9548a.ADDRESSES))
    return value


def _mux_pair(problems: _Problems, path: str, table: Mapping[str, Any]) -> bool:
    """``mux`` and ``channel`` come together."""
    if "channel" in table and "mux" not in table:
        message = "needs mux, the multiplexer's address; add mux = 0x70 (0x70 to 0x77)"
        problems.add(toml_key(path, "channel"), message, table["channel"])
        return False
    if "mux" in table and "channel" not in table:
        message = "needs channel, the multiplexer channel the sensor is wired to; add channel = 0"
        problems.add(toml_key(path, "mux"), message + " to 7", table["mux"], toml_hex)
        return False
    return True


def _real(value: object) -> float:
    if not isinstance(value, int | float) or not _is_kind(value, float):  # no bool, no huge int
        raise _Bad("expected a number" + _unquote_hint(value))
    if not math.isfinite(value):
        raise _Bad("expected a finite number")
    return float(value)


def _nonzero(value: object) -> float:
    number = _real(value)
    if number == 0:
        raise _Bad("expected a number other than 0 (a scale of 0 would erase every reading)")
    return number


def _positive(value: object) -> float:
    number = _real(value)
    if number <= 0:
        raise _Bad("expected a number above 0")
    return number


def _polynomial(value: object) -> tuple[float, ...]:
    low, high = POLYNOMIAL_TERMS
    expected = f"expected {low} to {high} numbers [c0, c1, ...] for value = c0 + c1·x + c2·x² ..."
    if isinstance(value, list) and len(value) == 1 and _is_kind(value[0], float) and (
        math.isfinite(value[0])
    ):
        raise _Bad(f"a single number would replace every value by that constant; to add it, "
                   f"write offset = {toml_value(value[0])} instead, or give {expected[9:]}")
    if not isinstance(value, list) or not low <= len(value) <= high:
        raise _Bad(expected)
    try:
        return tuple(_real(c) for c in value)
    except _Bad:
        raise _Bad(expected) from None


def _make_calibration(quantity: str, v: Mapping[str, Any]) -> Calibration:
    if v["polynomial"] is not None and (v["offset"] is not None or v["scale"] is not None):
        raise _Bad("polynomial replaces offset and scale; write them as its c0 and c1")
    if v["polynomial"] is None and v["offset"] is None and v["scale"] is None:
        raise _Bad("expected offset, scale or polynomial (offset = 0.0 records no correction)")
    scale = 1.0 if v["scale"] is None else v["scale"]
    return Calibration(v["id"], v["offset"] or 0.0, scale, v["polynomial"])


def _make_plausible(quantity: str, v: Mapping[str, Any]) -> Plausible:
    given = Plausible(**v)
    limits = given.resolved(quantity)
    if limits.min is not None and limits.max is not None and limits.min >= limits.max:
        low = f"{limits.min:g}" + (" (built in)" if given.min is None else "")
        high = f"{limits.max:g}" + (" (built in)" if given.max is None else "")
        raise _Bad(f"min {low} must be below max {high}")
    return given


_CALIBRATION_FIELDS = {
    "id": _Field(_identifier, REQUIRED, 'id = "air-T-2026-03"'),
    "offset": _Field(_real, None, ""),
    "scale": _Field(_nonzero, None, ""),
    "polynomial": _Field(_polynomial, None, ""),
}

_PLAUSIBLE_FIELDS = {
    "min": _Field(_real, None, ""),
    "max": _Field(_real, None, ""),
    "spike": _Field(_positive, None, ""),
    "stuck_after": _Field(_whole(STUCK_AFTER_MIN, STUCK_AFTER_MAX), None, ""),
}

_PLACEMENT_FIELDS = {
    "mux": _Field(_mux, None, "", toml_hex),
    "channel": _Field(_whole(*CHANNEL_RANGE, " (the multiplexer channel)"), None, ""),
    "average": _Field(_whole(*AVERAGE_RANGE, " (driver reads per reading)"), 1, ""),
    "power_pin": _Field(lambda value: _gpio(value), None, ""),  # _gpio is defined below
}

PerQuantity = Callable[
    [_Problems, str, object, str, Mapping[str, str] | None], tuple[Mapping[str, Any], bool]
]


def _per_quantity(
    kind: str, fields: Mapping[str, _Field], make: Callable[[str, Mapping[str, Any]], Any]
) -> PerQuantity:
    """The parser of ``[sensor.<kind>.<quantity>]`` tables, one per quantity of the driver."""

    def parse(
        problems: _Problems,
        path: str,
        value: object,
        driver: str,
        quantities: Mapping[str, str] | None,
    ) -> tuple[Mapping[str, Any], bool]:
        before = len(problems.lines)
        found: dict[str, Any] = {}
        if not isinstance(value, Mapping):
            problems.add(path, f"expected tables such as [sensor.{kind}.temperature]", value)
        else:
            for quantity, table in value.items():
                at = toml_key(path, quantity)
                if quantities is not None and quantity not in quantities:
                    names = ", ".join(quantities) or "(none)"
                    problems.add(at, f"unknown quantity for driver {driver}; expected {names}")
                elif not isinstance(table, Mapping):
                    heading = toml_key(f"sensor.{kind}", quantity)
                    problems.add(at, f"expected a table [{heading}]", table)
                else:
                    values, ok = _read_table(problems, at, table, fields)
                    try:
                        if ok:
                            found[quantity] = make(quantity, values)
                    except _Bad as e:
                        problems.add(at, str(e))
        return MappingProxyType(found), len(problems.lines) == before

    return parse


_PER_QUANTITY: dict[str, PerQuantity] = {
    "calibration": _per_quantity("calibration", _CALIBRATION_FIELDS, _make_calibration),
    "plausible": _per_quantity("plausible", _PLAUSIBLE_FIELDS, _make_plausible),
}


# --- the wiring file: what is really on the bus, for --simulate --sim-wiring -------------------

MUX_CHIP = "tca9548a"  # a wiring file may list a multiplexer on its own, with nothing behind it


@dataclass(frozen=True, slots=True)
class WiredDevice:
    """One ``[[device]]`` of a wiring file: a chip as a technician says it is actually wired,
    which the simulated world then holds instead of what the config expects (drivers.sim.wiring).
    """

    chip: str
    address: int
    bus: int = DEFAULT_BUS
    mux: int | None = None  # the TCA9548A it sits behind, with ``channel``
    channel: int | None = None


def load_wiring(path: Path | str, *, drivers: Registry | None = None) -> tuple[WiredDevice, ...]:
    """Read and validate a wiring file; raise :class:`ConfigError` listing every problem."""
    source = one_line(str(path))
    data, text = _read_toml(Path(path), source, "wiring file")
    return parse_wiring(data, source=source, drivers=drivers, text=text)


def parse_wiring(
    data: Mapping[str, Any],
    *,
    source: str = "wiring",
    drivers: Registry | None = None,
    text: str | None = None,
) -> tuple[WiredDevice, ...]:
    """Validate a parsed wiring file as a config is validated: every problem, one line each.

    A chip can only be wired at an address it can have, so the same per-chip addresses apply;
    no ``[[device]]`` at all is a bus where nothing is connected.
    """
    problems = _Problems(one_line(source), _registry(drivers), text)
    for key in data:
        if key != "device":
            problems.add(toml_key("", key), "unknown key; a wiring file holds [[device]] tables")
    value = data.get("device", [])
    if not isinstance(value, list):
        problems.add("device", "expected [[device]] tables, with double brackets, one per "
                     "device", value)
        value = []
    problems.name("device", value, id_key=None)
    fields = _wiring_fields(problems.drivers)
    seen = _Seen("device")
    devices: list[WiredDevice] = []
    for index, item in enumerate(value):
        path = f"device[{index}]"
        if not isinstance(item, Mapping):
            problems.add(path, "expected a [[device]] table", item)
            continue
        values, ok = _read_table(problems, path, item, fields)
        chip = values.get("chip")
        if chip is not None and "address" in values:
            addresses = (tca9548a.ADDRESSES if chip == MUX_CHIP
                         else problems.drivers[chip].addresses)
            ok = _chip_address(problems, path, chip, addresses, values["address"]) and ok
        ok = _mux_pair(problems, path, item) and ok
        if chip == MUX_CHIP and "mux" in item:
            problems.add(toml_key(path, "mux"), "a multiplexer behind a multiplexer is not "
                         "simulated; wire it to the bus itself", item["mux"], toml_hex)
            ok = False
        seen.check(problems, index, values, is_mux=chip == MUX_CHIP)
        if ok:
            devices.append(WiredDevice(**values))
    seen.finish(problems)
    if problems.lines:
        raise ConfigError(problems.lines)
    return tuple(devices)


def _wiring_fields(drivers: Registry) -> dict[str, _Field]:
    chips = sorted([*drivers, MUX_CHIP])

    def chip(value: object) -> str:
        if not isinstance(value, str) or value not in chips:
            raise _Bad("unknown chip; expected one of " + ", ".join(map(toml_quote, chips)))
        return value

    return {
        "chip": _Field(chip, REQUIRED, 'chip = "bme280"'),
        "address": _Field(_address, REQUIRED, "address = 0x76", toml_hex),
        "bus": _Field(_bus, DEFAULT_BUS, ""),
        "mux": _Field(_mux, None, "", toml_hex),
        "channel": _Field(_whole(*CHANNEL_RANGE, " (the multiplexer channel)"), None, ""),
    }


# --- [uplink] ----------------------------------------------------------------------------------

UPLINK_FORMATS = ("influx", "json")
MEASUREMENT_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,63}")  # used with fullmatch
INFLUX_V2_PATH = "/api/v2/write"
# Keys and URL parts that would put a secret in this file (readable by every technician, kept in
# backups and support tickets): refused, with the way to do it instead.
SECRET_KEYS = ("token", "password", "api_key", "apikey", "secret", "auth_token", "upload_token")
SECRET_PARAMS = frozenset({"u", "p", "password", "token", "access_token", "api_key", "apikey",
                           "auth_token"})  # u and p: InfluxDB 1.x query authentication
TOKEN_HOWTO = ("put the token in a file readable only by the agent's user and name it with "
               "uplink.token_file, or use LoadCredential=upload-token:/etc/envagent/upload-token "
               "in the systemd unit")
URL_EXAMPLE = 'url = "https://influx.example.org:8086/api/v2/write?org=eco&bucket=field"'


def _url(value: object) -> str:
    expected = f"expected the full write URL, such as {URL_EXAMPLE[6:]}"
    if not isinstance(value, str) or not value.isprintable() or not value.strip():
        raise _Bad(expected)
    if any(char.isspace() for char in value):
        raise _Bad(f"contains a space (write %20); {expected}")
    parts = urlsplit(value)
    if parts.scheme.lower() not in ("https", "http"):
        raise _Bad(f"expected an https:// URL; {expected}")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise _Bad(f"the port is not a number from 1 to 65535; {expected}") from None
    if not parts.hostname:
        raise _Bad(f"no host name; {expected}")
    if parts.username is not None or parts.password is not None:
        raise _Bad(f"has a user name or password in it; credentials never go in the config "
                   f"file: {TOKEN_HOWTO}")
    params = {key.lower() for key, _ in parse_qsl(parts.query, keep_blank_values=True)}
    if params & SECRET_PARAMS:
        names = ", ".join(sorted(params & SECRET_PARAMS))
        raise _Bad(f"carries credentials ({names}=); they never go in the config file: "
                   f"{TOKEN_HOWTO}")
    if parts.fragment:
        raise _Bad(f"remove the #fragment; {expected}")
    return value


def _show_url(value: object) -> str:
    """The URL as written, with any user name, password or credential parameter masked."""
    if not isinstance(value, str):
        return toml_value(value)
    try:
        parts = urlsplit(value)
        netloc = parts.netloc
        if "@" in netloc:
            netloc = "***@" + netloc.rsplit("@", 1)[1]
        query = "&".join(
            f"{key}=***" if key.lower() in SECRET_PARAMS else f"{key}={item}"
            for key, item in parse_qsl(parts.query, keep_blank_values=True))
        shown = urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return '"(an unusable URL)"'
    return toml_value(shown)


def _choice(choices: tuple[str, ...]) -> Callable[[object], str]:
    def check(value: object) -> str:
        if value not in choices:
            raise _Bad("expected one of " + ", ".join(toml_quote(c) for c in choices))
        return str(value)

    return check


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Bad("expected true or false, without quotes")
    return value


def _integer(low: int, high: int) -> Callable[[object], int]:
    return _whole(low, high, noun="a whole number")


def _file_path(value: object) -> Path:
    if not isinstance(value, str) or not value.strip() or not value.isprintable():
        raise _Bad('expected a file path such as "/etc/envagent/upload-token"')
    return Path(value)


def _measurement(value: object) -> str:
    if not isinstance(value, str) or not MEASUREMENT_PATTERN.fullmatch(value):
        raise _Bad("expected 1 to 64 letters, digits, '.', '_' or '-', starting with a letter")
    return value


_UPLINK_DEFAULTS = {f.name: f.default for f in dataclasses.fields(UplinkConfig)}
_UPLINK_FIELDS = {
    "url": _Field(_url, REQUIRED, URL_EXAMPLE, _show_url),
    "format": _Field(_choice(UPLINK_FORMATS), _UPLINK_DEFAULTS["format"], ""),
    "allow_insecure_http": _Field(_boolean, _UPLINK_DEFAULTS["allow_insecure_http"], ""),
    "token_file": _Field(_file_path, None, ""),
    "auth": _Field(_choice(AUTH_SCHEMES), _UPLINK_DEFAULTS["auth"], ""),
    "ca_file": _Field(_file_path, None, ""),
    "client_cert": _Field(_file_path, None, ""),
    "client_key": _Field(_file_path, None, ""),
    "measurement": _Field(_measurement, _UPLINK_DEFAULTS["measurement"], ""),
    "batch_size": _Field(_integer(1000, 100_000), _UPLINK_DEFAULTS["batch_size"], ""),
    "flush_interval": _Field(_duration(1.0, 3600.0), _UPLINK_DEFAULTS["flush_interval"], ""),
    "connect_timeout": _Field(_duration(1.0, 300.0), _UPLINK_DEFAULTS["connect_timeout"], ""),
    "read_timeout": _Field(_duration(1.0, 600.0), _UPLINK_DEFAULTS["read_timeout"], ""),
    "deadline": _Field(_duration(1.0, 1800.0), _UPLINK_DEFAULTS["deadline"], ""),
    "backoff_min": _Field(_duration(0.1, 3600.0), _UPLINK_DEFAULTS["backoff_min"], ""),
    "backoff_max": _Field(_duration(1.0, 86400.0), _UPLINK_DEFAULTS["backoff_max"], ""),
    "retry_after_max": _Field(_duration(1.0, 86400.0), _UPLINK_DEFAULTS["retry_after_max"], ""),
    "auth_retry": _Field(_duration(10.0, 86400.0), _UPLINK_DEFAULTS["auth_retry"], ""),
}


def _parse_uplink(problems: _Problems, value: object) -> UplinkConfig | None:
    """``[uplink]``; absent (None) means sample and store only."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        problems.add("uplink", "expected a table [uplink]", value)
        return None
    before = len(problems.lines)
    table = dict(value)
    for key in list(table):
        if isinstance(key, str) and key.lower() in SECRET_KEYS:
            del table[key]  # and never shown: the problem line names the key only
            problems.add(toml_key("uplink", key),
                         f"a secret never goes in the config file; {TOKEN_HOWTO}")
    values, _ = _read_table(problems, "uplink", table, _UPLINK_FIELDS)
    _check_uplink(problems, values)
    return UplinkConfig(**values) if len(problems.lines) == before else None


def _check_uplink(problems: _Problems, values: Mapping[str, Any]) -> None:
    """The rules between keys: plain http, InfluxDB URL parameters, pairs of settings."""
    url = values.get("url")
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme.lower() == "http" and not values.get("allow_insecure_http"):
            problems.add("uplink.url", "plain http sends readings and the token unencrypted; "
                         "use https://, or for a collector on this machine set "
                         "allow_insecure_http = true and a loopback host", url, _show_url)
        elif parts.scheme.lower() == "http" and not _loopback(parts.hostname or ""):
            problems.add("uplink.url", "allow_insecure_http allows plain http only to this "
                         "machine (127.0.0.1, ::1 or localhost); use https:// for any other "
                         "host", url, _show_url)
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        if values.get("format") == "influx" and params.get("precision", "ns") != "ns":
            problems.add("uplink.url", "the agent sends nanosecond timestamps; remove "
                         "precision= (precision=ns is added)", url, _show_url)
        if parts.path.rstrip("/").endswith(INFLUX_V2_PATH) and "bucket" not in params:
            problems.add("uplink.url", "InfluxDB 2 needs the bucket and organisation: add "
                         "?org=...&bucket=... to the URL", url, _show_url)
    if values.get("client_key") is not None and values.get("client_cert") is None:
        problems.add("uplink.client_key", "set client_cert too (the certificate of this key)")
    low, high = values.get("backoff_min"), values.get("backoff_max")
    if low is not None and high is not None and low > high:
        problems.add("uplink.backoff_min", f"is longer than backoff_max "
                     f"({format_duration(high)}); make it shorter", low, format_duration)
    connect, deadline = values.get("connect_timeout"), values.get("deadline")
    if connect is not None and deadline is not None and deadline < connect:
        problems.add("uplink.deadline", f"is shorter than connect_timeout "
                     f"({format_duration(connect)}); make it longer", deadline, format_duration)


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


# --- [indicator] -----------------------------------------------------------------------------

GPIO_RANGE = (0, 27)  # the BCM GPIOs of the 40-pin header
I2C1_PINS = {2: "SDA", 3: "SCL"}  # i2c-1, the sensors' bus, is enabled on every unit
# Physical pin of the 40-pin header -> BCM GPIO, the same on every 40-pin Pi including the Pi 5
# (https://pinout.xyz); the pins not listed are power and ground.
BOARD_TO_BCM = {
    3: 2, 5: 3, 7: 4, 8: 14, 10: 15, 11: 17, 12: 18, 13: 27, 15: 22, 16: 23, 18: 24, 19: 10,
    21: 9, 22: 25, 23: 11, 24: 8, 26: 7, 27: 0, 28: 1, 29: 5, 31: 6, 32: 12, 33: 13, 35: 19,
    36: 16, 37: 26, 38: 20, 40: 21,
}
PIN_NAME = re.compile(r"(GPIO|BCM|BOARD|J8:)([0-9]{1,2})", re.IGNORECASE)  # gpiozero's names
PIN_EXPECTED = ('expected a GPIO number from 0 to 27 such as 17, or a pin name such as "GPIO17" '
                'or "BOARD11" (physical pin 11 of the 40-pin header)')


def _gpio(value: object) -> int:
    """A pin as its BCM GPIO number, from a number or one of gpiozero's pin names."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _Bad(PIN_EXPECTED)
    if isinstance(value, str):
        match = PIN_NAME.fullmatch(value.strip())
        if match is None:
            raise _Bad(PIN_EXPECTED + _unquote_hint(value))
        kind, number = match[1].upper(), int(match[2])
        if kind in ("BOARD", "J8:") and number not in BOARD_TO_BCM:
            raise _Bad(f"physical pin {number} is not a GPIO pin; {PIN_EXPECTED}")
        value = BOARD_TO_BCM[number] if kind in ("BOARD", "J8:") else number
    low, high = GPIO_RANGE
    if not low <= value <= high:
        raise _Bad(PIN_EXPECTED)
    if value in I2C1_PINS:
        raise _Bad(f"GPIO{value} is {I2C1_PINS[value]} of I2C bus 1, the sensors' bus; "
                   "choose a free GPIO such as 17")
    return value


_INDICATOR_FIELDS = {
    "led_pin": _Field(_gpio, REQUIRED, "led_pin = 17"),
    "button_pin": _Field(_gpio, None, ""),
    "hold_time": _Field(_duration(1.0, 10.0), 3.0, ""),
}


def _parse_indicator(problems: _Problems, value: object) -> IndicatorConfig | None:
    """``[indicator]``; absent (None) means no status LED and no service button."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        problems.add("indicator", "expected a table [indicator]", value)
        return None
    values, ok = _read_table(problems, "indicator", value, _INDICATOR_FIELDS)
    led = values.get("led_pin")
    if led is not None and values.get("button_pin") == led:
        problems.add("indicator.button_pin", f"the same pin as led_pin (GPIO{led}); wire the "
                     "button to another GPIO", value["button_pin"])
        ok = False
    return IndicatorConfig(**values) if ok else None


_HEALTH_FIELDS = {
    "interval": _Field(_duration(*HEALTH_INTERVAL_RANGE), DEFAULT_HEALTH_INTERVAL, ""),
}


def _alert_id(value: object) -> str:
    if not isinstance(value, str) or not ALERT_ID_PATTERN.fullmatch(value):
        raise _Bad("expected 1 to 48 lowercase letters, digits or '_', starting with a letter "
                   "(it becomes the metric envagent_alert_<id>)")
    if value.endswith(QUALITY_SUFFIX):  # envagent_alert_x_q is the quality of alert x
        raise _Bad(f"must not end in {QUALITY_SUFFIX}: upstream that names the quality flags "
                   f"of alert {value[:-len(QUALITY_SUFFIX)]!r}; choose another id")
    return value


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise _Bad("expected a quoted name")
    return value


_ALERT_FIELDS = {
    "id": _Field(_alert_id, REQUIRED, 'id = "pm25_high"'),
    "sensor": _Field(_text, REQUIRED, 'sensor = "dust"'),
    "quantity": _Field(_text, REQUIRED, 'quantity = "pm2_5"'),
    "above": _Field(_real, None, ""),
    "below": _Field(_real, None, ""),
    "for": _Field(_duration(*ALERT_FOR_RANGE), 0.0, ""),
    "clear": _Field(_real, None, ""),
}


def _parse_alerts(problems: _Problems, value: object) -> tuple[AlertConfig, ...] | None:
    """``[[alert]]`` tables; runs after ``[[sensor]]`` so it can check the names against them."""
    if not isinstance(value, list):
        problems.add("alert", "expected [[alert]] tables, with double brackets, one per rule",
                     value)
        return None
    alerts: list[AlertConfig] = []
    ids: dict[str, int] = {}
    for index, item in enumerate(value):
        path = f"alert[{index}]"
        if not isinstance(item, Mapping):
            problems.add(path, "expected an [[alert]] table", item)
            continue
        values, ok = _read_table(problems, path, item, _ALERT_FIELDS)
        alert_id = values.get("id")
        if alert_id is not None:
            if alert_id in ids:
                problems.add(toml_key(path, "id"), f"already used by alert[{ids[alert_id]}]; "
                             "give each alert its own id", alert_id)
                ok = False
            ids.setdefault(alert_id, index)
        ok = _check_alert(problems, path, item, values) and ok
        if ok:
            threshold = values["above"] if values["above"] is not None else values["below"]
            alerts.append(AlertConfig(
                id=values["id"], sensor=values["sensor"], quantity=values["quantity"],
                above=values["above"], below=values["below"],
                clear=threshold if values["clear"] is None else values["clear"],
                hold=values["for"]))
    return tuple(alerts)


def _check_alert(problems: _Problems, path: str, table: Mapping[str, Any],
                 values: Mapping[str, Any]) -> bool:
    """The rules spanning keys: a known sensor and quantity, one threshold, a sane ``clear``."""
    ok = True
    sensor, quantity = values.get("sensor"), values.get("quantity")
    if isinstance(sensor, str):
        known = ", ".join(toml_quote(i) for i in problems.sensors) or "(none)"
        if sensor not in problems.sensors:
            problems.add(toml_key(path, "sensor"), "no [[sensor]] has this id; expected one "
                         f"of {known}", sensor)
            ok = False
        elif isinstance(quantity, str):
            driver, quantities = problems.sensors[sensor]
            if quantities is not None and quantity not in quantities:
                problems.add(toml_key(path, "quantity"), f"sensor {sensor!r} ({driver}) does not "
                             f"report it; expected one of {', '.join(quantities)}", quantity)
                ok = False
    above, below, clear = values.get("above"), values.get("below"), values.get("clear")
    if "above" in table and "below" in table:
        problems.add(path, "has both above and below; keep one (write a second [[alert]] for "
                     "the other side)")
        return False
    if "above" not in table and "below" not in table:
        problems.add(path, "missing a threshold; add above = <number> or below = <number>")
        return False
    if clear is not None and above is not None and clear > above:
        problems.add(toml_key(path, "clear"), f"must not be more than above = {above:g}: "
                     "the alert clears when the value falls back to clear or under", table["clear"])
        ok = False
    if clear is not None and below is not None and clear < below:
        problems.add(toml_key(path, "clear"), f"must not be less than below = {below:g}: "
                     "the alert clears when the value rises back to clear or over", table["clear"])
        ok = False
    return ok


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
    "uplink": _Section("uplink", _parse_uplink, None),
    "indicator": _Section("indicator", _parse_indicator, None),
    "health": _Section("health", _table_section("health", _HEALTH_FIELDS, HealthConfig), {}),
    "alert": _Section("alerts", _parse_alerts, []),  # after "sensor": it checks against them
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
