"""A frame-level model of the Plantower PMSA003I particulate matter sensor on I2C.

After Plantower's "PMSA003I series data manual" V2.6, appendix I: the sensor keeps its latest
32-byte frame in registers 0x00-0x1F -- 0x42 0x4D, frame length 28, thirteen big-endian words
(PM1.0/PM2.5/PM10 at CF=1, the same under atmospheric environment, particle counts > 0.3, 0.5,
1.0, 2.5, 5.0 and 10 µm per 0.1 L, version and error code bytes) and the 16-bit sum of bytes
0..29. A one-byte write sets the register pointer; reads auto-increment from it and wrap at 32,
so consecutive plain 32-byte reads each return the whole frame.

Assumptions, where the manual is silent: a new frame every ``FRAME_PERIOD_S`` (the PMS family's
"stable mode" interval, 2.3 s); registers read all zeros until the first frame; during the 30 s
the manual asks to wait after the fan starts, concentrations read low, rising linearly from 0 to
the true value; the CF=1 words equal the atmospheric ones; particle counts follow a fixed, rough
size distribution; the version byte is arbitrary.
"""

from __future__ import annotations

import math
import struct
import threading

from drivers.clock import Clock, SystemClock
from drivers.sim.environment import Source

FRAME_BYTES = 32
START = b"\x42\x4d"
FRAME_LENGTH = 2 * 13 + 2
_LAYOUT = struct.Struct(">2sH12HBBH")
_CHECKSUM_AT = FRAME_BYTES - 2
FRAME_PERIOD_S = 2.3
FAN_SETTLE_S = 30.0  # "stable data ... at least 30 seconds after the sensor wakeup"
VERSION = 0x80
_TIME_EPSILON = 1e-9  # of a period: float sums like 1000.0 + 2.3 - 1000.0 < 2.3
_WORD_MAX = 0xFFFF
# Counts per 0.1 L above 0.3, 0.5, 1.0, 2.5, 5.0, 10 µm, per µg/m³ of PM2.5: a rough urban
# aerosol, only so the words are not zero.
_COUNTS_PER_UG = (150.0, 45.0, 9.0, 1.2, 0.3, 0.1)

FAULTS = ("checksum", "bad_start", "zeros")


class PMSA003IModel:
    """A PMSA003I behind one address; implements :class:`drivers.sim.simbus.SimDevice`.

    Physical inputs are ``pm1``, ``pm2_5`` and ``pm10`` in µg/m³, or a ``source`` whose
    conditions give them (it wins when set), sampled at the wall time of each frame. Faults:
    ``fault`` = "checksum" (last byte off by one), "bad_start" (0x42 0x4D garbled), "zeros" (all
    registers 0, as while starting); ``error_code`` -- the frame's error byte; ``frozen`` -- the
    frame stops updating.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        source: Source | None = None,
        pm1: float = 0.0,
        pm2_5: float = 0.0,
        pm10: float = 0.0,
    ) -> None:
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.source = source
        self.pm1, self.pm2_5, self.pm10 = pm1, pm2_5, pm10
        self.fault: str | None = None
        self.frozen = False
        self.error_code = 0
        self._lock = threading.RLock()
        self.power_on()

    @classmethod
    def running(cls, *, clock: Clock, source: Source | None = None) -> PMSA003IModel:
        """A sensor powered up a minute ago (fan settled, frames available): the simulated
        world's, so ``envagent read --simulate`` has data at once."""
        model = cls(clock=clock, source=source)
        with model._lock:
            model.powered_at -= 2 * FAN_SETTLE_S
        return model

    def power_on(self) -> None:
        """Power-up: the fan starts now; registers read zeros until the first frame."""
        with self._lock:
            self.powered_at = self.clock.monotonic()
            self.pointer = 0
            self.frames = 0
            self._frame = bytes(FRAME_BYTES)

    # --- SimDevice ------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if data:
            with self._lock:
                self.pointer = data[0] % FRAME_BYTES  # further bytes: registers are read-only

    def read(self, length: int) -> bytes:
        if self.fault is not None and self.fault not in FAULTS:
            raise ValueError(f"unknown fault {self.fault!r}; expected one of {FAULTS}")
        with self._lock:
            registers = self._registers()
            answer = bytes(registers[(self.pointer + i) % FRAME_BYTES] for i in range(length))
            self.pointer = (self.pointer + length) % FRAME_BYTES
            return answer

    # --- frames ---------------------------------------------------------------------------------

    def _registers(self) -> bytes:
        now = self.clock.monotonic()
        frames = math.floor((now - self.powered_at) / FRAME_PERIOD_S + _TIME_EPSILON)
        if frames > self.frames and not self.frozen:
            end = self.powered_at + frames * FRAME_PERIOD_S
            self._frame = self.frame(self.clock.time() - (now - end), end - self.powered_at)
        if frames > self.frames:
            self.frames = frames
        if self.fault == "zeros":
            return bytes(FRAME_BYTES)
        if self.fault == "bad_start":
            return b"\x42\x00" + self._frame[2:]
        if self.fault == "checksum" and self.frames:
            return self._frame[:-1] + bytes([(self._frame[-1] + 1) & 0xFF])
        return self._frame

    def frame(self, wall_time: float, fan_age: float = FAN_SETTLE_S) -> bytes:
        """The 32 bytes the sensor reports at ``wall_time``, ``fan_age`` s after power-up."""
        if self.source is not None:
            c = self.source(wall_time)
            pm = (c.pm1, c.pm2_5, c.pm10)
        else:
            pm = (self.pm1, self.pm2_5, self.pm10)
        settled = min(1.0, max(0.0, fan_age / FAN_SETTLE_S))
        pm1, pm2_5, pm10 = (_word(value * settled) for value in pm)
        counts = [_word(pm2_5 * per_ug) for per_ug in _COUNTS_PER_UG]
        body = _LAYOUT.pack(
            START, FRAME_LENGTH, pm1, pm2_5, pm10, pm1, pm2_5, pm10, *counts, VERSION,
            self.error_code, 0,
        )
        total = sum(body[:_CHECKSUM_AT]) & _WORD_MAX
        return body[:_CHECKSUM_AT] + total.to_bytes(2, "big")


def _word(value: float) -> int:
    if not math.isfinite(value):
        return _WORD_MAX
    return min(_WORD_MAX, max(0, round(value)))
