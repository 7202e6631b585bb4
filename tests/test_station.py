"""The shipped example is a whole station: every driver, two identical sensors behind a multiplexer.

It validates; ``envagent scan --simulate`` names every chip on it; the agent samples every sensor
through to the outbox with the values the simulated weather puts in front of it; and a fault on
any sensor's bus ends in a warning, never in a wrong value stored as good.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import pytest

from agent.cli import main as cli
from agent.cli.context import OUTBOX_NAME
from agent.cli.hardware import open_buses
from agent.config import Config, SensorConfig, load_config, parse_config
from agent.core.errors import ConfigError
from agent.core.reading import Reading
from agent.sampling.daemon import Agent, make_drivers
from agent.sampling.sampler import FAILURES_BEFORE_FAILED, SensorWorker, State
from agent.store.outbox import Outbox
from drivers.base import Driver, Measurement, Option, Quality
from drivers.bus import Bus
from drivers.clock import Clock, SystemClock
from drivers.registry import DRIVERS
from drivers.scd4x import SET_AMBIENT_PRESSURE
from drivers.sim import (
    MODELS,
    BusIOError,
    Environment,
    FakeClock,
    Garbage,
    Nack,
    SCD4xModel,
    SimBus,
    Timeout,
)
from drivers.sim.simbus import Fault

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "envagent.example.toml"
NS = 1e9
# The commented calibration of the example, uncommented: readings carry its id.
CALIBRATION = '# [sensor.calibration.temperature]\n# id = "air-T-2026-03"\n# offset = -0.3\n'
CALIBRATION_ID = "air-T-2026-03"
# How close a value read through the whole driver stack comes to the simulated weather: the
# chips' resolution, a CO2 pressure compensation to the whole hPa, and the weather moving
# between the time stamp and the conversion (an SCD4x result is up to 5 s old).
TOLERANCE = {
    "temperature": 0.05, "humidity": 0.2, "pressure": 0.05, "co2": 2.0, "illuminance": 5.0,
    "pm1": 1.0, "pm2_5": 1.0, "pm10": 1.0, "soil_moisture": 0.05, "water_level": 0.002,
}
# Flags a good sample may carry: the SCD4x and the PMSA003I flag their first minutes.
WARMING = int(Quality.WARMUP)


def envagent(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})


def example(text: str | None = None) -> Config:
    if text is None:
        return load_config(EXAMPLE)
    return parse_config(tomllib.loads(text), source=str(EXAMPLE))


def environment(config: Config) -> Environment:
    """The weather ``--simulate`` puts in front of the sensors (agent.cli.hardware.open_buses)."""
    unit = config.unit
    return Environment(latitude=unit.latitude, longitude=unit.longitude,
                       elevation_m=unit.elevation_m or 0.0)


def expected(config: Config, weather: Environment, reading: Reading) -> float:
    """What the sensor should report: its own view of the weather, then its calibration."""
    (sensor,) = (s for s in config.sensors if s.id == reading.sensor)
    value = float(getattr(weather.source_for(sensor.id)(reading.time_ns / NS), reading.quantity))
    calibration = sensor.calibration.get(reading.quantity)
    return value if calibration is None else calibration.apply(value)


def quantities(sensor: SensorConfig) -> dict[str, str]:
    return dict(DRIVERS[sensor.driver].configured_quantities(sensor.options))


# --- (a) the example describes a whole station -------------------------------------------------


def test_the_example_has_every_driver_and_two_identical_sensors_behind_a_multiplexer() -> None:
    config = example()
    # A driver added without a sensor in the example fails here: document it there.
    assert sorted({s.driver for s in config.sensors}) == sorted(DRIVERS)
    assert set(DRIVERS) <= set(MODELS)  # and --simulate can run every one of them
    muxed = [s for s in config.sensors if s.mux is not None]
    assert len(muxed) == 2
    first, second = muxed
    assert (first.driver, first.bus, first.mux, first.address) == (
        second.driver, second.bus, second.mux, second.address)
    assert first.channel != second.channel
    assert all(s.bus == 1 and 10.0 <= s.interval <= 300.0 for s in config.sensors)
    # The README's quick start runs 15 s: every sensor has a slot in any 15 s.
    assert all(s.interval <= 10.0 for s in config.sensors)
    probes = next(s for s in config.sensors if s.driver == "ads1115")
    assert quantities(probes) == {"soil_moisture": "%", "water_level": "m"}
    assert probes.average > 1 and set(probes.plausible) == {"water_level"}
    co2 = next(s for s in config.sensors if s.driver == "scd4x")
    assert "pressure" in quantities(next(s for s in config.sensors
                                          if s.id == co2.options["pressure_from"]))


def test_the_examples_commented_calibration_is_valid_uncommented() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    assert CALIBRATION in text
    config = example(text.replace(CALIBRATION, CALIBRATION.replace("# ", "")))
    air = next(s for s in config.sensors if s.id == "air")
    assert air.calibration["temperature"].id == CALIBRATION_ID
    assert air.plausible["temperature"].max == 60.0  # the table before it still applies


def test_the_readme_lists_every_driver() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(\w+)` \|", readme, re.MULTILINE)
    assert sorted(rows) == sorted(DRIVERS)


# --- (b) envagent scan -------------------------------------------------------------------------


def test_scan_of_the_simulated_station_names_every_chip(tmp_path: Path) -> None:
    result = envagent("scan", "--simulate", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    found = {(r["address"], r["chip"], r.get("mux"), r.get("channel"))
             for r in json.loads(result.stdout)}
    assert found == {
        (0x12, "pmsa003i", None, None),
        (0x23, "bh1750", None, None),
        (0x45, "sht3x", None, None),
        (0x48, "ads1115", None, None),
        (0x62, "scd4x", None, None),
        (0x70, "tca9548a", None, None),
        (0x76, "bme280", None, None),
        (0x77, "bmp280", None, None),  # told apart from the BME280 by its chip id
        (0x44, "sht4x", 0x70, 0),  # the two identical SHT4x, one per channel
        (0x44, "sht4x", 0x70, 1),
    }
    # and it is the configured station, sensor for sensor
    configured = {(s.address, s.driver, s.mux, s.channel) for s in example().sensors}
    assert found - configured == {(0x70, "tca9548a", None, None)}


# --- (c) the whole station through the agent ---------------------------------------------------


@contextmanager
def station(config: Config, clock: Clock, data: Path) -> Iterator[tuple[Agent, dict[int, Bus]]]:
    """The agent of ``envagent run --simulate`` (without delivery), on ``clock``."""
    with (
        open_buses(config, clock, simulate=True) as buses,
        Outbox(data / OUTBOX_NAME, max_bytes=config.storage.max_bytes) as outbox,
    ):
        drivers = make_drivers(config, buses, clock, DRIVERS)
        yield Agent(config, drivers, outbox=outbox, clock=clock, boot_id="b00t"), buses


def sim_bus(buses: Mapping[int, Bus]) -> SimBus:
    bus = buses[1]
    assert isinstance(bus, SimBus)
    return bus


def test_every_sensor_reads_the_weather_through_sampler_outbox_and_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = EXAMPLE.read_text(encoding="utf-8").replace(CALIBRATION, CALIBRATION.replace("# ", ""))
    path = tmp_path / "station.toml"
    path.write_text(text, encoding="utf-8")
    base = example(text)
    fast = tuple(dataclasses.replace(s, interval=1.0) for s in base.sensors)
    config = dataclasses.replace(base, sensors=fast, storage=dataclasses.replace(
        base.storage, commit_interval=1.0))
    data = tmp_path / "data"
    data.mkdir()
    with station(config, SystemClock(), data) as (agent, buses):
        runner = threading.Thread(target=agent.run, daemon=True)
        runner.start()
        deadline = time.monotonic() + 30.0  # the SCD4x has its first result after 5 s
        while time.monotonic() < deadline and any(w.health.samples < 1 for w in agent.workers):
            time.sleep(0.1)
        agent.request_stop()
        runner.join(10.0)
        assert all(w.health.state is State.OK for w in agent.workers)
        scd4x = sim_bus(buses).devices[0x62]
        assert isinstance(scd4x, SCD4xModel)
        stored = [s.reading for s in agent.outbox.take(10**6)]

    assert cli.main(["status", "--config", str(path), "--data-dir", str(data), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    latest = {(x["sensor"], x["quantity"]): x for x in report["latest"]}
    weather = environment(config)
    for sensor in config.sensors:
        for quantity, unit in quantities(sensor).items():
            shown = latest[(sensor.id, quantity)]  # every quantity of every sensor is there
            assert shown["unit"] == unit
            assert shown["quality"] & ~WARMING == 0, (sensor.id, quantity)
    for reading in stored:
        want = expected(config, weather, reading)
        assert reading.value == pytest.approx(want, abs=TOLERANCE[reading.quantity]), reading
        assert reading.quality & ~WARMING == 0, reading
        is_calibrated = (reading.sensor, reading.quantity) == ("air", "temperature")
        assert reading.calibration == (CALIBRATION_ID if is_calibrated else None)

    # The multiplexer kept the two SHT4x apart: each reads its own weather, and they differ.
    canopy, ground = (weather.source_for(i)(time.time()).temperature for i in ("canopy", "ground"))
    assert abs(canopy - ground) > 4 * TOLERANCE["temperature"]
    # pressure_from: the SCD4x compensates for the pressure the BME280 'air' measures.
    air_pressure = latest[("air", "pressure")]["value"]
    assert scd4x.ambient_pressure_hpa == round(air_pressure)
    assert SET_AMBIENT_PRESSURE in scd4x.commands


# --- (d) a fault on any sensor ends in a warning, never in a bad value stored as good ----------

FAULTS: dict[str, Fault] = {
    "nack": Nack(count=None),
    "eio": BusIOError(count=None),
    "timeout": Timeout(count=None, duration=0.01),
    "garbage": Garbage(count=None, seed=7),
}


def fault_cases() -> list[Any]:  # pytest.param() values
    cases = []
    for sensor in example().sensors:
        for name, fault in FAULTS.items():
            cases.append(pytest.param(sensor.id, sensor.address, fault,
                                      id=f"{sensor.id}-{name}"))
    return cases


def flush(agent: Agent) -> list[Reading]:
    """Commit what the workers delivered: a stopped agent's ``run`` only drains and commits."""
    agent.request_stop()
    agent.run()
    return [s.reading for s in agent.outbox.take(10**6)]


def worker(agent: Agent, sensor_id: str) -> SensorWorker:
    return next(w for w in agent.workers if w.sensor.id == sensor_id)


@pytest.mark.parametrize(("sensor_id", "address", "fault"), fault_cases())
def test_a_fault_on_the_bus_is_a_warning_and_nothing_bad_is_stored_as_good(
    tmp_path: Path, sensor_id: str, address: int, fault: Fault
) -> None:
    """Each sample of the agent's worker, driven on a fake clock: deterministic and quick."""
    config = example()
    clock = FakeClock(wall=1_767_240_000.0)  # 2026-01-01 04:00 UTC: late morning at the site
    weather = environment(config)
    with station(config, clock, tmp_path) as (agent, buses):
        bus = sim_bus(buses)
        target = worker(agent, sensor_id)
        assert target._try_setup()
        source = target.sensor.options.get("pressure_from")
        if source:  # the SCD4x compensates for the pressure its source measures
            assert worker(agent, source)._try_setup()
            worker(agent, source).sample()
        clock.advance(200.0)  # past every warm-up
        target.sample()
        assert target.health.state is State.OK and target.health.samples == 1

        bus.inject(address, fault)
        faulted_ns = clock.time() * NS
        for failures in range(1, FAILURES_BEFORE_FAILED + 2):
            clock.advance(target.sensor.interval)
            target.sample()
            # a warning at once, failed (and set up again) after several in a row
            failed = failures >= FAILURES_BEFORE_FAILED
            assert target.health.state is (State.FAILED if failed else State.WARNING)
        assert target.health.samples == 1  # not one sample got through
        cleared_ns = clock.time() * NS

        bus.clear_faults()  # and it comes back: never permanently dead
        clock.advance(target.sensor.interval)
        assert target._try_setup()
        clock.advance(200.0)
        target.sample()
        assert target.health.state is State.OK
        stored = [r for r in flush(agent) if r.sensor == sensor_id]

    assert not [r for r in stored if faulted_ns < r.time_ns <= cleared_ns]
    assert len(stored) == 2 * len(quantities(target.sensor))  # before and after the fault
    for reading in stored:
        assert reading.quality == 0, reading
        want = expected(config, weather, reading)
        assert reading.value == pytest.approx(want, abs=TOLERANCE[reading.quantity]), reading


def test_a_multiplexer_that_stops_answering_fails_the_sensors_behind_it_only(
    tmp_path: Path,
) -> None:
    config = example()
    clock = FakeClock()
    with station(config, clock, tmp_path) as (agent, buses):
        workers = [worker(agent, i) for i in ("canopy", "ground", "screen")]
        assert all(w._try_setup() for w in workers)
        sim_bus(buses).inject(0x70, Nack(count=None))
        for _ in range(2):  # each sample switches the multiplexer to its sensor's channel
            clock.advance(10.0)
            for w in workers:
                w.sample()
        canopy, ground, screen = (w.health for w in workers)
        assert canopy.state is ground.state is State.WARNING
        assert "no answer: check wiring, power and address" in (canopy.last_error or "")
        assert screen.state is State.OK and screen.samples == 2
        stored = flush(agent)
    assert {r.sensor for r in stored} == {"screen"}


# --- pressure_from ------------------------------------------------------------------------------


def test_a_failing_co2_sensor_never_costs_the_pressure_source_a_reading(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = example()
    clock = FakeClock()
    with station(config, clock, tmp_path) as (agent, buses):
        air, co2 = worker(agent, "air"), worker(agent, "co2")
        assert air._try_setup() and co2._try_setup()
        bus = sim_bus(buses)
        scd4x = bus.devices[0x62]
        assert isinstance(scd4x, SCD4xModel)
        bus.vanish(0x62)
        with caplog.at_level(logging.INFO, logger="envagent"):
            for _ in range(3):
                air.sample()
                clock.advance(10.0)
            assert air.health.state is State.OK and air.health.samples == 3
            assert scd4x.ambient_pressure_hpa is None
            bus.reappear(0x62)
            air.sample()
        stored = flush(agent)
    assert len([r for r in stored if r.sensor == "air"]) == 4 * 3
    pressure = [r.value for r in stored if (r.sensor, r.quantity) == ("air", "pressure")][-1]
    assert scd4x.ambient_pressure_hpa == round(pressure)
    messages = [r.getMessage() for r in caplog.records]
    failed = [m for m in messages if "passing" in m and "failed" in m]
    assert len(failed) == 1, messages  # on the transition only
    assert failed[0].startswith("pressure of bme280 'air' at 1:0x76 for scd4x 'co2' at 1:0x62")
    assert any(m.endswith("passed on again") for m in messages)


UNIT = '[unit]\nid = "u"\nsite = "roof"\n'
AIR = '[[sensor]]\nid = "air"\ndriver = "bme280"\naddress = 0x76\n'
LIGHT = '[[sensor]]\nid = "light"\ndriver = "bh1750"\naddress = 0x23\n'
CO2 = '[[sensor]]\nid = "co2"\ndriver = "scd4x"\naddress = 0x62\npressure_from = '


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (AIR + LIGHT + CO2 + '"ari"\n', 'sensor \'co2\': pressure_from = "ari": no sensor has '
         'this id; expected the id of a sensor that reports pressure in hPa: "air"'),
        (AIR + LIGHT + CO2 + '"light"\n', "sensor 'co2': pressure_from = \"light\": sensor 'light' "
         '(bh1750) reports no pressure in hPa; expected the id of a sensor that reports pressure '
         'in hPa: "air"'),
        (CO2 + '"co2"\n', "sensor 'co2': pressure_from = \"co2\": sensor 'co2' (scd4x) reports no "
         "pressure in hPa; expected the id of a sensor that reports pressure in hPa, and this "
         "station has none; add one or leave pressure_from out"),
    ],
)
def test_pressure_from_names_a_sensor_that_reports_pressure(text: str, line: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(tomllib.loads(UNIT + text), source="s.toml")
    assert caught.value.problems == [f"s.toml: {line}"]


def test_pressure_from_may_name_a_later_sensor_or_be_empty() -> None:
    for text in (CO2 + '"air"\n' + AIR, CO2 + '""\n'):
        parse_config(tomllib.loads(UNIT + text))


# --- per-quantity settings of a driver whose quantities come from its options ------------------

ADS = (
    '[[sensor]]\nid = "probes"\ndriver = "ads1115"\naddress = 0x48\n'
    'channel0_quantity = "soil_moisture"\nchannel0_unit = "%"\n'
    "channel0_scale = [[2.8, 0.0], [1.2, 100.0]]\n"
)


def test_calibration_and_plausibility_take_the_quantities_an_adc_is_configured_for() -> None:
    config = parse_config(tomllib.loads(
        UNIT + ADS + '[sensor.calibration.soil_moisture]\nid = "soil-1"\nscale = 1.1\n'
        "[sensor.plausible.soil_moisture]\nspike = 20\n"))
    (sensor,) = config.sensors
    assert sensor.calibration["soil_moisture"].scale == 1.1
    assert sensor.plausible["soil_moisture"].spike == 20
    with pytest.raises(ConfigError) as caught:
        parse_config(tomllib.loads(
            UNIT + ADS + "[sensor.plausible.voltage]\nmax = 3\n"), source="s.toml")
    assert caught.value.problems == [
        "s.toml: sensor 'probes': plausible.voltage: unknown quantity for driver ads1115; "
        "expected soil_moisture"]


def test_bad_adc_options_are_reported_once_not_again_as_unknown_quantities() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(tomllib.loads(
            UNIT + ADS.replace('"soil_moisture"', '"soil moisture"')
            + "[sensor.plausible.soil_moisture]\nspike = 20\n"), source="s.toml")
    (line,) = caught.value.problems  # the quantity's name, not also the plausible table
    assert line.startswith('s.toml: sensor \'probes\': channel0_quantity = "soil moisture": '
                           "expected a")


class Pair(Driver):
    """A test driver with a rule between two options, and quantities named by an option."""

    name = "pair"
    addresses = (0x40,)
    quantities: ClassVar[Mapping[str, str]] = {}
    options: ClassVar[Mapping[str, Option]] = {
        "low": Option(int, 0, "lower bound"), "high": Option(int, 10, "upper bound"),
        "measures": Option(str, "level", "the quantity's name"),
    }

    @classmethod
    def check_options(cls, options: Mapping[str, object]) -> list[tuple[str, str]]:
        low, high = options.get("low", 0), options.get("high", 10)
        assert isinstance(low, int) and isinstance(high, int)
        return [] if low < high else [("low", "must be below high")]

    @classmethod
    def configured_quantities(cls, options: Mapping[str, object]) -> Mapping[str, str]:
        return {str(options.get("measures", "level")): "m"}

    def setup(self) -> None:
        pass

    def read(self) -> list[Measurement]:
        return []


def test_config_asks_the_driver_class_for_option_rules_and_quantities() -> None:
    def lines(text: str) -> list[str]:
        with pytest.raises(ConfigError) as caught:
            parse_config(tomllib.loads(UNIT + '[[sensor]]\nid = "s"\ndriver = "pair"\n'
                                       "address = 0x40\n" + text), drivers={"pair": Pair})
        return caught.value.problems

    assert lines("low = 20\n") == ["config: sensor 's': low = 20: must be below high"]
    good = 'measures = "depth"\n[sensor.plausible.depth]\nmax = 5\n'
    (sensor,) = parse_config(tomllib.loads(UNIT + '[[sensor]]\nid = "s"\ndriver = "pair"\n'
                                           "address = 0x40\n" + good),
                             drivers={"pair": Pair}).sensors
    assert sensor.plausible["depth"].max == 5
    assert lines('measures = "depth"\n[sensor.plausible.level]\nmax = 1\n') == [
        "config: sensor 's': plausible.level: unknown quantity for driver pair; expected depth"]


# --- where a sensor is, in log lines ------------------------------------------------------------


def test_a_driver_behind_the_multiplexer_names_its_path() -> None:
    config = example()
    clock = FakeClock()
    with open_buses(config, clock, simulate=True) as buses:
        drivers = dict(zip((s.id for s in config.sensors),
                           make_drivers(config, buses, clock, DRIVERS), strict=True))
    assert drivers["air"].where == "1:0x76"
    assert drivers["canopy"].where == "1:0x70/0:0x44"
    assert drivers["ground"].where == "1:0x70/1:0x44"
