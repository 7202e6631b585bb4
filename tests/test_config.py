"""The configuration layer: every problem found at once, one exact line each, never a traceback."""

from __future__ import annotations

import dataclasses
import datetime
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import (
    Config,
    SensorConfig,
    StorageConfig,
    UnitConfig,
    load_config,
    parse_config,
)
from agent.core.errors import ConfigError
from agent.core.units import format_duration, format_size, parse_duration, parse_size
from drivers.base import Driver, Measurement, Option

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "envagent.example.toml"
SRC = "envagent.toml"


class Probe(Driver):
    """A test-only driver with one option of each kind."""

    name = "probe"
    addresses: ClassVar[tuple[int, ...]] = (0x40, 0x41)
    quantities: ClassVar[Mapping[str, str]] = {"temperature": "°C"}
    options: ClassVar[Mapping[str, Option]] = {
        "gain": Option(int, 1, "amplifier gain", choices=(1, 2, 4)),
        "offset": Option(float, 0.0, "added to every value", minimum=-5.0, maximum=5.0),
        "heater": Option(bool, False, "run the heater"),
        "label": Option(str, "", "free text"),
    }

    def setup(self) -> None:
        pass

    def read(self) -> list[Measurement]:
        return []


class Bare(Probe):
    """A test-only driver without options, at any address."""

    name = "bare"
    addresses = tuple(range(0x08, 0x78))
    options: ClassVar[Mapping[str, Option]] = {}


REGISTRY: dict[str, type[Driver]] = {"probe": Probe, "bare": Bare}

UNIT = '[unit]\nid = "u1"\nsite = "Roof"\n'
SENSOR = '[[sensor]]\nid = "s"\ndriver = "probe"\naddress = 0x40\n'


def parse(text: str) -> Config:
    return parse_config(tomllib.loads(text), source=SRC, drivers=REGISTRY)


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    return caught.value.problems


# --- good configs ------------------------------------------------------------------------------


def test_minimal_config_takes_every_default() -> None:
    config = parse(UNIT + SENSOR)
    assert config.unit == UnitConfig("u1", "Roof")
    assert config.storage == StorageConfig(Path("/var/lib/envagent"), 256 * 1024**2, 30.0)
    assert config.sensors == (
        SensorConfig(
            "s", "probe", 1, 0x40, 60.0, {"gain": 1, "offset": 0.0, "heater": False, "label": ""}
        ),
    )
    assert config.source == SRC


def test_full_config_is_typed() -> None:
    config = parse(
        '[unit]\nid = "demo-001"\nsite = "汉中 wetland, east"\n'
        "latitude = 33\nlongitude = -107.5\nelevation_m = 510\n"
        '[storage]\npath = "/data/ea"\nmax_bytes = "64 MiB"\ncommit_interval = "1m30s"\n'
        '[[sensor]]\nid = "air.1"\ndriver = "probe"\nbus = 3\naddress = 0x41\n'
        'interval = 2.5\ngain = 4\noffset = -5\nheater = true\nlabel = "north"\n'
    )
    assert config.unit == UnitConfig("demo-001", "汉中 wetland, east", 33.0, -107.5, 510.0)
    assert isinstance(config.unit.latitude, float)
    assert config.storage == StorageConfig(Path("/data/ea"), 64 * 1024**2, 90.0)
    (sensor,) = config.sensors
    assert (sensor.bus, sensor.address, sensor.interval, sensor.where) == (3, 0x41, 2.5, "3:0x41")
    assert dict(sensor.options) == {"gain": 4, "offset": -5.0, "heater": True, "label": "north"}
    assert isinstance(sensor.options["offset"], float)


def test_config_is_immutable_hashable_and_overridable() -> None:
    config = parse(UNIT + SENSOR)
    assert isinstance(config.sensors[0].options, MappingProxyType)
    with pytest.raises(TypeError):
        config.sensors[0].options["gain"] = 2  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.unit.id = "x"  # type: ignore[misc]
    assert hash(config) == hash(parse(UNIT + SENSOR)) and config == parse(UNIT + SENSOR)
    moved = config.with_storage_path("envagent-data")
    assert moved.storage.path == Path("envagent-data") and config.storage.path != moved.storage.path
    assert moved.storage.max_bytes == config.storage.max_bytes and moved.sensors == config.sensors


def test_no_sensors_and_no_storage_section_is_valid() -> None:
    config = parse(UNIT)
    assert config.sensors == () and config.storage == StorageConfig()


def test_same_address_on_two_buses_is_fine() -> None:
    config = parse(UNIT + SENSOR + SENSOR.replace('"s"', '"t"') + "bus = 0\n")
    assert [s.where for s in config.sensors] == ["1:0x40", "0:0x40"]


def test_boundaries_are_inclusive() -> None:
    config = parse(
        '[unit]\nid = "' + "a" * 64 + '"\nsite = "' + "é" * 200 + '"\n'
        "latitude = -90\nlongitude = 180\nelevation_m = 9000\n"
        '[storage]\nmax_bytes = "1MiB"\ncommit_interval = "5m"\n'
        '[[sensor]]\nid = "a"\ndriver = "probe"\naddress = 0x41\ninterval = "24h"\nbus = 255\n'
        'offset = 5.0\n[[sensor]]\nid = "b"\ndriver = "bare"\naddress = 0x77\ninterval = 1\n'
        '[[sensor]]\nid = "c"\ndriver = "bare"\naddress = 0x08\n'
    )
    assert [s.address for s in config.sensors] == [0x41, 0x77, 0x08]
    assert config.storage.max_bytes == 1024**2 and config.storage.commit_interval == 300


# --- one problem at a time: the exact line -----------------------------------------------------

DURATION = 'expected a duration such as "10s", "5m" or "1h"'
SIZE = 'expected a size such as "256MiB", "500MB" or a whole number of bytes'
ID_RULE = "expected 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
SITE_RULE = "expected a description of the place, 1 to 200 characters on one line"
SENSOR_KEYS = (
    "valid keys are id, driver, bus, address, interval, mux, channel, average, power_pin, "
    "calibration, plausible, and the probe options gain, offset, heater, label"
)

CASES: list[tuple[str, str, str]] = [
    (
        "power pin on the I2C bus",
        UNIT + SENSOR + "power_pin = 3\n",
        "sensor 's': power_pin = 3: GPIO3 is SCL of I2C bus 1, the sensors' bus; choose a free "
        "GPIO "
        "such as 17",
    ),
    # (what is added to a valid config, the one expected line)
    (
        "top-level unknown key",
        "colour = 1\n" + UNIT,
        "colour: unknown key; valid keys are unit, storage, sensor, uplink, indicator, health, "
        "alert",
    ),
    ("unit missing", "", "unit: missing; add a [unit] table with at least id and site"),
    ("unit not a table", "unit = 5\n", "unit = 5: expected a table [unit]"),
    (
        "unit unknown key",
        UNIT + 'colour = "red"\n',
        "unit.colour: unknown key; valid keys are id, site, latitude, longitude, elevation_m",
    ),
    (
        "quoted unknown key",
        UNIT + '"my key" = 1\n',
        'unit."my key": unknown key; valid keys are id, site, latitude, longitude, elevation_m',
    ),
    (
        "unit id missing",
        '[unit]\nsite = "Roof"\n',
        'unit.id: missing; add it, such as id = "demo-001"',
    ),
    (
        "unit id space",
        '[unit]\nid = "demo 001"\nsite = "Roof"\n',
        f'unit.id = "demo 001": {ID_RULE}',
    ),
    ("unit id leading dash", '[unit]\nid = "-a"\nsite = "Roof"\n', f'unit.id = "-a": {ID_RULE}'),
    (
        "unit id trailing newline",
        '[unit]\nid = "a\\n"\nsite = "Roof"\n',
        f'unit.id = "a\\n": {ID_RULE}',
    ),
    (
        "unit id too long",
        '[unit]\nid = "' + "a" * 65 + '"\nsite = "Roof"\n',
        f'unit.id = "{"a" * 65}": {ID_RULE}',
    ),
    ("unit id a number", '[unit]\nid = 7\nsite = "Roof"\n', f"unit.id = 7: {ID_RULE}"),
    (
        "site missing",
        '[unit]\nid = "u1"\n',
        'unit.site: missing; add it, such as site = "Hanzhong wetland, east"',
    ),
    ("site empty", '[unit]\nid = "u1"\nsite = ""\n', f'unit.site = "": {SITE_RULE}'),
    ("site blank", '[unit]\nid = "u1"\nsite = "  "\n', f'unit.site = "  ": {SITE_RULE}'),
    (
        "site two lines",
        '[unit]\nid = "u1"\nsite = "a\\nb"\n',
        f'unit.site = "a\\nb": contains a line break or control character; {SITE_RULE}',
    ),
    (
        "site too long",
        '[unit]\nid = "u1"\nsite = "' + "x" * 201 + '"\n',
        f'unit.site = "{"x" * 75} …: {SITE_RULE}',
    ),
    (
        "latitude out of range",
        UNIT + "latitude = 91\n",
        "unit.latitude = 91: expected a number from -90 to 90 degrees",
    ),
    (
        "latitude quoted",
        UNIT + 'latitude = "52.1"\n',
        'unit.latitude = "52.1": expected a number from -90 to 90 degrees; '
        "write 52.1 without quotes",
    ),
    (
        "latitude nan",
        UNIT + "latitude = nan\n",
        "unit.latitude = nan: expected a number from -90 to 90 degrees",
    ),
    (
        "longitude bool",
        UNIT + "longitude = true\n",
        "unit.longitude = true: expected a number from -180 to 180 degrees",
    ),
    (
        "elevation too low",
        UNIT + "elevation_m = -501.5\n",
        "unit.elevation_m = -501.5: expected a number from -500 to 9000 metres",
    ),
    (
        "storage not a table",
        'storage = "/var"\n' + UNIT,
        'storage = "/var": expected a table [storage]',
    ),
    (
        "storage unknown key",
        UNIT + "[storage]\ndb = 1\n",
        "storage.db: unknown key; valid keys are path, max_bytes, commit_interval",
    ),
    (
        "storage path empty",
        UNIT + '[storage]\npath = ""\n',
        'storage.path = "": expected a directory path such as "/var/lib/envagent"',
    ),
    (
        "storage path list",
        UNIT + '[storage]\npath = ["/a"]\n',
        'storage.path = ["/a"]: expected a directory path such as "/var/lib/envagent"',
    ),
    (
        "max_bytes too small",
        UNIT + '[storage]\nmax_bytes = "512kB"\n',
        'storage.max_bytes = "512kB": expected at least 1MiB',
    ),
    (
        "max_bytes ambiguous unit",
        UNIT + '[storage]\nmax_bytes = "1KB"\n',
        'storage.max_bytes = "1KB": unknown unit "KB" (use B, kB, MB, GB, KiB, MiB or GiB; '
        f"the case of each letter matters); {SIZE}",
    ),
    (
        "max_bytes float",
        UNIT + "[storage]\nmax_bytes = 1e9\n",
        f"storage.max_bytes = 1000000000.0: {SIZE}",
    ),
    (
        "commit_interval too short",
        UNIT + '[storage]\ncommit_interval = "500ms"\n',
        'storage.commit_interval = "500ms": expected a duration from 1s to 5m',
    ),
    (
        "commit_interval a date",
        UNIT + "[storage]\ncommit_interval = 2024-01-02\n",
        f"storage.commit_interval = 2024-01-02: {DURATION}",
    ),
    (
        "sensor as a plain table",
        UNIT + '[sensor]\nid = "s"\n',
        'sensor = { id = "s" }: expected [[sensor]] tables, with double brackets, one per sensor',
    ),
    (
        "sensor item not a table",
        "sensor = [1]\n" + UNIT,
        "sensor[0] = 1: expected a [[sensor]] table",
    ),
    (
        "sensor id missing",
        UNIT + '[[sensor]]\ndriver = "probe"\naddress = 0x40\n',
        'sensor[0]: id: missing; add it, such as id = "air"',
    ),
    (
        "sensor driver missing",
        UNIT + '[[sensor]]\nid = "s"\naddress = 0x40\n',
        'sensor \'s\': driver: missing; add it, such as driver = "bme280"',
    ),
    (
        "sensor address missing",
        UNIT + '[[sensor]]\nid = "s"\ndriver = "probe"\n',
        "sensor 's': address: missing; add it, such as address = 0x76",
    ),
    (
        "unknown driver",
        UNIT + SENSOR.replace('"probe"', '"bme28"'),
        'sensor \'s\': driver = "bme28": unknown driver; expected one of "bare", "probe"',
    ),
    (
        "sensor unknown key",
        UNIT + SENSOR + "colour = 1\n",
        f"sensor 's': colour: unknown key; {SENSOR_KEYS}",
    ),
    (
        "unknown key, driver without options",
        UNIT + SENSOR.replace("probe", "bare") + "gain = 1\n",
        "sensor 's': gain: unknown key; valid keys are id, driver, bus, address, interval, mux, "
        "channel, average, power_pin, calibration, plausible, and the bare options (none)",
    ),
    (
        "bus too big",
        UNIT + SENSOR + "bus = 256\n",
        "sensor 's': bus = 256: expected an integer from 0 to 255 (the N of /dev/i2c-N)",
    ),
    (
        "bus quoted",
        UNIT + SENSOR + 'bus = "1"\n',
        'sensor \'s\': bus = "1": expected an integer from 0 to 255 (the N of /dev/i2c-N); '
        "write 1 without quotes",
    ),
    (
        "address reserved low",
        UNIT + SENSOR.replace("0x40", "0x03"),
        "sensor 's': address = 0x03: reserved I2C address (0x00-0x07 and 0x78-0x7F are reserved); "
        "expected 0x08 to 0x77",
    ),
    (
        "address reserved high",
        UNIT + SENSOR.replace("0x40", "0x78"),
        "sensor 's': address = 0x78: reserved I2C address (0x00-0x07 and 0x78-0x7F are reserved); "
        "expected 0x08 to 0x77",
    ),
    (
        "address 8-bit",
        UNIT + SENSOR.replace("0x40", "0xEC"),
        "sensor 's': address = 0xec: not a 7-bit I2C address (an 8-bit address as some datasheets "
        "print it? Then write 0x76); expected 0x08 to 0x77",
    ),
    (
        "address too big",
        UNIT + SENSOR.replace("0x40", "0x400"),
        "sensor 's': address = 0x400: not a 7-bit I2C address; expected 0x08 to 0x77",
    ),
    (
        "address negative",
        UNIT + SENSOR.replace("0x40", "-1"),
        "sensor 's': address = -0x01: not a 7-bit I2C address; expected 0x08 to 0x77",
    ),
    (
        "address quoted",
        UNIT + SENSOR.replace("0x40", '"0x76"'),
        'sensor \'s\': address = "0x76": expected an I2C address from 0x08 to 0x77; '
        "write 0x76 without quotes",
    ),
    (
        "address words",
        UNIT + SENSOR.replace("0x40", '"seventy"'),
        'sensor \'s\': address = "seventy": expected an I2C address from 0x08 to 0x77, '
        "a number such as 0x76",
    ),
    (
        "interval unknown unit",
        UNIT + SENSOR + 'interval = "5x"\n',
        f'sensor \'s\': interval = "5x": unknown unit "x" (use ms, s, m, h or d); {DURATION}',
    ),
    (
        "interval too long",
        UNIT + SENSOR + 'interval = "2d"\n',
        'sensor \'s\': interval = "2d": expected a duration from 1s to 1d',
    ),
    (
        "interval negative",
        UNIT + SENSOR + "interval = -5\n",
        f"sensor 's': interval = -5: a duration cannot be negative; {DURATION}",
    ),
    (
        "interval infinite",
        UNIT + SENSOR + "interval = inf\n",
        f"sensor 's': interval = inf: not a finite number; {DURATION}",
    ),
    (
        "option not a choice",
        UNIT + SENSOR + "gain = 3\n",
        "sensor 's': gain = 3: expected one of 1, 2, 4",
    ),
    (
        "bool is not an int",
        UNIT + SENSOR + "gain = true\n",
        "sensor 's': gain = true: expected one of 1, 2, 4",
    ),
    (
        "option quoted",
        UNIT + SENSOR + 'gain = "2"\n',
        'sensor \'s\': gain = "2": expected one of 1, 2, 4; write 2 without quotes',
    ),
    (
        "float option out of range",
        UNIT + SENSOR + "offset = 5.5\n",
        "sensor 's': offset = 5.5: expected a number from -5 to 5",
    ),
    (
        "float option nan",
        UNIT + SENSOR + "offset = nan\n",
        "sensor 's': offset = nan: expected a number from -5 to 5",
    ),
    (
        "bool option given an int",
        UNIT + SENSOR + "heater = 1\n",
        "sensor 's': heater = 1: expected true or false",
    ),
    (
        "str option given a number",
        UNIT + SENSOR + "label = 1\n",
        "sensor 's': label = 1: expected a string",
    ),
    (
        "duplicate id",
        UNIT + SENSOR + SENSOR.replace("0x40", "0x41"),
        'sensor \'s\': id = "s": already used by an earlier [[sensor]]; give each sensor its '
        "own id",
    ),
    (
        "duplicate address",
        UNIT + SENSOR.replace('"s"', '"air"') + SENSOR.replace('"s"', '"porch"'),
        "sensor 'porch': bus 1 address 0x40 is already used by sensor 'air'; "
        "give each sensor its own address or bus",
    ),
]


@pytest.mark.parametrize(("text", "line"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_problem_is_one_exact_line(text: str, line: str) -> None:
    assert problems(text) == [f"{SRC}: {line}"]


def test_wrong_type_and_unknown_key_give_exactly_two_lines() -> None:
    assert problems(UNIT + 'latitude = "north"\n' + SENSOR + "colour = 1\n") == [
        f'{SRC}: unit.latitude = "north": expected a number from -90 to 90 degrees',
        f"{SRC}: sensor 's': colour: unknown key; {SENSOR_KEYS}",
    ]


def test_every_problem_is_reported_section_by_section() -> None:
    lines = problems(
        'colour = 1\n[unit]\nid = ""\n[storage]\nmax_bytes = -1\n'
        + SENSOR
        + 'interval = "1x"\ngain = 5\n'
        + '[[sensor]]\nid = "s"\ndriver = "nope"\naddress = 0x40\nwhatever = 1\n'
    )
    keys = [re.match(r"(sensor '\w+': )?[^ :]+", line.removeprefix(f"{SRC}: ")) for line in lines]
    assert [key[0] for key in keys if key] == [
        "colour",
        "unit.id",
        "unit.site",
        "storage.max_bytes",
        "sensor 's': interval",
        "sensor 's': gain",
        "sensor 's': driver",
        "sensor 's': id",
        "sensor 's': bus",  # bus 1 address 0x40 is already used
    ]


def test_duplicates_are_found_even_when_the_sensor_has_other_problems() -> None:
    lines = problems(UNIT + SENSOR + SENSOR + "gain = 3\n")
    assert len(lines) == 3 and "already used by an earlier [[sensor]]" in lines[1]
    assert lines[2].startswith(f"{SRC}: sensor 's': bus 1 address 0x40 is already used by "
                               "sensor 's'")


def test_hostile_strings_cannot_split_a_line() -> None:
    lines = problems('[unit]\nid = "a\\u2028b\\u0085c"\nsite = "x\\ry"\n"k\\nk" = 1\n')
    assert len(lines) == 3
    assert all(line.splitlines() == [line] for line in lines)
    assert 'unit."k\\nk": unknown key' in lines[0]


# --- reading the file --------------------------------------------------------------------------


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / SRC
    path.write_text(UNIT + SENSOR, encoding="utf-8")
    config = load_config(path, drivers=REGISTRY)
    assert config.source == str(path) and config.sensors[0].id == "s"


def test_load_config_problems_name_the_path_as_given(tmp_path: Path) -> None:
    path = tmp_path / SRC
    path.write_text(UNIT + "colour = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), drivers=REGISTRY)
    assert caught.value.problems == [
        f"{path}: unit.colour: unknown key; valid keys are id, "
        "site, latitude, longitude, elevation_m"
    ]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(path, drivers=REGISTRY)
    assert caught.value.problems == [
        f"{path}: cannot read the configuration file: No such file or directory"
    ]


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path, drivers=REGISTRY)
    assert caught.value.problems == [
        f"{tmp_path}: cannot read the configuration file: Is a directory"
    ]


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / SRC
    path.write_bytes(b'[unit]\nsite = "caf\xe9"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, drivers=REGISTRY)
    assert caught.value.problems == [
        f"{path}: not UTF-8 text (byte 0xe9 on line 2); save it as UTF-8"
    ]


def test_toml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / SRC
    path.write_text(UNIT + "latitude = 52,1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path, drivers=REGISTRY)
    (line,) = caught.value.problems
    assert line.startswith(f"{path}: invalid TOML: ") and "(at line 4, column 14)" in line


def test_deeply_nested_toml_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / SRC
    path.write_text("a = " + "[" * 100_000, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path, drivers=REGISTRY)
    assert caught.value.problems == [f"{path}: invalid TOML: arrays nested too deeply"]


def test_a_byte_order_mark_is_tolerated(tmp_path: Path) -> None:
    path = tmp_path / SRC
    path.write_bytes(b"\xef\xbb\xbf" + UNIT.encode())
    assert load_config(path, drivers=REGISTRY).unit.id == "u1"
    path.write_bytes(b"\xef\xbb\xbf" + UNIT.encode() + b"# \xff\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, drivers=REGISTRY)
    assert caught.value.problems == [
        f"{path}: not UTF-8 text (byte 0xff on line 4); save it as UTF-8"
    ]


# --- durations and sizes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("10s", 10),
        ("5m", 300),
        ("1h", 3600),
        ("1h30m", 5400),
        ("500ms", 0.5),
        ("1.5s", 1.5),
        ("2d", 172800),
        ("1d2h3m4s5ms", 93784.005),
        ("1h 30m", 5400),
        (" 10 s ", 10),
        ("0s", 0),
        ("0.1s", 0.1),
        (10, 10),
        (2.5, 2.5),
        (0, 0),
    ],
)
def test_good_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5x", 'unknown unit "x" (use ms, s, m, h or d)'),
        ("10S", 'unknown unit "S"'),
        ("", "empty duration"),
        ("   ", "empty duration"),
        ("10", "a unit is missing"),
        ("-5s", "a duration cannot be negative"),
        (-1, "a duration cannot be negative"),
        ("30m1h", "write the largest unit first"),
        ("1m1m", "write the largest unit first"),
        ("1e3s", 'unknown unit "e"'),
        (".5s", DURATION),
        ("s", DURATION),
        ("1.s", DURATION),
        ("١s", DURATION),
        (True, DURATION),
        (None, DURATION),
        ([1], DURATION),
        (float("nan"), "not a finite number"),
        (float("inf"), "not a finite number"),
        (10**400, "not a finite number"),
        ("9" * 400 + "d", "not a finite number"),
    ],
)
def test_bad_durations(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        parse_duration(value)
    assert str(caught.value).endswith(DURATION)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("500MB", 500 * 10**6),
        ("64 MiB", 64 * 2**20),
        ("1GiB", 2**30),
        ("512kB", 512_000),
        ("256MiB", 256 * 2**20),
        ("1B", 1),
        ("1.5KiB", 1536),
        ("2TB", 2 * 10**12),
        ("1TiB", 2**40),
        (0, 0),
        (1048576, 2**20),
        (" 1 MB ", 10**6),
    ],
)
def test_good_sizes(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1KB", 'unknown unit "KB"'),
        ("1mb", 'unknown unit "mb"'),
        ("1Mb", 'unknown unit "Mb"'),
        ("1kib", 'unknown unit "kib"'),
        ("1024", "a unit is missing"),
        ("1.5B", "not a whole"),
        ("-1MB", "a size cannot be negative"),
        (-1, "a size cannot be negative"),
        ("", SIZE),
        ("MB", SIZE),
        (1.0, SIZE),
        (True, SIZE),
        (None, SIZE),
        ("1" * 41 + "B", SIZE),
    ],
)
def test_bad_sizes(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        parse_size(value)
    assert str(caught.value).endswith(SIZE)


@given(st.integers(min_value=0, max_value=10**9))
def test_formatted_durations_parse_back(milliseconds: int) -> None:
    assert parse_duration(format_duration(milliseconds / 1000)) == pytest.approx(
        milliseconds / 1000, abs=1e-9
    )


@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_formatted_sizes_parse_back(size: int) -> None:
    assert parse_size(format_size(size)) == size


# --- fuzzing: bad input only ever raises ConfigError -------------------------------------------

# fmt: off
SCHEMA_KEYS = ["unit", "storage", "sensor", "uplink", "id", "site", "latitude", "longitude",
               "elevation_m", "path", "max_bytes", "commit_interval", "driver", "bus", "address",
               "interval", "gain", "offset", "heater", "label"]
keys = st.sampled_from(SCHEMA_KEYS) | st.text(max_size=6)
scalars = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["probe", "bare", "s", "u1", "10s", "1h30m", "256MiB", "0x76", "-1s", "1e9",
                     "", " ", "\n", "\u2028", "KB", "9" * 50]),
    st.integers(), st.sampled_from([0, 1, 2, 0x40, 0x76, 0xEC, 255, 256, -1, 2**63 - 1]),
    st.floats(), st.booleans(),
    st.datetimes(timezones=st.none() | st.just(datetime.UTC)), st.dates(), st.times(),
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=6),
    max_leaves=25,
)
tables = st.dictionaries(keys, values, max_size=7)


def near(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Nine times in ten a good value, else anything: reaches the checks behind the first ones."""
    return st.integers(0, 9).flatmap(lambda i: values if i == 0 else good)


site_text = st.text(st.characters(categories=["L", "N", "P", "Zs"]), min_size=1, max_size=20)


near_unit = st.fixed_dictionaries(
    {"id": near(st.sampled_from(["u1", "demo-001"])), "site": near(site_text)},
    optional={"latitude": near(st.floats(-90, 90)), "longitude": near(st.integers(-180, 180)),
              "elevation_m": near(st.floats(-500, 9000))},
)
near_storage = st.fixed_dictionaries({}, optional={
    "path": near(st.sampled_from(["/var/lib/envagent", "data"])),
    "max_bytes": near(st.sampled_from(["1MiB", "1.5GiB", 2**20, 2**40])),
    "commit_interval": near(st.sampled_from(["1s", "5m", 2, 2.5, "1m30s"])),
})
near_sensor = st.fixed_dictionaries(
    {"id": near(st.sampled_from(["a", "b", "c"])),
     "driver": near(st.sampled_from(["probe", "bare"])), "address": near(st.integers(0x08, 0x77))},
    optional={"bus": near(st.integers(0, 2)), "interval": near(st.sampled_from(["10s", 5, "1h"])),
              "gain": near(st.sampled_from([1, 2, 4])), "offset": near(st.floats(-5, 5)),
              "heater": near(st.booleans()), "label": near(st.text(max_size=5))},
)
documents = st.one_of(
    st.dictionaries(keys, values, max_size=5),
    st.fixed_dictionaries(
        {"unit": tables},
        optional={"storage": tables | values, "sensor": st.lists(tables, max_size=4) | values,
                  "uplink": values},
    ),
    st.fixed_dictionaries(
        {"unit": near(near_unit)},
        optional={"storage": near(near_storage), "sensor": near(st.lists(near_sensor, max_size=4))},
    ),
)
# fmt: on


def _assert_only_config_errors(call: Any, source: str) -> None:
    try:
        result = call()
    except ConfigError as e:
        assert e.problems
        for line in e.problems:
            assert line.startswith(f"{source}: ") and line.splitlines() == [line]
    else:
        assert isinstance(result, Config)


@settings(max_examples=500, deadline=None)
@given(documents)
def test_any_toml_shaped_data_gives_a_config_or_a_config_error(data: dict[str, Any]) -> None:
    _assert_only_config_errors(lambda: parse_config(data, source=SRC, drivers=REGISTRY), SRC)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300) | st.binary(max_size=300))
def test_any_file_content_gives_a_config_or_a_config_error(
    tmp_path_factory: pytest.TempPathFactory, content: str | bytes
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / SRC
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    _assert_only_config_errors(lambda: load_config(path, drivers=REGISTRY), str(path))


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0), st.integers(min_value=0, max_value=20), st.text(max_size=8))
def test_damaged_example_gives_a_config_or_a_config_error(
    tmp_path_factory: pytest.TempPathFactory, at: int, cut: int, insert: str
) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    at %= len(text)
    path = tmp_path_factory.mktemp("damaged") / SRC
    path.write_text(text[:at] + insert + text[at + cut :], encoding="utf-8")
    _assert_only_config_errors(lambda: load_config(path), str(path))


# --- the shipped example -----------------------------------------------------------------------


def test_example_config_validates_against_the_real_drivers() -> None:
    from drivers.registry import DRIVERS

    config = load_config(EXAMPLE)
    assert config.unit.id == "demo-001"
    assert config.storage == StorageConfig()  # it documents the defaults
    sensor = config.sensors[0]  # the rest of the station: tests/test_station.py
    assert (sensor.id, sensor.driver, sensor.where, sensor.interval) == (
        "air",
        "bme280",
        "1:0x76",
        10.0,
    )
    assert dict(sensor.options) == {k: o.default for k, o in DRIVERS["bme280"].options.items()}


def test_example_shows_every_driver_option_commented_out_with_its_default() -> None:
    from drivers.registry import DRIVERS

    text = EXAMPLE.read_text(encoding="utf-8")
    shown = dict(re.findall(r"^# (\w+) = (\S+)$", text, re.MULTILINE))
    for name, option in DRIVERS["bme280"].options.items():
        assert tomllib.loads(f"v = {shown[name]}")["v"] == option.default, name


def test_packaged_example_is_the_shipped_example() -> None:
    assert (ROOT / "agent" / "example.toml").resolve() == EXAMPLE.resolve()


# --- field names upstream: a quantity never takes another field's key --------------------------
# The line protocol (agent.uplink.lineprotocol) sends a quantity q as the field q, its quality
# flags as
# q_q and a NaN or infinity as the string q_nonfinite, on a line tagged driver, sensor, site,
# unit (and the commissioning tags); the agent's health of a sensor goes on the same series.

ADS = '[[sensor]]\nid = "soil"\ndriver = "ads1115"\naddress = 0x48\n'
RENAME = "choose another name"

FIELD_NAME_CASES: list[tuple[str, str, str]] = [
    (
        "a quality field's name",
        'channel0_quantity = "soil"\nchannel1_quantity = "soil_q"\n',
        "sensor 'soil': channel1_quantity = \"soil_q\": must not end in _q: upstream that names "
        "the "
        "quality flags of quantity 'soil'; choose a name that does not end in _q or _nonfinite",
    ),
    (
        "a non-finite field's name",
        'channel0_quantity = "x_nonfinite"\n',
        "sensor 'soil': channel0_quantity = \"x_nonfinite\": must not end in _nonfinite: upstream "
        "that "
        "names the NaN or infinite values of quantity 'x'; choose a name that does not end in "
        "_q or _nonfinite",
    ),
    (
        "time",
        'channel2_quantity = "time"\n',
        f'sensor \'soil\': channel2_quantity = "time": reserved upstream for the time of each '
        f'point; '
        f"{RENAME}",
    ),
    (
        "QuestDB's timestamp",
        'channel0_quantity = "timestamp"\n',
        f'sensor \'soil\': channel0_quantity = "timestamp": reserved upstream for the time of each '
        f"point; {RENAME}",
    ),
    (
        "a tag key",
        'channel0_quantity = "unit"\n',
        f'sensor \'soil\': channel0_quantity = "unit": reserved upstream for the tag unit on every '
        f"reading (a field of the same name would clash with it); {RENAME}",
    ),
    (
        "a commissioning tag key",
        'channel3_quantity = "shield"\n',
        f'sensor \'soil\': channel3_quantity = "shield": reserved upstream for the tag shield on '
        f'every '
        f"reading (a field of the same name would clash with it); {RENAME}",
    ),
    (
        "a health reading of the sensor",
        'channel1_quantity = "sensor_state"\n',
        f'sensor \'soil\': channel1_quantity = "sensor_state": reserved upstream for the agent\'s '
        f"health reading of this sensor; {RENAME}",
    ),
    (
        "two inputs with one quantity",
        'channel0_quantity = "soil"\nchannel1_quantity = "soil"\n',
        "sensor 'soil': channel1_quantity = \"soil\": channel0 already reports 'soil'; give each "
        "channel its own quantity",
    ),
]


def real_problems(text: str) -> list[str]:
    """The problems of ``text`` checked against the installed drivers."""
    with pytest.raises(ConfigError) as caught:
        parse_config(tomllib.loads(text), source=SRC)
    return caught.value.problems


@pytest.mark.parametrize(("channels", "line"), [c[1:] for c in FIELD_NAME_CASES],
                         ids=[c[0] for c in FIELD_NAME_CASES])
def test_a_quantity_that_would_take_another_fields_key_is_one_exact_line(
    channels: str, line: str
) -> None:
    assert real_problems(UNIT + ADS + channels) == [f"{SRC}: {line}"]


def test_every_bad_quantity_name_of_a_sensor_is_reported_at_once() -> None:
    channels = ('channel0_quantity = "time"\nchannel1_quantity = "a_q"\n'
                'channel2_quantity = "site"\nchannel3_quantity = "b_nonfinite"\n')
    lines = real_problems(UNIT + ADS + channels)
    assert [line.split(" = ")[0] for line in lines] == [
        f"{SRC}: sensor 'soil': channel{n}_quantity" for n in range(4)
    ]


def test_sensors_may_share_a_quantity_name_and_a_name_may_contain_a_suffix() -> None:
    channels = 'channel0_quantity = "soil"\nchannel1_quantity = "soil_quality"\n'
    other = ADS.replace('"soil"', '"bed-2"').replace("0x48", "0x49")
    config = parse_config(tomllib.loads(UNIT + ADS + channels + other + channels), source=SRC)
    assert [s.options["channel0_quantity"] for s in config.sensors] == ["soil", "soil"]


# Names a technician might give an ADS1115 input: fine ones, and ones that would take another
# field's key (or give one field key two types in the measurement, which InfluxDB refuses).
GOOD_NAMES = ["soil", "v", "temperature", "soil_quality", "time_of_wetness"]
BAD_NAMES = ["soil_q", "soil_nonfinite", "v_q", "v_nonfinite", "temperature_q", "time",
             "timestamp", "unit", "sensor", "driver", "site", "shield", "mounting_height",
             "sensor_state", "sensor_errors", "simulated"]
channel_names = st.lists(st.sampled_from(GOOD_NAMES) | st.sampled_from(BAD_NAMES) | st.just(""),
                         min_size=4, max_size=4)
T0 = 1_767_225_600_000_000_000


def upstream_points(config: Config) -> dict[tuple[str, int], list[tuple[str, str]]]:
    """What the line protocol makes of a sample of every quantity of every sensor of ``config``
    -- once flagged, once NaN, with the sensors' health and commissioning tags: (series, time)
    -> [(field key, type)] in the order sent."""
    from agent.core.reading import Reading
    from agent.store.commission import reading_tags
    from agent.uplink.lineprotocol import LineProtocolEncoder
    from drivers.base import Quality
    from drivers.registry import DRIVERS

    encoder = LineProtocolEncoder(unit=config.unit.id, site=config.unit.site,
                                  drivers={s.id: s.driver for s in config.sensors})
    encoder.set_epochs([(0, reading_tags({"mounting_height_m": 2.0,
                                          "radiation_shield": "louvred"}))])
    readings = []
    for time_ns, value in ((T0, 1.5), (T0 + 1, float("nan"))):
        for sensor in config.sensors:
            quantities = DRIVERS[sensor.driver].configured_quantities(sensor.options)
            readings += [Reading(sensor.id, quantity, value, unit, time_ns, 0, "b00t", True,
                                 Quality.STUCK) for quantity, unit in quantities.items()]
            readings += [Reading(sensor.id, quantity, 0.0, "code", time_ns, 0, "b00t", True)
                         for quantity in ("sensor_state", "sensor_errors")]  # agent.runtime.health
    points: dict[tuple[str, int], list[tuple[str, str]]] = {}
    for line in encoder.lines(readings):
        series, fields, stamp = line.split(" ")  # no spaces in these names and values
        for field in fields.split(","):
            key, text = field.split("=", 1)
            kind = "string" if text.startswith('"') else "integer" if text.endswith("i") \
                else "float"
            points.setdefault((series, int(stamp)), []).append((key, kind))
    return points


@settings(max_examples=300, deadline=None)
@given(st.lists(channel_names, min_size=1, max_size=2))
def test_no_valid_config_sends_two_fields_under_one_key(channels: list[list[str]]) -> None:
    sensors: list[dict[str, Any]] = [
        {"id": f"probe{i}", "driver": "ads1115", "address": 0x48 + i,
         **{f"channel{n}_quantity": name for n, name in enumerate(names) if name}}
        for i, names in enumerate(channels)
    ]
    sensors.append({"id": "air", "driver": "bme280", "address": 0x76})
    try:
        config = parse_config({"unit": {"id": "u1", "site": "Roof"}, "sensor": sensors},
                              source=SRC)
    except ConfigError:
        return  # refused: nothing is sent
    types: dict[str, str] = {}
    for (series, _), fields in upstream_points(config).items():
        keys = [key for key, _ in fields]
        tags = {part.split("=", 1)[0] for part in series.split(",")[1:]}
        assert len(keys) == len(set(keys)), f"a field key twice in one point: {keys}"
        assert not set(keys) & (tags | {"time", "timestamp"}), (keys, tags)
        for key, kind in fields:  # a field has one type per measurement (InfluxDB refuses more)
            assert types.setdefault(key, kind) == kind, f"{key} is {types[key]} and {kind}"


# --- the reserved names are the ones really sent: each list is checked against its producer -----


def test_the_reserved_tags_are_the_tags_the_encoder_sends() -> None:
    from agent.core.wire import EPOCH_TAG_KEYS, TAG_KEYS

    config = parse_config(tomllib.loads(UNIT + ADS + 'channel0_quantity = "soil"\n'), source=SRC)
    (series, _), *_ = upstream_points(config)  # with the commissioning facts that become tags
    tags = [part.split("=", 1)[0] for part in series.split(",")[1:]]
    assert sorted(tags) == sorted(TAG_KEYS + EPOCH_TAG_KEYS)


def test_the_reserved_health_names_are_the_ones_agent_health_sends(tmp_path: Path) -> None:
    from agent.config import SENSOR_HEALTH_QUANTITIES, quantity_name_problem
    from agent.runtime.health import HEALTH_SENSOR, HealthReporter
    from agent.sampling.daemon import Agent
    from agent.store.outbox import Outbox
    from drivers.bme280 import BME280
    from drivers.sim.bme280 import BME280Model
    from drivers.sim.clock import FakeClock
    from drivers.sim.simbus import SimBus

    config = parse_config(tomllib.loads(UNIT + SENSOR.replace("probe", "bme280")
                                        .replace("0x40", "0x76")), source=SRC)
    clock = FakeClock(start=100.0, wall=1_767_225_600.0, synced=True)
    bus = SimBus(1, clock=clock)
    bus.attach(0x76, BME280Model(clock=clock))
    with Outbox(tmp_path / "outbox.sqlite", max_bytes=4 * 1024**2) as outbox:
        agent = Agent(config, [BME280(bus, 0x76, clock=clock)], outbox=outbox, clock=clock,
                      boot_id="b00t")
        readings = HealthReporter(agent, outbox, (), clock=clock, boot_id="b00t",
                                  io_path=tmp_path / "io", thermal_path=tmp_path / "temp").sample()
    assert sorted(r.quantity for r in readings if r.sensor == "s") == sorted(
        SENSOR_HEALTH_QUANTITIES)
    unit = [r.quantity for r in readings if r.sensor == HEALTH_SENSOR]
    assert unit and [q for q in unit if quantity_name_problem(q)] == []


def test_the_reserved_commissioning_tags_are_the_ones_agent_commission_makes() -> None:
    from agent.core.wire import EPOCH_TAG_KEYS
    from agent.store.commission import reading_tags

    record = {"mounting_height_m": 2.0, "radiation_shield": "louvred", "technician": "ana"}
    assert sorted(reading_tags(record)) == sorted(EPOCH_TAG_KEYS)


def test_no_drivers_own_quantity_takes_a_reserved_name_or_anothers_field() -> None:
    from agent.config import quantity_name_problem
    from drivers.registry import DRIVERS

    for driver in DRIVERS.values():  # a dict: no quantity twice in one sensor
        assert {q: quantity_name_problem(q) for q in driver.quantities
                if quantity_name_problem(q)} == {}, driver.name


class Tuned(Probe):
    """A test-only driver whose one quantity is named by an option that does not say so."""

    name = "tuned"
    options: ClassVar[Mapping[str, Option]] = {"label": Option(str, "level", "what it measures")}

    @classmethod
    def configured_quantities(cls, options: Mapping[str, Any]) -> Mapping[str, str]:
        return {options.get("label", "level"): "V"}


def test_a_reserved_name_from_an_option_of_another_name_is_reported_on_the_sensor() -> None:
    text = UNIT + SENSOR.replace("probe", "tuned") + 'label = "time"\n'
    with pytest.raises(ConfigError) as caught:
        parse_config(tomllib.loads(text), source=SRC, drivers={"tuned": Tuned})
    assert caught.value.problems == [
        f"{SRC}: sensor 's': quantity 'time': reserved upstream for the time of each point; "
        f"{RENAME}"
    ]


# --- each chip's addresses, the ADS1115's ranges, and where in the file a problem is ----------


@pytest.mark.parametrize(
    ("sensor", "line"),
    [
        ('driver = "bme280"\naddress = 76\n',
         "sensor 'x': address = 0x4c: the bme280 answers only at 0x76 or 0x77; 76 is decimal: "
         "write 0x76"),
        ('driver = "bmp280"\naddress = 0x74\n',
         "sensor 'x': address = 0x74: the bmp280 answers only at 0x76 or 0x77"),
        ('driver = "sht4x"\naddress = 0x40\n',
         "sensor 'x': address = 0x40: the sht4x answers only at 0x44, 0x45 or 0x46"),
        ('driver = "sht3x"\naddress = 0x46\n',
         "sensor 'x': address = 0x46: the sht3x answers only at 0x44 or 0x45"),
        ('driver = "scd4x"\naddress = 62\n',
         "sensor 'x': address = 0x3e: the scd4x answers only at 0x62; 62 is decimal: "
         "write 0x62"),
        ('driver = "bh1750"\naddress = 23\n',
         "sensor 'x': address = 0x17: the bh1750 answers only at 0x23 or 0x5c; 23 is decimal: "
         "write 0x23"),
        ('driver = "pmsa003i"\naddress = 12\n',
         "sensor 'x': address = 0x0c: the pmsa003i answers only at 0x12; 12 is decimal: "
         "write 0x12"),
        ('driver = "ads1115"\naddress = 0x47\nchannel0_quantity = "v"\n',
         "sensor 'x': address = 0x47: the ads1115 answers only at 0x48, 0x49, 0x4a or 0x4b"),
        ('driver = "bme280"\naddress = 0x76\nmux = 70\nchannel = 0\n',
         "sensor 'x': mux = 0x46: expected the multiplexer's address, 0x70 to 0x77 (a TCA9548A); "
         "70 is decimal: write 0x70"),
    ],
    ids=["bme280-decimal", "bmp280", "sht4x", "sht3x", "scd4x-decimal", "bh1750-decimal",
         "pmsa003i-decimal", "ads1115", "mux-decimal"],
)
def test_an_address_the_chip_cannot_have_names_the_ones_it_can(sensor: str, line: str) -> None:
    assert real_problems(UNIT + '[[sensor]]\nid = "x"\n' + sensor) == [f"{SRC}: {line}"]



@pytest.mark.parametrize(("written", "hint"), [("0x4c", False), ("76", True)])
def test_the_decimal_hint_is_only_for_an_address_written_decimal(tmp_path: Path, written: str,
                                                                 hint: bool) -> None:
    path = tmp_path / "station.toml"
    path.write_text(UNIT + f'[[sensor]]\nid = "x"\ndriver = "bme280"\naddress = {written}\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    (line,) = caught.value.problems
    assert "the bme280 answers only at 0x76 or 0x77" in line
    assert ("76 is decimal: write 0x76" in line) is hint

def test_every_address_the_chip_can_have_passes() -> None:
    from drivers.registry import DRIVERS

    for name, driver in DRIVERS.items():
        extra = 'channel0_quantity = "v"\n' if name == "ads1115" else ""
        for address in driver.addresses:
            text = f'{UNIT}[[sensor]]\nid = "x"\ndriver = "{name}"\naddress = {address}\n{extra}'
            assert parse_config(tomllib.loads(text), source=SRC).sensors[0].address == address


def test_the_readme_lists_the_addresses_each_driver_declares() -> None:
    from drivers import tca9548a
    from drivers.registry import DRIVERS

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `(\w+)` \| [^|]+ \| ([^|]+) \|", readme, re.MULTILINE))
    assert set(rows) == set(DRIVERS)
    for name, text in rows.items():
        low, dash, high = text.strip().partition("–")
        shown = (tuple(range(int(low, 16), int(high, 16) + 1)) if dash
                 else tuple(int(a, 16) for a in text.split(",")))
        assert shown == DRIVERS[name].addresses, name
    mux = re.search(r"TCA9548A I2C switch \((0x\w\w)–(0x\w\w)", readme)
    assert mux is not None
    assert tuple(range(int(mux[1], 16), int(mux[2], 16) + 1)) == tca9548a.ADDRESSES


ADS_X = UNIT + '[[sensor]]\nid = "x"\ndriver = "ads1115"\naddress = 0x48\n'


@pytest.mark.parametrize(
    ("channels", "line"),
    [
        ('channel0_quantity = "soil"\nchannel0_unit = "%"\n'
         "channel0_scale = [[5.0, 0.0], [1.2, 100.0]]\n",
         "sensor 'x': channel0_scale = [[5.0, 0.0], [1.2, 100.0]]: 5 V is outside what AIN0 can "
         "read at channel0_gain = 4.096 (0 to 4.096 V); set channel0_gain = 6.144"),
        ('channel1_quantity = "soil"\nchannel1_unit = "%"\nchannel1_gain = 1.024\n'
         "channel1_scale = [[2.8, 0.0], [1.2, 100.0]]\n",
         "sensor 'x': channel1_scale = [[2.8, 0.0], [1.2, 100.0]]: 2.8 V is outside what AIN1 "
         "can read at channel1_gain = 1.024 (0 to 1.024 V); set channel1_gain = 4.096"),
        ('channel0_quantity = "level"\nchannel0_unit = "m"\nchannel0_gain = 6.144\n'
         "channel0_scale = [[0.6, 0.0], [7.5, 5.0]]\n",
         "sensor 'x': channel0_scale = [[0.6, 0.0], [7.5, 5.0]]: 7.5 V is outside what AIN0 can "
         "read at channel0_gain = 6.144 (0 to 6.144 V), and outside every range the ADS1115 "
         "has; divide the probe's voltage down, or check the points"),
        ('channel0_quantity = "level"\nchannel0_unit = "m"\n'
         "channel0_scale = [[-0.5, 0.0], [3.0, 5.0]]\n",
         "sensor 'x': channel0_scale = [[-0.5, 0.0], [3.0, 5.0]]: -0.5 V is below 0 V, which "
         "AIN0 cannot read (it is measured against GND); check the points"),
    ],
    ids=["above-default-gain", "above-given-gain", "above-every-gain", "negative"],
)
def test_ads1115_scale_points_outside_the_inputs_range_are_one_line(
    channels: str, line: str
) -> None:
    assert real_problems(ADS_X + channels) == [f"{SRC}: {line}"]


def test_ads1115_ranges_are_checked_per_input() -> None:
    lines = real_problems(
        ADS_X + 'channel0_quantity = "a"\nchannel0_unit = "%"\nchannel0_gain = 0.256\n'
        "channel0_scale = [[0.2, 0.0], [0.3, 100.0]]\n"
        'channel1_quantity = "b"\nchannel1_unit = "%"\nchannel1_scale = [[0.2, 0.0], '
        "[4.096, 100.0]]\n"
        'channel2_quantity = "c"\nchannel2_unit = "%"\nchannel2_gain = 0.512\n'
        "channel2_scale = [[0.2, 0.0], [0.6, 100.0]]\n"
    )
    assert [line.split(":")[2].split("=")[0].strip() for line in lines] == [
        "channel0_scale", "channel2_scale"]
    assert "set channel0_gain = 0.512" in lines[0] and "set channel2_gain = 1.024" in lines[1]


LINES_CONFIG = """\
[unit]
id = "u1"
site = "Roof"

[[sensor]]
id = "air"
driver = "probe"
address = 0x40
intervall = "10s"   # line 9
[sensor.calibration.temperature]
id = "c1"
ofset = 1           # line 12

[[sensor]]
# no id: named by its place
driver = "probe"
label = '''
[[sensor]]
id = "not a key"
'''
colour = [
  [1, 2],
  [3, 4],
]
address = 0x41
gain = 3            # line 26

[[sensor]]
id = "air"
driver = "probe"
address = 0x40

[[alert]]
id = "hot"
sensor = "air"
quantity = "temperature"
above = 30
"""


def test_problems_name_the_sensor_by_its_id_and_the_line_of_the_key(tmp_path: Path) -> None:
    path = tmp_path / SRC
    path.write_text(LINES_CONFIG, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path, drivers=REGISTRY)
    assert caught.value.problems == [
        f"{path}: sensor 'air' (line 9): intervall: unknown key; {SENSOR_KEYS}",
        f"{path}: sensor 'air' (line 12): calibration.temperature.ofset: unknown key; valid "
        "keys are id, offset, scale, polynomial",
        f"{path}: sensor[1] (line 21): colour: unknown key; {SENSOR_KEYS}",
        f'{path}: sensor[1] (line 14): id: missing; add it, such as id = "air"',
        f"{path}: sensor[1] (line 26): gain = 3: expected one of 1, 2, 4",
        f'{path}: sensor \'air\' (line 29): id = "air": already used by an earlier [[sensor]] '
        "(line 5); give each sensor its own id",
        f"{path}: sensor 'air' (line 28): bus 1 address 0x40 is already used by sensor 'air' "
        "(line 5); give each sensor its own address or bus",
    ]


def test_a_sensor_whose_keys_the_text_scan_cannot_place_gets_no_line(tmp_path: Path) -> None:
    path = tmp_path / SRC
    path.write_text(UNIT + '[[sensor]]\nid = "air"\ndriver = "probe"\naddress = 0x40\n'
                    '"gain" = 3\n[[sensor]]\nid = "b"\ndriver = "probe"\naddress = 0x41\n'
                    "gain = 5\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path, drivers=REGISTRY)
    assert caught.value.problems == [
        f"{path}: sensor 'air': gain = 3: expected one of 1, 2, 4",
        f"{path}: sensor 'b' (line 13): gain = 5: expected one of 1, 2, 4",
    ]


def test_sensor_tables_the_text_scan_cannot_count_get_no_lines(tmp_path: Path) -> None:
    path = tmp_path / SRC
    path.write_text(UNIT + '[["sensor"]]\nid = "air"\ndriver = "probe"\naddress = 0x40\n'
                    "gain = 3\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path, drivers=REGISTRY)
    assert caught.value.problems == [f"{path}: sensor 'air': gain = 3: expected one of 1, 2, 4"]
