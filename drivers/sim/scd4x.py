"""A command-level model of the Sensirion SCD4x (SCD40/SCD41) CO2 sensor.

Numbers are from the data sheet "SCD4x" Version 1.3 (September 2022): the command table (table 9:
codes, execution times, and which commands the chip accepts while a periodic measurement runs),
start/read/stop (3.5.1-3.5.3), set_ambient_pressure (3.6.5: the argument is Pa / 100),
get_data_ready_status (3.8.2: ready when the low 11 bits are not 0), get_serial_number (3.9.2),
perform_self_test (3.9.3) and reinit (3.9.5). The periodic measurement updates every 5 s.

Also from table 9 and its sections (3.6-3.10), as Sensirion's own driver (sensirion-i2c-scd4x)
encodes them: the settings -- temperature offset (default 4 °C, word = T * 65535 / 175; the reported
T rises by the default minus the offset, RH follows at constant vapour pressure), sensor altitude
(default 0 m; used for the pressure compensation while no ambient pressure is set), ASC enabled
(default 1), ASC target (400 ppm), ASC initial and standard periods (44 h, 156 h) -- held in RAM,
stored by persist_settings (800 ms), reloaded by reinit and set to their defaults by
perform_factory_reset (1200 ms); start_low_power_periodic_measurement (30 s interval);
measure_single_shot (5000 ms) and measure_single_shot_rht_only (50 ms, CO2 reads 0);
perform_forced_recalibration (400 ms; answers the correction + 0x8000, or 0xFFFF when the sensor
has not measured since power-up, and shifts later CO2 readings by the correction); power_down
(the chip then acknowledges nothing) and wake_up (30 ms, never acknowledged, 3.10.4);
get_sensor_variant (bits 15:12: 0 SCD40, 1 SCD41, 5 SCD43).

Modelled: idle and periodic modes; commands outside table 9's "during measurement" column are
NACKed while measuring (as the chip does: EREMOTEIO on Linux); the 500 ms after
stop_periodic_measurement during which the chip answers nothing; the data buffer, emptied by a
read and NACKed when empty; and pressure compensation: the photoacoustic cell senses CO2 molecules
per volume, so the chip's ppm scale with the actual pressure over the pressure it compensates for
(1013 hPa unless told otherwise). Model choices: data-ready answers 0x8000 when nothing is ready
and 0x8006 when a measurement is (only the low 11 bits carry meaning); the chip is ready at once
after power-up (the real one takes up to a second); ASC itself does not change readings; unknown
command codes are NACKed; single-shot commands are executed whatever the variant.

Faults, besides those of :class:`CommandChip`: ``stale`` keeps the periodic measurement running
but never marks new data ready (and never fills the buffer).
"""

from __future__ import annotations

import math

from drivers.clock import Clock
from drivers.sim.environment import (
    Conditions,
    Source,
    saturation_vapour_pressure,
    station_pressure,
)
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
START_LOW_POWER_PERIODIC_MEASUREMENT = 0x21AC
PERSIST_SETTINGS = 0x3615
PERFORM_FACTORY_RESET = 0x3632
PERFORM_FORCED_RECALIBRATION = 0x362F
MEASURE_SINGLE_SHOT = 0x219D
MEASURE_SINGLE_SHOT_RHT_ONLY = 0x2196
POWER_DOWN = 0x36E0
WAKE_UP = 0x36F6
GET_SENSOR_VARIANT = 0x202F

# Settings (3.6, 3.7, 3.11): name -> default word; the get and set command of each.
TEMPERATURE_OFFSET_DEFAULT_C = 4.0
SETTING_DEFAULTS = {
    "temperature_offset": round(TEMPERATURE_OFFSET_DEFAULT_C * WORD_MAX / 175.0),  # 1498
    "altitude": 0,
    "asc_enabled": 1,
    "asc_target": 400,
    "asc_initial_period": 44,
    "asc_standard_period": 156,
}
GET_SETTING = {
    0x2318: "temperature_offset", 0x2322: "altitude", 0x2313: "asc_enabled",
    0x233F: "asc_target", 0x2340: "asc_initial_period", 0x234B: "asc_standard_period",
}
SET_SETTING = {
    0x241D: "temperature_offset", 0x2427: "altitude", 0x2416: "asc_enabled",
    0x243A: "asc_target", 0x2445: "asc_initial_period", 0x244E: "asc_standard_period",
}
VARIANTS = {"SCD40": 0x0, "SCD41": 0x1, "SCD42": 0x2, "SCD43": 0x5}  # get_sensor_variant 15:12

# Table 9, column "during meas.": the only commands a periodic measurement accepts.
ALLOWED_WHILE_MEASURING = frozenset(
    {READ_MEASUREMENT, STOP_PERIODIC_MEASUREMENT, SET_AMBIENT_PRESSURE, GET_DATA_READY_STATUS}
)

# Execution times from table 9, in seconds.
T_READ = 0.001
T_STOP = 0.500
T_SELF_TEST = 10.0
T_REINIT = 0.020
T_SETTING = 0.001
T_PERSIST = 0.800
T_FACTORY_RESET = 1.200
T_FRC = 0.400
T_SINGLE_SHOT = 5.000
T_SINGLE_SHOT_RHT = 0.050
T_WAKE_UP = 0.030
SIGNAL_UPDATE_INTERVAL_S = 5.0  # periodic measurement (3.5.1)
LOW_POWER_INTERVAL_S = 30.0  # low power periodic measurement (3.7.1)
FRC_FAILED = 0xFFFF
FRC_ZERO = 0x8000  # the answer is the correction in ppm + 0x8000

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
        variant: str = "SCD41",
    ) -> None:
        self._started: float | None = None  # before the base class: inputs set there advance
        self._interval = SIGNAL_UPDATE_INTERVAL_S
        self.settings = dict(SETTING_DEFAULTS)  # RAM
        self.eeprom = dict(SETTING_DEFAULTS)  # what persist_settings stored
        self.frc_correction = 0  # ppm, from the last forced recalibration
        self.last_co2: int | None = None  # the last CO2 measured, before the FRC correction
        self.asleep = False  # after power_down, until wake_up
        self._latched = 0
        self._data: list[int] | None = None
        self._ready = False
        self.stale = False
        self.co2 = co2
        self.pressure = pressure
        super().__init__(clock=clock, source=source, temperature=temperature, humidity=humidity)
        self.serial = serial
        self.variant = VARIANTS[variant]
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
        cycles = math.floor((now - self._started) / self._interval)
        if cycles <= self._latched:
            return
        at = self._started + cycles * self._interval
        self.measurements += cycles - self._latched
        self._latched = cycles
        self._data = self._convert(self.conditions(at))
        self._ready = True

    def _convert(self, air: Conditions, *, co2: bool = True) -> list[int]:
        compensated = self.ambient_pressure_hpa
        if not compensated:  # 3.6.3: the altitude stands in for the pressure
            altitude = self.settings["altitude"]
            compensated = (
                DEFAULT_COMPENSATION_HPA * station_pressure(altitude) / station_pressure(0)
            )
        ppm = round(air.co2 * air.pressure / compensated) + self.frc_correction if co2 else 0
        if co2:
            self.last_co2 = ppm - self.frc_correction  # what FRC corrects
        # The default offset cancels the sensor's self-heating; another one shifts T, and RH with
        # it at the same vapour pressure.
        shift = SETTING_DEFAULTS["temperature_offset"] - self.settings["temperature_offset"]
        reported = air.temperature + shift * 175.0 / WORD_MAX
        humidity = air.humidity * (
            saturation_vapour_pressure(air.temperature) / saturation_vapour_pressure(reported)
        )
        return [
            min(max(ppm, 0), WORD_MAX),
            celsius_ticks(reported),
            to_ticks(humidity, 0.0, RH_SPAN),
        ]

    # --- commands -------------------------------------------------------------------------------

    def execute(self, data: bytes, now: float) -> None:
        if len(data) < 2:
            raise nack()
        code, argument = int.from_bytes(data[:2], "big"), data[2:]
        if code == WAKE_UP:
            remember(self.commands, code)
            if self.asleep:
                self.asleep = False
                self.busy(now, T_WAKE_UP)
            raise nack()  # 3.10.4: "the SCD4x does not acknowledge the wake_up command"
        if self.asleep:
            raise nack()  # power_down: only wake_up reaches the chip
        if self.measuring and code not in ALLOWED_WHILE_MEASURING:
            raise nack()  # table 9: not available during a periodic measurement
        if code in (START_PERIODIC_MEASUREMENT, START_LOW_POWER_PERIODIC_MEASUREMENT):
            self._started, self._latched, self._ready = now, 0, False
            self._interval = (
                SIGNAL_UPDATE_INTERVAL_S if code == START_PERIODIC_MEASUREMENT
                else LOW_POWER_INTERVAL_S
            )
        elif code in GET_SETTING:
            self.respond([self.settings[GET_SETTING[code]]], now, T_SETTING)
        elif code in SET_SETTING:
            self.settings[SET_SETTING[code]] = self._argument(argument)
            self.busy(now, T_SETTING)
        elif code == PERSIST_SETTINGS:
            self.eeprom = dict(self.settings)
            self.busy(now, T_PERSIST)
        elif code == PERFORM_FACTORY_RESET:
            self.settings, self.eeprom = dict(SETTING_DEFAULTS), dict(SETTING_DEFAULTS)
            self.frc_correction, self.ambient_pressure_hpa = 0, None
            self.busy(now, T_FACTORY_RESET)
        elif code == PERFORM_FORCED_RECALIBRATION:
            self._forced_recalibration(self._argument(argument), now)
        elif code in (MEASURE_SINGLE_SHOT, MEASURE_SINGLE_SHOT_RHT_ONLY):
            seconds = T_SINGLE_SHOT if code == MEASURE_SINGLE_SHOT else T_SINGLE_SHOT_RHT
            air = self.conditions(now + seconds)
            self._data = self._convert(air, co2=code == MEASURE_SINGLE_SHOT)
            self._ready = True  # visible once the chip answers again, after ``seconds``
            self.measurements += 1
            self.busy(now, seconds)
        elif code == POWER_DOWN:
            self.asleep = True
            self.busy(now, T_SETTING)
        elif code == GET_SENSOR_VARIANT:
            self.respond([self.variant << 12], now, T_READ)
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
            self.settings = dict(self.eeprom)
            self.busy(now, T_REINIT)
        else:
            raise nack()
        remember(self.commands, code)

    @staticmethod
    def _argument(argument: bytes) -> int:
        """The one argument word of a set command; a wrong CRC or length is not taken."""
        words = unframe(argument)
        if words is None or len(words) != 1:
            raise nack()
        return words[0]

    def _forced_recalibration(self, target: int, now: float) -> None:
        """3.7.1 (FRC): the correction that makes the last reading the target, + 0x8000."""
        if self.last_co2 is None:
            self.respond([FRC_FAILED], now, T_FRC)  # not operated before the command
        else:
            correction = target - self.last_co2
            self.frc_correction = correction
            self.respond([(FRC_ZERO + correction) & WORD_MAX], now, T_FRC)
        self.busy(now, T_FRC)

    def _ambient_pressure(self, argument: bytes, now: float) -> None:
        if not argument:
            hpa = self.ambient_pressure_hpa or DEFAULT_COMPENSATION_HPA
            self.respond([round(hpa)], now, T_READ)
            return
        words = unframe(argument)
        if words is None or len(words) != 1:
            raise nack()  # a wrong CRC: the chip does not take the value
        self.ambient_pressure_hpa = float(words[0])  # the word is Pa / 100, i.e. hPa
