"""Every driver in two steps: trigger() says when the sample is ready, collect() reads it.

The values must be those of read() (which is trigger, wait, collect), a collect called early
must wait until the ready time rather than read a conversion still under way, and chips that
measure on their own (SCD4x, PMSA003I, BH1750) must be ready at once once they have been
running -- the scheduler's one wait per slot rests on these.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest

from drivers.ads1115 import ADS1115
from drivers.base import Driver, Measurement, Pending
from drivers.bh1750 import BH1750
from drivers.bme280 import BME280
from drivers.bmp280 import BMP280
from drivers.errors import SensorError
from drivers.pmsa003i import PMSA003I
from drivers.scd4x import SCD4x
from drivers.sht3x import SHT3x
from drivers.sht4x import SHT4x
from drivers.sim import (
    ADS1115Model,
    BH1750Model,
    BME280Model,
    BMP280Model,
    FakeClock,
    PMSA003IModel,
    SCD4xModel,
    SHT3xModel,
    SHT4xModel,
    SimBus,
)
from drivers.sim.simbus import SimDevice

ADS_OPTIONS = {"channel0_quantity": "a0", "channel1_quantity": "a1", "channel1_gain": 2.048}

# driver class, address, model factory, driver options
RIGS: dict[str, tuple[type[Driver], int, Callable[[FakeClock], SimDevice], dict[str, Any]]] = {
    "bme280": (BME280, 0x76, lambda c: BME280Model(clock=c, temperature=17.25, humidity=61.0,
                                                   pressure=981.5), {}),
    "bmp280": (BMP280, 0x77, lambda c: BMP280Model(clock=c, temperature=-3.5, pressure=1022.0),
               {}),
    "sht3x": (SHT3x, 0x44, lambda c: SHT3xModel(clock=c, temperature=22.0, humidity=40.0), {}),
    "sht4x": (SHT4x, 0x44, lambda c: SHT4xModel(clock=c, temperature=8.0, humidity=93.0), {}),
    "scd4x": (SCD4x, 0x62, lambda c: SCD4xModel(clock=c, co2=655.0), {}),
    "bh1750": (BH1750, 0x23, lambda c: BH1750Model(clock=c, illuminance=1234.0), {"mtreg": 31}),
    "ads1115": (ADS1115, 0x48, lambda c: ADS1115Model(clock=c, voltages=(1.25, 0.6, 0.0, 0.0)),
                ADS_OPTIONS),
    "pmsa003i": (PMSA003I, 0x12, lambda c: PMSA003IModel(clock=c, pm1=4.0, pm2_5=11.0,
                                                         pm10=19.0), {}),
}


def rig(name: str) -> tuple[Driver, FakeClock]:
    driver, clock, _ = rig_with_model(name)
    return driver, clock


def rig_with_model(name: str) -> tuple[Driver, FakeClock, SimDevice]:
    cls, address, make, options = RIGS[name]
    clock = FakeClock()
    bus = SimBus(1, clock=clock)
    model = make(clock)
    bus.attach(address, model)
    clock.advance(60.0)  # powered for a minute: the PMSA003I has its first frame
    driver = cls(bus, address, clock=clock, options=options)
    driver.setup()
    return driver, clock, model


def by_step(driver: Driver, clock: FakeClock, *, early: bool = False) -> list[Measurement]:
    """trigger, sleep until ready (or not, ``early``), collect -- as the scheduler does."""
    ready = driver.trigger()
    while True:
        if not early:
            clock.advance(ready - clock.monotonic())
        try:
            return driver.collect()
        except Pending as more:
            ready = more.ready


def values(measurements: list[Measurement]) -> dict[str, tuple[float, int]]:
    return {m.quantity: (m.value, int(m.quality)) for m in measurements}


@pytest.mark.parametrize("name", sorted(RIGS))
def test_trigger_and_collect_give_what_read_gives(name: str) -> None:
    driver, clock = rig(name)
    clock.advance(40.0)  # every chip past its first measurement, the PMSA003I its warm-up
    read = values(driver.read())
    clock.advance(10.0)
    assert values(by_step(driver, clock)) == read
    clock.advance(10.0)
    assert values(by_step(driver, clock, early=True)) == read


@pytest.mark.parametrize("name", sorted(RIGS))
def test_a_collect_before_the_ready_time_waits_for_it(name: str) -> None:
    driver, clock = rig(name)
    clock.advance(10.0)
    driver.read()
    clock.advance(10.0)
    ready = driver.trigger()
    with contextlib.suppress(Pending):  # a multi-input ADC: its first input, after waiting
        driver.collect()  # at once: it sleeps until `ready` itself
    assert clock.monotonic() >= ready


@pytest.mark.parametrize("name", ["scd4x", "pmsa003i", "bh1750"])
def test_chips_that_measure_on_their_own_are_ready_at_once(name: str) -> None:
    driver, clock, model = rig_with_model(name)
    clock.advance(10.0)
    driver.read()
    clock.advance(10.0)
    if isinstance(model, BH1750Model):
        model.illuminance = 987.0  # the light changed: no reason to look twice
    now = clock.monotonic()
    assert driver.trigger() <= now + 0.0011  # the SCD4x: its 1 ms command time at most
    driver.collect()
    assert clock.monotonic() <= now + 0.0011


@pytest.mark.parametrize("name", ["bme280", "bmp280", "sht3x", "sht4x", "ads1115"])
def test_a_collect_without_a_trigger_is_refused(name: str) -> None:
    driver, clock = rig(name)
    with pytest.raises(SensorError, match="without"):
        driver.collect()


def test_the_ads1115_reads_each_input_after_one_wait_and_oversamples_in_the_chip() -> None:
    driver, clock = rig("ads1115")
    ready = driver.trigger()
    clock.advance(ready - clock.monotonic())
    with pytest.raises(Pending) as more:
        driver.collect()  # AIN0 read, AIN1 started
    clock.advance(more.value.ready - clock.monotonic())
    plain = values(driver.collect())
    assert isinstance(driver, ADS1115) and driver.oversample(4)  # 128 SPS / 4 = 32 SPS
    started = clock.monotonic()
    assert values(by_step(driver, clock)) == plain
    assert clock.monotonic() - started == pytest.approx(2 * 4 / (128 * 0.9), rel=0.01)
    assert not ADS1115(SimBus(), 0x48, clock=clock, options=ADS_OPTIONS).oversample(3)


def test_a_read_only_driver_still_works_in_two_steps() -> None:
    class Plain(Driver):
        name, addresses, quantities = "plain", (0x40,), {"level": "m"}

        def setup(self) -> None:
            pass

        def read(self) -> list[Measurement]:
            return [Measurement("level", 1.5, "m")]

    clock = FakeClock()
    driver = Plain(SimBus(), 0x40, clock=clock)
    assert driver.trigger() == clock.monotonic()
    assert values(driver.collect()) == {"level": (1.5, 0)}
