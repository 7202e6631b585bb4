"""ROHM BH1750FVI ambient light sensor: illuminance from its continuous measurement.

The chip has no registers and no status bit: every write is a one-byte opcode and every read
returns the 16-bit data register. ``setup`` powers it on, resets the data register and checks that
it reads 0, sets the measurement time (MTreg) and starts a *continuous* measurement: the chip then
measures again and again by itself (120-180 µA instead of sleeping between samples), and a sample
is a read of the newest result, with no wait (read twice: the register has no CRC, and two reads
that agree are not noise on the bus). A data register that reads 0 or the same counts
as the sample before is suspect -- a brown-out clears it and stops the measurement, a hung core
freezes it -- so the chip is checked (the reset check catches one that ignores commands), MTreg
set again (a brown-out restores 69) and the measurement restarted, and the sample is the fresh
result one measurement time later. In the dark that happens every sample, which costs what the
one-time measurement of earlier versions cost every time.

The bus lock is held for each group of messages, not across a wait: a measurement takes up to
662 ms (H-resolution at MTreg 254), and nothing else talks to this address in between.

Numbers cite ROHM's BH1750FVI datasheet (rev. D, 2011): opcodes from the "Instruction Set
Architecture" table (p. 5), timings and the 1.2 counts/lx "measurement accuracy" from the
electrical characteristics (p. 2), MTreg from "Adjust measurement result for influence of optical
window" (p. 11).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from drivers.base import Driver, Measurement, Option, Pending, Quality
from drivers.bus import Bus
from drivers.errors import SensorError

log = logging.getLogger("envagent.driver")

POWER_DOWN = 0x00
POWER_ON = 0x01
RESET = 0x07  # clears the data register; ignored in power-down
ONE_TIME_H = 0x20  # 1 lx at MTreg 69
ONE_TIME_H2 = 0x21  # 0.5 lx at MTreg 69
ONE_TIME_L = 0x23  # 4 lx at MTreg 69
CONTINUOUS_H = 0x10  # the same three resolutions, measuring again and again
CONTINUOUS_H2 = 0x11
CONTINUOUS_L = 0x13
MTREG_HIGH_OPCODE = 0b0100_0000  # 01000_MT[7:5]
MTREG_LOW_OPCODE = 0b0110_0000  # 011_MT[4:0]
_MTREG_LOW_BITS = 5
_MTREG_LOW_MASK = 0b1_1111

MTREG_DEFAULT = 69
MTREG_MIN = 31
MTREG_MAX = 254
COUNTS_PER_LUX = 1.2  # typical sensor out / actual lx (p. 2); the datasheet's conversion factor
FULL_SCALE = 0xFFFF  # the 16-bit data register saturates here
# Maximum measurement times at MTreg 69; they scale with MTreg (p. 2, p. 11).
MAX_TIME_H_S = 0.180  # typical 120 ms
MAX_TIME_L_S = 0.024  # typical 16 ms
# Margin on top of the maximum before the result is read (I2C latency, scheduler jitter).
WAIT_MARGIN_S = 0.005

ADDRESSES = (0x23, 0x5C)  # ADDR pin low / high


class Resolution:
    """One of the three measurement modes: opcode, extra divisor and maximum time at MTreg 69."""

    def __init__(self, opcode: int, continuous: int, divisor: float, max_time: float) -> None:
        self.opcode = opcode
        self.continuous = continuous
        self.divisor = divisor
        self.max_time = max_time


RESOLUTIONS = {
    "high": Resolution(ONE_TIME_H, CONTINUOUS_H, 1.0, MAX_TIME_H_S),
    "high2": Resolution(ONE_TIME_H2, CONTINUOUS_H2, 2.0, MAX_TIME_H_S),  # ÷2 (p. 11)
    "low": Resolution(ONE_TIME_L, CONTINUOUS_L, 1.0, MAX_TIME_L_S),
}


def lux_from_counts(counts: int, resolution: str = "high", mtreg: int = MTREG_DEFAULT) -> float:
    """Illuminance in lx: counts / 1.2 × (69 / MTreg), halved again in H-resolution mode2."""
    return counts / COUNTS_PER_LUX * (MTREG_DEFAULT / mtreg) / RESOLUTIONS[resolution].divisor


def max_measurement_time(resolution: str = "high", mtreg: int = MTREG_DEFAULT) -> float:
    """Seconds a one-time measurement may take at most; proportional to MTreg (p. 11)."""
    return RESOLUTIONS[resolution].max_time * mtreg / MTREG_DEFAULT


def mtreg_opcodes(mtreg: int) -> tuple[int, int]:
    """The two opcodes that set the measurement-time register: MT[7:5], then MT[4:0]."""
    if not MTREG_MIN <= mtreg <= MTREG_MAX:
        raise ValueError(f"MTreg {mtreg} is outside {MTREG_MIN}..{MTREG_MAX}")
    return (
        MTREG_HIGH_OPCODE | mtreg >> _MTREG_LOW_BITS,
        MTREG_LOW_OPCODE | mtreg & _MTREG_LOW_MASK,
    )


def _counts(data: bytes) -> int:
    return data[0] << 8 | data[1]  # high byte first (p. 7)


def identify(bus: Bus, address: int) -> str | None:
    """"bh1750" when the device answers like one: a data register that power-on + reset clears.

    The chip has no id, so this probes behaviour with the least intrusive opcodes: a plain read
    first, and nothing is written when it reads 0xFFFF -- what a PCF8574 I/O expander (also at
    0x23) reads after power-up, whose outputs a write would switch. Then power on + reset must
    make the data register read 0x0000, and it must still read 0x0000 after power down (a chip
    with a register pointer, e.g. an MCP23017 at 0x23, then returns other registers). The chip
    is left powered down. A BH1750 saturated by a continuous measurement left running by another
    program reads 0xFFFF and is not named.
    """
    if address not in ADDRESSES:
        return None
    if _counts(bus.read(address, 2)) == FULL_SCALE:
        return None
    for opcode in (POWER_ON, RESET):
        bus.write(address, bytes([opcode]))
    cleared = _counts(bus.read(address, 2)) == 0
    bus.write(address, bytes([POWER_DOWN]))
    if cleared and _counts(bus.read(address, 2)) == 0:
        return "bh1750"
    return None


class BH1750(Driver):
    name: ClassVar[str] = "bh1750"
    addresses: ClassVar[tuple[int, ...]] = ADDRESSES
    quantities: ClassVar[dict[str, str]] = {"illuminance": "lx"}
    options: ClassVar[dict[str, Option]] = {
        "resolution": Option(
            str,
            "high",
            'measurement mode: "high" (1 lx, 180 ms), "high2" (0.5 lx, 180 ms, saturates at '
            'half the light), "low" (4 lx, 24 ms); times at mtreg 69',
            choices=tuple(RESOLUTIONS),
        ),
        "mtreg": Option(
            int,
            MTREG_DEFAULT,
            "measurement time register: higher is more sensitive and slower, lower reaches "
            "brighter light (31: up to ~120 klx in high mode)",
            minimum=MTREG_MIN,
            maximum=MTREG_MAX,
        ),
    }

    def __init__(self, bus: Bus, address: int, **kwargs: Any) -> None:
        super().__init__(bus, address, **kwargs)
        self._resolution: str = self.settings["resolution"]
        self._mtreg: int = self.settings["mtreg"]
        self._mtreg_opcodes = mtreg_opcodes(self._mtreg)
        self._wait = max_measurement_time(self._resolution, self._mtreg) + WAIT_MARGIN_S
        self._fresh: float | None = None  # when the first measurement since the start is there
        self._previous: int | None = None  # the counts of the last sample
        self._restarted = False  # the measurement was (re)started since the last sample

    @property
    def measurement_time(self) -> float:
        """Seconds a measurement takes at most (with a margin): a continuous result is never
        older than this."""
        return self._wait

    def setup(self) -> None:
        """Check that the chip answers and obeys power-on/reset; start measuring continuously."""
        self._fresh = None
        self._restart()

    def trigger(self) -> float:
        """Nothing to start: the chip measures on its own. Ready now, or once the first
        measurement since the (re)start has finished."""
        if self._fresh is None:
            raise SensorError(f"bh1750 at {self.where}: read() before setup()")
        return max(self.clock.monotonic(), self._fresh)

    def collect(self) -> list[Measurement]:
        """The data register -- unless it reads 0 or what it read last time, which a chip that
        lost power (its register cleared, its measurement stopped) or froze would show too: then
        the chip is checked and started again, and the sample is the next measurement
        (:class:`Pending`). A value read right after such a restart is taken as it is."""
        if self._fresh is None:
            raise SensorError(f"bh1750 at {self.where}: read() before setup()")
        self.wait_until(self._fresh)
        counts = self._read_data()
        suspect = counts == 0 or counts == self._previous
        if suspect and not self._restarted:
            self._restart()
            assert self._fresh is not None
            raise Pending(self._fresh)
        self._restarted = False
        self._previous = counts
        quality = Quality.CLIPPED if counts == FULL_SCALE else Quality.GOOD
        lux = lux_from_counts(counts, self._resolution, self._mtreg)
        return [Measurement("illuminance", lux, "lx", quality)]

    def close(self) -> None:
        """Power down: the continuous measurement stops (best effort: a chip that does not
        answer is not measuring for anyone)."""
        self._fresh = None
        try:
            self._command(POWER_DOWN)
        except OSError as exc:
            log.debug("%s: power down on close failed: %s", f"bh1750 at {self.where}", exc)

    def _restart(self) -> None:
        """Power on, check the reset, set MTreg (lost at a brown-out) and start measuring."""
        with self.bus.lock:
            self._start_clean()
            for opcode in self._mtreg_opcodes:
                self._command(opcode)
            self._command(RESOLUTIONS[self._resolution].continuous)
        # no status bit: the maximum time is the only way to know the first result is there
        self._fresh = self.clock.monotonic() + self._wait
        self._restarted, self._previous = True, None

    def _read_data(self) -> int:
        """The data register, read until two reads in a row agree (at most three reads).

        The register has no CRC, so a read garbled on the bus would pass as light. Two reads
        microseconds apart return the same result -- unless a measurement finished in between,
        which the third read settles. Three reads that all differ are noise on the bus."""
        with self.bus.lock:
            reads = [_counts(self.bus.read(self.address, 2)) for _ in range(2)]
            if reads[0] != reads[1]:
                reads.append(_counts(self.bus.read(self.address, 2)))
        if reads[-1] != reads[-2]:
            raise SensorError(
                f"bh1750 at {self.where}: three reads of the data register disagree "
                f"({', '.join(map(str, reads))}): noise on the bus? check the wiring and pull-ups"
            )
        return reads[-1]

    def _command(self, opcode: int) -> None:
        self.bus.write(self.address, bytes([opcode]))

    def _start_clean(self) -> None:
        """Power on and reset; the data register must then read 0 or the chip ignores us."""
        with self.bus.lock:
            self._command(POWER_ON)
            self._command(RESET)
            counts = _counts(self.bus.read(self.address, 2))
        if counts != 0:
            raise SensorError(
                f"bh1750 at {self.where}: the data register reads {counts} after power-on and "
                "reset instead of 0, so the chip is not executing commands (or this is not a "
                "BH1750); check its power, or power-cycle it"
            )
