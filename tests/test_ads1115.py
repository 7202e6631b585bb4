"""The ADS1115 driver and its channel options against the register-level model (TI SBAS444D)."""

from __future__ import annotations

import errno
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.config import ConfigError, parse_config
from agent.sampling.sampler import SensorWorker, State
from agent.store.outbox import Outbox
from drivers.ads1115 import (
    ADS1115,
    LinearScale,
    config_word,
    conversion_time,
    identify,
    volts_from_code,
)
from drivers.base import Quality
from drivers.errors import DriverConfigError, SensorError, SensorTimeoutError, WrongChipError
from drivers.registry import DRIVERS
from drivers.sim.ads1115 import LEVEL_TRANSDUCER, SOIL_PROBE, ADS1115Model
from drivers.sim.clock import FakeClock
from drivers.sim.environment import Environment
from drivers.sim.simbus import Nack, SimBus, Stuck
from drivers.sim.world import build_world

ADDRESS = 0x48
DAY = 86_400.0
SOIL = {"channel0_quantity": "soil_moisture", "channel0_unit": "%",
        "channel0_scale": [[2.8, 0.0], [1.2, 100.0]]}


def rig(**options: Any) -> tuple[SimBus, ADS1115Model, ADS1115]:
    clock = FakeClock()
    bus = SimBus(1, clock=clock)
    model = ADS1115Model(clock=clock)
    bus.attach(ADDRESS, model)
    return bus, model, ADS1115(bus, ADDRESS, clock=clock, options=options)


def values(driver: ADS1115) -> dict[str, tuple[float, str, Quality]]:
    return {m.quantity: (m.value, m.unit, m.quality) for m in driver.read()}


# --- pure functions, known values -----------------------------------------------------------------


def test_config_words_follow_table_8() -> None:
    # OS=1, MUX=100 (AIN0-GND), PGA=010 (±2.048 V), MODE=1, DR=100 (128 SPS), COMP_QUE=11
    assert config_word(0, 2.048, 128) == 0b1_100_010_1_100_00011 == 0xC583
    assert config_word(0, 2.048, 128, start=False) == 0x4583
    assert config_word(3, 6.144, 860) == 0b1_111_000_1_111_00011 == 0xF1E3
    assert config_word(2, 0.256, 8) == 0b1_110_101_1_000_00011


def test_codes_to_volts_and_conversion_times() -> None:
    assert volts_from_code(1, 2.048) == pytest.approx(62.5e-6)  # LSB at ±2.048 V (table 3)
    assert volts_from_code(0x7FFF, 4.096) == pytest.approx(4.096 - 125e-6)
    assert volts_from_code(-0x8000, 0.256) == pytest.approx(-0.256)
    assert conversion_time(8) == pytest.approx(1 / 7.2)  # 1/DR, oscillator 10 % slow
    assert conversion_time(860) == pytest.approx(1 / 774)


def test_linear_scale_interpolates_and_flags_extrapolation() -> None:
    scale = LinearScale(2.8, 0.0, 1.2, 100.0)
    assert scale(2.0) == pytest.approx((50.0, False))
    assert scale(1.2) == pytest.approx((100.0, False))
    assert scale(3.0) == pytest.approx((-12.5, True))
    assert scale.volts(25.0) == pytest.approx(2.4)


# --- values through the real driver -------------------------------------------------------------


def test_every_channel_reads_back_within_one_lsb_at_its_gain() -> None:
    gains = (6.144, 2.048, 0.512, 0.256)
    options: dict[str, Any] = {"data_rate": 860}
    for n, gain in enumerate(gains):
        options |= {f"channel{n}_quantity": f"v{n}", f"channel{n}_gain": gain}
    _, model, driver = rig(**options)
    driver.setup()
    for inputs in ((5.0, 1.234567, 0.3, 0.2), (0.0, 2.0, -0.1, 0.0001), (3.3, 0.5, 0.511, 0.25)):
        for n, volts in enumerate(inputs):
            model.set_voltage(n, volts)
        got = values(driver)
        for n, (volts, gain) in enumerate(zip(inputs, gains, strict=True)):
            assert got[f"v{n}"][:2] == (pytest.approx(volts, abs=gain / 32768), "V")
            assert got[f"v{n}"][2] == Quality.GOOD
    assert model.conversions == 12


def test_one_conversion_per_channel_in_three_transactions_each() -> None:
    bus, model, driver = rig(**SOIL, data_rate=128)
    driver.setup()
    bus.clear_log()
    model.set_voltage(0, 2.0)
    assert values(driver)["soil_moisture"][:2] == (pytest.approx(50.0, abs=0.01), "%")
    assert [(t.kind, t.wrote) for t in bus.transactions()] == [
        ("write", bytes([0x01, 0xC3, 0x83])),  # AIN0, ±4.096 V, 128 SPS, start
        ("write_read", b"\x01"),  # after 1/DR: OS reads 1
        ("write_read", b"\x00"),
    ]


def test_a_slow_oscillator_is_waited_for() -> None:
    for oscillator in (0.9, 0.8):  # the datasheet's worst case, and beyond it (polls)
        _, model, driver = rig(channel1_quantity="level", data_rate=8)
        model.oscillator = oscillator
        driver.setup()
        for volts in (1.0, 2.5):
            model.set_voltage(1, volts)
            assert values(driver)["level"][0] == pytest.approx(volts, abs=0.001)


def test_full_scale_is_flagged_clipped_and_extrapolation_out_of_range() -> None:
    _, model, driver = rig(**SOIL, channel1_quantity="supply", channel1_gain=2.048)
    driver.setup()
    model.set_voltage(0, 3.0)  # drier than the dry calibration point
    model.set_voltage(1, 3.3)  # beyond ±2.048 V
    got = values(driver)
    assert got["soil_moisture"] == (pytest.approx(-12.5, abs=0.01), "%", Quality.OUT_OF_RANGE)
    assert got["supply"] == (pytest.approx(2.048, abs=1e-4), "V", Quality.CLIPPED)
    model.set_voltage(0, 7.0)  # beyond ±4.096 V: clipped and extrapolated
    assert values(driver)["soil_moisture"][2] == Quality.CLIPPED | Quality.OUT_OF_RANGE
    model.set_voltage(1, -5.0)
    assert values(driver)["supply"] == (pytest.approx(-2.048), "V", Quality.CLIPPED)


# --- faults ---------------------------------------------------------------------------------------


def test_a_conversion_that_never_finishes_times_out_within_the_deadline() -> None:
    _, model, driver = rig(channel0_quantity="v", data_rate=8)
    driver.setup()
    model.hung = True
    started = driver.clock.monotonic()
    with pytest.raises(SensorTimeoutError, match=r"ads1115 at 1:0x48: conversion not finished"):
        driver.read()
    assert driver.clock.monotonic() - started < conversion_time(8) + 0.06
    model.hung = False
    model.set_voltage(0, 1.0)
    assert values(driver)["v"][0] == pytest.approx(1.0, abs=0.001)


def test_nack_keeps_the_errno() -> None:
    bus, _, driver = rig(channel0_quantity="v")
    driver.setup()
    bus.inject(ADDRESS, Nack())
    with pytest.raises(OSError) as caught:
        driver.read()
    assert caught.value.errno == errno.EREMOTEIO


def test_stuck_reads_and_a_reset_mid_conversion_fail_the_config_check() -> None:
    bus, model, driver = rig(channel0_quantity="v")
    driver.setup()
    model.set_voltage(0, 3.9)
    driver.read()
    bus.inject(ADDRESS, Stuck(count=None))  # every read repeats the last one: the conversion
    with pytest.raises(SensorError, match="ads1115 at 1:0x48: conversion not finished"):
        driver.read()  # 3.9 V reads 0x79e0 as the "config": OS never seen set
    model.set_voltage(0, -0.1)
    bus.clear_faults()
    driver.read()
    bus.inject(ADDRESS, Stuck(count=None))
    with pytest.raises(SensorError, match="config reads 0xfce0 after writing 0xc383"):
        driver.read()  # -0.1 V: 0xfce0 has OS set, but the rest is not the config written
    bus.clear_faults()

    class Reset(ADS1115Model):
        def write(self, data: bytes) -> None:
            super().write(data)
            if len(data) == 3:
                self.power_on_reset()  # a brown-out right after the start

    bus.detach(ADDRESS)
    bus.attach(ADDRESS, Reset(clock=model.clock))
    with pytest.raises(SensorError, match="config reads 0x8583 after writing 0xc383"):
        driver.read()


def test_frozen_conversion_register_is_not_detectable_in_one_read() -> None:
    """The chip says the conversion finished and the config is right: the old code is all there
    is. ``[sensor.plausible.<quantity>] stuck_after`` is what catches this over time."""
    _, model, driver = rig(channel0_quantity="v")
    driver.setup()
    model.set_voltage(0, 1.5)
    driver.read()
    model.frozen = True
    model.set_voltage(0, 0.5)
    assert values(driver)["v"][0] == pytest.approx(1.5, abs=0.001)


# --- identification and setup ---------------------------------------------------------------------


class TMP102Model:
    """A TMP102 temperature sensor: the same pointer scheme, other registers (0x48-0x4B too)."""

    def __init__(self) -> None:
        self.registers = [0x1900, 0x60A0, 0x4B00, 0x5000]
        self.pointer = 0

    def write(self, data: bytes) -> None:
        self.pointer = data[0] & 0b11

    def read(self, length: int) -> bytes:
        return self.registers[self.pointer].to_bytes(2, "big")[:length]


def test_identify_uses_the_power_on_registers_and_survives_our_own_use() -> None:
    bus, model, driver = rig(channel2_quantity="v", channel2_gain=0.512)
    assert identify(bus, ADDRESS) == "ads1115"
    driver.setup()
    driver.read()
    assert identify(bus, ADDRESS) == "ads1115"
    bus.attach(0x49, TMP102Model())
    assert identify(bus, 0x49) is None
    bus.attach(0x50, ADS1115Model(clock=bus.clock))
    assert identify(bus, 0x50) is None


def test_setup_names_a_chip_that_is_not_an_ads1115() -> None:
    clock = FakeClock()
    bus = SimBus(1, clock=clock)
    bus.attach(ADDRESS, TMP102Model())
    driver = ADS1115(bus, ADDRESS, clock=clock, options={"channel0_quantity": "v"})
    with pytest.raises(WrongChipError, match="0x4b00/0x5000, not the ADS1115's 0x8000/0x7FFF"):
        driver.setup()


# --- channel options in the config ----------------------------------------------------------------


def config(**options: Any) -> Any:
    sensor = {"id": "soil", "driver": "ads1115", "address": ADDRESS, "interval": "60s", **options}
    return parse_config({"unit": {"id": "u1", "site": "field"}, "sensor": [sensor]},
                        source="t.toml")


def problems(**options: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config(**options)
    return list(caught.value.problems)


def test_channel_options_parse() -> None:
    assert DRIVERS["ads1115"] is ADS1115
    sensor = config(**SOIL, channel3_quantity="battery", channel3_gain=6.144).sensors[0]
    assert sensor.options["channel0_scale"] == [[2.8, 0.0], [1.2, 100.0]]
    assert ADS1115.configured_quantities(sensor.options) == {"soil_moisture": "%",
                                                            "battery": "V"}


@pytest.mark.parametrize(
    ("options", "line"),
    [
        ({}, "sensor 'soil': channel0_quantity: no input is read; set channelN_quantity (N = "
             "0..3)"),
        ({"channel0_quantity": "Soil Moisture"},
         'sensor \'soil\': channel0_quantity = "Soil Moisture": expected a lowercase name'),
        ({"channel0_quantity": "v", "channel1_quantity": "v"},
         "sensor 'soil': channel1_quantity = \"v\": channel0 already reports 'v'"),
        ({"channel0_quantity": "v", "channel0_unit": "%"},
         'sensor \'soil\': channel0_unit = "%": without channel0_scale AIN0 reports volts'),
        ({"channel0_quantity": "v", "channel0_unit": "m s"},
         'sensor \'soil\': channel0_unit = "m s": expected a unit of 1 to 16 characters'),
        ({"channel0_quantity": "v", "channel0_scale": [[1.0, 0.0]]},
         "sensor 'soil': channel0_scale = [[1.0, 0.0]]: expected [] or two [volts, value] points"),
        ({"channel0_quantity": "v", "channel0_scale": [[1.0, 0.0], [1.0, 5.0]]},
         "channel0_scale = [[1.0, 0.0], [1.0, 5.0]]: the two calibration points need different "
         "voltages"),
        ({"channel0_quantity": "v", "channel0_scale": [[1, 0], ["2", 5]]},
         "channel0_scale = [[1, 0], [\"2\", 5]]: expected [] or two"),
        ({"channel0_quantity": "v", "channel2_gain": 0.512},
         "sensor 'soil': channel2_gain = 0.512: AIN2 is not read because channel2_quantity is "
         "empty"),
        ({"channel0_quantity": "v", "channel0_gain": 5.0},
         "sensor 'soil': channel0_gain = 5.0: expected one of 6.144, 4.096, 2.048, 1.024, 0.512"),
        ({"channel0_quantity": "v", "channel0_scale": "2.8:0"},
         'sensor \'soil\': channel0_scale = "2.8:0": expected list'),
    ],
)
def test_channel_problems_are_one_line_each_before_anything_starts(
    options: dict[str, Any], line: str
) -> None:
    (problem,) = problems(**options)
    assert problem.startswith("t.toml: ") and line in problem


def test_the_driver_refuses_bad_options_given_directly() -> None:
    with pytest.raises(DriverConfigError, match="ads1115 at 1:0x48: channel0_quantity"):
        rig()


# --- the simulated world and the agent ------------------------------------------------------------


def test_world_feeds_each_configured_probe_its_quantity() -> None:
    clock = FakeClock()
    environment = Environment(seed=9)
    options = {**SOIL, "channel1_quantity": "water_level", "channel1_unit": "m",
               "channel1_scale": [[0.6, 0.0], [3.0, 5.0]], "channel2_quantity": "v"}
    buses = build_world([(1, ADDRESS, "ads1115", "soil")], clock=clock, environment=environment,
                        options={"soil": options})
    driver = ADS1115(buses[1], ADDRESS, clock=clock, options=options)
    driver.setup()
    expected = environment.conditions(clock.time())
    got = values(driver)
    assert got["soil_moisture"][0] == pytest.approx(expected.soil_moisture, abs=0.02)
    assert got["water_level"][0] == pytest.approx(expected.water_level, abs=0.001)
    assert got["v"][0] == pytest.approx(1.65, abs=0.001)  # no such quantity: mid-supply
    plain = build_world([(1, ADDRESS, "ads1115", "soil")], clock=clock, environment=environment)
    model = plain[1].devices[ADDRESS]
    assert isinstance(model, ADS1115Model)  # without options: the documented default wiring
    conditions = environment.conditions(clock.time())
    assert model._input(0, conditions) == SOIL_PROBE.volts(conditions.soil_moisture)
    assert model._input(1, conditions) == LEVEL_TRANSDUCER.volts(conditions.water_level)


def test_through_the_agent_values_are_stored_and_faults_only_warn(tmp_path: Path) -> None:
    cfg = config(**SOIL)
    sensor = cfg.sensors[0]
    clock = FakeClock()
    environment = Environment(seed=5)
    buses = build_world([(1, ADDRESS, "ads1115", "soil")], clock=clock, environment=environment,
                        options={s.id: s.options for s in cfg.sensors})
    model = buses[1].devices[ADDRESS]
    assert isinstance(model, ADS1115Model)
    with Outbox(tmp_path / "o.sqlite", max_bytes=1024**2) as outbox:
        driver = DRIVERS[sensor.driver](buses[1], sensor.address, clock=clock,
                                        options=sensor.options)
        worker = SensorWorker(sensor, driver, clock=clock, deliver=outbox.append,
                              boot_id="b00t", stop=threading.Event())
        assert worker._try_setup()
        for _ in range(3):
            clock.advance(DAY)
            worker.sample()
            (latest,) = outbox.latest()
            assert (latest.sensor, latest.quantity, latest.unit) == ("soil", "soil_moisture", "%")
            truth = environment.conditions(clock.time()).soil_moisture
            assert latest.value == pytest.approx(truth, abs=0.02) and latest.quality == 0
        added = outbox.stats().added
        model.hung = True
        worker.sample()
        assert worker.health.state is State.WARNING
        assert outbox.stats().added == added


# --- the environment's soil moisture and water level ---------------------------------------------


def test_soil_dries_between_seeded_rain_events_and_the_level_follows() -> None:
    environment = Environment(seed=3)
    start = 1_767_225_600.0
    days = [environment.conditions(start + d * DAY / 4) for d in range(4 * 120)]
    soil = [c.soil_moisture for c in days]
    level = [c.water_level for c in days]
    assert all(12.0 <= s <= 45.0 for s in soil) and all(w >= 0.5 for w in level)
    rises = sum(1 for a, b in zip(soil, soil[1:], strict=False) if b > a + 1.0)
    falls = sum(1 for a, b in zip(soil, soil[1:], strict=False) if b < a)
    assert rises >= 10 and falls > 3 * rises  # showers now and then, drying in between
    assert max(level) > min(level) + 0.05
    again = Environment(seed=3).conditions(start + 50 * DAY)
    assert (again.soil_moisture, again.water_level) == (soil[200], level[200])
