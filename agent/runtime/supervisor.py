"""Feeds the systemd watchdog only while the agent makes progress, and keeps STATUS= current.

Progress means: the writer loop (which commits readings) has turned recently, and no sensor
thread has been stuck inside one setup or read for longer than ``hung_after``. A hung read or a
deadlocked writer therefore stops the pings and systemd restarts the service; a slow or dead
upstream does not, because delivery is not part of the check -- restarting would not fix it.

The tick has no thread of its own in the daemon: it is periodic work of the sampling scheduler
(agent.sampling.scheduler, ``Slots.every``), so it rides the wake-ups of the sensor slots and a
ping is itself a sign that a runner served a slot. Its pace (:meth:`Supervisor.pace`) keeps a
ping at most ``3/4`` of the notifier's interval after the last one -- a runner wakes for it alone
only when no slot comes in time -- and it is the writer's heartbeat it *checks* that tells a
live writer from a stuck one, never the tick's own timer. ``start`` (with its own thread) is
for a supervisor on its own; the service calls ``begin`` and hands :meth:`tick` to the scheduler.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from agent.runtime.notify import Notifier
from drivers.clock import Clock

log = logging.getLogger("envagent.watchdog")

# A sensor stuck in one bus exchange this long is hung: every driver bounds its own waits far
# below this (a BME280 sample takes < 0.2 s; an SCD4x data-ready wait < 10 s).
HUNG_READ_S = 30.0
# Without a systemd watchdog the supervisor still refreshes the status and the LED about this
# often (riding the slots, at most every 3 x this).
IDLE_TICK_S = 5.0


class Busy(Protocol):
    """What the supervisor needs of a sensor worker."""

    @property
    def label(self) -> str: ...

    @property
    def busy_since(self) -> float | None: ...


class Supervisor:
    def __init__(
        self,
        notifier: Notifier,
        clock: Clock,
        workers: Sequence[Busy],
        *,
        writer_beat: Callable[[], float],
        writer_timeout: float,
        status: Callable[[], str],
        on_tick: Callable[[], None] | None = None,
        hung_after: float = HUNG_READ_S,
    ) -> None:
        self.notifier = notifier
        self.clock = clock
        self.workers = workers
        self.writer_timeout = writer_timeout
        self.hung_after = hung_after
        self._status = status
        self._on_tick = on_tick
        self._writer_beat = writer_beat
        self._stop = threading.Event()
        self._tick_lock = threading.Lock()  # a tick under way ends before STOPPING=1
        self._stopped = False
        self._last_status = ""
        self._last_problem: str | None = None
        self.thread = threading.Thread(target=self._run, name="watchdog", daemon=True)

    def problem(self) -> str | None:
        """Why the agent is not making progress, or None when it is."""
        now = self.clock.monotonic()
        silent = now - self._writer_beat()
        if silent > self.writer_timeout:
            return f"the writer loop has not turned for {silent:.0f} s"
        stuck = self.stuck()
        if not stuck:
            return None
        # The one stuck longest is the cause: the others on its bus wait for it to let go.
        first = min(stuck, key=stuck.__getitem__)
        others = f" ({len(stuck) - 1} more wait behind it)" if len(stuck) > 1 else ""
        return f"{first.label} has been stuck in one read for {now - stuck[first]:.0f} s{others}"

    def stuck(self) -> dict[Busy, float]:
        """The sensors stuck inside one setup or read for longer than ``hung_after``, with the
        monotonic time each got in."""
        now = self.clock.monotonic()
        found = {}
        for worker in self.workers:
            since = worker.busy_since
            if since is not None and now - since > self.hung_after:
                found[worker] = since
        return found

    def tick(self) -> None:
        """One supervision step: ping if healthy, and publish the status line when it changed.
        Nothing after :meth:`stop`."""
        with self._tick_lock:
            if not self._stopped:
                self._tick()

    def pace(self) -> tuple[float, float]:
        """``(interval, slack)`` for the scheduler (agent.sampling.scheduler.Periodic): a tick
        rides any wake-up a quarter of the notifier's interval after the last, and comes on its
        own at three quarters of it at the latest (systemd's timeout is twice that interval)."""
        interval = self.notifier.watchdog_interval()
        if interval is None:
            return IDLE_TICK_S, 2 * IDLE_TICK_S
        return interval / 4, interval / 2

    def _tick(self) -> None:
        problem = self.problem()
        if problem != self._last_problem:
            if problem is not None:
                log.error("not feeding the watchdog: %s", problem)
            elif self._last_problem is not None:
                log.info("progress again; feeding the watchdog")
            self._last_problem = problem
        if problem is None:
            self.notifier.watchdog()
        if self.notifier.enabled:  # the line costs outbox queries: only for systemd to show
            text = self._status() if problem is None else f"STUCK: {problem}"
            if text != self._last_status:
                self.notifier.status(text)
                self._last_status = text
        if self._on_tick is not None:
            self._on_tick()

    def begin(self) -> None:
        """READY=1 and the first tick; the next ticks come from whoever calls :meth:`tick`."""
        self.notifier.ready()
        self.tick()

    def start(self) -> None:
        """``begin``, then tick on a thread of its own (a supervisor without a scheduler)."""
        self.begin()
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self.thread.ident is not None:
            self.thread.join(5)
        with self._tick_lock:  # a tick under way ends first: nothing follows STOPPING=1
            self._stopped = True
            self.notifier.stopping()

    def _run(self) -> None:
        # Twice per notifier interval, i.e. four pings per WatchdogSec: one late tick never
        # lets the watchdog fire.
        interval = (self.notifier.watchdog_interval() or 2 * IDLE_TICK_S) / 2
        while not self.clock.wait(self._stop, interval):
            self.tick()
