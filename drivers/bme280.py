"""Bosch BME280: temperature, humidity and pressure from one forced-mode measurement.

Adafruit's driver does the chip set-up (id check, soft reset, calibration read-out) and the
datasheet compensation; this module owns transport and timing, because Adafruit's property reads
trigger a measurement per property and wait on the status bit with no deadline. One sample here is
two bus transactions in the usual case: write ctrl_meas (forced mode: ``trigger``), then -- after
the datasheet's maximum measurement time -- one burst read of status and all data registers
(``collect``). The compensation then runs on that single snapshot, so temperature, humidity and
pressure come from the same conversion.

Register numbers and timings: Bosch BST-BME280-DS002, sections 5.3-5.4 and appendix 9.1.

:class:`BoschForcedDriver` is the part the BMP280 (``drivers/bmp280.py``) shares: the chip-id
check, the forced-mode trigger with its deadline, and the burst read of status and data.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

from adafruit_bme280.basic import MODE_NORMAL, Adafruit_BME280_I2C

from drivers.base import Driver, Measurement, Option, Quality
from drivers.bus import Bus
from drivers.busio_adapter import BusioI2C
from drivers.errors import SensorError, SensorTimeoutError, WrongChipError

REG_CHIP_ID = 0xD0
REG_RESET = 0xE0
REG_CTRL_HUM = 0xF2
REG_STATUS = 0xF3
REG_CTRL_MEAS = 0xF4
REG_CONFIG = 0xF5
REG_PRESS_MSB = 0xF7
REG_HUM_LSB = 0xFE

CHIP_ID_BME280 = 0x60
# BMP280 production parts report 0x58; early samples 0x56/0x57 (BMP280 datasheet 4.3.1).
CHIP_IDS_BMP280 = (0x56, 0x57, 0x58)
CHIP_ID_BME680 = 0x61

STATUS_MEASURING = 0x08
MODE_FORCED = 0x01
MODE_MASK = 0x03  # ctrl_meas bits 1:0

# Oversampling factor -> register code (datasheet tables 20, 23, 24); IIR -> code (table 28).
OVERSAMPLING_CODES = {1: 1, 2: 2, 4: 3, 8: 4, 16: 5}
IIR_CODES = {0: 0, 2: 1, 4: 2, 8: 3, 16: 4}

# A value the chip reports for a measurement it skipped -- also what it reports after a
# brown-out reset wiped ctrl_hum/ctrl_meas (datasheet 5.4.7-5.4.9).
SKIPPED_20BIT = 0x80000
SKIPPED_16BIT = 0x8000

POLL_INTERVAL_S = 0.001
# Margin on top of the datasheet maximum before a measurement counts as hung.
DEADLINE_MARGIN_S = 0.1

_BURST_START = REG_STATUS


def max_measurement_time(osrs_t: int, osrs_p: int, osrs_h: int = 0) -> float:
    """Seconds a forced measurement may take at most (datasheet appendix 9.1, t_measure,max).

    A bracket of the formula is left out when its measurement is skipped (oversampling 0), as for
    humidity on a BMP280.
    """
    ms = 1.25 + 2.3 * osrs_t + (2.3 * osrs_p + 0.575)
    if osrs_h:
        ms += 2.3 * osrs_h + 0.575
    return ms / 1000.0


def decode_pressure_temperature(data: bytes) -> tuple[int, int]:
    """The 20-bit raw pressure and temperature words from the six data bytes at 0xF7 (5.4.7-8)."""
    raw_p = (data[0] << 12) | (data[1] << 4) | (data[2] >> 4)
    raw_t = (data[3] << 12) | (data[4] << 4) | (data[5] >> 4)
    return raw_p, raw_t


def identify(bus: Bus, address: int) -> str | None:
    """Name the Bosch environmental chip at ``address`` from its chip-id register, if any."""
    if address not in BoschForcedDriver.addresses:
        return None
    chip_id = bus.write_read(address, bytes([REG_CHIP_ID]), 1)[0]
    if chip_id == CHIP_ID_BME280:
        return "bme280"
    if chip_id in CHIP_IDS_BMP280:
        return "bmp280"
    if chip_id == CHIP_ID_BME680:
        return "bme680"
    return None


class BoschForcedDriver(Driver):
    """A Bosch BMx280 in forced mode: one trigger, one bounded wait, one burst read per sample.

    Subclasses name their chip ids and the last register of their burst; the burst always starts
    at the status register so one read tells whether the conversion has finished.
    """

    addresses: ClassVar[tuple[int, ...]] = (0x76, 0x77)  # SDO to GND / VDDIO (datasheet 6.2)
    chip_ids: ClassVar[tuple[int, ...]]
    burst_end: ClassVar[int]  # the last data register read in the burst

    def __init__(self, bus: Bus, address: int, **kwargs: Any) -> None:
        super().__init__(bus, address, **kwargs)
        s = self.settings
        self._ctrl_meas = (
            OVERSAMPLING_CODES[s["oversampling_temperature"]] << 5
            | OVERSAMPLING_CODES[s["oversampling_pressure"]] << 2
            | MODE_FORCED
        )
        self._measure_time = max_measurement_time(
            s["oversampling_temperature"],
            s["oversampling_pressure"],
            s.get("oversampling_humidity", 0),
        )
        self._config = IIR_CODES[s["iir_filter"]] << 2  # t_sb is unused in forced mode
        self._started: float | None = None  # monotonic time of the trigger being collected

    @abstractmethod
    def _wrong_chip(self, chip_id: int) -> str:
        """The message for a chip id not in ``chip_ids``."""

    def _check_chip(self) -> None:
        chip_id = self.bus.write_read(self.address, bytes([REG_CHIP_ID]), 1)[0]
        if chip_id not in self.chip_ids:
            raise WrongChipError(self._wrong_chip(chip_id))

    def _write(self, register: int, value: int) -> None:
        self.bus.write(self.address, bytes([register, value]))

    def _check_settings(self, burst: bytes) -> None:
        """The chip has no CRC: its settings, read back in the same burst, vouch for the data.

        Noise on the bus (or a chip that reset itself) shows as ctrl_meas or config bytes other
        than those written; the sample is refused rather than stored as good.
        """
        ctrl_meas, config = burst[REG_CTRL_MEAS - _BURST_START], burst[REG_CONFIG - _BURST_START]
        if ctrl_meas & ~MODE_MASK != self._ctrl_meas & ~MODE_MASK or config != self._config:
            raise SensorError(
                f"{self.name} at {self.where}: read back ctrl_meas 0x{ctrl_meas:02x} and config "
                f"0x{config:02x}, not the 0x{self._ctrl_meas & ~MODE_MASK:02x} and "
                f"0x{self._config:02x} written: noise on the bus, or the chip reset itself"
            )

    def trigger(self) -> float:
        """Start a forced measurement; it is ready after the datasheet's maximum time."""
        # The bus stays free for other sensors during the conversion: each transaction
        # (re)selects a multiplexer channel on its own, and nothing else talks to this chip.
        self._write(REG_CTRL_MEAS, self._ctrl_meas)
        self._started = self.clock.monotonic()
        return self._started + self._measure_time

    def _finish(self) -> bytes:
        """status..burst_end of the measurement ``trigger`` started, once it has finished."""
        clock, started = self.clock, self._started
        if started is None:
            raise SensorError(f"{self.name} at {self.where}: collect() without trigger()")
        self._started = None
        length = self.burst_end - _BURST_START + 1
        deadline = started + self._measure_time + DEADLINE_MARGIN_S
        self.wait_until(started + self._measure_time)
        while True:
            burst = self.bus.write_read(self.address, bytes([_BURST_START]), length)
            if not burst[0] & STATUS_MEASURING and not burst[1] & MODE_FORCED:
                self._check_settings(burst)
                return burst
            if clock.monotonic() >= deadline:
                raise SensorTimeoutError(
                    f"{self.name} at {self.where}: measurement not finished after "
                    f"{clock.monotonic() - started:.3f} s (status 0x{burst[0]:02x}); "
                    "check the sensor's power and wiring"
                )
            clock.sleep(POLL_INTERVAL_S)


class _SnapshotBME280(Adafruit_BME280_I2C):
    """Adafruit's driver, made to compute from one burst of data registers we read ourselves.

    While ``snapshot`` holds the bytes of 0xF7-0xFE, register reads in that range come from it
    and the driver believes it is in normal mode, so its properties neither trigger another
    measurement nor wait on the status bit.
    """

    snapshot: bytes | None = None

    @property  # type: ignore[override]
    def mode(self) -> int:
        return MODE_NORMAL if self.snapshot is not None else self._mode

    @mode.setter
    def mode(self, value: int) -> None:
        Adafruit_BME280_I2C.mode.fset(self, value)  # type: ignore[attr-defined]

    def _read_register(self, register: int, length: int) -> bytearray:
        if self.snapshot is not None and register >= REG_PRESS_MSB:
            offset = register - REG_PRESS_MSB
            return bytearray(self.snapshot[offset : offset + length])
        return super()._read_register(register, length)


class BME280(BoschForcedDriver):
    name: ClassVar[str] = "bme280"
    chip_ids: ClassVar[tuple[int, ...]] = (CHIP_ID_BME280,)
    burst_end: ClassVar[int] = REG_HUM_LSB
    quantities: ClassVar[dict[str, str]] = {
        "temperature": "°C",
        "humidity": "%RH",
        "pressure": "hPa",
    }
    options: ClassVar[dict[str, Option]] = {
        "oversampling_temperature": Option(
            int, 1, "samples averaged per temperature conversion", choices=(1, 2, 4, 8, 16)
        ),
        "oversampling_pressure": Option(
            int, 16, "samples averaged per pressure conversion", choices=(1, 2, 4, 8, 16)
        ),
        "oversampling_humidity": Option(
            int, 1, "samples averaged per humidity conversion", choices=(1, 2, 4, 8, 16)
        ),
        "iir_filter": Option(
            int, 0, "IIR filter coefficient (0 = off)", choices=(0, 2, 4, 8, 16)
        ),
    }

    def __init__(self, bus: Bus, address: int, **kwargs: Any) -> None:
        super().__init__(bus, address, **kwargs)
        self._chip: _SnapshotBME280 | None = None

    def _wrong_chip(self, chip_id: int) -> str:
        if chip_id in CHIP_IDS_BMP280:
            return (
                f"bme280 at {self.where}: found a BMP280 (chip id 0x{chip_id:02x}), which has no "
                f'humidity sensor; set driver = "bmp280" for this sensor'
            )
        return (
            f"bme280 at {self.where}: chip id 0x{chip_id:02x} is not a BME280 (0x60); "
            "is the address right? Run 'envagent scan' to see what answers"
        )

    def setup(self) -> None:
        self._check_chip()
        with self.bus.lock:
            self._chip = _SnapshotBME280(BusioI2C(self.bus), self.address)
            s = self.settings
            self._write(REG_CTRL_HUM, OVERSAMPLING_CODES[s["oversampling_humidity"]])
            self._write(REG_CONFIG, self._config)

    def trigger(self) -> float:
        if self._chip is None:
            raise SensorError(f"bme280 at {self.where}: read() before setup()")
        return super().trigger()

    def collect(self) -> list[Measurement]:
        if self._chip is None:
            raise SensorError(f"bme280 at {self.where}: read() before setup()")
        data = self._finish()[REG_PRESS_MSB - _BURST_START :]
        raw_p, raw_t = decode_pressure_temperature(data)
        raw_h = (data[6] << 8) | data[7]
        if SKIPPED_20BIT in (raw_p, raw_t) or raw_h == SKIPPED_16BIT:
            raise SensorError(
                f"bme280 at {self.where}: the chip returned its reset values; it probably lost "
                "power and needs to be set up again"
            )
        chip = self._chip
        chip.snapshot = bytes(data)
        try:
            temperature = chip.temperature
            humidity = chip.humidity
            pressure = chip.pressure
        finally:
            chip.snapshot = None
        humidity_quality = Quality.CLIPPED if humidity in (0, 100) else Quality.GOOD
        return [
            Measurement("temperature", temperature, "°C"),
            Measurement("humidity", float(humidity), "%RH", humidity_quality),
            Measurement("pressure", pressure, "hPa"),
        ]

    def close(self) -> None:
        """Nothing to do: after a forced measurement the chip is back in sleep mode."""
