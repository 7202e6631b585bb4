"""Our BME280 driver against the datasheet model: values, one conversion per sample, bounded."""

from __future__ import annotations

import errno

import pytest

from drivers.base import Quality
from drivers.bme280 import BME280, identify, max_measurement_time
from drivers.errors import SensorError, SensorTimeoutError, WrongChipError
from drivers.sim.bme280 import BME280Model, BMP280Model
from drivers.sim.clock import FakeClock
from drivers.sim.simbus import BusIOError, Garbage, Nack, SimBus, Timeout

ADDRESS = 0x76


def rig(model_cls: type[BME280Model] = BME280Model, **options: int) -> tuple[
    SimBus, BME280Model, BME280
]:
    clock = FakeClock()
    bus = SimBus(1, clock=clock)
    model = model_cls(clock=clock)
    bus.attach(ADDRESS, model)
    return bus, model, BME280(bus, ADDRESS, clock=clock, options=options)


def values(driver: BME280) -> dict[str, float]:
    return {m.quantity: m.value for m in driver.read()}


@pytest.mark.parametrize(
    ("temperature", "humidity", "pressure"),
    [(-35.0, 10.0, 520.0), (0.0, 99.0, 1013.25), (21.37, 45.5, 998.4), (58.0, 5.0, 1099.0)],
)
def test_sample_returns_the_physical_values(
    temperature: float, humidity: float, pressure: float
) -> None:
    _, model, driver = rig()
    driver.setup()
    model.temperature, model.humidity, model.pressure = temperature, humidity, pressure
    got = values(driver)
    assert got["temperature"] == pytest.approx(temperature, abs=0.01)
    assert got["humidity"] == pytest.approx(humidity, abs=0.05)
    assert got["pressure"] == pytest.approx(pressure, abs=0.01)


def test_units_are_the_ones_upstream_expects() -> None:
    _, _, driver = rig()
    driver.setup()
    assert {(m.quantity, m.unit) for m in driver.read()} == {
        ("temperature", "°C"), ("humidity", "%RH"), ("pressure", "hPa")
    }


def test_one_sample_is_one_conversion_in_two_transactions() -> None:
    bus, model, driver = rig()
    driver.setup()
    bus.clear_log()
    before = model.conversions
    for _ in range(20):
        driver.read()
    assert model.conversions - before == 20
    assert len(bus.transactions(ADDRESS)) == 40  # the bound is 10 per sample


def test_all_three_quantities_come_from_the_same_conversion() -> None:
    """Changing the inputs between samples never mixes old and new values in one sample."""
    _, model, driver = rig()
    driver.setup()
    for step in range(10):
        model.temperature, model.humidity, model.pressure = (
            10.0 + step, 30.0 + step, 950.0 + step
        )
        got = values(driver)
        assert got["temperature"] == pytest.approx(10.0 + step, abs=0.01)
        assert got["humidity"] == pytest.approx(30.0 + step, abs=0.05)
        assert got["pressure"] == pytest.approx(950.0 + step, abs=0.01)


def test_stuck_status_bit_raises_after_the_deadline_not_never() -> None:
    bus, model, driver = rig()
    driver.setup()
    model.stuck_measuring = True
    start = bus.clock.monotonic()
    with pytest.raises(SensorTimeoutError, match=r"bme280 at 1:0x76: measurement not finished"):
        driver.read()
    waited = bus.clock.monotonic() - start
    assert max_measurement_time(1, 16, 1) <= waited < 0.5
    model.stuck_measuring = False
    assert values(driver)["pressure"] == pytest.approx(1013.25, abs=0.01)


def test_oversampling_options_reach_the_chip_and_the_deadline() -> None:
    bus, model, driver = rig(
        oversampling_temperature=16, oversampling_pressure=16, oversampling_humidity=16
    )
    driver.setup()
    start = bus.clock.monotonic()
    driver.read()
    assert bus.clock.monotonic() - start >= model.measurement_time()
    assert model.measurement_time() == pytest.approx(0.098)  # x16 everywhere (datasheet 9.1)


def test_bmp280_at_the_address_is_named_with_what_to_do() -> None:
    _, _, driver = rig(BMP280Model)
    with pytest.raises(WrongChipError, match=r'found a BMP280 \(chip id 0x58\).*driver = "bmp280"'):
        driver.setup()


def test_identify_tells_bme280_from_bmp280() -> None:
    bus, _, _ = rig()
    assert identify(bus, ADDRESS) == "bme280"
    other, _, _ = rig(BMP280Model)
    assert identify(other, ADDRESS) == "bmp280"
    assert identify(bus, 0x40) is None  # not a Bosch address: not even asked


def test_absent_sensor_keeps_the_kernel_errno() -> None:
    clock = FakeClock()
    driver = BME280(SimBus(1, clock=clock), ADDRESS, clock=clock)
    with pytest.raises(OSError) as excinfo:
        driver.setup()
    assert excinfo.value.errno == errno.EREMOTEIO


@pytest.mark.parametrize(
    ("fault", "code"), [(Nack(), errno.EREMOTEIO), (BusIOError(), errno.EIO),
                        (Timeout(), errno.ETIMEDOUT)],
)
def test_bus_faults_fail_the_read_and_the_next_read_recovers(fault: object, code: int) -> None:
    bus, _, driver = rig()
    driver.setup()
    bus.inject(ADDRESS, fault)  # type: ignore[arg-type]
    with pytest.raises(OSError) as excinfo:
        driver.read()
    assert excinfo.value.errno == code
    assert values(driver)["temperature"] == pytest.approx(20.0, abs=0.01)


def test_chip_that_lost_power_is_reported_not_read_as_values() -> None:
    _, model, driver = rig()
    driver.setup()
    model.power_on_reset()  # a brown-out: ctrl_hum back to "skipped"
    with pytest.raises(SensorError, match="reset values"):
        driver.read()
    driver.setup()
    assert values(driver)["humidity"] == pytest.approx(50.0, abs=0.05)


def test_saturated_humidity_is_flagged_clipped() -> None:
    _, model, driver = rig()
    driver.setup()
    model.humidity = 100.0
    humidity = next(m for m in driver.read() if m.quantity == "humidity")
    assert humidity.value == 100.0
    assert humidity.quality & Quality.CLIPPED


def test_bus_noise_is_refused_not_stored_as_values() -> None:
    bus, _, driver = rig(iir_filter=4)
    driver.setup()
    refused = 0
    for seed in range(50):
        bus.inject(ADDRESS, Garbage(count=1, seed=seed))
        try:
            got = values(driver)
        except (SensorError, OSError):
            refused += 1
            continue
        # Noise that looked like "still measuring" was simply polled again: true values.
        assert got["temperature"] == pytest.approx(20.0, abs=0.01)
        assert got["pressure"] == pytest.approx(1013.25, abs=0.01)
    assert refused >= 5  # noise that looked finished was refused
