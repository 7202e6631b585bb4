"""The BME280/BMP280 models against the data sheet (BST-BME280-DS002) and the Adafruit driver.

Tests that run Adafruit's driver use a SimBus on the system clock, because the driver waits with
real ``time.sleep``; the timing tests drive the registers directly on a FakeClock.
"""

from __future__ import annotations

import itertools
import struct
import time
from typing import Any

import pytest
from adafruit_bme280.basic import MODE_NORMAL, OVERSCAN_X1, OVERSCAN_X16, Adafruit_BME280_I2C

from drivers.busio_adapter import BusioI2C
from drivers.sim import BME280Model, BMP280Model, Calibration, Environment, FakeClock, SimBus
from drivers.sim.bme280 import (
    REG_CONFIG,
    REG_CTRL_HUM,
    REG_CTRL_MEAS,
    REG_ID,
    REG_PRESS_MSB,
    REG_RESET,
    REG_STATUS,
    SKIPPED_H,
    SKIPPED_TP,
    SOFT_RESET_WORD,
    STATUS_IM_UPDATE,
    STATUS_MEASURING,
    compensate_humidity,
    compensate_pressure,
    compensate_temperature,
)

ADDRESS = 0x76
MS = 1e-3
# ctrl_meas / ctrl_hum / config field values (data sheet 5.4.3-5.4.6)
SKIP, X1, X2, X4, X16 = 0, 1, 2, 3, 5
SLEEP, FORCED, NORMAL = 0b00, 0b01, 0b11
OVERSCAN_X2 = 0x02  # Adafruit's register value for x2


def ctrl_meas(osrs_t: int, osrs_p: int, mode: int) -> int:
    return osrs_t << 5 | osrs_p << 2 | mode


def config(t_sb: int = 0, iir: int = 0) -> int:
    return t_sb << 5 | iir << 2


class Chip:
    """Register access to one simulated chip on a FakeClock, decoding like a driver would."""

    def __init__(self, model_type: type[BME280Model] = BME280Model, **options: Any) -> None:
        self.clock = FakeClock()
        self.bus = SimBus(1, clock=self.clock)
        self.model = model_type(clock=self.clock, **options)
        self.bus.attach(ADDRESS, self.model)
        self.clock.advance(0.01)  # past the power-on start-up

    def set(self, *pairs: tuple[int, int]) -> None:
        self.bus.write(ADDRESS, bytes(itertools.chain.from_iterable(pairs)))

    def get(self, register: int, length: int = 1) -> bytes:
        return self.bus.write_read(ADDRESS, bytes([register]), length)

    def byte(self, register: int) -> int:
        return self.get(register)[0]

    def measuring(self) -> bool:
        return bool(self.byte(REG_STATUS) & STATUS_MEASURING)

    def calibration(self) -> Calibration:
        """Table 16, decoded the way Adafruit's and Bosch's drivers do."""
        names = [f"dig_T{i}" for i in range(1, 4)] + [f"dig_P{i}" for i in range(1, 10)]
        words = struct.unpack("<HhhHhhhhhhhh", self.get(0x88, 24))
        h2, h3, e4, e5, e6, h6 = struct.unpack("<hBbBbb", self.get(0xE1, 7))
        return Calibration(
            **dict(zip(names, words, strict=True)),
            dig_H1=self.byte(0xA1),
            dig_H2=h2,
            dig_H3=h3,
            dig_H4=e4 << 4 | e5 & 0xF,  # 0xE4 = H4[11:4], 0xE5[3:0] = H4[3:0]
            dig_H5=e6 << 4 | e5 >> 4,  # 0xE6 = H5[11:4], 0xE5[7:4] = H5[3:0]
            dig_H6=h6,
        )

    def raw(self) -> tuple[int, int, int]:
        """(adc_P, adc_T, adc_H) from one burst read of 0xF7-0xFE."""
        d = self.get(REG_PRESS_MSB, 8)
        return (
            d[0] << 12 | d[1] << 4 | d[2] >> 4,
            d[3] << 12 | d[4] << 4 | d[5] >> 4,
            d[6] << 8 | d[7],
        )

    def values(self) -> tuple[float, float, float]:
        """(°C, hPa, %RH) from one burst read, compensated as in data sheet 8.1."""
        cal = self.calibration()
        adc_p, adc_t, adc_h = self.raw()
        t_fine = int(compensate_temperature(adc_t, cal))
        return (
            t_fine / 5120.0,
            compensate_pressure(adc_p, t_fine, cal) / 100.0,
            compensate_humidity(adc_h, t_fine, cal),
        )

    def forced(self, osrs_t: int = X1, osrs_p: int = X1, osrs_h: int = X1) -> None:
        self.set((REG_CTRL_HUM, osrs_h), (REG_CTRL_MEAS, ctrl_meas(osrs_t, osrs_p, FORCED)))
        self.clock.advance(self.model.measurement_time())


# --- compensation and calibration ---------------------------------------------------------------


def test_compensation_reproduces_the_data_sheet_example() -> None:
    """BMP280 data sheet 3.12, table 15: adc_T 519888 -> 25.08 °C, adc_P 415148 -> 100653 Pa."""
    cal = Calibration()
    fine = compensate_temperature(519888, cal)
    assert int(fine) == 128422
    assert fine / 5120 == pytest.approx(25.08, abs=0.005)
    assert compensate_pressure(415148, int(fine), cal) == pytest.approx(100653.27, abs=0.05)


@pytest.mark.parametrize(
    "calibration",
    [
        Calibration(),
        Calibration(dig_T1=28000, dig_P9=-3000, dig_H2=-5, dig_H4=-300, dig_H5=-1000, dig_H6=-7),
        Calibration(dig_H1=255, dig_H3=255, dig_H4=2047, dig_H5=2047, dig_H6=127),
    ],
)
def test_calibration_registers_follow_table_16(calibration: Calibration) -> None:
    chip = Chip(calibration=calibration)
    assert chip.calibration() == calibration


def test_calibration_refuses_values_its_registers_cannot_hold() -> None:
    with pytest.raises(ValueError, match="dig_H4=4096"):
        Calibration(dig_H4=4096)
    with pytest.raises(ValueError, match="dig_T1=-1"):
        Calibration(dig_T1=-1)
    with pytest.raises(ValueError, match="dig_P1=0"):
        Calibration(dig_P1=0)


# --- the unmodified Adafruit driver -------------------------------------------------------------

TEMPERATURES = (-30.0, 0.0, 22.5, 60.0)
HUMIDITIES = (5.0, 40.0, 70.0, 95.0)
PRESSURES = (500.0, 800.0, 1013.25, 1100.0)


def adafruit(
    model_type: type[BME280Model] = BME280Model,
) -> tuple[Adafruit_BME280_I2C, BME280Model]:
    bus = SimBus()
    model = model_type(clock=bus.clock)
    bus.attach(ADDRESS, model)
    return Adafruit_BME280_I2C(BusioI2C(bus), address=ADDRESS), model


def test_adafruit_driver_reads_back_the_physical_inputs() -> None:
    """-30..60 °C x 5..95 %RH, each pair at one of 500..1100 hPa, in forced mode."""
    sensor, model = adafruit()
    for i, (t, h) in enumerate(itertools.product(TEMPERATURES, HUMIDITIES)):
        p = PRESSURES[(i + i // len(HUMIDITIES)) % len(PRESSURES)]  # every pressure at every t
        model.temperature, model.humidity, model.pressure = t, h, p
        assert sensor.temperature == pytest.approx(t, abs=0.01)
        assert sensor.relative_humidity == pytest.approx(h, abs=0.05)
        assert sensor.pressure == pytest.approx(p, abs=0.01)
    assert model.conversions == 3 * len(TEMPERATURES) * len(HUMIDITIES)


def test_adafruit_driver_with_other_oversampling() -> None:
    sensor, model = adafruit()
    sensor.overscan_temperature = OVERSCAN_X16
    sensor.overscan_humidity = OVERSCAN_X16
    sensor.overscan_pressure = OVERSCAN_X2  # 17 bit: still within 0.01 hPa
    model.temperature, model.humidity, model.pressure = -12.34, 83.2, 955.55
    assert sensor.temperature == pytest.approx(-12.34, abs=0.01)
    assert sensor.relative_humidity == pytest.approx(83.2, abs=0.05)
    assert sensor.pressure == pytest.approx(955.55, abs=0.01)


def test_adafruit_driver_in_normal_mode() -> None:
    sensor, model = adafruit()
    sensor.overscan_pressure = OVERSCAN_X1  # shorter cycles: 1 + 2 + 2.5 + 2.5 + 0.5 ms
    sensor.mode = MODE_NORMAL
    cycle = model.measurement_time() + 0.5 * MS
    for t, h, p in ((18.0, 45.0, 990.0), (31.5, 20.0, 1030.0)):
        model.temperature, model.humidity, model.pressure = t, h, p
        time.sleep(2.5 * cycle)  # a whole measurement with the new inputs has finished
        assert sensor.temperature == pytest.approx(t, abs=0.01)
        assert sensor.relative_humidity == pytest.approx(h, abs=0.05)
        assert sensor.pressure == pytest.approx(p, abs=0.02)  # 16 bit at x1
    assert model.conversions >= 4


def test_adafruit_bme280_driver_refuses_a_bmp280() -> None:
    with pytest.raises(RuntimeError, match="Failed to find BME280! Chip ID 0x58"):
        adafruit(BMP280Model)


# --- registers ----------------------------------------------------------------------------------


def test_chip_ids() -> None:
    assert Chip().byte(REG_ID) == 0x60
    assert Chip(BMP280Model).byte(REG_ID) == 0x58


def test_soft_reset_restores_every_user_register() -> None:
    chip = Chip()
    chip.set((REG_CONFIG, config(t_sb=5, iir=2)))
    chip.forced(osrs_h=X4)
    assert chip.raw() != (SKIPPED_TP, SKIPPED_TP, SKIPPED_H)

    chip.set((REG_RESET, 0x42))  # 5.4.2: anything but 0xB6 has no effect
    assert chip.byte(REG_CTRL_HUM) == X4
    chip.set((REG_RESET, SOFT_RESET_WORD))
    assert chip.byte(REG_RESET) == 0x00
    assert chip.get(REG_CTRL_HUM, 4) == bytes([0, STATUS_IM_UPDATE, 0, 0])
    assert chip.get(REG_PRESS_MSB, 8) == bytes([0x80, 0, 0, 0x80, 0, 0, 0x80, 0])
    assert chip.byte(REG_ID) == 0x60 and chip.calibration() == Calibration()


def test_im_update_is_set_during_start_up() -> None:
    clock = FakeClock()
    model = BME280Model(clock=clock)
    bus = SimBus(clock=clock)
    bus.attach(ADDRESS, model)
    assert bus.write_read(ADDRESS, bytes([REG_STATUS]), 1)[0] == STATUS_IM_UPDATE
    clock.advance(1.9 * MS)
    assert bus.write_read(ADDRESS, bytes([REG_STATUS]), 1)[0] == STATUS_IM_UPDATE
    clock.advance(0.2 * MS)  # t_startup = 2 ms (table 1)
    assert bus.write_read(ADDRESS, bytes([REG_STATUS]), 1)[0] == 0


def test_read_only_registers_ignore_writes() -> None:
    chip = Chip()
    chip.forced()
    before = {r: chip.byte(r) for r in (0x88, 0xA1, REG_ID, 0xE4, REG_STATUS, 0xF7, 0xFA, 0xFE)}
    chip.set(*((register, value ^ 0xFF) for register, value in before.items()))
    assert {r: chip.byte(r) for r in before} == before


def test_several_register_pairs_in_one_write_and_auto_increment() -> None:
    chip = Chip()
    chip.set(
        (REG_CTRL_HUM, X2), (REG_CONFIG, config(t_sb=3)), (REG_CTRL_MEAS, ctrl_meas(X4, X2, SLEEP))
    )
    assert chip.get(REG_CTRL_HUM, 4) == bytes([X2, 0, ctrl_meas(X4, X2, SLEEP), config(t_sb=3)])
    chip.bus.write(ADDRESS, bytes([REG_ID]))  # one byte: only the pointer
    assert chip.bus.read(ADDRESS, 1) == b"\x60"


def test_ctrl_hum_takes_effect_only_with_the_next_ctrl_meas_write() -> None:
    """5.4.3; observed in normal mode, where nothing else writes ctrl_meas."""
    chip = Chip(humidity=62.0)
    chip.set((REG_CTRL_MEAS, ctrl_meas(X1, X1, NORMAL)))  # humidity still skipped
    chip.set((REG_CTRL_HUM, X1))
    assert chip.byte(REG_CTRL_HUM) == X1  # reads back at once ...
    chip.clock.advance(0.1)
    assert chip.raw()[2] == SKIPPED_H  # ... but is not used yet
    chip.set((REG_CTRL_MEAS, ctrl_meas(X1, X1, NORMAL)))
    chip.clock.advance(0.1)
    assert chip.values()[2] == pytest.approx(62.0, abs=0.05)


def test_config_writes_are_ignored_in_normal_mode() -> None:
    chip = Chip()
    chip.set((REG_CONFIG, config(t_sb=1)), (REG_CTRL_MEAS, ctrl_meas(X1, X1, NORMAL)))
    chip.set((REG_CONFIG, config(t_sb=4, iir=4)))
    assert chip.byte(REG_CONFIG) == config(t_sb=1)
    chip.clock.advance(10 * MS)  # in standby: the mode change to sleep is not deferred
    chip.set((REG_CTRL_MEAS, ctrl_meas(X1, X1, SLEEP)), (REG_CONFIG, config(t_sb=4, iir=4)))
    assert chip.byte(REG_CONFIG) == config(t_sb=4, iir=4)


# --- timing -------------------------------------------------------------------------------------


def test_measurement_time_follows_appendix_9_1() -> None:
    chip = Chip()
    chip.set((REG_CTRL_HUM, SKIP), (REG_CTRL_MEAS, ctrl_meas(X1, X4, SLEEP)))
    assert chip.model.measurement_time() == pytest.approx(11.5 * MS)  # the example in 9.1
    chip.set((REG_CTRL_HUM, X16), (REG_CTRL_MEAS, ctrl_meas(X16, X16, SLEEP)))
    assert chip.model.measurement_time() == pytest.approx((1 + 32 + 32.5 + 32.5) * MS)
    chip.set((REG_CTRL_HUM, SKIP), (REG_CTRL_MEAS, ctrl_meas(SKIP, SKIP, SLEEP)))
    assert chip.model.measurement_time() == pytest.approx(1 * MS)


def test_forced_mode_status_and_return_to_sleep() -> None:
    chip = Chip(temperature=23.4)
    assert not chip.measuring()
    chip.set((REG_CTRL_HUM, X1), (REG_CTRL_MEAS, ctrl_meas(X1, X1, FORCED)))
    t_measure = 8 * MS  # 1 + 2 + 2.5 + 2.5 ms
    assert chip.measuring()
    chip.clock.advance(t_measure - 0.1 * MS)
    assert chip.measuring() and chip.raw()[1] == SKIPPED_TP  # nothing latched yet
    chip.clock.advance(0.2 * MS)
    assert not chip.measuring()
    assert chip.byte(REG_CTRL_MEAS) == ctrl_meas(X1, X1, SLEEP)
    assert chip.values()[0] == pytest.approx(23.4, abs=0.01)
    chip.clock.advance(10.0)
    assert chip.model.conversions == 1


@pytest.mark.parametrize(
    ("model_type", "t_sb", "standby_ms"),
    [
        (BME280Model, 0, 0.5),
        (BME280Model, 6, 10),
        (BME280Model, 7, 20),
        (BMP280Model, 6, 2000),
        (BMP280Model, 7, 4000),
        (BMP280Model, 5, 1000),
    ],
)
def test_normal_mode_cycles_with_the_standby_time(
    model_type: type[BME280Model], t_sb: int, standby_ms: float
) -> None:
    """Table 27; the BMP280 differs in codes 110 and 111 (table 17)."""
    chip = Chip(model_type)
    chip.set((REG_CONFIG, config(t_sb=t_sb)), (REG_CTRL_MEAS, ctrl_meas(X1, X1, NORMAL)))
    t_measure = 5.5 * MS  # 1 + 2 + 2.5 ms, humidity skipped
    period = t_measure + standby_ms * MS
    assert chip.measuring()
    chip.clock.advance(t_measure + 0.01 * MS)
    assert not chip.measuring() and chip.model.conversions == 1
    chip.clock.advance(period - t_measure)  # the second measurement has begun
    assert chip.measuring()
    chip.clock.advance(100 * period)
    assert chip.model.conversions == 101


def test_a_day_of_normal_mode_is_caught_up_at_once() -> None:
    chip = Chip(pressure=1001.0)
    chip.set((REG_CTRL_MEAS, ctrl_meas(X1, X16, NORMAL)))  # 35.5 ms + 0.5 ms standby
    chip.clock.advance(86_400.0)
    started = time.perf_counter()
    assert chip.values()[1] == pytest.approx(1001.0, abs=0.01)
    assert time.perf_counter() - started < 0.5
    assert chip.model.conversions == pytest.approx(86_400 / 0.036, abs=2)


def test_mode_change_during_a_measurement_waits_for_its_end() -> None:
    """3.3.1: the change is executed when the running measurement finishes."""
    chip = Chip()
    chip.forced()
    chip.set((REG_CTRL_MEAS, ctrl_meas(X1, X1, FORCED)))
    chip.clock.advance(1 * MS)
    chip.set((REG_CTRL_MEAS, ctrl_meas(X2, X1, NORMAL)))  # deferred
    chip.set((REG_CTRL_MEAS, ctrl_meas(X4, X4, SLEEP)))  # ignored: one change already waits
    assert chip.byte(REG_CTRL_MEAS) == ctrl_meas(X1, X1, FORCED)
    chip.clock.advance(8 * MS)
    assert chip.byte(REG_CTRL_MEAS) == ctrl_meas(X2, X1, NORMAL)
    assert chip.measuring()  # normal mode started right at the end of the forced measurement


def test_stuck_measuring_never_finishes() -> None:
    chip = Chip(temperature=5.0)
    chip.model.stuck_measuring = True
    chip.forced()
    chip.clock.advance(60.0)
    assert chip.measuring()
    assert chip.raw()[1] == SKIPPED_TP and chip.model.conversions == 0
    chip.model.stuck_measuring = False
    assert not chip.measuring()
    assert chip.values()[0] == pytest.approx(5.0, abs=0.01)


# --- data registers -----------------------------------------------------------------------------


def test_data_latch_at_the_end_of_a_measurement_and_a_burst_is_one_set() -> None:
    chip = Chip(temperature=10.0, humidity=30.0, pressure=900.0)
    chip.set((REG_CTRL_HUM, X1), (REG_CTRL_MEAS, ctrl_meas(X1, X1, NORMAL)))
    period = 8.5 * MS
    chip.clock.advance(period - 0.1 * MS)
    chip.model.temperature, chip.model.humidity, chip.model.pressure = 40.0, 80.0, 1050.0
    # The second measurement runs now; until it ends the registers hold the first, whole.
    chip.clock.advance(4 * MS)
    assert chip.measuring()
    first = chip.values()
    assert first == pytest.approx((10.0, 900.0, 30.0), abs=0.02)
    chip.clock.advance(period)
    assert chip.values() == pytest.approx((40.0, 1050.0, 80.0), abs=0.02)


def test_resolution_follows_oversampling() -> None:
    """3.4.1/3.4.2: 16 bit at x1 (low 4 bits zero) to 20 bit at x16; skipped reads 0x80000."""
    chip = Chip(temperature=21.111, pressure=987.654, humidity=44.4)
    low_bits = set()
    for pressure in (987.654, 987.661, 987.668, 987.675):
        chip.model.pressure = pressure
        chip.forced(osrs_t=X1, osrs_p=X1)
        adc_p, adc_t, _ = chip.raw()
        assert adc_p % 16 == 0 and adc_t % 16 == 0
        chip.forced(osrs_t=X16, osrs_p=X16)
        low_bits.add(chip.raw()[0] % 16)
    assert len(low_bits) > 1
    chip.forced(osrs_t=X2, osrs_p=SKIP, osrs_h=SKIP)
    adc_p, adc_t, adc_h = chip.raw()
    assert (adc_p, adc_h) == (SKIPPED_TP, SKIPPED_H) and adc_t % 8 == 0


def test_iir_filter_smooths_steps_at_20_bit() -> None:
    """3.4.4: each measurement moves the output 1/c of the way to the new value."""
    chip = Chip(temperature=20.0, pressure=1000.0)
    chip.set((REG_CONFIG, config(iir=4)), (REG_CTRL_MEAS, ctrl_meas(X1, X1, NORMAL)))
    period = 6.0 * MS  # 5.5 ms measurement + 0.5 ms standby
    chip.clock.advance(period)
    assert chip.values()[:2] == pytest.approx((20.0, 1000.0), abs=0.01)
    chip.model.pressure = 1016.0
    chip.clock.advance(period)  # one measurement of the step
    assert chip.values()[:2] == pytest.approx((20.0, 1001.0), abs=0.01)
    assert chip.raw()[0] % 16 != 0  # 20 bit despite x1
    chip.clock.advance(200 * period)
    assert chip.values()[1] == pytest.approx(1016.0, abs=0.01)
    chip.model.temperature = 36.0
    chip.clock.advance(period)
    assert chip.values()[0] == pytest.approx(21.0, abs=0.01)
    chip.clock.advance(200 * period)
    assert chip.values()[:2] == pytest.approx((36.0, 1016.0), abs=0.01)


def test_source_is_sampled_at_the_wall_time_of_the_measurement() -> None:
    environment = Environment(seed=11, longitude=10.0)
    chip = Chip()
    chip.model.source = environment.source_for("air")
    chip.clock.advance(5 * 3600.0)
    wall = chip.clock.time()
    chip.forced(osrs_t=X16, osrs_p=X16, osrs_h=X1)
    expected = environment.source_for("air")(wall)
    assert chip.values() == pytest.approx(
        (expected.temperature, expected.pressure, expected.humidity), abs=0.01
    )


def test_bmp280_has_no_humidity() -> None:
    chip = Chip(BMP280Model, temperature=-4.5, pressure=710.0)
    chip.set((REG_CTRL_HUM, X16))
    assert chip.byte(REG_CTRL_HUM) == 0x00  # not a register on the BMP280
    assert chip.byte(0xA1) == 0x00 and chip.get(0xE1, 7) == bytes(7)
    chip.forced(osrs_t=X2, osrs_p=X16)
    assert chip.model.measurement_time() == pytest.approx((1 + 4 + 32.5) * MS)
    t, p, _ = chip.values()
    assert (t, p) == pytest.approx((-4.5, 710.0), abs=0.01)
    assert chip.get(0xFD, 2) == b"\x00\x00"


def test_inputs_beyond_the_adc_range_clip() -> None:
    """Inputs no raw word can express end at the nearer end of the scale instead of wrapping."""
    chip = Chip(temperature=400.0, pressure=3000.0, humidity=400.0)
    chip.forced(osrs_t=X1, osrs_p=X16, osrs_h=X1)
    adc_p, adc_t, adc_h = chip.raw()
    assert (adc_t, adc_p, adc_h) == (0xFFFF0, 0x00000, 0xFFFF)  # x1 temperature: low nibble 0
    t, p, h = chip.values()
    assert t > 85.0 and p > 1100.0 and h > 100.0  # far out of range, as a driver should flag
