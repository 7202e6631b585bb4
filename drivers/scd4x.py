"""Sensirion SCD4x (SCD40/SCD41): CO2, temperature and humidity from the periodic measurement.

The chip measures by itself every 5 s once started; the agent samples on its own schedule (an
interval of 5 s or more). ``setup`` stops whatever measurement still runs (a restarted agent finds
the chip measuring, and the chip then refuses every other command), reads the serial number as
identification, and starts the periodic measurement. A sample needs no wait of its own: ``trigger``
sends read_measurement and ``collect`` reads it 1 ms later -- unless the last measurement was read
less than 5 s ago, when the request waits until the next one must be there. A chip with no new
data NACKs the read (3.5.2); then ``collect`` waits -- bounded -- for the data-ready status, as a
chip that stopped measuring must not pass as a slow one. ``close`` stops the measurement.

The first samples after a start carry :attr:`Quality.WARMUP`. The data sheet asks for more than
three minutes of operation before the output serves as a calibration reference (3.7.1), and
Sensirion's own examples show the first minutes settling; so samples taken less than
:data:`WARMUP_S` after the start are flagged, not dropped.

Pressure compensation: the photoacoustic cell counts CO2 molecules, so the ppm depend on the
ambient pressure the chip assumes. :meth:`SCD4x.set_ambient_pressure` passes it (allowed while
measuring); the option ``pressure_from`` names the sensor whose pressure the agent should pass.

Numbers: Sensirion data sheet "SCD4x" Version 1.3 (September 2022): table 9 (codes, execution
times, commands allowed during a measurement), 3.5.1-3.5.3, 3.6.5 (ambient pressure as Pa / 100),
3.8.2 (data ready: low 11 bits), 3.9.2 (serial number); later revisions give
the valid ambient pressure input as 700-1200 hPa.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
from typing import Any, ClassVar

from drivers import sensirion
from drivers.base import Driver, Measurement, Option, Quality
from drivers.bus import Bus
from drivers.clock import Clock
from drivers.errors import DriverConfigError, SensorError, SensorTimeoutError

log = logging.getLogger("envagent.driver")

START_PERIODIC_MEASUREMENT = 0x21B1
READ_MEASUREMENT = 0xEC05
STOP_PERIODIC_MEASUREMENT = 0x3F86
SET_AMBIENT_PRESSURE = 0xE000
GET_DATA_READY_STATUS = 0xE4B8
GET_SERIAL_NUMBER = 0x3682
WAKE_UP = 0x36F6  # 3.10.4 (SCD41): the only command a powered-down chip takes; never acknowledged

COMMAND_S = 0.001  # read_measurement, get_data_ready_status, get_serial_number, set_ambient_p.
STOP_S = 0.5  # the chip answers nothing for 500 ms after stop_periodic_measurement
WAKE_UP_S = 0.03  # table 9
SIGNAL_UPDATE_INTERVAL_S = 5.0
DATA_READY_MASK = 0x07FF  # data ready unless the least significant 11 bits are all 0

READY_POLL_S = 0.1
READY_MARGIN_S = 2.0  # a signal update later than 5 s + this counts as stale data
WARMUP_S = 180.0  # see the module docstring

PRESSURE_MIN_HPA = 700.0
PRESSURE_MAX_HPA = 1200.0
CO2_MAX_PPM = 40_000  # output range 0-40'000 ppm
T_MIN_C = -10.0  # operating conditions
T_MAX_C = 60.0


def read_serial(bus: Bus, address: int, clock: Clock, where: str) -> int:
    """The 48-bit serial number; only answered while no periodic measurement runs."""
    words = sensirion.read_words(
        bus, address, sensirion.command(GET_SERIAL_NUMBER), 3, clock=clock, wait=COMMAND_S,
        where=where,
    )
    return words[0] << 32 | words[1] << 16 | words[2]


def identify(bus: Bus, address: int, clock: Clock | None = None) -> str | None:
    """``"scd4x"`` when the chip at ``address`` answers get_serial_number or, while it measures
    (when it refuses get_serial_number), get_data_ready_status with good CRCs. Neither changes
    the chip's state."""
    if address not in SCD4x.addresses:
        return None
    clock = sensirion.scan_clock(bus, clock)
    where = f"scd4x? at 0x{address:02x}"
    try:
        read_serial(bus, address, clock, where)
    except OSError as exc:
        if exc.errno != errno.EREMOTEIO:
            raise
        request = sensirion.command(GET_DATA_READY_STATUS)
        try:
            sensirion.read_words(bus, address, request, 1, clock=clock, wait=COMMAND_S, where=where)
        except SensorError:
            return None
        except OSError as nacked:
            if nacked.errno == errno.EREMOTEIO:
                return None
            raise
    except SensorError:
        return None
    return "scd4x"


class SCD4x(Driver):
    name: ClassVar[str] = "scd4x"
    addresses: ClassVar[tuple[int, ...]] = (0x62,)  # fixed
    quantities: ClassVar[dict[str, str]] = {
        "co2": "ppm",
        "temperature": "°C",
        "humidity": "%RH",
    }
    options: ClassVar[dict[str, Option]] = {
        "pressure_from": Option(
            str, "", "id of the sensor (a BME280) whose pressure compensates the CO2 reading; "
            "empty: the chip assumes 1013 hPa",
        ),
    }

    def __init__(self, bus: Bus, address: int, **kwargs: Any) -> None:
        super().__init__(bus, address, **kwargs)
        self.pressure_from: str = self.settings["pressure_from"]
        self.serial_number: int | None = None
        self._started: float | None = None  # clock.monotonic() of start_periodic_measurement
        # When the newest measurement was read (the start, before the first): the chip has the
        # next one at most one signal update interval later.
        self._last_data = 0.0
        self._requested: float | None = None  # when read_measurement was sent, if it was
        self._pressure_hpa: float | None = None
        self._sent_hpa: int | None = None  # the whole hPa the chip has, since the last setup

    @property
    def label(self) -> str:
        return f"scd4x at {self.where}"

    # --- lifecycle ------------------------------------------------------------------------------

    def setup(self) -> None:
        self._started = self._sent_hpa = None
        # A chip another program powered down takes nothing but wake_up, which no chip
        # acknowledges (an SCD40, which has no power_down, NACKs it as unknown).
        with contextlib.suppress(OSError):
            self._write(sensirion.command(WAKE_UP))
        self.clock.sleep(WAKE_UP_S)
        self._stop(tolerate_nack=True)
        self.serial_number = read_serial(self.bus, self.address, self.clock, self.label)
        if self._pressure_hpa is not None:
            self._send_pressure(self._pressure_hpa)
        self._write(sensirion.command(START_PERIODIC_MEASUREMENT))
        self._started = self._last_data = self.clock.monotonic()
        self._requested = None

    def trigger(self) -> float:
        """Ask for the newest measurement; the chip has one ready unless the last was read less
        than a signal update interval ago, and then the request waits until it must be there."""
        if self._started is None:
            raise SensorError(f"{self.label}: read() before setup()")
        due = self._last_data + SIGNAL_UPDATE_INTERVAL_S
        if self.clock.monotonic() < due:
            self._requested = None  # collect() asks at `due`
            return due + COMMAND_S
        self._request()
        assert self._requested is not None
        return self._requested + COMMAND_S

    def collect(self) -> list[Measurement]:
        if self._started is None:
            raise SensorError(f"{self.label}: read() before setup()")
        if self._requested is None:
            self.wait_until(self._last_data + SIGNAL_UPDATE_INTERVAL_S)
            self._request()
        assert self._requested is not None
        self.wait_until(self._requested + COMMAND_S)
        self._requested = None
        try:
            with self.bus.lock:
                data = self.bus.read(self.address, 3 * sensirion.FRAME_BYTES)
            self._last_data = self.clock.monotonic()  # read out, good or not: the buffer is empty
            co2, t_ticks, rh_ticks = sensirion.parse_words(data, self.label)
        except OSError as exc:
            if exc.errno != errno.EREMOTEIO:
                raise
            # 3.5.2: no new data (a chip slower than its 5 s, or one that stopped measuring):
            # wait for data-ready, bounded, as before the split.
            self._wait_for_data()
            co2, t_ticks, rh_ticks = self._read_words(READ_MEASUREMENT, 3)
        self._last_data = self.clock.monotonic()
        warm = self._last_data - self._started >= WARMUP_S
        base = Quality.GOOD if warm else Quality.WARMUP
        temperature = sensirion.ticks_to_celsius(t_ticks)
        t_range = sensirion.temperature_quality(temperature, T_MIN_C, T_MAX_C)
        co2_range = Quality.GOOD if co2 <= CO2_MAX_PPM else Quality.OUT_OF_RANGE
        return [
            Measurement("co2", float(co2), "ppm", base | co2_range),
            Measurement("temperature", temperature, "°C", base | t_range),
            Measurement("humidity", sensirion.ticks_to_rh(rh_ticks), "%RH", base),
        ]

    def _request(self) -> None:
        self._write(sensirion.command(READ_MEASUREMENT))
        self._requested = self.clock.monotonic()

    def serial(self) -> str | None:
        """The 48-bit serial number ``setup`` read (get_serial_number 0x3682, 3.9.2), as ``0x``
        and 12 hex digits."""
        return None if self.serial_number is None else f"0x{self.serial_number:012x}"

    def close(self) -> None:
        """Stop the periodic measurement (the chip idles at a fraction of the current)."""
        if self._started is None:
            return
        self._started = None
        try:
            self._stop(tolerate_nack=False)
        except OSError as exc:
            log.debug("%s: stop on close failed: %s", self.label, exc)

    # --- pressure compensation and self test ------------------------------------------------------

    def set_ambient_pressure(self, hpa: float) -> None:
        """Compensate the CO2 reading for ``hpa`` (station pressure, e.g. from a BME280).

        Allowed while the chip measures (table 9); sent when its whole hPa changes (the chip
        keeps it), and again after every ``setup``, because the chip forgets it at power-up
        (a power loss stops the measurement too, which sets the chip up again). Raises
        :class:`DriverConfigError` outside the 700-1200 hPa the chip accepts, and the bus's
        ``OSError`` when the chip does not answer.
        """
        if not math.isfinite(hpa) or not PRESSURE_MIN_HPA <= hpa <= PRESSURE_MAX_HPA:
            raise DriverConfigError(
                f"{self.label}: ambient pressure {hpa} hPa is outside the "
                f"{PRESSURE_MIN_HPA:g}-{PRESSURE_MAX_HPA:g} hPa the SCD4x accepts"
            )
        self._pressure_hpa = hpa
        if self._started is not None:
            self._send_pressure(hpa)

    # --- transfers ------------------------------------------------------------------------------

    def _wait_for_data(self) -> None:
        started = self._last_data
        deadline = started + SIGNAL_UPDATE_INTERVAL_S + READY_MARGIN_S
        while True:
            (status,) = self._read_words(GET_DATA_READY_STATUS, 1)
            if status & DATA_READY_MASK:
                return
            if self.clock.monotonic() >= deadline:
                raise SensorTimeoutError(
                    f"{self.label}: no new measurement for "
                    f"{self.clock.monotonic() - started:.1f} s (data-ready 0x{status:04x}); "
                    "the chip may have stopped measuring"
                )
            self.clock.sleep(READY_POLL_S)  # the bus is free for other sensors meanwhile

    def _read_words(self, code: int, words: int) -> list[int]:
        return sensirion.read_words(
            self.bus, self.address, sensirion.command(code), words,
            clock=self.clock, wait=COMMAND_S, where=self.label,
        )

    def _write(self, data: bytes, wait: float = 0.0) -> None:
        with self.bus.lock:
            self.bus.write(self.address, data)
            if wait:
                self.clock.sleep(wait)

    def _send_pressure(self, hpa: float) -> None:
        # 3.6.5: the argument word is the pressure in Pa / 100, i.e. in hPa.
        whole = round(hpa)
        if whole == self._sent_hpa:
            return
        request = sensirion.command(SET_AMBIENT_PRESSURE) + sensirion.frame_words(whole)
        self._write(request, COMMAND_S)
        self._sent_hpa = whole

    def _stop(self, *, tolerate_nack: bool) -> None:
        """stop_periodic_measurement and its 500 ms; ``tolerate_nack``: from an idle chip too."""
        try:
            self._write(sensirion.command(STOP_PERIODIC_MEASUREMENT))
        except OSError as exc:
            if not tolerate_nack or exc.errno != errno.EREMOTEIO:
                raise
        self.clock.sleep(STOP_S)
