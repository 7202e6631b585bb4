"""A command-level model of the Sensirion SCD4x (SCD40/SCD41) CO2 sensor.

Numbers are from the data sheet "SCD4x" Version 1.3 (September 2022): the command table (table 9:
codes, execution times, and which commands the chip accepts while a periodic measurement runs),
start/read/stop (3.5.1-3.5.3), set_ambient_pressure (3.6.5: the argument is Pa / 100),
get_data_ready_status (3.8.2: ready when the low 11 bits are not 0), get_serial_number (3.9.2),
perform_self_test (3.9.3) and reinit (3.9.5). The periodic measurement updates every 5 s.

Modelled: idle and periodic modes; commands outside table 9's "during measurement" column are
NACKed while measuring (as the chip does: EREMOTEIO on Linux); the 500 ms after
stop_periodic_measurement during which the chip answers nothing; the data buffer, emptied by a
read and NACKed when empty; and pressure compensation: the photoacoustic cell senses CO2 molecules
per volume, so the chip's ppm scale with the actual pressure over the pressure it compensates for
(1013 hPa unless told otherwise). Model choices: data-ready answers 0x8000 when nothing is ready
and 0x8006 when a measurement is (only the low 11 bits carry meaning); the chip is ready at once
after power-up (the real one takes up to a second); the commands of table 9 not listed below
(offsets, altitude, calibration, single shot, persist) are NACKed.

Faults, besides those of :class:`CommandChip`: ``stale`` keeps the periodic measurement running
but never marks new data ready (and never fills the buffer).
"""

from __future__ import annotations

import math

from drivers.clock import Clock
from drivers.sim.environment import Conditions, Source
from drivers.sim.sensirion import (
    RH_SPAN,
    STANDARD_PRESSURE_HPA,
    WORD_MAX,
    CommandChip,
    celsius_ticks,
    nack,
    to_ticks,
    unframe,
)
from drivers.sim.simbus import remember

START_PERIODIC_MEASUREMENT = 0x21B1
READ_MEASUREMENT = 0xEC05
STOP_PERIODIC_MEASUREMENT = 0x3F86
SET_AMBIENT_PRESSURE = 0xE000  # with no argument: get_ambient_pressure (later data sheets)
GET_DATA_READY_STATUS = 0xE4B8
GET_SERIAL_NUMBER = 0x3682
PERFORM_SELF_TEST = 0x3639
REINIT = 0x3646

# Table 9, column "during meas.": the only commands a periodic measurement accepts.
ALLOWED_WHILE_MEASURING = frozenset(
    {READ_MEASUREMENT, STOP_PERIODIC_MEASUREMENT, SET_AMBIENT_PRESSURE, GET_DATA_READY_STATUS}
)

# Execution times from table 9, in seconds.
T_READ = 0.001
T_STOP = 0.500
T_SELF_TEST = 10.0
T_REINIT = 0.020
SIGNAL_UPDATE_INTERVAL_S = 5.0  # periodic measurement (3.5.1)

DATA_READY_RESERVED = 0x8000  # model choice for the bits above the 11 that mean "ready"
DATA_READY_FLAG = 0x0006
SELF_TEST_OK = 0x0000  # 3.9.3: any other word means a malfunction
# The pressure the chip compensates for until told otherwise (later data sheet revisions:
# "the default value is 1013 hPa").
DEFAULT_COMPENSATION_HPA = 1013.0
DATASHEET_SERIAL = 273_325_796_834_238  # the example of 3.9.2: 0xf896 0x9f07 0x3bbe


class SCD4xModel(CommandChip):
    """An SCD4x behind address 0x62; ``co2`` (ppm) and ``pressure`` (hPa) join T and RH."""

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        source: Source | None = None,
        temperature: float = 20.0,
        humidity: float = 50.0,
        co2: float = 420.0,
        pressure: float = STANDARD_PRESSURE_HPA,
        serial: int = DATASHEET_SERIAL,
    ) -> None:
        self._started: float | None = None  # before the base class: inputs set there advance
        self._latched = 0
        self._data: list[int] | None = None
        self._ready = False
        self.stale = False
        self.co2 = co2
        self.pressure = pressure
        super().__init__(clock=clock, source=source, temperature=temperature, humidity=humidity)
        self.serial = serial
        self.ambient_pressure_hpa: float | None = None  # what set_ambient_pressure told the chip
        self.measurements = 0

    @property
    def measuring(self) -> bool:
        """Whether a periodic measurement runs."""
        return self._started is not None

    def conditions(self, now: float) -> Conditions:
        if self.source is not None:
            return super().conditions(now)
        return Conditions(
            temperature=self.temperature,
            humidity=self.humidity,
            pressure=self.pressure,
            co2=self.co2,
        )

    # --- time -----------------------------------------------------------------------------------

    def advance(self, now: float) -> None:
        """Latch the newest periodic measurement that has finished by ``now``."""
        if self._started is None or self.stale:
            return
        cycles = math.floor((now - self._started) / SIGNAL_UPDATE_INTERVAL_S)
        if cycles <= self._latched:
            return
        at = self._started + cycles * SIGNAL_UPDATE_INTERVAL_S
        self.measurements += cycles - self._latched
        self._latched = cycles
        self._data = self._convert(self.conditions(at))
        self._ready = True

    def _convert(self, air: Conditions) -> list[int]:
        compensated = self.ambient_pressure_hpa or DEFAULT_COMPENSATION_HPA
        ppm = round(air.co2 * air.pressure / compensated)
        return [
            min(max(ppm, 0), WORD_MAX),
            celsius_ticks(air.temperature),
            to_ticks(air.humidity, 0.0, RH_SPAN),
        ]

    # --- commands -------------------------------------------------------------------------------

    def execute(self, data: bytes, now: float) -> None:
        if len(data) < 2:
            raise nack()
        code, argument = int.from_bytes(data[:2], "big"), data[2:]
        if self.measuring and code not in ALLOWED_WHILE_MEASURING:
            raise nack()  # table 9: not available during a periodic measurement
        if code == START_PERIODIC_MEASUREMENT:
            self._started, self._latched, self._ready = now, 0, False
        elif code == READ_MEASUREMENT:
            self.discard_response()
            if self._ready and self._data is not None:
                self.respond(self._data, now, T_READ)  # 3.5.2: the buffer empties on read-out
            self._ready = False
        elif code == STOP_PERIODIC_MEASUREMENT:
            self._started, self._ready = None, False
            self.busy(now, T_STOP)
        elif code == SET_AMBIENT_PRESSURE:
            self._ambient_pressure(argument, now)
        elif code == GET_DATA_READY_STATUS:
            flag = DATA_READY_FLAG if self._ready else 0
            self.respond([DATA_READY_RESERVED | flag], now, T_READ)
        elif code == GET_SERIAL_NUMBER:
            s = self.serial
            self.respond([(s >> 32) & WORD_MAX, (s >> 16) & WORD_MAX, s & WORD_MAX], now, T_READ)
        elif code == PERFORM_SELF_TEST:
            self.respond([SELF_TEST_OK], now, T_SELF_TEST)
            self.busy(now, T_SELF_TEST)
        elif code == REINIT:
            self.ambient_pressure_hpa = None  # settings reload from EEPROM
            self.busy(now, T_REINIT)
        else:
            raise nack()
        remember(self.commands, code)

    def _ambient_pressure(self, argument: bytes, now: float) -> None:
        if not argument:
            hpa = self.ambient_pressure_hpa or DEFAULT_COMPENSATION_HPA
            self.respond([round(hpa)], now, T_READ)
            return
        words = unframe(argument)
        if words is None or len(words) != 1:
            raise nack()  # a wrong CRC: the chip does not take the value
        self.ambient_pressure_hpa = float(words[0])  # the word is Pa / 100, i.e. hPa
