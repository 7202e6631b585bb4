"""Command-level models of the Sensirion SHT3x (SHT30/31/35) and SHT4x (SHT40/41/45).

SHT3x numbers are from the data sheet "SHT3x-DIS" v5 (May 2018): single-shot commands (table 9),
soft reset (4.9), heater (table 16), status register (tables 17-19), timings (table 4). SHT4x
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
acknowledge an unknown command byte. Not modelled: SHT3x periodic mode, ART and alert limits (their
commands count as unknown); clock-stretching variants (a SimBus cannot stretch SCL); any
temperature rise from the heaters, which only set their status (SHT3x) or take their time (SHT4x).
"""

from __future__ import annotations

from drivers.clock import Clock
from drivers.sim.environment import Source
from drivers.sim.sensirion import CommandChip, celsius_ticks, nack, to_ticks
from drivers.sim.simbus import remember

_MS = 1e-3

# --- SHT3x --------------------------------------------------------------------------------------
SHT3X_MEASURE_HIGH = 0x2400  # single shot, clock stretching disabled (table 9)
SHT3X_MEASURE_MEDIUM = 0x240B
SHT3X_MEASURE_LOW = 0x2416
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
        super().__init__(clock=clock, source=source, temperature=temperature, humidity=humidity)
        self.serial = serial
        self._status = _STATUS_AFTER_RESET  # powered up a while ago: no start-up time to wait

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

    def _run(self, code: int, now: float) -> bool:
        if code in SHT3X_MEASURE_MS:
            seconds = SHT3X_MEASURE_MS[code] * _MS
            air = self.conditions(now + seconds)
            rh = to_ticks(air.humidity, SHT3X_RH_OFFSET, SHT3X_RH_SPAN)
            self.measure(now, seconds, [celsius_ticks(air.temperature), rh])
        elif code == SHT3X_SOFT_RESET:
            self.power_on_reset()
        elif code == SHT3X_HEATER_ON:
            self._status |= STATUS_HEATER_ON
        elif code == SHT3X_HEATER_OFF:
            self._status &= ~STATUS_HEATER_ON
        elif code == SHT3X_CLEAR_STATUS:
            self._status &= ~_STATUS_CLEARABLE
        elif code == SHT3X_READ_SERIAL:
            self.respond([self.serial >> 16, self.serial & 0xFFFF], now)
        else:
            return code == SHT3X_BREAK
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
