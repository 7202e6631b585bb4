"""Bosch BMP280: temperature and pressure -- the BME280's cousin without a humidity sensor.

Transport and timing are the BME280's (:class:`~drivers.bme280.BoschForcedDriver`): one forced
measurement, one bounded wait, one burst read, here of 0xF3..0xFC since the BMP280 has no
humidity registers. The compensation is ours, as pure functions: Adafruit's BME280 driver refuses
any chip id but 0x60 and would read humidity trimming registers the BMP280 does not have, and the
BMP280's temperature and pressure compensation is the BME280's, so the data sheet's
double-precision formulas are short and tested against its own worked example.

Register numbers, the calibration layout and the formulas: Bosch BST-BMP280-DS001 (rev. 1.19),
sections 3.11.2 (table 17), 3.11.3, 3.12 (worked example), 4.3 and 8.1.
"""

from __future__ import annotations

import struct
from typing import Any, ClassVar, NamedTuple

from drivers.base import Measurement, Option
from drivers.bme280 import (
    BME280,
    CHIP_ID_BME280,
    CHIP_IDS_BMP280,
    REG_CONFIG,
    REG_PRESS_MSB,
    REG_RESET,
    REG_STATUS,
    SKIPPED_20BIT,
    BoschForcedDriver,
    decode_pressure_temperature,
)
from drivers.bus import Bus
from drivers.errors import SensorError

REG_CALIB00 = 0x88  # dig_T1..dig_P9, 24 bytes little-endian (DS001 table 17)
REG_TEMP_XLSB = 0xFC  # the last data register: press 0xF7-0xF9, temp 0xFA-0xFC (4.3.6-4.3.7)
CALIBRATION_FORMAT = "<HhhHhhhhhhhh"  # table 17: T1 and P1 unsigned, the rest signed
SOFT_RESET_WORD = 0xB6  # 4.3.2
T_STARTUP_S = 0.002  # table 2: start-up time after power-on or soft reset
T_FINE_PER_DEGC = 5120.0  # 3.11.3: T = t_fine / 5120
PA_PER_HPA = 100.0


class TrimmingParameters(NamedTuple):
    """The factory calibration words of table 17, names as in the data sheet."""

    dig_T1: int
    dig_T2: int
    dig_T3: int
    dig_P1: int
    dig_P2: int
    dig_P3: int
    dig_P4: int
    dig_P5: int
    dig_P6: int
    dig_P7: int
    dig_P8: int
    dig_P9: int

    @classmethod
    def unpack(cls, data: bytes) -> TrimmingParameters:
        return cls(*struct.unpack(CALIBRATION_FORMAT, data))


def compensate_temperature(adc_t: int, cal: TrimmingParameters) -> tuple[float, int]:
    """(°C, t_fine) from a raw temperature word (8.1, double precision).

    ``t_fine`` is truncated to an integer as the data sheet's ``(BMP280_S32_t)`` cast does; the
    pressure compensation takes it from there.
    """
    var1 = (adc_t / 16384.0 - cal.dig_T1 / 1024.0) * cal.dig_T2
    var2 = (adc_t / 131072.0 - cal.dig_T1 / 8192.0) ** 2 * cal.dig_T3
    return (var1 + var2) / T_FINE_PER_DEGC, int(var1 + var2)


def compensate_pressure(adc_p: int, t_fine: int, cal: TrimmingParameters) -> float:
    """Pressure in Pa from a raw pressure word and the temperature's ``t_fine`` (8.1)."""
    var1 = t_fine / 2.0 - 64000.0
    var2 = var1 * var1 * cal.dig_P6 / 32768.0
    var2 = var2 + var1 * cal.dig_P5 * 2.0
    var2 = var2 / 4.0 + cal.dig_P4 * 65536.0
    var1 = (cal.dig_P3 * var1 * var1 / 524288.0 + cal.dig_P2 * var1) / 524288.0
    var1 = (1.0 + var1 / 32768.0) * cal.dig_P1
    if var1 == 0.0:  # only with dig_P1 == 0, which setup() refuses; the data sheet returns 0
        return 0.0
    p = 1048576.0 - adc_p
    p = (p - var2 / 4096.0) * 6250.0 / var1
    var1 = cal.dig_P9 * p * p / 2147483648.0
    var2 = p * cal.dig_P8 / 32768.0
    return p + (var1 + var2 + cal.dig_P7) / 16.0


class BMP280(BoschForcedDriver):
    name: ClassVar[str] = "bmp280"
    chip_ids: ClassVar[tuple[int, ...]] = CHIP_IDS_BMP280
    burst_end: ClassVar[int] = REG_TEMP_XLSB
    quantities: ClassVar[dict[str, str]] = {"temperature": "°C", "pressure": "hPa"}
    options: ClassVar[dict[str, Option]] = {
        k: o for k, o in BME280.options.items() if k != "oversampling_humidity"
    }

    def __init__(self, bus: Bus, address: int, **kwargs: Any) -> None:
        super().__init__(bus, address, **kwargs)
        self._trimming: TrimmingParameters | None = None

    def _wrong_chip(self, chip_id: int) -> str:
        if chip_id == CHIP_ID_BME280:
            return (
                f"bmp280 at {self.where}: found a BME280 (chip id 0x60), which also measures "
                'humidity; set driver = "bme280" for this sensor'
            )
        return (
            f"bmp280 at {self.where}: chip id 0x{chip_id:02x} is not a BMP280 (0x58); "
            "is the address right? Run 'envagent scan' to see what answers"
        )

    def setup(self) -> None:
        """Check the chip, soft-reset it, read its trimming words and set the IIR filter."""
        self._check_chip()
        with self.bus.lock:
            self._write(REG_RESET, SOFT_RESET_WORD)
            self.clock.sleep(T_STARTUP_S)
            raw = self.bus.write_read(
                self.address, bytes([REG_CALIB00]), struct.calcsize(CALIBRATION_FORMAT)
            )
            trimming = TrimmingParameters.unpack(raw)
            if trimming.dig_T1 == 0 or trimming.dig_P1 == 0:
                raise SensorError(
                    f"bmp280 at {self.where}: the calibration registers read zero; the chip may "
                    "still be starting up or the bus is noisy -- it will be set up again"
                )
            self._write(REG_CONFIG, self._config)
            self._trimming = trimming

    def trigger(self) -> float:
        if self._trimming is None:
            raise SensorError(f"bmp280 at {self.where}: read() before setup()")
        return super().trigger()

    def collect(self) -> list[Measurement]:
        if self._trimming is None:
            raise SensorError(f"bmp280 at {self.where}: read() before setup()")
        burst = self._finish()
        raw_p, raw_t = decode_pressure_temperature(burst[REG_PRESS_MSB - REG_STATUS :])
        # Without ctrl_hum there is no skipped word to betray a brown-out once ctrl_meas has been
        # written again; the config register read back by _finish() catches it (iir_filter > 0).
        if SKIPPED_20BIT in (raw_p, raw_t):
            raise SensorError(
                f"bmp280 at {self.where}: the chip returned its reset values; it probably lost "
                "power and needs to be set up again"
            )
        temperature, t_fine = compensate_temperature(raw_t, self._trimming)
        pressure = compensate_pressure(raw_p, t_fine, self._trimming) / PA_PER_HPA
        return [
            Measurement("temperature", temperature, "°C"),
            Measurement("pressure", pressure, "hPa"),
        ]

    def close(self) -> None:
        """Nothing to do: after a forced measurement the chip is back in sleep mode."""
