"""When each sensor is due: fixed slots on the monotonic clock, aligned to wall-clock multiples.

A sensor with ``interval = "10s"`` samples at :00, :10, :20 ... of the wall clock, so readings
from many units line up upstream. Slots are computed as ``anchor + k * interval`` rather than
"last sample + interval", so the time a read takes never accumulates into drift. A slot that was
missed entirely (the process was stopped, a read hung) is skipped and counted, never made up
with a burst of back-to-back reads.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from drivers.clock import Clock

log = logging.getLogger("envagent.sensor")

# A change of (wall - monotonic) larger than this is a step of the wall clock, not drift.
WALL_STEP_S = 1.0


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

    def claim(self, now: float, late: float) -> float:
        """The next slot to serve, moving past it: slots more than ``late`` seconds over are
        skipped and counted. Each slot is claimed once, by whoever serves it."""
        while self._next < now - late:
            self._next += self.interval
            self.missed += 1
        slot = self._next
        self._next += self.interval
        return slot


# --- one scheduler thread for every sensor that behaves ---------------------------------------

# A trigger or collect that takes longer than this has overrun (a bus lock-up, a hung chip, a
# status bit that never clears): its sensor moves to a thread of its own until it behaves again.
# A good one is a few bus transfers, well under 10 ms even on a Pi Zero.
OVERRUN_S = 0.05
# Slots this close together are served in one wake-up.
COALESCE_S = 0.005
# A slot later than this fraction of its interval is skipped (counted), never served late.
LATE_FRACTION = 0.1
# How long a runner with nothing to schedule sleeps before it looks again (a kick wakes it).
IDLE_S = 60.0
JOIN_TIMEOUT_S = 2.0


class Sampled(Protocol):
    """What the scheduler needs of a sensor (agent.sampling.sampler.SensorWorker)."""

    schedule: Schedule
    attached: bool
    wants_in: bool
    idle: threading.Event
    thread: threading.Thread | None

    @property
    def label(self) -> str: ...
    @property
    def set_up(self) -> bool: ...
    @property
    def busy_since(self) -> float | None: ...
    def begin(self, synced: bool | None) -> float | None: ...
    def resume(self) -> float | None: ...


class Periodic:
    """Work that rides the runners' wake-ups instead of a timer thread of its own: the writer's
    commit (and with it the clock's sync check), the supervisor's tick, the health sample.

    It is served at the end of the first slot a runner serves at or after ``due``; a runner
    wakes for it alone only when no slot comes within ``slack`` seconds after ``due``. After a
    run the next ``due`` is ``interval`` later -- or, with ``align``, the next wall-clock
    multiple of ``interval``, so a 30 s commit falls on the same wake-up as the 10 s slots.
    :meth:`Slots.request` runs it at once (an alert's commit).
    """

    def __init__(self, name: str, interval: float, action: Callable[[], object], *,
                 clock: Clock, slack: float, align: bool = False,
                 first: float | None = None) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval!r}")
        self.name = name
        self.interval = interval
        self.action = action
        self.clock = clock
        self.slack = max(0.0, slack)
        self.align = align
        self.runs = 0
        # under the Slots lock:
        self.requested = False  # run at the next chance, whatever ``due`` says
        self.claimed = False  # part of a job a runner sleeps for: no other runner wakes for it
        self.running = False
        now = clock.monotonic()
        if first is not None:
            self.due = now + first
        elif align:
            self.due = self._aligned(now)
        else:
            self.due = now + interval

    def _aligned(self, after: float) -> float:
        """The monotonic time of the first wall-clock multiple of ``interval`` after ``after``."""
        wall, mono = self.clock.time(), self.clock.monotonic()
        wall_after = wall + (after - mono)
        return mono + (math.floor(wall_after / self.interval) + 1) * self.interval - wall

    def realign(self) -> None:
        """After a step of the wall clock: back on its multiples (aligned jobs only)."""
        if self.align:
            self.due = self._aligned(self.clock.monotonic())

    def ran(self, now: float) -> None:
        self.runs += 1
        self.due = self._aligned(now + COALESCE_S) if self.align else now + self.interval


@dataclass(eq=False)
class Job:
    """One wake-up of a runner: what it serves, growing while it sleeps (:meth:`Slots._claim`)."""

    time: float  # monotonic time of the slot
    generation: int  # the schedules' generation it was claimed in (a wall-clock step voids it)
    sensors: list[Sampled] = field(default_factory=list)
    periodic: list[Periodic] = field(default_factory=list)


class Slots:
    """Serves every well-behaved sensor from one thread: per slot, trigger every due sensor,
    sleep once until the latest ready time, collect them all (again for a sample that needs
    another conversion).

    Isolation without a watchdog thread: two runners take turns, each claiming the next slot
    while the other serves one, so a wake-up is one slot and a second thread costs nothing. A
    runner that finds a sensor still inside a call made in an earlier slot (a hung bus) serves
    its slot without it, moves that sensor to a thread of its own, and starts a runner to take
    the place of the stuck one, which ends when its call returns. A call that returns but took
    longer than :data:`OVERRUN_S`, a sensor that needs setting up again, and every sensor at
    start also run on their own thread (``SensorWorker.run_own``: setup with backoff, sampling
    with its own waits) until a sample goes through in time; then the runners take the sensor
    back (the one asleep for a slot at its next due adds it, else a runner's next claim) and
    its thread ends. Each slot of a sensor is claimed exactly once, by a runner or by its own
    thread, under one lock, so the hand-over neither skips nor doubles a sample; and a sample
    whose conversions outlast its interval is collected before the next one is triggered (the
    slots in between are skipped).

    Periodic work (:class:`Periodic`, :meth:`every`) rides the same wake-ups: the runner that
    serves a slot runs every job that is due once the slot's readings are collected.
    """

    def __init__(self, sensors: Sequence[Sampled], clock: Clock, stop: threading.Event, *,
                 own: Callable[[Sampled], None], overrun: float = OVERRUN_S) -> None:
        self.sensors = list(sensors)
        self.clock = clock
        self.stop = stop
        self.overrun = overrun
        self._own = own  # the loop of a sensor on its own thread
        self._lock = threading.Lock()
        self._kick = threading.Event()  # a stop, a wall-clock step or a sensor wanting back in
        self._generation = 0
        self._runners: list[threading.Thread] = []
        self._retired: set[threading.Thread] = set()
        self._caller: dict[int, threading.Thread] = {}  # id(sensor) -> runner inside its call
        # id(sensor) of samples between their trigger and their last collect: a conversion longer
        # than the interval must not be triggered again by the other runner's next slot
        self._in_flight: set[int] = set()
        self._pending: list[Job] = []  # claimed, their runner asleep: what else is due joins them
        self._serving: dict[threading.Thread, Job] = {}  # the job each runner is serving
        self._offset = clock.time() - clock.monotonic()
        self._periodic: list[Periodic] = []
        self._idle = 0  # runners waiting with nothing to schedule (a finished job wakes them)
        self.wakeups = 0  # runner wake-ups, for bench/
        self.served = 0  # slots served, sensors or periodic work (the supervisor's progress)

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self, runners: int = 2) -> None:
        for sensor in self.sensors:
            self._detach(sensor)  # each sets itself up on its own thread, then comes in
        for _ in range(runners):
            self._spawn_runner()

    def kick(self) -> None:
        self._kick.set()

    # --- periodic work --------------------------------------------------------------------------

    def every(self, name: str, interval: float, action: Callable[[], object], *, slack: float,
              align: bool = False, first: float | None = None) -> Periodic:
        """Run ``action`` every ``interval`` on the runners' wake-ups (see :class:`Periodic`);
        it must not block for long (a runner serves slots in turn with the other). Jobs run in
        the order they were added, after the slot's sensors."""
        job = Periodic(name, interval, action, clock=self.clock, slack=slack, align=align,
                       first=first)
        with self._lock:
            self._periodic.append(job)
        self.kick()  # a runner with nothing to schedule sleeps until told
        return job

    def request(self, job: Periodic) -> None:
        """Run ``job`` at once (on a runner: the one serving a slot, or a sleeping one woken)."""
        with self._lock:
            job.requested = True
        self.kick()

    def _run_periodic(self, candidates: Sequence[Periodic]) -> None:
        """Run, in order, the candidates that are due and every requested job; never two runs
        of one job at once."""
        for job in self._periodic:
            with self._lock:
                if job in candidates:
                    job.claimed = False
                now = self.clock.monotonic()
                if job.running or not (job.requested or job.due <= now + COALESCE_S):
                    continue
                job.running, job.requested = True, False
            try:
                job.action()
            except Exception:  # noqa: BLE001 - a bug in one job must not end the runner
                log.exception("%s failed; trying again at its next turn", job.name)
            finally:
                with self._lock:
                    job.running = False
                    job.ran(self.clock.monotonic())
                    idle = self._idle
                if idle:  # its next due was not known when the idle runner looked
                    self.kick()

    def join(self, timeout: float = JOIN_TIMEOUT_S) -> None:
        self.kick()
        deadline = self.clock.monotonic() + timeout
        for thread in list(self._runners):
            thread.join(max(0.0, deadline - self.clock.monotonic()))

    # --- hand-over ----------------------------------------------------------------------------

    def want_in(self, sensor: Sampled) -> bool:
        """From a sensor's own thread after a good sample: True when the runners have it (the
        thread ends) -- its next slot joins the job a runner sleeps for at that time; else the
        own thread samples on until a runner's claim takes it (:meth:`claim_own` says so)."""
        with self._lock:
            if not sensor.attached:
                sensor.wants_in = True
                job = self._pending_at(sensor.schedule.next_due)
                if job is not None:
                    self._add(job, [sensor], self.clock.monotonic())
            if sensor.attached:
                return True
        self.kick()  # an idle runner claims it
        return False

    def claim_own(self, sensor: Sampled) -> float | None:
        """The next slot for a sensor on its own thread, or None when the runners have it."""
        with self._lock:
            if sensor.attached:
                return None
            return sensor.schedule.claim(self.clock.monotonic(), self._late(sensor))

    def _detach(self, sensor: Sampled) -> None:
        """Move ``sensor`` to a thread of its own (which first waits for any call under way)."""
        with self._lock:
            sensor.attached = sensor.wants_in = False
        thread = threading.Thread(target=self._own, args=(sensor,), daemon=True,
                                  name=f"sensor {sensor.label}")
        sensor.thread = thread
        thread.start()

    def _spawn_runner(self) -> None:
        thread = threading.Thread(target=self._run, name="scheduler", daemon=True)
        with self._lock:
            self._runners.append(thread)
        thread.start()

    # --- the runners --------------------------------------------------------------------------

    def _late(self, sensor: Sampled) -> float:
        return LATE_FRACTION * sensor.schedule.interval

    def _claim(self) -> Job | None:
        """The earliest slot nobody serves yet, with every sensor due in it and the periodic
        work that rides it; or a wake-up for periodic work alone when no slot comes within its
        slack (under the lock). What is due at the time of a job another runner sleeps for
        joins that job instead: one wake-up per slot."""
        now = self.clock.monotonic()
        ready = [s for s in self.sensors if s.attached or s.wants_in]
        for s in ready:  # skip what is already too late to serve
            while s.schedule.next_due < now - self._late(s):
                s.schedule.claim(now, self._late(s))
        while True:
            pending = [job.time for job in self._pending]
            first = min((s.schedule.next_due for s in ready), default=math.inf)
            jobs = [(self._when(p, ready, pending, now), p) for p in self._periodic
                    if not (p.claimed or p.running)]  # a running job's next due is not known yet
            first = min([first, *(when for when, _ in jobs)])
            if first == math.inf:
                return None
            job = self._pending_at(first)
            mine = job is None
            if job is None:
                job = Job(first, self._generation)
                self._pending.append(job)
            self._add(job, [s for s in ready if s.schedule.next_due <= first + COALESCE_S], now)
            riding = [p for when, p in jobs if when <= first + COALESCE_S]
            for p in riding:
                p.claimed = True
            job.periodic.extend(riding)
            if mine:
                return job

    @staticmethod
    def _release(job: Job) -> None:
        """The job's periodic work is claimed again by the next claim (under the lock)."""
        for periodic in job.periodic:
            periodic.claimed = False
        job.periodic.clear()

    def _pending_at(self, time: float) -> Job | None:
        """The job of this generation a runner sleeps for at ``time`` (under the lock)."""
        return next((job for job in self._pending if job.generation == self._generation
                     and abs(job.time - time) <= COALESCE_S), None)

    def _add(self, job: Job, sensors: Sequence[Sampled], now: float) -> None:
        """Claim the sensors' slots for ``job`` (under the lock)."""
        for s in sensors:
            s.schedule.claim(now, self._late(s))
            s.attached, s.wants_in = True, False
            job.sensors.append(s)

    @staticmethod
    def _when(job: Periodic, ready: Sequence[Sampled], pending: Sequence[float],
              now: float) -> float:
        """When ``job`` is served: the first slot at or after its ``due`` (a sensor's, or a job
        a runner sleeps for) if one comes within its slack, else ``due`` itself (a wake-up of
        its own)."""
        if job.requested:
            return now
        due = job.due
        ride = min((t for t in pending if t >= due - COALESCE_S), default=math.inf)
        for s in ready:
            interval = s.schedule.interval
            slot = s.schedule.next_due
            if slot < due - COALESCE_S:  # its first slot at or after ``due``
                slot += math.ceil((due - COALESCE_S - slot) / interval) * interval
            ride = min(ride, slot)
        return ride if ride <= due + job.slack else due

    def _run(self) -> None:
        me = threading.current_thread()
        clock = self.clock
        while not self.stop.is_set():
            with self._lock:
                if me in self._retired:
                    self._retired.discard(me)
                    self._runners.remove(me)
                    return
                self._kick.clear()
                job = self._claim()
                if job is None:
                    self._idle += 1
            if job is None:
                clock.wait(self._kick, IDLE_S)
                with self._lock:
                    self._idle -= 1
                continue
            served = self._sleep_until(job)
            with self._lock:
                self._pending.remove(job)  # from now on nothing joins it
                if not served:
                    self._release(job)
                    continue
                self._serving[me] = job
            self.wakeups += 1
            self._check_wall()
            self._serve(job, me)
            self.served += 1
            self._run_periodic(job.periodic)
            with self._lock:
                self._serving.pop(me, None)
        with self._lock:
            if me in self._runners:
                self._runners.remove(me)

    def _sleep_until(self, job: Job) -> bool:
        """Sleep until the job's slot; False when it was voided (a stop, a wall-clock step)."""
        while True:
            delay = job.time - self.clock.monotonic()
            if delay <= 0:
                return True
            if self.clock.wait(self._kick, delay):
                with self._lock:
                    self._kick.clear()
                    if self.stop.is_set() or job.generation != self._generation:
                        return False
                    urgent = any(p.requested and not p.running for p in self._periodic)
                if urgent:  # an alert's commit: now, then back to sleep for the slot
                    self.wakeups += 1
                    self._run_periodic(())

    def _check_wall(self) -> None:
        """A step of the wall clock (NTP sync, a manual date): slots back on its multiples."""
        offset = self.clock.time() - self.clock.monotonic()
        if abs(offset - self._offset) <= WALL_STEP_S:
            return
        with self._lock:
            self._offset = offset
            self._generation += 1
            for sensor in self.sensors:
                sensor.schedule.realign()
            for periodic in self._periodic:
                periodic.realign()
        self.kick()  # the other runner's claimed slot is void

    def _serve(self, job: Job, me: threading.Thread) -> None:
        synced = self.clock.synchronized()  # once per slot, for every sensor in it
        waiting: list[tuple[float, Sampled]] = []
        for sensor in job.sensors:
            if not self._take(sensor):
                continue
            ready = self._call(sensor, me, functools.partial(sensor.begin, synced))
            if ready is not None:
                waiting.append((ready, sensor))
            else:
                self._landed(sensor)
        while waiting:
            latest = max(ready for ready, _ in waiting)
            delay = latest - self.clock.monotonic()
            if delay > 0:
                self.clock.sleep(delay)  # the one wait of the slot
                self.wakeups += 1
            batch, waiting = waiting, []
            for _, sensor in batch:
                ready = None
                if sensor.attached:  # detached meanwhile: its sample is lost, not taken twice
                    ready = self._call(sensor, me, sensor.resume)
                if ready is not None:
                    waiting.append((ready, sensor))
                else:
                    self._landed(sensor)
        for sensor in job.sensors:
            if sensor.attached and not sensor.set_up:
                self._detach(sensor)  # failed: re-probed with backoff on its own thread

    def _landed(self, sensor: Sampled) -> None:
        """The sample of ``sensor`` is over (delivered, failed or given up): no longer in flight."""
        with self._lock:
            self._in_flight.discard(id(sensor))

    def _take(self, sensor: Sampled) -> bool:
        """Whether this runner may start a sample of ``sensor`` now (it is then in flight until
        collected): not while the other runner's sample is still converting (this slot is
        skipped); and a sensor still inside a call from an earlier slot has hung: it goes to its
        own thread, its runner is replaced."""
        if not sensor.attached:
            return False
        if sensor.busy_since is None:
            with self._lock:
                if id(sensor) in self._in_flight:
                    return False
                self._in_flight.add(id(sensor))
            return True
        stuck = self._caller.get(id(sensor))
        if stuck is None:  # its own thread, taken over, is still in the last slot it claimed
            return False
        log.warning("%s: still busy after %.1f s; sampling it on its own thread", sensor.label,
                    self.clock.monotonic() - sensor.busy_since)
        with self._lock:  # the runner inside the call (never this one: it is in none)
            self._retired.add(stuck)
            stuck_job = self._serving.pop(stuck, None)
            if stuck_job is not None:  # its periodic work goes on without it
                self._release(stuck_job)
        self._spawn_runner()
        self._detach(sensor)
        return False

    def _call(self, sensor: Sampled, me: threading.Thread,
              step: Callable[[], float | None]) -> float | None:
        """One trigger or collect, timed: an overrun sends the sensor to its own thread."""
        self._caller[id(sensor)] = me
        started = self.clock.monotonic()
        try:
            ready = step()
        finally:
            self._caller.pop(id(sensor), None)
        took = self.clock.monotonic() - started
        if took > self.overrun and sensor.attached:
            log.warning("%s: a step took %.3f s; sampling it on its own thread until it "
                        "behaves", sensor.label, took)
            self._detach(sensor)
            return None
        return ready
