"""SHT3x and SHT4x: the real drivers against the data-sheet models, faults, identification, and
one trip through the whole agent per chip."""

from __future__ import annotations

import errno
import itertools
import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.config import parse_config
from agent.sampling.daemon import make_drivers
from agent.sampling.sampler import SensorWorker, State
from agent.store.outbox import Outbox
from drivers import sensirion, sht3x, sht4x
from drivers.base import Driver, Quality
from drivers.errors import SensorError, SensorTimeoutError, WrongChipError
from drivers.registry import DRIVERS, IDENTIFIERS
from drivers.scan import scan
from drivers.sim import BusIOError, Environment, FakeClock, Garbage, Nack, SimBus
from drivers.sim.sensirion import CommandChip, nack
from drivers.sim.sht import (
    SHT3X_MEASURE_HIGH,
    SHT3X_READ_STATUS,
    SHT4X_HEATERS,
    STATUS_COMMAND_FAILED,
    STATUS_HEATER_ON,
    STATUS_RESET_DETECTED,
    SHT3xModel,
    SHT4xModel,
)
from drivers.sim.world import build_world

ADDRESS = 0x44
T_TICK = 175.0 / 0xFFFF  # °C per tick
SHT3X_RH_TICK = 100.0 / 0xFFFF
SHT4X_RH_TICK = 125.0 / 0xFFFF
CHIPS = [(sht3x.SHT3x, SHT3xModel), (sht4x.SHT4x, SHT4xModel)]
CHIP_IDS = ["sht3x", "sht4x"]


def rig(
    driver_type: type[Driver], model_type: type[CommandChip], **options: Any
) -> tuple[Driver, Any, SimBus, FakeClock]:
    clock = FakeClock()
    bus = SimBus(1, clock=clock)
    model = model_type(clock=clock)
    bus.attach(ADDRESS, model)
    clock.advance(0.01)  # past power-up
    driver = driver_type(bus, ADDRESS, clock=clock, options=options)
    driver.setup()
    return driver, model, bus, clock


def values(driver: Driver) -> dict[str, tuple[float, Quality]]:
    return {m.quantity: (m.value, m.quality) for m in driver.read()}


# --- physical values through the real drivers ---------------------------------------------------


@pytest.mark.parametrize(("driver_type", "model_type"), CHIPS, ids=CHIP_IDS)
def test_physical_values_come_back_within_one_tick(
    driver_type: type[Driver], model_type: type[CommandChip]
) -> None:
    driver, model, _, _ = rig(driver_type, model_type)
    rh_tick = SHT3X_RH_TICK if model_type is SHT3xModel else SHT4X_RH_TICK
    for t, rh in itertools.product((-40.0, -7.25, 0.0, 23.4, 60.0, 125.0), (0.5, 33.3, 99.5)):
        model.temperature, model.humidity = t, rh
        got = values(driver)
        assert got["temperature"] == (pytest.approx(t, abs=T_TICK), Quality.GOOD)
        assert got["humidity"] == (pytest.approx(rh, abs=rh_tick), Quality.GOOD)


@pytest.mark.parametrize(("driver_type", "model_type"), CHIPS, ids=CHIP_IDS)
@pytest.mark.parametrize("repeatability", ["high", "medium", "low"])
def test_each_repeatability_sends_its_command_and_waits_its_maximum(
    driver_type: type[Driver], model_type: type[CommandChip], repeatability: str
) -> None:
    module = sht3x if driver_type is sht3x.SHT3x else sht4x
    driver, model, bus, clock = rig(driver_type, model_type, repeatability=repeatability)
    bus.clear_log()
    started = clock.monotonic()
    driver.read()
    assert model.commands[-1] == module.MEASURE[repeatability]
    assert clock.monotonic() - started == pytest.approx(module.MEASURE_MAX_S[repeatability])
    assert [t.kind for t in bus.transactions()] == ["write", "read"]  # no NACKed early read


def test_sht3x_nacks_a_read_until_the_measurement_ends_and_answers_once() -> None:
    clock = FakeClock()
    bus = SimBus(1, clock=clock)
    bus.attach(ADDRESS, SHT3xModel(clock=clock, temperature=18.0))
    clock.advance(0.01)
    bus.write(ADDRESS, SHT3X_MEASURE_HIGH.to_bytes(2, "big"))
    clock.advance(0.0124)  # typical 12.5 ms (table 4)
    with pytest.raises(OSError) as nacked:
        bus.read(ADDRESS, 6)
    assert nacked.value.errno == errno.EREMOTEIO
    with pytest.raises(OSError):
        bus.write(ADDRESS, SHT3X_READ_STATUS.to_bytes(2, "big"))  # busy: no command either
    clock.advance(0.0002)
    assert len(bus.read(ADDRESS, 6)) == 6
    with pytest.raises(OSError):
        bus.read(ADDRESS, 6)  # the result was read: nothing left


def test_sht4x_nacks_a_read_until_the_measurement_ends() -> None:
    clock = FakeClock()
    bus = SimBus(1, clock=clock)
    bus.attach(ADDRESS, SHT4xModel(clock=clock))
    clock.advance(0.01)
    bus.write(ADDRESS, b"\xe0")  # low precision, 1.3 ms typical
    with pytest.raises(OSError):
        bus.read(ADDRESS, 6)
    clock.advance(0.0013)
    assert len(bus.read(ADDRESS, 6)) == 6


def test_sht4x_clamps_humidity_outside_0_to_100_and_flags_it() -> None:
    driver, model, _, _ = rig(sht4x.SHT4x, SHT4xModel)
    model.humidity = 104.0  # condensing air: the chip reports up to 119 %RH
    assert values(driver)["humidity"] == (100.0, Quality.CLIPPED)
    model.humidity = -2.5
    assert values(driver)["humidity"] == (0.0, Quality.CLIPPED)


def test_temperatures_beyond_the_specified_range_are_flagged() -> None:
    driver, model, _, _ = rig(sht3x.SHT3x, SHT3xModel)
    model.temperature = 127.0
    assert values(driver)["temperature"][1] is Quality.OUT_OF_RANGE


# --- chip behaviour the drivers rely on -----------------------------------------------------------


def test_sht3x_status_register_reset_heater_and_invalid_commands() -> None:
    driver, model, bus, clock = rig(sht3x.SHT3x, SHT3xModel, heater=True)
    assert model.heater_on and model.status & STATUS_RESET_DETECTED
    bus.write(ADDRESS, b"\x89")  # one byte: not a command the SHT3x knows; still ACKed
    with pytest.raises(OSError):
        bus.read(ADDRESS, 6)  # and nothing to read
    assert model.status & STATUS_COMMAND_FAILED
    values(driver)
    assert not model.status & STATUS_COMMAND_FAILED  # the next valid command clears it
    driver.close()
    assert not model.heater_on
    assert model.status & STATUS_HEATER_ON == 0



def test_an_sht3x_left_in_periodic_mode_by_another_program_is_taken_back() -> None:
    clock = FakeClock()
    bus = SimBus(1, clock=clock)
    model = SHT3xModel(clock=clock)
    bus.attach(ADDRESS, model)
    clock.advance(0.01)
    bus.write(ADDRESS, b"\x21\x30")  # periodic acquisition, 1 measurement per second (table 10)
    clock.advance(2.0)
    assert model.periodic
    driver = sht3x.SHT3x(bus, ADDRESS, clock=clock, options={})
    driver.setup()
    assert not model.periodic and not model.status & STATUS_COMMAND_FAILED
    model.temperature = 12.5
    assert values(driver)["temperature"][0] == pytest.approx(12.5, abs=T_TICK)

def test_sht4x_refuses_unknown_commands_and_reads_its_serial_number() -> None:
    driver, model, bus, _ = rig(sht4x.SHT4x, SHT4xModel)
    assert isinstance(driver, sht4x.SHT4x) and driver.serial_number == model.serial
    with pytest.raises(OSError):
        bus.write(ADDRESS, b"\xf3\x2d")  # the SHT3x status command
    assert sht4x.SOFT_RESET in model.commands


def test_sht4x_heater_pulses_after_a_sample_within_its_duty_cycle() -> None:
    driver, model, _, clock = rig(sht4x.SHT4x, SHT4xModel, heater="110mW-1s")
    model.temperature = 30.0
    started = clock.monotonic()
    assert values(driver)["temperature"][0] == pytest.approx(30.0, abs=T_TICK)
    assert model.heater_pulses == [(110, 1.0)]
    assert clock.monotonic() - started >= 1.0  # the pulse finished before read() returned
    clock.advance(5.0)
    driver.read()  # 6 s after a 1 s pulse: 17 % duty, skipped
    assert len(model.heater_pulses) == 1
    clock.advance(10.0)
    driver.read()
    assert len(model.heater_pulses) == 2
    model.temperature = 70.0  # above 65 °C the heater is not to be used
    clock.advance(20.0)
    driver.read()
    assert len(model.heater_pulses) == 2


class HeaterlessSHT4x(SHT4xModel):
    """An SHT4x whose heater commands are refused, to make every pulse fail."""

    def execute(self, data: bytes, now: float) -> None:
        if data and data[0] in SHT4X_HEATERS:
            raise nack()
        super().execute(data, now)


def test_a_failing_heater_pulse_costs_no_sample_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    driver, model, _, clock = rig(sht4x.SHT4x, HeaterlessSHT4x, heater="20mW-0.1s")
    model.temperature = 12.0
    with caplog.at_level(logging.INFO, logger="envagent.driver"):
        for _ in range(3):
            assert values(driver)["temperature"][0] == pytest.approx(12.0, abs=T_TICK)
            clock.advance(10.0)
    assert caplog.text.count("heater pulse failed") == 1
    assert model.heater_pulses == []


# --- faults: an exception from read(), never a value ----------------------------------------------


FAULTS = {
    "crc": lambda model, bus: model.corrupt(word=1, bit=3),
    "crc-in-temperature": lambda model, bus: model.corrupt(word=0, bit=12),
    "stuck": lambda model, bus: setattr(model, "stuck_measuring", True),
    "busy": lambda model, bus: model.hold_busy(60.0),
    "garbage": lambda model, bus: bus.inject(ADDRESS, Garbage(count=3, seed=7)),
    "nack": lambda model, bus: bus.inject(ADDRESS, Nack(count=1)),
    "eio": lambda model, bus: bus.inject(ADDRESS, BusIOError(count=1)),
}


@pytest.mark.parametrize(("driver_type", "model_type"), CHIPS, ids=CHIP_IDS)
@pytest.mark.parametrize("fault", list(FAULTS))
def test_every_fault_ends_in_an_exception_never_a_value(
    driver_type: type[Driver], model_type: type[CommandChip], fault: str
) -> None:
    driver, model, bus, clock = rig(driver_type, model_type)
    FAULTS[fault](model, bus)
    started = clock.monotonic()
    with pytest.raises((SensorError, OSError)) as raised:
        driver.read()
    assert clock.monotonic() - started < 0.2  # bounded by the deadline
    if fault == "stuck":
        assert isinstance(raised.value, SensorTimeoutError)
        assert "no result" in str(raised.value) and f"at 1:0x{ADDRESS:02x}" in str(raised.value)
    if fault.startswith("crc"):
        assert "CRC mismatch" in str(raised.value)
    model.clear_faults()
    bus.clear_faults()
    clock.advance(61.0)
    model.temperature = 19.5
    assert values(driver)["temperature"][0] == pytest.approx(19.5, abs=T_TICK)  # recovers


# --- identification -----------------------------------------------------------------------------


def test_identify_tells_sht3x_from_sht4x_without_changing_either() -> None:
    clock = FakeClock()
    bus = SimBus(1, clock=clock)
    old, new = SHT3xModel(clock=clock), SHT4xModel(clock=clock)
    bus.attach(0x44, old)
    bus.attach(0x45, new)
    clock.advance(0.01)
    assert (sht3x.identify(bus, 0x44), sht4x.identify(bus, 0x44)) == ("sht3x", None)
    assert (sht3x.identify(bus, 0x45), sht4x.identify(bus, 0x45)) == (None, "sht4x")
    assert sht3x.identify(bus, 0x46) is None  # not an SHT3x address: not even asked
    assert old.commands == [] and not old.heater_on
    assert new.commands == [sensirion.SHT4X_READ_SERIAL]
    found = {f.address: f.chip for f in scan(bus, IDENTIFIERS)}
    assert found == {0x44: "sht3x", 0x45: "sht4x"}


@pytest.mark.parametrize(
    ("driver_type", "model_type", "hint"),
    [(sht3x.SHT3x, SHT4xModel, 'driver = "sht4x"'), (sht4x.SHT4x, SHT3xModel, 'driver = "sht3x"')],
)
def test_setup_names_the_other_chip(
    driver_type: type[Driver], model_type: type[CommandChip], hint: str
) -> None:
    with pytest.raises(WrongChipError, match=hint):
        rig(driver_type, model_type)


def test_read_before_setup_is_an_error() -> None:
    clock = FakeClock()
    with pytest.raises(SensorError, match="before setup"):
        sht3x.SHT3x(SimBus(1, clock=clock), ADDRESS, clock=clock).read()


# --- the whole agent ----------------------------------------------------------------------------


@pytest.mark.parametrize("driver", ["sht3x", "sht4x"])
def test_through_the_agent_to_the_outbox(driver: str, tmp_path: Path) -> None:
    config = parse_config({
        "unit": {"id": "u1", "site": "roof", "latitude": 47.0, "longitude": 8.0},
        "sensor": [{"id": "air", "driver": driver, "address": ADDRESS, "interval": "30s"}],
    })
    clock = FakeClock(start=100.0, wall=1_767_225_600.0)
    environment = Environment(seed=3, latitude=47.0, longitude=8.0)
    buses = build_world([(1, ADDRESS, driver, "air")], clock=clock, environment=environment)
    (chip,) = make_drivers(config, buses, clock, DRIVERS)
    outbox = Outbox(tmp_path / "o.sqlite", max_bytes=1024**2)
    worker = SensorWorker(
        config.sensors[0], chip, clock=clock, deliver=outbox.append, boot_id="b00t",
        stop=threading.Event(),
    )
    chip.setup()
    source = environment.source_for("air")
    for _ in range(3):
        clock.advance(30.0)
        worker.sample()
        truth = source(clock.time())
        latest = {v.quantity: v for v in outbox.latest()}
        assert latest["temperature"].value == pytest.approx(truth.temperature, abs=0.01)
        assert latest["humidity"].value == pytest.approx(truth.humidity, abs=0.01)
        assert latest["humidity"].unit == "%RH" and latest["temperature"].quality == 0
    assert worker.health.state is State.OK

    before = outbox.stats().added
    buses[1].devices[ADDRESS].corrupt(word=0, bit=9)  # type: ignore[attr-defined]
    clock.advance(30.0)
    worker.sample()
    assert worker.health.state is State.WARNING
    assert outbox.stats().added == before  # nothing stored from the damaged read
    clock.advance(30.0)
    worker.sample()
    assert worker.health.state is State.OK
    outbox.close()
