"""The sampling half of the agent: one scheduler thread samples the sensors (agent.sampling.
scheduler.Slots; a misbehaving sensor on a thread of its own) and feeds one writer that commits
in batches.

Readings wait in memory for at most ``storage.commit_interval`` and are then committed in one
transaction -- the trade-off between SD-card wear (every commit rewrites at least a page) and what
a power cut can take. A clean stop (SIGTERM, SIGINT, ``--duration``) commits everything sampled.

The writer has no thread of its own: its commit is periodic work of the scheduler
(``Slots.every``), aligned to wall-clock multiples of ``commit_interval`` so it rides the wake-up
of a sensor slot, and the clock's sync check (agent.sampling.timekeeping) follows each commit.
The sensors queue their readings without waking anything (a wake-up costs more CPU than the
readings it would move); only an alert (``submit(..., urgent=True)``) brings the commit
forward, and a stop commits everything left. After each commit ``on_commit(urgent)`` tells
delivery there is something new, and whether it carries an alert.
"""

from __future__ import annotations

import functools
import logging
import math
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from agent.config import Config, SensorConfig
from agent.core.errors import StorageError, StorageFullError
from agent.core.reading import Reading
from agent.core.timebase import ExternalTime
from agent.sampling.alerts import Alerts
from agent.sampling.power import PowerSwitch
from agent.sampling.sampler import SensorWorker
from agent.sampling.scheduler import Slots
from agent.sampling.timekeeping import TimeKeeper
from agent.store.maintenance import Watch
from agent.store.storage import Store
from drivers.base import Driver, Quality
from drivers.bus import Bus
from drivers.clock import Clock
from drivers.tca9548a import MuxChannel

log = logging.getLogger("envagent")

# How long a stop waits for a sensor thread stuck in a read before leaving it behind.
JOIN_TIMEOUT_S = 2.0
# ``run`` without a duration: how often the waiting thread looks up (a stop wakes it at once).
IDLE_WAIT_S = 3600.0
# Readings held in memory while the disk is full; beyond it the oldest are given up. A held
# reading costs ~220 bytes (measured), so this is ~4 MiB of the 35 MiB budget: hours of data.
MAX_HELD_READINGS = 20_000


def make_drivers(
    config: Config, buses: Mapping[int, Bus], clock: Clock, registry: Mapping[str, type[Driver]]
) -> list[Driver]:
    """One driver per sensor; a sensor behind a multiplexer gets the MuxChannel of its
    (bus, mux, channel), one shared by every sensor on that channel."""
    channels: dict[tuple[int, int, int], Bus] = {}

    def bus_of(s: SensorConfig) -> Bus:
        if s.mux is None or s.channel is None:
            return buses[s.bus]
        key = (s.bus, s.mux, s.channel)
        if key not in channels:
            channels[key] = MuxChannel(buses[s.bus], s.mux, s.channel)
        return channels[key]

    return [
        registry[s.driver](bus_of(s), s.address, clock=clock, options=s.options)
        for s in config.sensors
    ]


class Agent:
    def __init__(
        self,
        config: Config,
        drivers: list[Driver],
        *,
        outbox: Store,
        clock: Clock,
        boot_id: str,
        power: Mapping[int, PowerSwitch] | None = None,
        commission_dir: Path | None = None,
        maintenance: Watch | None = None,
        external_time: ExternalTime | None = None,
    ) -> None:
        """``power`` maps a GPIO to the load switch of the sensors with that ``power_pin``;
        ``commission_dir`` holds the commissioning records re-stamped with the readings;
        ``maintenance`` tells whether the unit is in maintenance mode (None: never)."""
        self.config = config
        self.outbox = outbox
        self.clock = clock
        self.boot_id = boot_id
        self.stop = threading.Event()
        # after each commit that stored readings; True when it carried an urgent submission
        self.on_commit: Callable[[bool], None] | None = None
        # as a stop begins, before the final commit: delivery starts nothing new from then on
        self.on_stop: Callable[[], None] | None = None
        self._queue: queue.SimpleQueue[list[Reading]] = queue.SimpleQueue()
        self._pending: list[Reading] = []
        self._given_up = 0  # readings dropped from _pending while the disk was full
        self._urgent = False  # an urgent submission waits for its commit
        self._commit_lock = threading.Lock()  # a runner's commit, or the final one at a stop
        self._storage_error: StorageError | None = None  # while commits fail
        self._keep_time_failing = False  # while re-stamping fails with an unexpected error
        self.workers = [
            SensorWorker(
                sensor, driver, clock=clock, deliver=self._queue.put, boot_id=boot_id,
                stop=self.stop, power=(power or {}).get(sensor.power_pin or -1),
            )
            for sensor, driver in zip(config.sensors, drivers, strict=True)
        ]
        # Maintenance mode flags the readings in one place: each sensor's processing
        # (agent.sampling.processing), before the alerts and the pressure feed see them.
        self.maintenance = maintenance
        if maintenance is not None:
            for worker in self.workers:
                worker.processor.maintenance = maintenance.active
        self.slots = Slots(self.workers, clock, self.stop,  # type: ignore[arg-type]
                           own=lambda worker: worker.run_own(self.slots))  # type: ignore[attr-defined]
        self._started = False
        interval = config.storage.commit_interval
        # The writer's turn, on the scheduler's wake-ups (see the module's docstring).
        self.commit_job = self.slots.every("the commit", interval, self._commit_turn,
                                           slack=interval / 2, align=True)
        # [[alert]] (agent.sampling.alerts): committed at once, so delivery can send them ahead of
        # all
        self.alerts = Alerts(config.alerts, functools.partial(self.submit, urgent=True))
        if self.alerts.rules:
            self._resume_alerts()
        pressure = self._pressure_feeds()
        for worker in self.workers:
            # A sensor's readings are queued for the commit first -- nothing after that can cost
            # a reading -- then passed on to what watches them, in this order.
            steps = [self._queue.put, *pressure.get(worker.sensor.id, ())]
            if self.alerts.watches(worker.sensor.id):
                steps.append(self.alerts.observe)
            worker.deliver = steps[0] if len(steps) == 1 else Steps(steps)
        self.committed = 0
        self.timekeeper = TimeKeeper(clock, boot_id, commission_dir=commission_dir,
                                     external=external_time)
        self.last_cycle = clock.monotonic()  # the writer's heartbeat, for the watchdog

    def _resume_alerts(self) -> None:
        """Each alert starts as its last stored reading says (agent.sampling.alerts, ``resume``)."""
        try:
            latest = self.outbox.latest()
        except StorageError as exc:  # the outbox logs why; sampling starts regardless
            log.warning("alerts start as not firing: their last state could not be read (%s)",
                        exc)
            return
        self.alerts.resume(latest)

    def wait_for_setup(self, timeout: float) -> None:
        """Block until every sensor has tried its first setup (or ``timeout`` passes)."""
        deadline = self.clock.monotonic() + timeout
        for worker in self.workers:
            worker.first_setup.wait(max(0.0, deadline - self.clock.monotonic()))

    def submit(self, readings: Sequence[Reading], *, urgent: bool = False) -> None:
        """Hand readings sampled elsewhere (health, alerts) to the writer, as a sensor does;
        ``urgent`` ones are committed at once instead of at the next commit interval."""
        self._queue.put(list(readings))
        if urgent:
            self._urgent = True
            self.slots.request(self.commit_job)

    def request_stop(self) -> None:
        """Ask ``run`` to finish: safe from a signal handler or another thread."""
        self.stop.set()
        self.slots.kick()

    @property
    def storage_failing(self) -> bool:
        """True while commits fail (a full disk, an unwritable directory); readings are held."""
        return self._storage_error is not None

    def start(self) -> None:
        """Start sampling: each sensor sets itself up on a thread of its own, then the scheduler
        takes it (``run`` starts it too, if nobody did)."""
        if not self._started:
            self._started = True
            self.slots.start()

    def run(self, duration: float | None = None) -> None:
        """Sample until ``stop`` is set (or ``duration`` seconds pass), then commit and return.

        The calling thread only waits: the scheduler's runners sample and commit."""
        clock = self.clock
        self.last_cycle = clock.monotonic()
        self.start()
        log.info(
            "sampling %d sensor(s); committing every %gs to %s",
            len(self.workers), self.config.storage.commit_interval, self.outbox.path,
        )
        try:
            if duration is not None:
                clock.wait(self.stop, duration)
            else:
                while not self.stop.wait(IDLE_WAIT_S):
                    pass
        finally:
            self.stop.set()
            self.slots.kick()
            if self.on_stop is not None:
                self.on_stop()
            self.slots.join(JOIN_TIMEOUT_S)
            for worker in self.workers:
                thread = worker.thread  # its latest own thread (Slots.start gave it one)
                if thread is None:
                    continue
                thread.join(JOIN_TIMEOUT_S)
                if thread.is_alive():
                    log.warning("%s: still busy in a read at shutdown; left behind", worker.label)
            self._commit_cycle()

    def _commit_turn(self) -> None:
        """The writer's turn on a runner: its heartbeat (the watchdog's), then the commit."""
        if self.stop.is_set():
            return  # the stop's own commit follows
        self.last_cycle = self.clock.monotonic()
        self._commit_cycle()

    def _commit_cycle(self) -> None:
        with self._commit_lock:
            urgent, self._urgent = self._urgent, False
            self._drain()
            stored = self.commit()
            self._keep_time()
        if stored and self.on_commit is not None:
            self.on_commit(urgent)

    def _drain(self) -> None:
        while True:
            try:
                self._pending.extend(self._queue.get_nowait())
            except queue.Empty:
                return

    def commit(self) -> bool:
        """Store what was sampled; when storing fails keep it (bounded) and try again next time.
        Returns whether readings were stored.

        Readings given up meanwhile are counted into the outbox's ``dropped`` by the first
        commit that succeeds, in that same transaction.
        """
        if not self._pending and not self._given_up:
            return False
        try:
            self.outbox.append(self._pending, dropped_before=self._given_up)
        except StorageError as exc:  # a full disk, an unwritable directory, an I/O error
            self._hold(exc)
            return False
        if self._storage_error is not None:
            self._storage_error = None
            log.warning("outbox %s: storing again; %d reading(s) were given up meanwhile",
                        self.outbox.path, self._given_up)
        self.committed += len(self._pending)
        self.timekeeper.appended(any(r.synced is False for r in self._pending))
        stored = bool(self._pending)
        self._pending, self._given_up = [], 0
        return stored

    def _keep_time(self) -> None:
        try:
            self.timekeeper.maintain(self.outbox)
        except StorageError as exc:  # the next cycle tries again; sampling goes on regardless
            log.warning("re-stamping readings failed: %s", exc)
        except Exception:  # a bug must not stop the commits; said once until it passes
            if not self._keep_time_failing:
                log.exception("re-stamping readings failed")
            self._keep_time_failing = True
            return
        self._keep_time_failing = False

    def _hold(self, exc: StorageError) -> None:
        if self._storage_error is None:
            log.warning("%s; holding up to %d reading(s) in memory and retrying every commit",
                        exc.strerror if isinstance(exc, StorageFullError) else exc,
                        MAX_HELD_READINGS)
        self._storage_error = exc
        excess = len(self._pending) - MAX_HELD_READINGS
        if excess > 0:  # the outbox's own policy: the oldest go first
            del self._pending[:excess]
            self._given_up += excess
        if self.stop.is_set():
            log.error("outbox %s: stopping unable to store; %d held reading(s) are lost",
                      self.outbox.path, len(self._pending) + self._given_up)

    def _pressure_feeds(self) -> dict[str, list[PressureFeed]]:
        """``pressure_from``: every pressure reading of the named sensor goes to the driver;
        the feeds by the id of the sensor whose readings they watch."""
        by_id = {worker.sensor.id: worker for worker in self.workers}
        feeds: dict[str, list[PressureFeed]] = {}
        for worker in self.workers:
            source_id = worker.sensor.options.get("pressure_from")
            if not source_id:
                continue
            source = by_id.get(source_id)
            set_pressure = getattr(worker.driver, "set_ambient_pressure", None)
            if source is None or set_pressure is None:  # config validation rules this out
                log.warning("%s: cannot take pressure from %r", worker.label, source_id)
                continue
            label = f"pressure of {source.label} for {worker.label}"
            feeds.setdefault(source_id, []).append(PressureFeed(set_pressure, label))
        return feeds


# A pressure reading flagged with any of these is not passed on to compensate another sensor.
UNFIT_PRESSURE = Quality.OUT_OF_RANGE | Quality.SPIKE | Quality.STUCK | Quality.CLIPPED


class Steps:
    """A sensor's ``deliver``: its readings go to each step in turn, on the sensor's thread."""

    __slots__ = ("steps",)

    def __init__(self, steps: list[Callable[[list[Reading]], None]]) -> None:
        self.steps = tuple(steps)

    def __call__(self, readings: list[Reading]) -> None:
        for step in self.steps:
            step(readings)


class PressureFeed:
    """Passes each pressure reading (hPa) of a sensor on to a driver that compensates for
    pressure (the scd4x's ``set_ambient_pressure``).

    It runs on the source sensor's thread, which is safe because drivers hold the bus lock for
    each exchange. It comes after the readings are queued, and a failure to pass the pressure is
    only logged, on transitions: the compensated sensor never costs the source a reading.
    """

    def __init__(self, set_pressure: Callable[[float], None], label: str) -> None:
        self.set_pressure = set_pressure
        self.label = label
        self.failing = False

    def __call__(self, readings: list[Reading]) -> None:
        for r in readings:
            fit = math.isfinite(r.value) and not r.quality & UNFIT_PRESSURE
            if r.quantity == "pressure" and r.unit == "hPa" and fit:
                self._pass(r.value)

    def _pass(self, hpa: float) -> None:
        try:
            self.set_pressure(hpa)
        except Exception as exc:  # noqa: BLE001 - whatever it is, the source sensor goes on
            if not self.failing:
                log.warning("%s: passing %.1f hPa failed: %s", self.label, hpa, exc)
            self.failing = True
            return
        if self.failing:
            log.info("%s: passed on again", self.label)
        self.failing = False
