"""An opcode-level model of the ROHM BH1750FVI ambient light sensor.

Page numbers refer to the BH1750FVI datasheet (rev. D, 2011). The chip has no register file:
each byte written is an opcode (p. 5), each read returns the 16-bit data register, high byte
first (p. 7). The model keeps the chip's states on the bus's clock -- power down, power on,
measuring (one-time or continuous) -- and turns an illuminance in lx into the count a real chip
reports: lx × 1.2 × (MTreg / 69), doubled in H-resolution mode2 (p. 2, p. 11), saturating at
0xFFFF.

Simplifications, where the datasheet is silent: measurement commands are accepted from power
down as well as power on (real parts do this; ESPHome and the Arduino libraries rely on it); a
write of several bytes executes each as an opcode; reads past the two data bytes return 0xFF;
L-resolution counts have their two low bits zero (the datasheet gives only "4 lx resolution");
an unknown opcode is ignored; the light level is sampled at the end of each measurement.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

from drivers.clock import Clock, SystemClock
from drivers.sim.environment import Source
from drivers.sim.simbus import remember

POWER_DOWN = 0x00
POWER_ON = 0x01
RESET = 0x07  # "not acceptable in Power Down mode" (p. 5)
CONTINUOUS_H = 0x10
CONTINUOUS_H2 = 0x11
CONTINUOUS_L = 0x13
ONE_TIME_H = 0x20
ONE_TIME_H2 = 0x21
ONE_TIME_L = 0x23
_MTREG_HIGH = 0b0100_0000  # 01000_MT[7:5]
_MTREG_HIGH_MASK = 0b1111_1000
_MTREG_LOW = 0b0110_0000  # 011_MT[4:0]
_MTREG_LOW_MASK = 0b1110_0000
_MT_LOW_BITS = 0b1_1111

MTREG_DEFAULT = 69  # p. 11
COUNTS_PER_LUX = 1.2  # typical "measurement accuracy", sensor out / actual lx (p. 2)
FULL_SCALE = 0xFFFF
_IDLE_BYTE = 0xFF
_TIME_EPSILON = 1e-9  # of a period: float sums like 1000.0 + 2.3 - 1000.0 < 2.3
_L_RESOLUTION_STEP = 4  # counts; an assumption, see the module docstring


@dataclass(frozen=True)
class _Mode:
    one_time: bool
    counts_factor: float  # counts per (lx × 1.2) at MTreg 69
    typical_s: float  # at MTreg 69 (p. 2)
    maximum_s: float
    step: int  # counts


_H = (0.120, 0.180)
_L = (0.016, 0.024)
MODES = {
    CONTINUOUS_H: _Mode(False, 1.0, *_H, 1),
    CONTINUOUS_H2: _Mode(False, 2.0, *_H, 1),
    CONTINUOUS_L: _Mode(False, 1.0, *_L, _L_RESOLUTION_STEP),
    ONE_TIME_H: _Mode(True, 1.0, *_H, 1),
    ONE_TIME_H2: _Mode(True, 2.0, *_H, 1),
    ONE_TIME_L: _Mode(True, 1.0, *_L, _L_RESOLUTION_STEP),
}


class BH1750Model:
    """A BH1750 behind one address; implements :class:`drivers.sim.simbus.SimDevice`.

    The physical input is ``illuminance`` (lx), or a ``source`` whose conditions'
    ``illuminance`` is sampled at the wall time each measurement ends (it wins when set).
    ``slowest`` makes measurements take the datasheet maximum instead of the typical time.
    Fault: ``frozen`` -- the data register stops changing (no result latches and reset has no
    effect), as a chip with a hung core would look.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        source: Source | None = None,
        illuminance: float = 0.0,
        slowest: bool = False,
    ) -> None:
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.source = source
        self.illuminance = illuminance
        self.slowest = slowest
        self.frozen = False
        self.opcodes: list[int] = []  # received, for tests; the newest (simbus.remember)
        self._lock = threading.RLock()
        self.power_on_reset()

    def power_on_reset(self) -> None:
        """The state after power-up: powered down, data register 0, MTreg 69 (p. 5, p. 11)."""
        with self._lock:
            self.powered = False
            self.data = 0
            self.mtreg = MTREG_DEFAULT
            self.measurements = 0
            self._mode: _Mode | None = None
            self._opcode = ONE_TIME_H
            self._mode_mtreg = MTREG_DEFAULT
            self._started = 0.0

    @property
    def measuring(self) -> bool:
        with self._lock:
            self._advance(self.clock.monotonic())
            return self._mode is not None

    def measurement_time(self, opcode: int = ONE_TIME_H, mtreg: int | None = None) -> float:
        """Seconds one measurement takes in this model (typical, or maximum when slowest)."""
        mode = MODES[opcode]
        base = mode.maximum_s if self.slowest else mode.typical_s
        return base * (self.mtreg if mtreg is None else mtreg) / MTREG_DEFAULT

    def counts(self, lux: float, opcode: int = ONE_TIME_H, mtreg: int | None = None) -> int:
        """The data register a measurement of ``lux`` gives in the mode of ``opcode``."""
        mode = MODES[opcode]
        mt = self.mtreg if mtreg is None else mtreg
        exact = max(0.0, lux) * COUNTS_PER_LUX * mode.counts_factor * mt / MTREG_DEFAULT
        if not math.isfinite(exact):
            return FULL_SCALE
        return min(FULL_SCALE, round(exact / mode.step) * mode.step)

    # --- SimDevice ------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        with self._lock:
            now = self.clock.monotonic()
            self._advance(now)
            for opcode in data:
                remember(self.opcodes, opcode)
                self._execute(opcode, now)

    def read(self, length: int) -> bytes:
        with self._lock:
            self._advance(self.clock.monotonic())
            word = self.data.to_bytes(2, "big")
            return (word + bytes([_IDLE_BYTE]) * max(0, length - 2))[:length]

    # --- state machine --------------------------------------------------------------------------

    def _execute(self, opcode: int, now: float) -> None:
        if opcode == POWER_DOWN:
            self.powered, self._mode = False, None
        elif opcode == POWER_ON:
            self.powered = True
        elif opcode == RESET:
            if self.powered and not self.frozen:
                self.data = 0
        elif opcode in MODES:
            self.powered = True
            self._mode, self._mode_mtreg, self._started = MODES[opcode], self.mtreg, now
            self._opcode = opcode
        elif opcode & _MTREG_HIGH_MASK == _MTREG_HIGH:
            self.mtreg = (opcode & 0b111) << 5 | self.mtreg & _MT_LOW_BITS
        elif opcode & _MTREG_LOW_MASK == _MTREG_LOW:
            self.mtreg = self.mtreg & ~_MT_LOW_BITS & 0xFF | opcode & _MT_LOW_BITS

    def _advance(self, now: float) -> None:
        """Finish the measurements that ended by ``now``; latch the last one's result."""
        mode = self._mode
        if mode is None:
            return
        duration = self.measurement_time(self._opcode, self._mode_mtreg)
        done = math.floor((now - self._started) / duration + _TIME_EPSILON) if duration > 0 else 1
        if done < 1:
            return
        if mode.one_time:
            done = 1
        end = self._started + done * duration
        if not self.frozen:
            wall = self.clock.time() - (now - end)
            lux = self.source(wall).illuminance if self.source is not None else self.illuminance
            self.data = self.counts(lux, self._opcode, self._mode_mtreg)
        self.measurements += done
        if mode.one_time:
            self._mode, self.powered = None, False  # one-time modes power down by themselves
        else:
            self._started = end
