"""The BH1750 driver against the opcode-level model (ROHM BH1750FVI datasheet rev. D)."""

from __future__ import annotations

import errno
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.config import ConfigError, parse_config
from agent.sampling.sampler import SensorWorker, State
from agent.store.outbox import Outbox
from drivers.base import Pending, Quality
from drivers.bh1750 import (
    BH1750,
    identify,
    lux_from_counts,
    max_measurement_time,
    mtreg_opcodes,
)
from drivers.errors import SensorError
from drivers.registry import DRIVERS, IDENTIFIERS
from drivers.scan import scan
from drivers.sim.bh1750 import (
    CONTINUOUS_H,
    CONTINUOUS_H2,
    CONTINUOUS_L,
    BH1750Model,
)
from drivers.sim.clock import FakeClock
from drivers.sim.environment import Environment
from drivers.sim.simbus import Garbage, Nack, SimBus, Stuck
from drivers.sim.world import build_world

ADDRESS = 0x23
HOUR = 3600.0


def rig(**options: Any) -> tuple[SimBus, BH1750Model, BH1750]:
    clock = FakeClock()
    bus = SimBus(1, clock=clock)
    model = BH1750Model(clock=clock)
    bus.attach(ADDRESS, model)
    return bus, model, BH1750(bus, ADDRESS, clock=clock, options=options)


def lux(driver: BH1750) -> float:
    """A sample taken one measurement after the test changed the light: the continuous
    measurement's newest result is at most that old."""
    clock = driver.clock
    assert isinstance(clock, FakeClock)
    clock.advance(driver.measurement_time)
    (measurement,) = driver.read()
    assert (measurement.quantity, measurement.unit) == ("illuminance", "lx")
    return measurement.value


# --- pure functions, known values -----------------------------------------------------------------


def test_datasheet_example_count_to_lux() -> None:
    """p. 7: high byte 1000_0011, low byte 1001_0000 in H-resolution mode -> ~28067 lx."""
    assert lux_from_counts(0b1000_0011_1001_0000) == pytest.approx(28066.7, abs=0.1)


def test_mode2_and_mtreg_scale_the_count() -> None:
    """p. 11: H-resolution mode2 halves, and MTreg 254 in mode2 gives ~0.11 lx per count."""
    assert lux_from_counts(1200, "high2") == pytest.approx(500.0)
    assert lux_from_counts(1, "high2", 254) == pytest.approx(0.1132, abs=1e-4)
    assert lux_from_counts(1200, "high", 138) == pytest.approx(500.0)
    assert lux_from_counts(0xFFFF, "high", 31) == pytest.approx(121_557, abs=1)  # max range


def test_maximum_measurement_times_scale_with_mtreg() -> None:
    assert max_measurement_time("high") == pytest.approx(0.180)
    assert max_measurement_time("high2") == pytest.approx(0.180)
    assert max_measurement_time("low") == pytest.approx(0.024)
    assert max_measurement_time("high", 254) == pytest.approx(0.180 * 254 / 69)
    assert max_measurement_time("low", 31) == pytest.approx(0.024 * 31 / 69)


def test_mtreg_opcodes_split_the_register() -> None:
    assert mtreg_opcodes(69) == (0b01000_010, 0b011_00101)
    assert mtreg_opcodes(31) == (0x40, 0x7F)
    assert mtreg_opcodes(254) == (0x47, 0x7E)
    for bad in (30, 255):
        with pytest.raises(ValueError, match="outside 31..254"):
            mtreg_opcodes(bad)


# --- values through the real driver ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("resolution", "mtreg", "opcode"),
    [("high", 69, CONTINUOUS_H), ("high2", 69, CONTINUOUS_H2), ("low", 69, CONTINUOUS_L),
     ("high", 31, CONTINUOUS_H), ("high2", 254, CONTINUOUS_H2), ("low", 254, CONTINUOUS_L)],
)
def test_illuminance_comes_back_within_the_resolution(
    resolution: str, mtreg: int, opcode: int
) -> None:
    _, model, driver = rig(resolution=resolution, mtreg=mtreg)
    driver.setup()
    step = lux_from_counts(4 if resolution == "low" else 1, resolution, mtreg)
    limit = lux_from_counts(0xFFFE, resolution, mtreg)
    for value in (0.0, 0.4, 7.3, 180.0, 1234.5, 20_000.0, 54_000.0):
        if value >= limit:
            continue
        model.illuminance = value
        assert lux(driver) == pytest.approx(value, abs=step)
    assert model.opcodes[-1] == opcode


def test_setup_starts_a_continuous_measurement_and_a_sample_is_two_reads_that_agree() -> None:
    bus, model, driver = rig(mtreg=100)
    driver.setup()
    assert model.opcodes == [0x01, 0x07, 0x40 | 100 >> 5, 0x60 | 100 & 0x1F, CONTINUOUS_H]
    assert model.measuring and model.mtreg == 100
    model.opcodes.clear()
    bus.clear_log()
    model.illuminance = 321.0
    assert lux(driver) == pytest.approx(321.0, abs=1.0)
    assert model.opcodes == []  # nothing written: two reads of the data register that agree
    assert [t.kind for t in bus.transactions(ADDRESS)] == ["read", "read"]
    driver.close()
    assert not model.measuring and not model.powered


def test_trigger_says_when_the_first_result_is_there_and_collect_waits_for_it() -> None:
    _, model, driver = rig(mtreg=31)
    model.illuminance = 500.0
    driver.setup()
    clock = driver.clock
    started = clock.monotonic()
    ready = driver.trigger()
    assert ready == pytest.approx(started + driver.measurement_time)
    (m,) = driver.collect()  # early: sleeps until the first measurement has finished
    assert clock.monotonic() == pytest.approx(ready)
    assert m.value == pytest.approx(500.0, abs=2.0)
    assert driver.trigger() == clock.monotonic()  # from then on: ready at once


def test_a_dark_or_repeated_value_restarts_the_measurement_and_reads_it_fresh() -> None:
    bus, model, driver = rig()
    driver.setup()
    model.illuminance = 300.0
    lux(driver)  # the first result after a start is taken as it is
    model.illuminance = 0.0  # dark, or a chip that lost power: 0 is checked
    ready = driver.trigger()
    clock = driver.clock
    assert isinstance(clock, FakeClock)
    clock.advance(ready - clock.monotonic())
    model.opcodes.clear()
    with pytest.raises(Pending) as again:
        driver.collect()
    assert model.opcodes[-1] == CONTINUOUS_H  # checked, MTreg set, started again
    clock.advance(again.value.ready - clock.monotonic())
    (m,) = driver.collect()
    assert m.value == 0.0  # a fresh 0 is the dark
    model.illuminance = 640.0
    assert lux(driver) == pytest.approx(640.0, abs=1.0)
    bus.inject(ADDRESS, Stuck())  # the same counts again: not stored without a fresh look
    model.illuminance = 80.0
    assert lux(driver) == pytest.approx(80.0, abs=1.0)


def test_driver_waits_the_maximum_time_not_the_typical_one() -> None:
    _, model, driver = rig(mtreg=254)
    model.slowest = True  # 180 ms x 254/69: a typical-time wait would read the previous value
    driver.setup()
    for value in (100.0, 2000.0, 50.0):
        model.illuminance = value
        assert lux(driver) == pytest.approx(value, abs=0.5)
    assert driver.clock.monotonic() - 1000.0 < 3 * (0.180 * 254 / 69 + 0.01)


def test_saturation_is_flagged_clipped() -> None:
    _, model, driver = rig()
    driver.setup()
    model.illuminance = 100_000.0  # full sun: 120 000 counts at MTreg 69
    (m,) = driver.read()
    assert m.quality == Quality.CLIPPED and m.value == pytest.approx(65535 / 1.2)
    _, model, driver = rig(mtreg=31)  # the datasheet's way to reach 100 klx
    driver.setup()
    model.illuminance = 100_000.0
    (m,) = driver.read()
    assert m.quality == Quality.GOOD and m.value == pytest.approx(100_000.0, abs=3.0)


def test_environment_source_is_read_at_the_measurement_time() -> None:
    clock = FakeClock(wall=1_750_000_000.0)  # June 2025
    environment = Environment(seed=4, latitude=47.0, longitude=8.0)
    bus = SimBus(1, clock=clock)
    bus.attach(ADDRESS, BH1750Model(clock=clock, source=environment.source_for("light")))
    driver = BH1750(bus, ADDRESS, clock=clock, options={"mtreg": 31})
    driver.setup()
    for _ in range(6):
        clock.advance(4 * HOUR)
        expected = environment.conditions(clock.time() + 0.12 * 31 / 69).illuminance
        assert lux(driver) == pytest.approx(expected, abs=3.0)


# --- faults: a failed read raises and yields nothing ----------------------------------------------


def test_nack_keeps_the_errno_and_the_next_read_recovers() -> None:
    bus, model, driver = rig()
    driver.setup()
    model.illuminance = 50.0
    bus.inject(ADDRESS, Nack())
    with pytest.raises(OSError) as caught:
        driver.read()
    assert caught.value.errno == errno.EREMOTEIO
    assert lux(driver) == pytest.approx(50.0, abs=1.0)


def test_frozen_chip_is_an_error_not_a_stale_value() -> None:
    bus, model, driver = rig()
    driver.setup()
    model.illuminance = 800.0
    lux(driver)
    model.frozen = True
    model.illuminance = 10.0
    with pytest.raises(SensorError, match=r"bh1750 at 1:0x23: the data register reads 960"):
        driver.read()
    model.frozen = False
    assert lux(driver) == pytest.approx(10.0, abs=1.0)


def test_a_garbled_reset_check_is_caught() -> None:
    bus, model, driver = rig()
    driver.setup()
    model.illuminance = 300.0
    lux(driver)
    bus.inject(ADDRESS, Stuck(count=2))  # the data reads repeat themselves: the chip is checked
    bus.inject(ADDRESS, Garbage(seed=3))  # ... and the check's read is noise
    with pytest.raises(SensorError, match="not executing commands"):
        driver.read()


def test_one_garbled_data_read_is_outvoted_and_two_are_a_read_failure() -> None:
    bus, model, driver = rig()
    driver.setup()
    model.illuminance = 300.0
    lux(driver)
    model.illuminance = 420.0
    bus.inject(ADDRESS, Garbage(seed=5))  # the first read is noise, the next two agree
    assert lux(driver) == pytest.approx(420.0, abs=1.0)
    model.illuminance = 380.0
    bus.inject(ADDRESS, Garbage(count=2, seed=5))  # no value to trust: the sample fails
    with pytest.raises(SensorError, match="three reads of the data register disagree"):
        driver.read()
    assert lux(driver) == pytest.approx(380.0, abs=1.0)  # and the next is good again


def test_setup_refuses_a_chip_that_ignores_reset() -> None:
    _, model, driver = rig()
    model.data, model.frozen = 0x1234, True
    with pytest.raises(SensorError, match="not executing commands"):
        driver.setup()


# --- identification -------------------------------------------------------------------------------


class ExpanderModel:
    """A PCF8574: reads return the port, a write sets the outputs (a relay could switch)."""

    def __init__(self) -> None:
        self.port, self.writes = 0xFF, 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.port = data[-1]

    def read(self, length: int) -> bytes:
        return bytes([self.port]) * length


class RegisterChipModel:
    """A chip with a register pointer and a register file, such as an MCP23017."""

    def __init__(self) -> None:
        self.registers = bytearray(32)
        self.registers[0:2] = b"\xff\xff"  # IODIRA/IODIRB power-on values
        self.pointer = 0

    def write(self, data: bytes) -> None:
        self.pointer = data[0] % 32

    def read(self, length: int) -> bytes:
        out = bytes(self.registers[(self.pointer + i) % 32] for i in range(length))
        self.pointer = (self.pointer + length) % 32
        return out


@pytest.mark.parametrize("address", [0x23, 0x5C])
def test_identify_names_a_bh1750_and_leaves_it_powered_down(address: int) -> None:
    clock = FakeClock()
    bus = SimBus(1, clock=clock)
    model = BH1750Model(clock=clock, illuminance=300.0)
    bus.attach(address, model)
    assert identify(bus, address) == "bh1750"
    assert [(found.address, found.chip) for found in scan(bus, IDENTIFIERS)] == [
        (address, "bh1750")
    ]
    assert not model.powered


def test_identify_never_writes_to_what_looks_like_an_io_expander() -> None:
    bus = SimBus(1, clock=FakeClock())
    expander = ExpanderModel()
    bus.attach(ADDRESS, expander)
    assert identify(bus, ADDRESS) is None
    assert expander.writes == 0


def test_identify_refuses_a_register_chip_and_other_addresses() -> None:
    bus = SimBus(1, clock=FakeClock())
    bus.attach(ADDRESS, RegisterChipModel())
    assert identify(bus, ADDRESS) is None
    bus.attach(0x24, BH1750Model(clock=bus.clock))
    assert identify(bus, 0x24) is None


# --- config and the agent -------------------------------------------------------------------------


def config(**options: Any) -> Any:
    sensor = {"id": "light", "driver": "bh1750", "address": ADDRESS, "interval": "10s", **options}
    return parse_config({"unit": {"id": "u1", "site": "roof"}, "sensor": [sensor]})


def test_options_are_validated_by_the_config() -> None:
    assert DRIVERS["bh1750"] is BH1750
    assert dict(config(resolution="high2", mtreg=254).sensors[0].options) == {
        "resolution": "high2", "mtreg": 254,
    }
    with pytest.raises(ConfigError) as caught:
        config(resolution="medium", mtreg=300)
    text = "\n".join(caught.value.problems)
    assert 'resolution = "medium": expected one of "high", "high2", "low"' in text
    assert "mtreg = 300: expected an integer from 31 to 254" in text


def test_through_the_agent_values_are_stored_and_faults_only_warn(tmp_path: Path) -> None:
    cfg = config(mtreg=31)
    clock = FakeClock()
    buses = build_world([(1, ADDRESS, "bh1750", "light")], clock=clock, environment=Environment())
    model = buses[1].devices[ADDRESS]
    assert isinstance(model, BH1750Model)
    model.source = None
    with Outbox(tmp_path / "o.sqlite", max_bytes=1024**2) as outbox:
        sensor = cfg.sensors[0]
        driver = DRIVERS[sensor.driver](buses[1], sensor.address, clock=clock,
                                        options=sensor.options)
        worker = SensorWorker(sensor, driver, clock=clock, deliver=outbox.append,
                              boot_id="b00t", stop=threading.Event())
        assert worker._try_setup()
        for value in (12.0, 4321.0, 99_000.0):
            model.illuminance = value
            worker.sample()
            (latest,) = outbox.latest()
            assert (latest.sensor, latest.quantity, latest.unit) == ("light", "illuminance", "lx")
            assert latest.value == pytest.approx(value, abs=3.0) and latest.quality == 0
        added = outbox.stats().added
        buses[1].inject(ADDRESS, Nack())
        worker.sample()
        assert worker.health.state is State.WARNING
        model.frozen = True  # the register stops changing: the same counts, then no reset
        worker.sample()
        assert worker.health.state is State.WARNING
        assert outbox.stats().added == added
        assert outbox.latest()[0].value == pytest.approx(99_000.0, abs=3.0)


# --- the environment's illuminance ----------------------------------------------------------------


def test_environment_illuminance_is_dark_at_night_and_about_100_klx_at_most() -> None:
    environment = Environment(seed=1, latitude=0.0, longitude=0.0)
    equinox = 1_773_964_800.0  # 2026-03-20 00:00 UTC
    assert environment.conditions(equinox).illuminance == 0.0  # midnight
    assert environment.conditions(equinox + 23 * HOUR).illuminance == 0.0
    days = [environment.conditions(equinox + d * 86_400 + 12 * HOUR).illuminance
            for d in range(60)]
    assert 90_000 < max(days) < 110_000  # a clear noon with the sun almost overhead
    assert min(days) < 0.6 * max(days)  # and some cloudy ones
    assert Environment(seed=2, latitude=0.0).conditions(equinox + 12 * HOUR).illuminance != (
        environment.conditions(equinox + 12 * HOUR).illuminance
    )
