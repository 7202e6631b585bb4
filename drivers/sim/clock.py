"""A fake clock for tests and for fast simulations."""

from __future__ import annotations

import threading


class FakeClock:
    """A clock that only moves when told to: ``sleep`` advances it instantly.

    Thread-safe so a sampler thread and a test can share it. The wall clock is the monotonic
    clock plus an offset that a test can jump, as NTP would.
    """

    def __init__(
        self, *, start: float = 1000.0, wall: float = 1_767_225_600.0, synced: bool | None = True
    ) -> None:
        self._lock = threading.Lock()
        self._mono = start
        self._wall_offset = wall - start
        self._synced = synced

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def boottime(self) -> float:
        return self.monotonic()

    def time(self) -> float:
        with self._lock:
            return self._mono + self._wall_offset

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Like SystemClock.wait, but time jumps instead of passing."""
        if event.is_set():
            return True
        self.advance(seconds)
        return event.is_set()

    def advance(self, seconds: float) -> None:
        if seconds > 0:
            with self._lock:
                self._mono += seconds

    def set_wall(self, wall: float, *, synced: bool | None = None) -> None:
        """Step the wall clock (as an NTP sync or a manual `date -s` would)."""
        with self._lock:
            self._wall_offset = wall - self._mono
            if synced is not None:
                self._synced = synced

    def synchronized(self) -> bool | None:
        return self._synced
