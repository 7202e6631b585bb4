"""Sensirion SHT3x (SHT30/31/35): temperature and humidity from one single-shot measurement.

Single-shot commands without clock stretching, so no I2C adapter has to tolerate a held SCL (the
Pi's i2c-bcm2835 handles stretching badly): the driver sends the command, waits the data sheet's
maximum measurement time, and reads 6 bytes; while the chip is still converting it NACKs the read,
which the driver retries until a deadline (``sensirion.start`` in ``trigger``, ``sensirion.fetch``
in ``collect``). Identification reads the status register (0xF32D), which every SHT3x answers
with a CRC-protected word.

Numbers: Sensirion data sheet "SHT3x-DIS" v5 (May 2018) -- table 9 (single-shot commands), 4.9
(soft reset), table 16 (heater), tables 17-18 (status register), 4.13 (conversion), table 4
(timings; later revisions raise the maxima by 0.5 ms, which this driver uses).
"""

from __future__ import annotations

import contextlib
import errno
import logging
from typing import Any, ClassVar

from drivers import sensirion
from drivers.base import Driver, Measurement, Option
from drivers.bus import Bus
from drivers.errors import SensorError, WrongChipError

log = logging.getLogger("envagent.driver")

MEASURE = {"high": 0x2400, "medium": 0x240B, "low": 0x2416}  # table 9, no clock stretching
# Maximum measurement durations in seconds (table 4 of the latest revision: 15.5 / 6.5 / 4.5 ms).
MEASURE_MAX_S = {"high": 0.0155, "medium": 0.0065, "low": 0.0045}
SOFT_RESET = 0x30A2  # 4.9: executed in idle state only
BREAK = 0x3093  # 4.8: ends periodic data acquisition; the chip is then idle
HEATER_ON = 0x306D
HEATER_OFF = 0x3066
CLEAR_STATUS = 0x3041

STATUS_HEATER_ON = 1 << 13  # table 18
STATUS_COMMAND_FAILED = 1 << 1

SOFT_RESET_S = 0.0015  # t_SR max (table 4)
BREAK_S = 0.001  # 4.8: "this takes 1 ms"
COMMAND_S = sensirion.SHT3X_COMMAND_S

# Specified operating range (table 1, 2): outside it the value is stored but flagged.
T_MIN_C = -40.0
T_MAX_C = 125.0


read_status = sensirion.read_sht3x_status
identify = sensirion.identify_sht3x


class SHT3x(Driver):
    name: ClassVar[str] = "sht3x"
    addresses: ClassVar[tuple[int, ...]] = sensirion.SHT3X_ADDRESSES
    quantities: ClassVar[dict[str, str]] = {"temperature": "°C", "humidity": "%RH"}
    options: ClassVar[dict[str, Option]] = {
        "repeatability": Option(
            str, "high", "measurement repeatability: longer conversions are less noisy",
            choices=("high", "medium", "low"),
        ),
        "heater": Option(
            bool, False, "keep the on-chip heater on (dries a condensed sensor; T reads high)"
        ),
    }

    def __init__(self, bus: Bus, address: int, **kwargs: Any) -> None:
        super().__init__(bus, address, **kwargs)
        self._repeatability: str = self.settings["repeatability"]
        self._ready = False
        self._sent: float | None = None  # when the measurement being collected was started

    @property
    def label(self) -> str:
        return f"sht3x at {self.where}"

    def setup(self) -> None:
        """Identify by the status register, reset, and set the heater as configured."""
        self._ready = False
        try:
            read_status(self.bus, self.address, self.clock, self.label)
        except (OSError, SensorError) as exc:
            self._explain_identity(exc)
            raise
        # A chip another program left in periodic acquisition ignores the soft reset and every
        # single shot (status bit 1) until it gets a break or loses power: break first, which an
        # idle chip takes as a no-op; a NACK of it says nothing the soft reset will not.
        with contextlib.suppress(OSError):
            self._command(BREAK, BREAK_S)
        self._command(SOFT_RESET, SOFT_RESET_S)  # the heater is off after any reset
        if self.settings["heater"]:
            self._command(HEATER_ON, COMMAND_S)
        status = read_status(self.bus, self.address, self.clock, self.label)
        if bool(status & STATUS_HEATER_ON) != self.settings["heater"] or (
            status & STATUS_COMMAND_FAILED
        ):
            raise SensorError(
                f"{self.label}: status 0x{status:04x} after set-up does not show the configured "
                f"heater ({'on' if self.settings['heater'] else 'off'}); is it an SHT3x?"
            )
        self._ready = True

    def _explain_identity(self, exc: Exception) -> None:
        """Raise a WrongChipError when another Sensirion chip answers instead."""
        if isinstance(exc, OSError) and exc.errno != errno.EREMOTEIO:
            return
        try:
            other = sensirion.identify_sht4x(self.bus, self.address, self.clock)
        except OSError:
            return
        if other:
            raise WrongChipError(
                f'{self.label}: found an SHT4x, not an SHT3x; set driver = "sht4x" for this sensor'
            ) from exc

    def _command(self, code: int, wait: float) -> None:
        with self.bus.lock:
            self.bus.write(self.address, sensirion.command(code))
            self.clock.sleep(wait)

    def trigger(self) -> float:
        """Send the single-shot command; the result is there after the maximum duration."""
        if not self._ready:
            raise SensorError(f"{self.label}: read() before setup()")
        request = sensirion.command(MEASURE[self._repeatability])
        self._sent = sensirion.start(self.bus, self.address, request, clock=self.clock)
        return self._sent + MEASURE_MAX_S[self._repeatability]

    def collect(self) -> list[Measurement]:
        sent, self._sent = self._sent, None
        if not self._ready or sent is None:
            raise SensorError(f"{self.label}: collect() without setup() and trigger()")
        t_ticks, rh_ticks = sensirion.fetch(
            self.bus, self.address, 2, clock=self.clock, sent=sent,
            duration=MEASURE_MAX_S[self._repeatability], where=self.label,
        )
        temperature = sensirion.ticks_to_celsius(t_ticks)
        t_quality = sensirion.temperature_quality(temperature, T_MIN_C, T_MAX_C)
        return [
            Measurement("temperature", temperature, "°C", t_quality),
            Measurement("humidity", sensirion.ticks_to_rh(rh_ticks), "%RH"),
        ]

    def close(self) -> None:
        """Turn the heater off if it was on; the chip sleeps by itself between measurements."""
        if self._ready and self.settings["heater"]:
            try:
                self._command(HEATER_OFF, COMMAND_S)
            except OSError as exc:
                log.debug("%s: heater off failed on close: %s", self.label, exc)
        self._ready = False
