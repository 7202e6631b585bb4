"""Rehearsing a wiring mistake: ``--simulate --sim-wiring FILE`` builds the simulated bus from what
a technician says is actually wired, while the config says what should be; every command then
meets the wrong chip, the wrong address or the missing device exactly as it would on site.

Real subprocesses and real exit codes, as a technician runs them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import WiredDevice, load_wiring, parse_wiring
from agent.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SYNCED = ("--sim-clock", "synced")  # this machine's own clock facts never matter

CONFIG = """\
[unit]
id = "rehearsal"
site = "workbench"

[[sensor]]
id = "air"
driver = "bme280"
address = 0x76
interval = "1s"

[[sensor]]
id = "light"
driver = "bh1750"
address = 0x23
interval = "1s"
"""


def envagent(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def station(tmp_path: Path, wiring: str) -> tuple[str, str]:
    """The config (a BME280 at 0x76 and a BH1750 at 0x23) and a wiring file with ``wiring``."""
    config = tmp_path / "envagent.toml"
    config.write_text(CONFIG, encoding="utf-8")
    wired = tmp_path / "wiring.toml"
    wired.write_text(wiring, encoding="utf-8")
    return str(config), str(wired)


LIGHT = '[[device]]\nchip = "bh1750"\naddress = 0x23\n'


def test_a_bmp280_where_the_config_wants_a_bme280_fails_read_naming_the_bmp280(
    tmp_path: Path,
) -> None:
    config, wiring = station(tmp_path, '[[device]]\nchip = "bmp280"\naddress = 0x76\n' + LIGHT)
    result = envagent("read", "--config", config, "--simulate", "--sim-wiring", wiring,
                      cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("air: ") and "BMP280" in line and 'driver = "bmp280"' in line
    assert "illuminance" in result.stdout  # the light sensor is wired as configured



def test_a_light_sensor_that_is_not_there_costs_read_only_its_own_line(tmp_path: Path) -> None:
    config, wiring = station(tmp_path, '[[device]]\nchip = "bme280"\naddress = 0x76\n')
    result = envagent("read", "--config", config, "--simulate", "--sim-wiring", wiring,
                      cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.strip().splitlines()  # the BH1750's power-down at close is no error
    assert line.startswith("light: ") and "no answer at 1:0x23" in line
    assert "temperature" in result.stdout and "humidity" in result.stdout  # the BME280's

def test_without_a_wiring_file_the_world_still_mirrors_the_config(tmp_path: Path) -> None:
    config, _ = station(tmp_path, "")
    result = envagent("read", "--config", config, "--simulate", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "humidity" in result.stdout and "illuminance" in result.stdout


def test_a_device_wired_at_another_address_shows_in_scan_and_fails_doctor(
    tmp_path: Path,
) -> None:
    config, wiring = station(tmp_path, '[[device]]\nchip = "bme280"\naddress = 0x77\n' + LIGHT)
    scan = envagent("scan", "--config", config, "--simulate", "--sim-wiring", wiring, "--json",
                    cwd=tmp_path)
    assert scan.returncode == 0, scan.stderr
    assert json.loads(scan.stdout) == [
        {"bus": 1, "address": 0x23, "chip": "bh1750"},
        {"bus": 1, "address": 0x77, "chip": "bme280"},
    ]
    doctor = envagent("doctor", "--config", config, "--simulate", *SYNCED, "--sim-wiring",
                      wiring, "--data-dir", str(tmp_path / "data"), "--samples", "1", "--json",
                      cwd=tmp_path)
    assert doctor.returncode == 1, doctor.stderr
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    air = checks["sensor air"]
    assert air["status"] == "FAIL" and "1:0x76" in air["detail"], air
    assert "address" in air["hint"] and "envagent scan" in air["hint"], air
    assert checks["sensor light"]["status"] == "PASS"


def test_a_missing_device_leaves_run_running_and_status_shows_it_failed(tmp_path: Path) -> None:
    config, wiring = station(tmp_path, LIGHT)  # the BME280 was never connected
    data = str(tmp_path / "data")
    run = envagent("run", "--config", config, "--simulate", *SYNCED, "--sim-wiring", wiring,
                   "--data-dir", data, "--duration", "3", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "air" in run.stderr and "1:0x76" in run.stderr  # the transition is logged
    status = envagent("status", "--config", config, "--simulate", *SYNCED, "--data-dir", data,
                      "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    states = {s["id"]: s["state"] for s in report["sensors"]["states"]}
    assert states == {"air": "failed", "light": "ok"}, report["sensors"]
    assert {x["sensor"] for x in report["latest"]} >= {"light"}


def test_a_device_behind_a_mux_channel(tmp_path: Path) -> None:
    config, wiring = station(tmp_path, LIGHT + '[[device]]\nchip = "bme280"\naddress = 0x76\n'
                             "mux = 0x70\nchannel = 3\n")
    scan = envagent("scan", "--config", config, "--simulate", "--sim-wiring", wiring, "--json",
                    cwd=tmp_path)
    assert scan.returncode == 0, scan.stderr
    assert json.loads(scan.stdout) == [
        {"bus": 1, "address": 0x23, "chip": "bh1750"},
        {"bus": 1, "address": 0x70, "chip": "tca9548a"},
        {"bus": 1, "address": 0x76, "chip": "bme280", "mux": 0x70, "channel": 3},
    ]
    read = envagent("read", "--config", config, "--simulate", "--sim-wiring", wiring,
                    cwd=tmp_path)
    assert read.returncode == 1  # the config has the BME280 on the bus itself
    assert read.stderr.startswith("air: "), read.stderr


def test_a_bad_wiring_file_is_one_line_per_problem_and_exit_2(tmp_path: Path) -> None:
    config, wiring = station(tmp_path, (
        "[[device]]\n"
        'chip = "bme280"\n'
        "address = 76\n"
        "[[device]]\n"
        'chip = "bme28"\n'
        "address = 0x77\n"
        "[[device]]\n"
        'chip = "sht4x"\n'
        "adress = 0x44\n"
        "[[device]]\n"
        'chip = "bh1750"\n'
        "address = 0x23\n"
        "channel = 2\n"
    ))
    result = envagent("read", "--config", config, "--simulate", "--sim-wiring", wiring,
                      cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{wiring}: device[0] (line 3): address = 0x4c: the bme280 answers only at 0x76 or "
        "0x77; 76 is decimal: write 0x76",
        f'{wiring}: device[1] (line 5): chip = "bme28": unknown chip; expected one of '
        '"ads1115", "bh1750", "bme280", "bmp280", "pmsa003i", "scd4x", "sht3x", "sht4x", '
        '"tca9548a"',
        f"{wiring}: device[2] (line 9): adress: unknown key; valid keys are chip, address, bus, "
        "mux, channel",
        f"{wiring}: device[2] (line 7): address: missing; add it, such as address = 0x76",
        f"{wiring}: device[3] (line 13): channel = 2: needs mux, the multiplexer's address; "
        "add mux = 0x70 (0x70 to 0x77)",
    ]


def test_two_devices_cannot_share_an_address(tmp_path: Path) -> None:
    config, wiring = station(tmp_path, LIGHT + LIGHT)
    result = envagent("scan", "--config", config, "--simulate", "--sim-wiring", wiring,
                      cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{wiring}: device[1] (line 4): bus 1 address 0x23 is already used by device[0] "
        "(line 1); give each device its own address or bus",
    ]


def test_an_unreadable_wiring_file_is_a_usage_error(tmp_path: Path) -> None:
    config, _ = station(tmp_path, "")
    missing = tmp_path / "nope.toml"
    result = envagent("read", "--config", config, "--simulate", "--sim-wiring", str(missing),
                      cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{missing}: cannot read the wiring file: No such file or directory"]


def test_sim_wiring_needs_simulate(tmp_path: Path) -> None:
    config, wiring = station(tmp_path, LIGHT)
    for command in (["read"], ["scan"], ["doctor"], ["run", "--duration", "1"]):
        result = envagent(*command, "--config", config, "--sim-wiring", wiring, cwd=tmp_path)
        assert result.returncode == 2, (command, result.stderr)
        assert "--sim-wiring needs --simulate" in result.stderr, (command, result.stderr)


PROBES = """\
[unit]
id = "rehearsal"
site = "workbench"

[[sensor]]
id = "soil"
driver = "ads1115"
address = 0x48
channel0_quantity = "soil_moisture"
channel0_unit = "%"
channel0_scale = [[0.5, 0.0], [1.0, 100.0]]  # not the probe of an unconfigured ADS1115
"""


def test_a_device_wired_as_configured_carries_the_configured_probes(tmp_path: Path) -> None:
    config = tmp_path / "envagent.toml"
    config.write_text(PROBES, encoding="utf-8")
    wiring = tmp_path / "wiring.toml"
    wiring.write_text('[[device]]\nchip = "ads1115"\naddress = 0x48\n'
                      '[[device]]\nchip = "tca9548a"\naddress = 0x71\n', encoding="utf-8")
    read = envagent("read", "--config", str(config), "--simulate", "--sim-wiring", str(wiring),
                    "--json", cwd=tmp_path)
    assert read.returncode == 0, read.stderr
    (row,) = json.loads(read.stdout)
    assert row["quantity"] == "soil_moisture" and 0 <= row["value"] <= 100, row
    assert row["quality"] == 0, row  # the probe's voltage lies inside its calibration
    scan = envagent("scan", "--config", str(config), "--simulate", "--sim-wiring", str(wiring),
                    "--json", cwd=tmp_path)
    assert json.loads(scan.stdout) == [
        {"bus": 1, "address": 0x48, "chip": "ads1115"},
        {"bus": 1, "address": 0x71, "chip": "tca9548a"},  # a multiplexer with nothing behind it
    ]


# --- the file alone, in-process --------------------------------------------------------------


def test_a_wiring_file_reads_into_devices(tmp_path: Path) -> None:
    path = tmp_path / "wiring.toml"
    path.write_text(LIGHT + '[[device]]\nchip = "sht4x"\naddress = 0x44\nbus = 3\nmux = 0x70\n'
                    "channel = 7\n", encoding="utf-8")
    assert load_wiring(path) == (WiredDevice("bh1750", 0x23),
                                 WiredDevice("sht4x", 0x44, bus=3, mux=0x70, channel=7))
    path.write_text("# nothing connected yet\n", encoding="utf-8")
    assert load_wiring(path) == ()


KEYS = st.sampled_from(["device", "chip", "address", "bus", "mux", "channel", "x"])
SCALARS = st.one_of(st.sampled_from(["bme280", "tca9548a", "sht4x", "", "0x76"]),
                    st.integers(-2, 300), st.booleans(), st.floats(), st.text(max_size=4))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(KEYS, inner, max_size=6), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(KEYS, VALUES, max_size=3)
       | st.fixed_dictionaries({"device": st.lists(st.dictionaries(KEYS, VALUES), max_size=4)}))
def test_any_wiring_data_gives_devices_or_one_line_problems(data: dict[str, Any]) -> None:
    try:
        devices = parse_wiring(data, source="w.toml")
    except ConfigError as e:
        assert e.problems
        assert all(line.startswith("w.toml: ") and line.splitlines() == [line]
                   for line in e.problems)
    else:
        assert all(isinstance(d, WiredDevice) for d in devices)


def test_a_wiring_problem_names_the_file_key_value_and_what_to_write() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_wiring({"device": [{"chip": "tca9548a", "address": 0x70, "mux": 0x71,
                                  "channel": 0}], "sensor": []}, source="w.toml")
    assert caught.value.problems == [
        "w.toml: sensor: unknown key; a wiring file holds [[device]] tables",
        "w.toml: device[0]: mux = 0x71: a multiplexer behind a multiplexer is not simulated; "
        "wire it to the bus itself",
    ]
