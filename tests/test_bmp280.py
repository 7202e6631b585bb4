"""The BMP280 driver against the data sheet's worked example and the register-level model."""

from __future__ import annotations

import tomllib
from typing import ClassVar

import pytest

from agent.config import parse_config
from agent.core.errors import ConfigError
from drivers.bme280 import BME280, REG_CTRL_HUM, max_measurement_time
from drivers.bmp280 import (
    BMP280,
    TrimmingParameters,
    compensate_pressure,
    compensate_temperature,
)
from drivers.errors import SensorError, SensorTimeoutError, WrongChipError
from drivers.registry import DRIVERS, IDENTIFIERS
from drivers.scan import scan
from drivers.sim import BME280Model, BMP280Model, FakeClock, SimBus

ADDRESS = 0x76
REG_STATUS = 0xF3
# BMP280 data sheet DS001 3.12, table "compensation example": trimming words and raw ADC values.
DATASHEET_TRIMMING = TrimmingParameters(
    27504, 26435, -1000, 36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000
)
ADC_T, ADC_P = 519888, 415148


def world(model: object) -> tuple[SimBus, FakeClock]:
    clock = FakeClock()
    bus = SimBus(1, clock=clock)
    if isinstance(model, type):
        model = model(clock=clock)
    bus.attach(ADDRESS, model)  # type: ignore[arg-type]
    return bus, clock


# --- pure compensation -----------------------------------------------------------------------


def test_temperature_compensation_matches_the_data_sheet_example() -> None:
    celsius, t_fine = compensate_temperature(ADC_T, DATASHEET_TRIMMING)
    assert t_fine == 128422
    assert celsius == pytest.approx(25.08, abs=0.005)


def test_pressure_compensation_matches_the_data_sheet_example() -> None:
    _, t_fine = compensate_temperature(ADC_T, DATASHEET_TRIMMING)
    # The data sheet prints 100653.27 Pa, computed from the untruncated t_fine; 8.1's code (which
    # we follow) truncates t_fine to an integer first and gets 100653.26.
    assert compensate_pressure(ADC_P, t_fine, DATASHEET_TRIMMING) == pytest.approx(
        100653.27, abs=0.02
    )


def test_trimming_words_unpack_little_endian_with_signs() -> None:
    raw = bytes.fromhex("706b436718fc7d8e43d6d00b270b8c00f9ff8c3cf8c67017")
    assert TrimmingParameters.unpack(raw) == DATASHEET_TRIMMING


def test_measurement_time_leaves_out_the_humidity_bracket_when_skipped() -> None:
    assert max_measurement_time(1, 16) == pytest.approx((1.25 + 2.3 + 2.3 * 16 + 0.575) / 1000)
    assert max_measurement_time(1, 16, 1) == pytest.approx(
        max_measurement_time(1, 16) + (2.3 + 0.575) / 1000
    )


# --- the driver on the model -----------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"oversampling_temperature": 2, "oversampling_pressure": 4},
        {"oversampling_temperature": 16, "oversampling_pressure": 1, "iir_filter": 16},
    ],
)
def test_reads_what_the_chip_measures(options: dict[str, int]) -> None:
    clock = FakeClock()
    bus = SimBus(1, clock=clock)
    bus.attach(ADDRESS, BMP280Model(clock=clock, temperature=-12.5, pressure=870.0))
    sensor = BMP280(bus, ADDRESS, clock=clock, options=options)
    sensor.setup()
    values = {m.quantity: (m.value, m.unit) for m in sensor.read()}
    assert values.keys() == {"temperature", "pressure"}
    assert values["temperature"][0] == pytest.approx(-12.5, abs=0.01)
    assert values["pressure"][0] == pytest.approx(870.0, abs=0.05)
    assert (values["temperature"][1], values["pressure"][1]) == ("°C", "hPa")


def test_one_sample_is_a_trigger_and_one_burst_of_status_to_temp_xlsb() -> None:
    bus, clock = world(BMP280Model)
    sensor = BMP280(bus, ADDRESS, clock=clock)
    sensor.setup()
    bus.clear_log()
    sensor.read()
    log = bus.transactions()
    assert [t.kind for t in log] == ["write", "write_read"]
    assert log[1].wrote == bytes([REG_STATUS]) and len(log[1].read) == 0xFC - 0xF3 + 1


def test_setup_never_touches_humidity_registers() -> None:
    bus, clock = world(BMP280Model)
    BMP280(bus, ADDRESS, clock=clock).setup()
    touched = {t.wrote[0] for t in bus.transactions() if t.wrote}
    assert REG_CTRL_HUM not in touched
    assert not {0xE1, 0xFD, 0xFE} & touched


def test_a_bme280_at_a_bmp280_address_says_which_driver_to_use() -> None:
    bus, clock = world(BME280Model)
    with pytest.raises(WrongChipError, match=r'found a BME280 .*set driver = "bme280"') as caught:
        BMP280(bus, ADDRESS, clock=clock).setup()
    assert "bmp280 at 1:0x76" in str(caught.value)


def test_the_bme280_driver_still_points_a_bmp280_to_its_driver() -> None:
    bus, clock = world(BMP280Model)
    with pytest.raises(WrongChipError, match=r'found a BMP280 \(chip id 0x58\).*"bmp280"'):
        BME280(bus, ADDRESS, clock=clock).setup()


class SampleBMP280(BMP280Model):
    chip_id: ClassVar[int] = 0x56  # engineering samples (DS001 4.3.1)


class BME680ish(BMP280Model):
    chip_id: ClassVar[int] = 0x61


def test_engineering_sample_chip_ids_are_accepted() -> None:
    bus, clock = world(SampleBMP280)
    sensor = BMP280(bus, ADDRESS, clock=clock)
    sensor.setup()
    assert len(sensor.read()) == 2


def test_another_chip_gets_the_generic_hint() -> None:
    bus, clock = world(BME680ish)
    with pytest.raises(WrongChipError, match="chip id 0x61 is not a BMP280 .*envagent scan"):
        BMP280(bus, ADDRESS, clock=clock).setup()


class BlankCalibration:
    """Answers the BMP280 chip id and zeros everywhere else, as a chip mid-start-up can."""

    pointer = 0

    def write(self, data: bytes) -> None:
        self.pointer = data[0]

    def read(self, length: int) -> bytes:
        return bytes([0x58]) if self.pointer == 0xD0 else bytes(length)


def test_zero_trimming_words_fail_setup_instead_of_dividing_by_zero() -> None:
    bus, clock = world(BlankCalibration())
    with pytest.raises(SensorError, match="calibration registers read zero"):
        BMP280(bus, ADDRESS, clock=clock).setup()


@pytest.mark.parametrize("iir_filter", [0, 4])
def test_read_before_setup_and_after_a_brown_out(iir_filter: int) -> None:
    bus, clock = world(BMP280Model)
    sensor = BMP280(bus, ADDRESS, clock=clock, options={"iir_filter": iir_filter})
    with pytest.raises(SensorError, match="before setup"):
        sensor.read()
    sensor.setup()
    model = bus.devices[ADDRESS]
    assert isinstance(model, BMP280Model)
    model.power_on_reset()
    if iir_filter == 0:  # nothing was lost: the reset state is the configured one
        assert len(sensor.read()) == 2
        return
    with pytest.raises(SensorError, match="the chip reset itself"):
        sensor.read()
    sensor.setup()
    assert len(sensor.read()) == 2


def test_a_hung_conversion_times_out_within_the_deadline() -> None:
    bus, clock = world(BMP280Model)
    sensor = BMP280(bus, ADDRESS, clock=clock)
    sensor.setup()
    model = bus.devices[ADDRESS]
    assert isinstance(model, BMP280Model)
    model.stuck_measuring = True
    start = clock.monotonic()
    with pytest.raises(SensorTimeoutError, match="bmp280 at 1:0x76: measurement not finished"):
        sensor.read()
    assert clock.monotonic() - start < max_measurement_time(1, 16) + 0.2


# --- registry, scan and config ---------------------------------------------------------------


def test_registered_scanned_and_configured() -> None:
    assert DRIVERS["bmp280"] is BMP280
    bus, _ = world(BMP280Model)
    assert [(f.address, f.chip) for f in scan(bus, IDENTIFIERS)] == [(ADDRESS, "bmp280")]
    config = parse_config(tomllib.loads(
        '[unit]\nid = "u"\nsite = "roof"\n'
        '[[sensor]]\nid = "p"\ndriver = "bmp280"\naddress = 0x77\niir_filter = 4\n'
    ))
    assert dict(config.sensors[0].options) == {
        "oversampling_temperature": 1, "oversampling_pressure": 16, "iir_filter": 4,
    }


def test_a_bmp280_has_no_humidity_oversampling_option() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(tomllib.loads(
            '[unit]\nid = "u"\nsite = "roof"\n[[sensor]]\nid = "p"\ndriver = "bmp280"\n'
            "address = 0x76\noversampling_humidity = 1\n"
        ))
    (line,) = caught.value.problems
    assert line.startswith("config: sensor 'p': oversampling_humidity: unknown key")
