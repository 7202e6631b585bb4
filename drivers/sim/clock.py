"""Clocks for tests and the simulated world: a fake one that jumps, a real one with set facts."""

from __future__ import annotations

import threading

from drivers.clock import SystemClock


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


class SimulatedClock(SystemClock):
    """The simulated world's clock (``--simulate``): this machine's clocks, with the facts a
    rehearsal or a test sets instead of the host's.

    Whether the clock is synchronised and how long ago the unit booted decide what the agent
    holds back and how it stamps readings (agent.sampling.timekeeping). A simulated unit must not
    take
    them from the host it happens to run on -- a freshly booted CI machine whose clock is not
    synchronised would make every simulated run hold its readings -- so they come from here:

    - ``synced``: the state at start; ``sync_after``: seconds after start at which an
      unsynchronised clock synchronises (None: never);
    - ``booted``: the Unix time the simulated unit booted (None: the host's own boot).
      ``boottime()`` is measured from it, so every process of one rehearsal agrees on it.
    """

    def __init__(self, *, synced: bool = True, sync_after: float | None = None,
                 booted: float | None = None) -> None:
        super().__init__()
        self._synced_at = None if synced or sync_after is None else self.monotonic() + sync_after
        self._synced = synced
        self._booted = booted

    def synchronized(self) -> bool | None:
        if self._synced_at is not None and self.monotonic() >= self._synced_at:
            return True
        return self._synced

    def boottime(self) -> float:
        if self._booted is None:
            return super().boottime()
        return self.time() - self._booted
