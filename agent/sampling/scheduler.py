"""When each sensor is due: fixed slots on the monotonic clock, aligned to wall-clock multiples.

A sensor with ``interval = "10s"`` samples at :00, :10, :20 ... of the wall clock, so readings
from many units line up upstream. Slots are computed as ``anchor + k * interval`` rather than
"last sample + interval", so the time a read takes never accumulates into drift. A slot that was
missed entirely (the process was stopped, a read hung) is skipped and counted, never made up
with a burst of back-to-back reads.
"""

from __future__ import annotations

import math

from drivers.clock import Clock


class Schedule:
    def __init__(self, interval: float, clock: Clock) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval!r}")
        self.interval = interval
        self.clock = clock
        self.missed = 0
        self._next = 0.0
        self.realign()

    def realign(self) -> None:
        """Re-derive the next slot from the wall clock (at start, and after it steps)."""
        wall = self.clock.time()
        mono = self.clock.monotonic()
        next_wall = (math.floor(wall / self.interval) + 1) * self.interval
        self._next = mono + (next_wall - wall)

    @property
    def next_due(self) -> float:
        """Monotonic time of the next slot."""
        return self._next

    def delay(self) -> float:
        """Seconds until the next slot (0 when it is due)."""
        return max(0.0, self._next - self.clock.monotonic())

    def advance(self) -> None:
        """Move past the slot just served; skip (and count) slots that are already over."""
        self._next += self.interval
        now = self.clock.monotonic()
        if self._next <= now:
            behind = math.floor((now - self._next) / self.interval) + 1
            self.missed += behind
            self._next += behind * self.interval
