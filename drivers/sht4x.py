"""Sensirion SHT4x (SHT40/41/45): temperature and humidity from one single-byte command.

The chip has one-byte commands and no status register: the driver sends a measurement command,
waits the data sheet's maximum duration, and reads 6 bytes (T, CRC, RH, CRC), retrying while the
chip NACKs (still converting) until a deadline. Identification reads the 32-bit serial number
(0x89: two words with CRCs), which an SHT3x does not understand.

The optional heater runs *after* a sample (started by ``collect``, read out and discarded before
the next ``trigger``, or by ``read`` before it returns), so no reported value comes from a heated
sensor: its use is drying a sensor that sits in condensing air.
It is skipped when the duty cycle would exceed what the chip is designed for, and above the ambient
temperature the data sheet allows it in.

Numbers: Sensirion data sheet "SHT4x" (Version 3, April 2022): the command table (measurement,
serial number, soft reset, heater commands with power and on-time), the timing table (maximum
durations 8.3 / 4.5 / 1.6 ms, soft reset 1 ms, heater on-time 1.1 s / 0.11 s at most) and the
conversion formulas, RH = -6 + 125 * S / 65535 clamped to 0-100 %RH.
"""

from __future__ import annotations

import errno
import logging
import math
from collections.abc import Callable
from typing import Any, ClassVar

from drivers import sensirion
from drivers.base import Driver, Measurement, Option, Quality
from drivers.bus import Bus
from drivers.errors import SensorError, WrongChipError

log = logging.getLogger("envagent.driver")

MEASURE = {"high": 0xFD, "medium": 0xF6, "low": 0xE0}
MEASURE_MAX_S = {"high": 0.0083, "medium": 0.0045, "low": 0.0016}
SOFT_RESET = 0x94
SOFT_RESET_S = 0.001
# Heater setting -> (command, maximum on-time in s); the chip measures at high precision after it.
HEATERS = {
    "200mW-1s": (0x39, 1.1),
    "200mW-0.1s": (0x32, 0.11),
    "110mW-1s": (0x2F, 1.1),
    "110mW-0.1s": (0x24, 0.11),
    "20mW-1s": (0x1E, 1.1),
    "20mW-0.1s": (0x15, 0.11),
}
HEATER_OFF = "off"
# The data sheet's heater section: designed for a duty cycle up to 10 %, and not for use when the
# ambient temperature is above 65 °C.
HEATER_MAX_DUTY = 0.1
HEATER_MAX_AMBIENT_C = 65.0

T_MIN_C = -40.0  # specified operating range
T_MAX_C = 125.0


read_serial = sensirion.read_sht4x_serial
identify = sensirion.identify_sht4x


class SHT4x(Driver):
    name: ClassVar[str] = "sht4x"
    addresses: ClassVar[tuple[int, ...]] = sensirion.SHT4X_ADDRESSES
    quantities: ClassVar[dict[str, str]] = {"temperature": "°C", "humidity": "%RH"}
    options: ClassVar[dict[str, Option]] = {
        "repeatability": Option(
            str, "high", "measurement precision: longer conversions are less noisy",
            choices=("high", "medium", "low"),
        ),
        "heater": Option(
            str, HEATER_OFF, "heater pulse after each sample, to dry a condensed sensor",
            choices=(HEATER_OFF, *HEATERS),
        ),
    }

    def __init__(self, bus: Bus, address: int, **kwargs: Any) -> None:
        super().__init__(bus, address, **kwargs)
        self._repeatability: str = self.settings["repeatability"]
        self._heater: str = self.settings["heater"]
        self._last_pulse = -math.inf
        self._heater_failing = False
        self._sent: float | None = None  # when the measurement being collected was started
        self._pulse_sent: float | None = None  # when a heater pulse still to be read was started
        self._pulse_length = 0.0
        self.serial_number: int | None = None

    @property
    def label(self) -> str:
        return f"sht4x at {self.where}"

    def setup(self) -> None:
        """Identify by the serial number, then soft-reset to a known state."""
        self.serial_number = None
        try:
            serial = read_serial(self.bus, self.address, self.clock, self.label)
        except (OSError, SensorError) as exc:
            self._explain_identity(exc)
            raise
        with self.bus.lock:
            self.bus.write(self.address, bytes([SOFT_RESET]))
            self.clock.sleep(SOFT_RESET_S)
        self.serial_number = serial

    def serial(self) -> str | None:
        """The 32-bit serial number ``setup`` read (command 0x89), as ``0x`` and 8 hex digits."""
        return None if self.serial_number is None else f"0x{self.serial_number:08x}"

    def _explain_identity(self, exc: Exception) -> None:
        """Raise a WrongChipError when an SHT3x answers instead."""
        if isinstance(exc, OSError) and exc.errno != errno.EREMOTEIO:
            return
        try:
            other = sensirion.identify_sht3x(self.bus, self.address, self.clock)
        except OSError:
            return
        if other:
            raise WrongChipError(
                f'{self.label}: found an SHT3x, not an SHT4x; set driver = "sht3x" for this sensor'
            ) from exc

    def trigger(self) -> float:
        """Send the measurement command (after reading out a heater pulse still under way)."""
        if self.serial_number is None:
            raise SensorError(f"{self.label}: read() before setup()")
        self._heater_step(self._finish_pulse)
        request = bytes([MEASURE[self._repeatability]])
        self._sent = sensirion.start(self.bus, self.address, request, clock=self.clock)
        return self._sent + MEASURE_MAX_S[self._repeatability]

    def collect(self) -> list[Measurement]:
        sent, self._sent = self._sent, None
        if self.serial_number is None or sent is None:
            raise SensorError(f"{self.label}: collect() without setup() and trigger()")
        t_ticks, rh_ticks = sensirion.fetch(
            self.bus, self.address, 2, clock=self.clock, sent=sent,
            duration=MEASURE_MAX_S[self._repeatability], where=self.label,
        )
        temperature = sensirion.ticks_to_celsius(t_ticks)
        humidity = sensirion.sht4x_ticks_to_rh(rh_ticks)
        t_quality = sensirion.temperature_quality(temperature, T_MIN_C, T_MAX_C)
        rh_quality = Quality.GOOD
        if not sensirion.RH_MIN <= humidity <= sensirion.RH_MAX:
            humidity = min(max(humidity, sensirion.RH_MIN), sensirion.RH_MAX)
            rh_quality = Quality.CLIPPED
        measurements = [
            Measurement("temperature", temperature, "°C", t_quality),
            Measurement("humidity", humidity, "%RH", rh_quality),
        ]
        if self._heater != HEATER_OFF and temperature <= HEATER_MAX_AMBIENT_C:
            self._heater_step(self._start_pulse)
        return measurements

    def read(self) -> list[Measurement]:
        """One sample, and the heater pulse it started read out before returning."""
        measurements = super().read()
        self._heater_step(self._finish_pulse)
        return measurements

    def _heater_step(self, step: Callable[[], bool]) -> None:
        """A failed pulse costs no sample; it is logged when pulses start or stop failing (a
        pulse works once its heated result has been read)."""
        try:
            finished = step()
        except (OSError, SensorError) as exc:
            self._pulse_sent = None
            if not self._heater_failing:
                log.warning("%s: heater pulse failed: %s", self.label, exc)
            self._heater_failing = True
            return
        if self._heater_failing and finished:
            log.info("%s: heater pulses work again", self.label)
            self._heater_failing = False

    def _start_pulse(self) -> bool:
        """Start one heater pulse, if the duty cycle allows; it runs while nobody waits for it
        and its heated result is read and dropped before the next measurement."""
        code, on_time = HEATERS[self._heater]
        now = self.clock.monotonic()
        if now - self._last_pulse < on_time / HEATER_MAX_DUTY:
            return False
        self._last_pulse = now
        self._pulse_sent = sensirion.start(self.bus, self.address, bytes([code]),
                                           clock=self.clock)
        self._pulse_length = on_time
        return False

    def _finish_pulse(self) -> bool:
        """Read out (and drop) the heated measurement of a pulse, waiting for its end if it is
        still under way -- only with an interval shorter than the pulse."""
        sent = self._pulse_sent
        if sent is None:
            return False
        self._pulse_sent = None
        sensirion.fetch(self.bus, self.address, 2, clock=self.clock, sent=sent,
                        duration=self._pulse_length + MEASURE_MAX_S["high"],
                        where=f"{self.label} (heater)")
        return True

    def close(self) -> None:
        """Nothing to do: the chip idles between commands and its heater is pulse-only."""
        self.serial_number = None
        self._sent = self._pulse_sent = None
