"""Command-level models of the Sensirion SHT3x (SHT30/31/35) and SHT4x (SHT40/41/45).

SHT3x numbers are from the data sheet "SHT3x-DIS" v5 (May 2018): single-shot commands with and
without clock stretching (4.3, table 9), periodic data acquisition (4.5, table 10), fetch data
(4.6, table 11), ART (4.7), break (4.8), soft reset (4.9), heater (table 16), status register
(tables 17-19), timings (table 4). SHT4x
numbers are from the data sheet "SHT4x" (Version 3, April 2022): the one-byte command table and the
timing table. Both models answer with the raw ticks a real chip would send for the physical inputs,
inverting the data sheets' conversion formulas, and take typical durations, so a driver that waits
the documented maximum always finds the answer ready.

A model starts as a chip powered up a while ago (no start-up time; a soft reset does take its
time). Behaviour the data sheets state and the models keep: a measurement command starts a
conversion during which the chip acknowledges nothing; a read with no result waiting is NACKed; a
result is read once. Where the data sheets are silent the models choose, and say so: the SHT3x
acknowledges a command it does not know (or a one-byte write) and flags it in status bit 1 ("last
command not processed"), so a following read is NACKed for want of data; the SHT4x does not
acknowledge an unknown command byte. SHT3x clock stretching: a read during the conversion is
acknowledged and answered when the conversion ends (the model sleeps on its clock for the rest of
it, as the master waits on SCL). SHT3x periodic mode: a measurement every 1/mps s, each taking the
repeatability's conversion time; fetch data answers the newest unread one and clears it (4.6),
its read is NACKed when there is none. 4.8 asks to send break before any command but fetch; the
model executes, besides fetch and break, a new periodic/ART command (restarting the acquisition),
the heater and status commands, and leaves any other command unprocessed (status bit 1) --
Adafruit notes that the chip ignores a soft reset in periodic mode. Not modelled: alert limits
(their commands count as unknown); any temperature rise from the heaters, which only set their
status (SHT3x) or take their time (SHT4x).
"""

from __future__ import annotations

import math

from drivers.clock import Clock
from drivers.sim.environment import Source
from drivers.sim.sensirion import CommandChip, celsius_ticks, nack, to_ticks
from drivers.sim.simbus import remember

_MS = 1e-3
_TIME_EPSILON = 1e-9  # of a period: float sums like 1000.0 + 2.3 - 1000.0 < 2.3

# --- SHT3x --------------------------------------------------------------------------------------
SHT3X_MEASURE_HIGH = 0x2400  # single shot, clock stretching disabled (table 9)
SHT3X_MEASURE_MEDIUM = 0x240B
SHT3X_MEASURE_LOW = 0x2416
# The same with clock stretching enabled (table 9): the read waits on SCL instead of a NACK.
SHT3X_STRETCH_HIGH = 0x2C06
SHT3X_STRETCH_MEDIUM = 0x2C0D
SHT3X_STRETCH_LOW = 0x2C10
SHT3X_STRETCHED = {
    SHT3X_STRETCH_HIGH: SHT3X_MEASURE_HIGH,
    SHT3X_STRETCH_MEDIUM: SHT3X_MEASURE_MEDIUM,
    SHT3X_STRETCH_LOW: SHT3X_MEASURE_LOW,
}
# Periodic data acquisition (table 10): command -> (measurements per second, repeatability as
# the no-stretch single-shot command of the same repeatability, for its conversion time).
SHT3X_PERIODIC = {
    0x2032: (0.5, SHT3X_MEASURE_HIGH), 0x2024: (0.5, SHT3X_MEASURE_MEDIUM),
    0x202F: (0.5, SHT3X_MEASURE_LOW),
    0x2130: (1.0, SHT3X_MEASURE_HIGH), 0x2126: (1.0, SHT3X_MEASURE_MEDIUM),
    0x212D: (1.0, SHT3X_MEASURE_LOW),
    0x2236: (2.0, SHT3X_MEASURE_HIGH), 0x2220: (2.0, SHT3X_MEASURE_MEDIUM),
    0x222B: (2.0, SHT3X_MEASURE_LOW),
    0x2334: (4.0, SHT3X_MEASURE_HIGH), 0x2322: (4.0, SHT3X_MEASURE_MEDIUM),
    0x2329: (4.0, SHT3X_MEASURE_LOW),
    0x2737: (10.0, SHT3X_MEASURE_HIGH), 0x2721: (10.0, SHT3X_MEASURE_MEDIUM),
    0x272A: (10.0, SHT3X_MEASURE_LOW),
}
SHT3X_ART = 0x2B32  # 4.7: periodic acquisition at 4 Hz
SHT3X_ART_MPS = 4.0
SHT3X_FETCH_DATA = 0xE000  # 4.6, table 11
SHT3X_BREAK_MS = 1.0  # 4.8: "this takes 1 ms"
SHT3X_SOFT_RESET = 0x30A2  # 4.9
SHT3X_BREAK = 0x3093  # stops periodic mode; harmless in single-shot mode (4.8)
SHT3X_HEATER_ON = 0x306D  # table 16
SHT3X_HEATER_OFF = 0x3066
SHT3X_READ_STATUS = 0xF32D  # table 17
SHT3X_CLEAR_STATUS = 0x3041  # table 19
# Serial number without clock stretching, from Sensirion's "electronic identification code" note
# for the SHT3x; not in the main data sheet, so the drivers do not rely on it.
SHT3X_READ_SERIAL = 0x3780

# Typical measurement durations (table 4; the maxima are 4, 6 and 15 ms in v5 and half a
# millisecond longer in later revisions).
SHT3X_MEASURE_MS = {SHT3X_MEASURE_HIGH: 12.5, SHT3X_MEASURE_MEDIUM: 4.5, SHT3X_MEASURE_LOW: 2.5}
SHT3X_RESET_MS = 1.0  # t_SR and t_PU are 1.5 ms at most (table 4)

# Status register bits (table 18).
STATUS_ALERT_PENDING = 1 << 15
STATUS_HEATER_ON = 1 << 13
STATUS_RH_ALERT = 1 << 11
STATUS_T_ALERT = 1 << 10
STATUS_RESET_DETECTED = 1 << 4
STATUS_COMMAND_FAILED = 1 << 1
STATUS_WRITE_CRC_FAILED = 1 << 0
_STATUS_AFTER_RESET = STATUS_ALERT_PENDING | STATUS_RESET_DETECTED  # table 18, default values
_STATUS_CLEARABLE = STATUS_ALERT_PENDING | STATUS_RH_ALERT | STATUS_T_ALERT | STATUS_RESET_DETECTED

# --- SHT4x --------------------------------------------------------------------------------------
SHT4X_MEASURE_HIGH = 0xFD
SHT4X_MEASURE_MEDIUM = 0xF6
SHT4X_MEASURE_LOW = 0xE0
SHT4X_READ_SERIAL = 0x89
SHT4X_SOFT_RESET = 0x94
# Heater command -> (power in mW, on-time in s); each ends with a high-precision measurement.
SHT4X_HEATERS = {
    0x39: (200, 1.0),
    0x32: (200, 0.1),
    0x2F: (110, 1.0),
    0x24: (110, 0.1),
    0x1E: (20, 1.0),
    0x15: (20, 0.1),
}
# Typical measurement durations (timing table: maxima 8.3, 4.5 and 1.6 ms).
SHT4X_MEASURE_MS = {SHT4X_MEASURE_HIGH: 6.9, SHT4X_MEASURE_MEDIUM: 3.7, SHT4X_MEASURE_LOW: 1.3}
SHT4X_RESET_MS = 1.0  # soft reset time, max 1 ms
# RH = -6 + 125 * S / 65535: the chip reports -6 .. 119 %RH and leaves the clamp to the host.
SHT4X_RH_OFFSET = -6.0
SHT4X_RH_SPAN = 125.0
SHT3X_RH_OFFSET = 0.0
SHT3X_RH_SPAN = 100.0


class SHT3xModel(CommandChip):
    """An SHT3x-DIS in single-shot mode; see the module docstring for what is modelled."""

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        source: Source | None = None,
        temperature: float = 20.0,
        humidity: float = 50.0,
        serial: int = 0x1A2B3C4D,
    ) -> None:
        # periodic mode: (start, period, conversion time) and the newest unread result
        self._periodic: tuple[float, float, float] | None = None
        self._periodic_done = 0
        self._periodic_data: list[int] | None = None
        super().__init__(clock=clock, source=source, temperature=temperature, humidity=humidity)
        self.serial = serial
        self._status = _STATUS_AFTER_RESET  # powered up a while ago: no start-up time to wait

    @property
    def periodic(self) -> bool:
        """Whether periodic data acquisition (or ART) runs."""
        with self._lock:
            return self._periodic is not None

    @property
    def status(self) -> int:
        """The status register as the chip would report it now."""
        with self._lock:
            return self._status

    @property
    def heater_on(self) -> bool:
        return bool(self._status & STATUS_HEATER_ON)

    def power_on_reset(self) -> None:
        """A soft reset or power cycle: defaults, and t_SR during which the chip answers nothing."""
        with self._lock:
            now = self.clock.monotonic()
            self._status = _STATUS_AFTER_RESET  # the heater is off after any reset
            self._periodic, self._periodic_data = None, None
            self.discard_response()
            self.busy(now, SHT3X_RESET_MS * _MS)

    def execute(self, data: bytes, now: float) -> None:
        code = int.from_bytes(data, "big") if len(data) == 2 else None
        if code == SHT3X_READ_STATUS:
            self.respond([self._status], now)  # reports on the command before this one
            return
        if code is None or not self._run(code, now):
            self.discard_response()  # nothing to read after a command the chip did not run
            self._status |= STATUS_COMMAND_FAILED  # table 18, bit 1; the write is still ACKed
            return
        self._status &= ~STATUS_COMMAND_FAILED
        remember(self.commands, code)

    def advance(self, now: float) -> None:
        """Latch the newest periodic measurement that has ended by ``now``."""
        if self._periodic is None or self.stuck_measuring:
            return
        start, period, conversion = self._periodic
        done = math.floor((now - start - conversion) / period + _TIME_EPSILON) + 1
        if done > self._periodic_done:
            self._periodic_done = done
            self._periodic_data = self._words(start + (done - 1) * period + conversion)

    def _words(self, at: float) -> list[int]:
        air = self.conditions(at)
        rh = to_ticks(air.humidity, SHT3X_RH_OFFSET, SHT3X_RH_SPAN)
        return [celsius_ticks(air.temperature), rh]

    def _run(self, code: int, now: float) -> bool:
        if self._periodic is not None:
            return self._run_periodic(code, now)
        if code in SHT3X_MEASURE_MS or code in SHT3X_STRETCHED:
            seconds = SHT3X_MEASURE_MS[SHT3X_STRETCHED.get(code, code)] * _MS
            self.measure(now, seconds, self._words(now + seconds), stretch=code in SHT3X_STRETCHED)
        elif code in SHT3X_PERIODIC or code == SHT3X_ART:
            self._start_periodic(code, now)
        elif code == SHT3X_SOFT_RESET:
            self.power_on_reset()
        elif code == SHT3X_READ_SERIAL:
            self.respond([self.serial >> 16, self.serial & 0xFFFF], now)
        else:
            return self._status_command(code) or code == SHT3X_BREAK
        return True

    def _status_command(self, code: int) -> bool:
        """The heater and clear-status commands (tables 16, 17), in either mode."""
        if code == SHT3X_HEATER_ON:
            self._status |= STATUS_HEATER_ON
        elif code == SHT3X_HEATER_OFF:
            self._status &= ~STATUS_HEATER_ON
        elif code == SHT3X_CLEAR_STATUS:
            self._status &= ~_STATUS_CLEARABLE
        else:
            return False
        return True

    def _start_periodic(self, code: int, now: float) -> None:
        mps, repeatability = SHT3X_PERIODIC.get(code, (SHT3X_ART_MPS, SHT3X_MEASURE_HIGH))
        self._periodic = (now, 1.0 / mps, SHT3X_MEASURE_MS[repeatability] * _MS)
        self._periodic_done, self._periodic_data = 0, None
        self.discard_response()

    def _run_periodic(self, code: int, now: float) -> bool:
        """A command while periodic acquisition runs (see the module docstring)."""
        if code == SHT3X_FETCH_DATA:
            self.discard_response()  # 4.6: no data -> the read header is NACKed
            if self._periodic_data is not None:
                self.respond(self._periodic_data, now)
                self._periodic_data = None  # "the data memory is cleared"
        elif code == SHT3X_BREAK:
            self._periodic, self._periodic_data = None, None
            self.discard_response()
            self.busy(now, SHT3X_BREAK_MS * _MS)
        elif code in SHT3X_PERIODIC or code == SHT3X_ART:
            self._start_periodic(code, now)
        else:
            return self._status_command(code)
        return True


class SHT4xModel(CommandChip):
    """An SHT4x: one-byte commands, six heater pulses, a 32-bit serial number."""

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        source: Source | None = None,
        temperature: float = 20.0,
        humidity: float = 50.0,
        serial: int = 0x0F3C5A96,
    ) -> None:
        super().__init__(clock=clock, source=source, temperature=temperature, humidity=humidity)
        self.serial = serial
        self.heater_pulses: list[tuple[int, float]] = []  # (mW, s); the newest (simbus.remember)

    def execute(self, data: bytes, now: float) -> None:
        if len(data) != 1:
            raise nack()  # every SHT4x command is a single byte
        code = data[0]
        if code in SHT4X_MEASURE_MS:
            self._measure(now, 0.0, SHT4X_MEASURE_MS[code] * _MS)
        elif code in SHT4X_HEATERS:
            power, on_time = SHT4X_HEATERS[code]
            remember(self.heater_pulses, (power, on_time))
            self._measure(now, on_time, SHT4X_MEASURE_MS[SHT4X_MEASURE_HIGH] * _MS)
        elif code == SHT4X_READ_SERIAL:
            self.respond([self.serial >> 16, self.serial & 0xFFFF], now)
        elif code == SHT4X_SOFT_RESET:
            self.discard_response()
            self.busy(now, SHT4X_RESET_MS * _MS)
        else:
            raise nack()
        remember(self.commands, code)

    def _measure(self, now: float, heating: float, conversion: float) -> None:
        seconds = heating + conversion
        air = self.conditions(now + seconds)
        rh = to_ticks(air.humidity, SHT4X_RH_OFFSET, SHT4X_RH_SPAN)
        self.measure(now, seconds, [celsius_ticks(air.temperature), rh])
