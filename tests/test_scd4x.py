"""SCD4x: the real driver against the data-sheet model -- periodic measurement, data-ready, the
commands a measuring chip refuses, warm-up, pressure compensation, faults -- and through the
agent."""

from __future__ import annotations

import errno
import math
import threading
from pathlib import Path

import pytest

from agent.config import parse_config
from agent.sampling.daemon import make_drivers
from agent.sampling.sampler import SensorWorker, State
from agent.store.outbox import Outbox
from drivers import scd4x
from drivers.base import Quality
from drivers.errors import DriverConfigError, SensorError, SensorTimeoutError
from drivers.registry import DRIVERS, IDENTIFIERS
from drivers.scan import scan
from drivers.sim import Conditions, Environment, FakeClock, Garbage, SimBus
from drivers.sim.scd4x import (
    DATASHEET_SERIAL,
    GET_DATA_READY_STATUS,
    GET_SERIAL_NUMBER,
    POWER_DOWN,
    READ_MEASUREMENT,
    START_PERIODIC_MEASUREMENT,
    SCD4xModel,
)
from drivers.sim.sensirion import frame
from drivers.sim.sht import SHT3xModel
from drivers.sim.world import build_world

ADDRESS = 0x62
T_TICK = 175.0 / 0xFFFF
RH_TICK = 100.0 / 0xFFFF


def rig(
    co2: float = 420.0, temperature: float = 20.0, humidity: float = 50.0
) -> tuple[scd4x.SCD4x, SCD4xModel, SimBus, FakeClock]:
    clock = FakeClock()
    bus = SimBus(1, clock=clock)
    model = SCD4xModel(
        clock=clock, co2=co2, temperature=temperature, humidity=humidity, pressure=1013.0
    )
    bus.attach(ADDRESS, model)
    driver = scd4x.SCD4x(bus, ADDRESS, clock=clock)
    driver.setup()
    return driver, model, bus, clock


def values(driver: scd4x.SCD4x) -> dict[str, tuple[float, Quality]]:
    return {m.quantity: (m.value, m.quality) for m in driver.read()}


def command(bus: SimBus, code: int, argument: bytes = b"") -> None:
    bus.write(ADDRESS, code.to_bytes(2, "big") + argument)


def nacked(action: object) -> bool:
    try:
        action()  # type: ignore[operator]
    except OSError as exc:
        return exc.errno == errno.EREMOTEIO
    return False


# --- values -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("co2", "temperature", "humidity"),
    [(400.0, 21.3, 45.0), (1234.0, -9.5, 12.5), (5000.0, 59.0, 95.0), (420.0, 0.0, 0.0)],
)
def test_physical_values_come_back_within_the_resolution(
    co2: float, temperature: float, humidity: float
) -> None:
    driver, _, _, _ = rig(co2=co2, temperature=temperature, humidity=humidity)
    got = values(driver)
    assert got["co2"][0] == co2  # 1 ppm resolution
    assert got["temperature"][0] == pytest.approx(temperature, abs=T_TICK)
    assert got["humidity"][0] == pytest.approx(humidity, abs=RH_TICK)
    assert {q for _, q in got.values()} == {Quality.WARMUP}


def test_setup_stops_a_running_measurement_reads_the_serial_and_starts_measuring() -> None:
    clock = FakeClock()
    bus = SimBus(1, clock=clock)
    model = SCD4xModel(clock=clock)
    bus.attach(ADDRESS, model)
    command(bus, START_PERIODIC_MEASUREMENT)  # left running by an agent that crashed
    driver = scd4x.SCD4x(bus, ADDRESS, clock=clock)
    driver.setup()
    assert driver.serial_number == DATASHEET_SERIAL
    assert model.commands[1:] == [
        scd4x.WAKE_UP, scd4x.STOP_PERIODIC_MEASUREMENT, GET_SERIAL_NUMBER,
        START_PERIODIC_MEASUREMENT,
    ]
    assert model.measuring
    driver.close()
    assert not model.measuring
    driver.setup()  # from idle: the first stop is tolerated either way
    assert model.measuring


def test_setup_wakes_a_chip_another_program_powered_down() -> None:
    clock = FakeClock()
    bus = SimBus(1, clock=clock)
    model = SCD4xModel(clock=clock, co2=800.0)
    bus.attach(ADDRESS, model)
    command(bus, POWER_DOWN)
    clock.advance(60.0)  # the agent starts later
    assert model.asleep
    driver = scd4x.SCD4x(bus, ADDRESS, clock=clock)
    driver.setup()
    assert driver.serial_number == DATASHEET_SERIAL and model.measuring
    assert values(driver)["co2"][0] == 800.0


def test_read_waits_for_data_ready_and_gets_each_measurement_once() -> None:
    driver, model, _, clock = rig()
    started = clock.monotonic()
    driver.read()  # started 0 s ago: the first measurement comes 5 s after the start
    assert clock.monotonic() - started == pytest.approx(5.0, abs=0.15)
    before = clock.monotonic()
    driver.read()  # the buffer was emptied: waits for the next one
    assert clock.monotonic() - before == pytest.approx(5.0, abs=0.15)
    assert model.measurements == 2
    clock.advance(60.0)  # the agent's own, longer interval: the newest measurement is read at once
    before = clock.monotonic()
    driver.read()
    assert clock.monotonic() - before < 0.01


def test_a_new_input_shows_only_in_measurements_that_end_after_it() -> None:
    driver, model, _, clock = rig(co2=500.0)
    clock.advance(5.0)  # one measurement finished, nobody asked yet
    model.co2 = 900.0
    assert values(driver)["co2"][0] == 500.0
    assert values(driver)["co2"][0] == 900.0


def test_data_ready_status_and_an_empty_buffer() -> None:
    _, model, bus, clock = rig()
    command(bus, READ_MEASUREMENT)  # nothing measured yet
    clock.advance(0.001)
    assert nacked(lambda: bus.read(ADDRESS, 9))  # 3.5.2: no data -> NACK
    command(bus, GET_DATA_READY_STATUS)
    clock.advance(0.001)
    assert bus.read(ADDRESS, 3) == frame([0x8000])  # low 11 bits 0: not ready
    clock.advance(5.0)
    command(bus, GET_DATA_READY_STATUS)
    clock.advance(0.001)
    word = int.from_bytes(bus.read(ADDRESS, 3)[:2], "big")
    assert word & 0x07FF


def test_a_measuring_chip_refuses_other_commands_and_answers_nothing_while_stopping() -> None:
    driver, model, bus, clock = rig()
    assert nacked(lambda: command(bus, GET_SERIAL_NUMBER))  # table 9: not during measurement
    assert nacked(lambda: command(bus, START_PERIODIC_MEASUREMENT))
    assert not nacked(lambda: command(bus, GET_DATA_READY_STATUS))
    clock.advance(0.001)
    driver.set_ambient_pressure(950.0)  # allowed while measuring
    assert model.ambient_pressure_hpa == 950.0
    command(bus, scd4x.STOP_PERIODIC_MEASUREMENT)
    clock.advance(0.499)
    assert nacked(lambda: command(bus, GET_SERIAL_NUMBER))  # 500 ms after stop: nothing
    clock.advance(0.002)
    command(bus, GET_SERIAL_NUMBER)
    clock.advance(0.001)
    assert bus.read(ADDRESS, 9) == frame([0xF896, 0x9F07, 0x3BBE])  # the data sheet's example


def test_warmup_flag_for_the_first_minutes_after_a_start() -> None:
    driver, _, _, clock = rig()
    assert values(driver)["co2"][1] == Quality.WARMUP
    clock.advance(scd4x.WARMUP_S - 10.0)
    assert values(driver)["co2"][1] == Quality.WARMUP
    clock.advance(10.0)
    assert {q for _, q in values(driver).values()} == {Quality.GOOD}
    driver.close()
    driver.setup()  # a restart warms up again
    assert values(driver)["temperature"][1] == Quality.WARMUP


def test_out_of_range_values_are_flagged() -> None:
    driver, model, _, clock = rig(co2=45_000.0, temperature=65.0)
    clock.advance(scd4x.WARMUP_S)
    got = values(driver)
    assert got["co2"] == (45_000.0, Quality.OUT_OF_RANGE)
    assert got["temperature"][1] == Quality.OUT_OF_RANGE
    assert got["humidity"][1] == Quality.GOOD


# --- pressure compensation ----------------------------------------------------------------------


def test_ambient_pressure_reaches_the_chip_and_compensates_co2() -> None:
    driver, model, bus, clock = rig(co2=600.0)
    model.pressure = 900.0  # a site at ~1000 m: fewer molecules per volume
    clock.advance(5.0)
    assert values(driver)["co2"][0] == round(600.0 * 900.0 / 1013.0)  # compensating for 1013 hPa
    bus.clear_log()
    driver.set_ambient_pressure(900.4)
    assert bus.transactions()[0].wrote == bytes.fromhex("e000") + frame([900])
    assert model.ambient_pressure_hpa == 900.0
    bus.clear_log()
    driver.set_ambient_pressure(899.6)  # the same whole hPa: the chip has it, nothing is sent
    assert bus.transactions() == []
    clock.advance(5.0)
    assert values(driver)["co2"][0] == 600.0
    driver.close()
    model.ambient_pressure_hpa = None  # a power cycle forgets it; setup sends it again
    driver.setup()
    assert model.ambient_pressure_hpa == 900.0


def test_ambient_pressure_before_setup_and_out_of_range() -> None:
    clock = FakeClock()
    bus = SimBus(1, clock=clock)
    model = SCD4xModel(clock=clock)
    bus.attach(ADDRESS, model)
    driver = scd4x.SCD4x(bus, ADDRESS, clock=clock, options={"pressure_from": "air"})
    assert driver.pressure_from == "air"
    driver.set_ambient_pressure(987.0)
    assert model.ambient_pressure_hpa is None  # kept until setup
    driver.setup()
    assert model.ambient_pressure_hpa == 987.0
    for bad in (650.0, 1250.0, math.nan):
        with pytest.raises(DriverConfigError, match="700-1200 hPa"):
            driver.set_ambient_pressure(bad)


# --- faults -------------------------------------------------------------------------------------


@pytest.mark.parametrize("word", [0, 1, 2])
def test_a_flipped_bit_in_any_measurement_word_is_an_error_never_a_value(word: int) -> None:
    driver, model, _, clock = rig(co2=800.0)
    driver.read()
    clock.advance(5.0)  # a measurement is there: read_measurement is the only answer
    model.corrupt(word=word, bit=5)
    with pytest.raises(SensorError, match="scd4x at 1:0x62: CRC mismatch"):
        driver.read()
    assert values(driver)["co2"][0] == 800.0  # the next measurement is good again


def test_a_corrupted_data_ready_answer_is_an_error() -> None:
    driver, model, _, _ = rig()
    model.corrupt(word=0, bit=0)
    with pytest.raises(SensorError, match="CRC mismatch"):
        driver.read()


def test_noise_on_the_bus_is_an_error() -> None:
    driver, _, bus, clock = rig(co2=800.0)
    driver.read()
    clock.advance(5.0)
    bus.inject(ADDRESS, Garbage(count=2, seed=1))  # random bytes for the next two reads
    with pytest.raises(SensorError, match="CRC mismatch"):
        driver.read()


def test_stale_data_times_out_within_its_deadline() -> None:
    driver, model, _, clock = rig()
    driver.read()
    model.stale = True
    started = clock.monotonic()
    with pytest.raises(SensorTimeoutError, match="no new measurement") as raised:
        driver.read()
    waited = clock.monotonic() - started
    assert scd4x.SIGNAL_UPDATE_INTERVAL_S < waited <= (
        scd4x.SIGNAL_UPDATE_INTERVAL_S + scd4x.READY_MARGIN_S + 0.2
    )
    assert "scd4x at 1:0x62" in str(raised.value)


def test_a_busy_chip_is_an_error() -> None:
    driver, model, _, _ = rig()
    model.hold_busy(30.0)
    with pytest.raises(OSError):
        driver.read()


def test_a_stopped_chip_ends_in_an_error_not_an_old_value() -> None:
    driver, _, bus, _ = rig()
    driver.read()
    command(bus, scd4x.STOP_PERIODIC_MEASUREMENT)  # a brown-out put the chip back to idle
    with pytest.raises((SensorError, OSError)):
        driver.read()


# --- identification and self test ---------------------------------------------------------------


def test_identify_idle_measuring_and_other_chips() -> None:
    clock = FakeClock()
    bus = SimBus(1, clock=clock)
    model = SCD4xModel(clock=clock)
    bus.attach(ADDRESS, model)
    assert scd4x.identify(bus, ADDRESS) == "scd4x"
    command(bus, START_PERIODIC_MEASUREMENT)
    assert scd4x.identify(bus, ADDRESS) == "scd4x"  # refuses the serial, answers data-ready
    assert model.measuring and model.commands[-1] == GET_DATA_READY_STATUS
    other = SimBus(1, clock=clock)
    other.attach(ADDRESS, SHT3xModel(clock=clock))
    assert scd4x.identify(other, ADDRESS) is None
    assert [f.chip for f in scan(bus, IDENTIFIERS)] == ["scd4x"]


# --- CO2 in the simulated environment ----------------------------------------------------------


def test_environment_co2_is_higher_at_night_than_in_the_afternoon() -> None:
    assert Conditions(temperature=20.0, humidity=50.0, pressure=1000.0).co2 == 420.0
    environment = Environment(seed=5, longitude=0.0)
    day = 86_400.0
    start = 1_767_225_600.0  # midnight UTC, solar midnight at longitude 0
    dawn = [environment.conditions(start + d * day + 5 * 3600).co2 for d in range(20)]
    afternoon = [environment.conditions(start + d * day + 17 * 3600).co2 for d in range(20)]
    assert sum(dawn) / 20 - sum(afternoon) / 20 > 25.0
    assert all(380.0 < c < 480.0 for c in dawn + afternoon)


# --- the whole agent ----------------------------------------------------------------------------


def test_through_the_agent_to_the_outbox(tmp_path: Path) -> None:
    config = parse_config({
        "unit": {"id": "u1", "site": "greenhouse"},
        "sensor": [{"id": "co2", "driver": "scd4x", "address": ADDRESS, "interval": "60s"}],
    })
    clock = FakeClock(start=100.0, wall=1_767_225_600.0)
    environment = Environment(seed=11)
    buses = build_world([(1, ADDRESS, "scd4x", "co2")], clock=clock, environment=environment)
    (chip,) = make_drivers(config, buses, clock, DRIVERS)
    outbox = Outbox(tmp_path / "o.sqlite", max_bytes=1024**2)
    worker = SensorWorker(
        config.sensors[0], chip, clock=clock, deliver=outbox.append, boot_id="b00t",
        stop=threading.Event(),
    )
    chip.setup()
    source = environment.source_for("co2")
    for minute in range(5):
        clock.advance(60.0)
        worker.sample()
        truth = source(clock.time())
        latest = {v.quantity: v for v in outbox.latest()}
        expected = truth.co2 * truth.pressure / 1013.0  # the chip assumes 1013 hPa
        assert latest["co2"].value == pytest.approx(expected, abs=1.0)
        assert latest["co2"].unit == "ppm"
        assert latest["temperature"].value == pytest.approx(truth.temperature, abs=0.01)
        assert latest["humidity"].value == pytest.approx(truth.humidity, abs=0.01)
        warming = (minute + 1) * 60.0 < scd4x.WARMUP_S  # the start ended setup
        assert latest["co2"].quality == (Quality.WARMUP if warming else Quality.GOOD)
    assert worker.health.state is State.OK

    before = outbox.stats().added
    model = buses[1].devices[ADDRESS]
    assert isinstance(model, SCD4xModel)
    model.stale = True
    clock.advance(60.0)
    worker.sample()
    assert worker.health.state is State.WARNING
    assert outbox.stats().added == before  # nothing stored
    model.stale = False
    clock.advance(60.0)
    worker.sample()
    assert worker.health.state is State.OK
    outbox.close()
