"""One sensor's life: set up, sample on schedule, and recover -- never permanently dead.

A :class:`SensorWorker` is sampled in steps by the one scheduler thread
(agent.sampling.scheduler: ``begin`` triggers, ``resume`` collects) while it behaves, and runs
on a thread of its own (``run_own``: set up, re-probe, sample with its own waits) at start and
while it does not -- so a slow or hung sensor delays nobody else. Health follows
DESIGN.md: ok -> warning (a read failed; the next slot retries) -> failed (after several
consecutive failures, or when setup fails: the chip is re-probed and set up again with a capped
exponential backoff) -> ok. Only transitions are logged, never individual polls.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from agent.config import SensorConfig
from agent.core.reading import Reading
from agent.core.timebase import NS
from agent.sampling.power import PowerSwitch
from agent.sampling.processing import Processor
from agent.sampling.scheduler import Schedule, Slots
from drivers.base import Driver, Measurement, Pending, Quality
from drivers.bus import describe_error
from drivers.clock import Clock

log = logging.getLogger("envagent.sensor")

# Consecutive failed reads that turn a warning into a failure (and a re-initialisation).
FAILURES_BEFORE_FAILED = 3
# Re-probe backoff for a failed sensor: doubles from the first value up to the cap.
REPROBE_FIRST_S = 5.0
REPROBE_CAP_S = 300.0
# A change of (wall - monotonic) larger than this is a step of the wall clock, not drift.
WALL_STEP_S = 1.0
# A sample on a sensor's own thread that took at most this long, waits included, shows that it
# behaves again: the scheduler takes it back. (An SCD4x's first sample waits 5 s for its first
# measurement; the next is instant.)
BEHAVES_S = 2.0


class State(enum.StrEnum):
    STARTING = "starting"  # not set up yet
    OK = "ok"
    WARNING = "warning"
    FAILED = "failed"


@dataclass
class Health:
    state: State = State.STARTING
    errors: int = 0
    consecutive: int = 0
    last_error: str | None = None
    samples: int = 0


class SensorWorker:
    def __init__(
        self,
        sensor: SensorConfig,
        driver: Driver,
        *,
        clock: Clock,
        deliver: Callable[[list[Reading]], None],
        boot_id: str,
        stop: threading.Event,
        power: PowerSwitch | None = None,
    ) -> None:
        self.sensor = sensor
        self.power = power  # a load switch that can power-cycle the sensor (agent.sampling.power)
        self.driver = driver
        self.clock = clock
        self.deliver = deliver
        self.boot_id = boot_id
        self.stop = stop
        self.health = Health()
        self.processor = Processor.for_sensor(sensor)  # averaging, calibration, plausibility
        self._set_up = False
        self._reprobe_delay = REPROBE_FIRST_S
        self.busy_since: float | None = None  # monotonic start of the setup/read in progress
        self.idle = threading.Event()  # set while no thread is inside this sensor's driver
        self.idle.set()
        self.first_setup = threading.Event()  # set once setup was tried (success or not)
        self.thread: threading.Thread | None = None  # its latest own thread (Slots starts it)
        # Reads per reading: ``average``, or 1 when the chip averages itself (ADS1115 oversample).
        self.rounds = sensor.average
        if sensor.average > 1 and driver.oversample(sensor.average):
            self.rounds = 1
        self.schedule = Schedule(sensor.interval, clock)
        # The scheduler's bookkeeping (agent.sampling.scheduler.Slots, under its lock):
        self.attached = False  # sampled by the scheduler thread, not a thread of its own
        self.wants_in = False  # behaved on its own thread: the scheduler takes it at its next claim
        self._stamp: tuple[bool | None, int, int] = (None, 0, 0)
        self._samples: list[list[Measurement]] = []

    @property
    def label(self) -> str:
        return f"{self.sensor.driver} '{self.sensor.id}' at {self.sensor.where}"

    @property
    def set_up(self) -> bool:
        return self._set_up

    def run_own(self, slots: Slots) -> None:
        """This sensor on a thread of its own (at start, and while it misbehaves): set up with
        backoff, sample its slots with its own waits, and hand itself back to the scheduler
        after a sample that went through in time."""
        self.idle.wait()  # a call still under way on a scheduler thread returns first
        offset = self._wall_offset()
        while not self.stop.is_set():
            if not self._set_up and not self._setup_or_wait():
                continue
            slot = slots.claim_own(self)
            if slot is None:
                return  # the runners have it
            if self.clock.wait(self.stop, slot - self.clock.monotonic()):
                return
            if abs(self._wall_offset() - offset) > WALL_STEP_S:
                # The wall clock stepped (NTP sync, a manual date): keep slots on its multiples.
                offset = self._wall_offset()
                self.schedule.realign()
                continue
            samples, started = self.health.samples, self.clock.monotonic()
            self.sample()
            took = self.clock.monotonic() - started
            if self.health.samples > samples and took <= BEHAVES_S and slots.want_in(self):
                return

    def _setup_or_wait(self) -> bool:
        """One setup attempt (after a power cycle of a failed sensor, where wired); after a
        failure, the backoff's wait. True when the sensor is set up."""
        if self.power is not None and self.health.state is State.FAILED:
            self._power_cycle()
        set_up = self._try_setup()
        self.first_setup.set()
        if not set_up:
            self.clock.wait(self.stop, self._reprobe_delay)
            self._reprobe_delay = min(self._reprobe_delay * 2, REPROBE_CAP_S)
            return False
        self.schedule.realign()
        return True

    def _power_cycle(self) -> None:
        assert self.power is not None
        if self.power.cycles == 0:
            log.warning("%s: power-cycling it through GPIO%d before each re-probe", self.label,
                        self.power.pin)
        with self._busy():
            self.power.cycle()

    def _wall_offset(self) -> float:
        return self.clock.time() - self.clock.monotonic()

    @contextlib.contextmanager
    def _busy(self) -> Iterator[None]:
        """Marks a setup or read in progress, so the supervisor can tell a hung one (and the
        scheduler one that another thread is still inside)."""
        self.idle.clear()
        self.busy_since = self.clock.monotonic()
        try:
            yield
        finally:
            self.busy_since = None
            self.idle.set()

    def _try_setup(self) -> bool:
        try:
            with self._busy():
                self.driver.setup()
        except Exception as exc:  # noqa: BLE001 - any chip or bus failure must not end the thread
            self._transition(State.FAILED, f"setup failed: {_describe(exc)}")
            return False
        self._set_up = True
        self._reprobe_delay = REPROBE_FIRST_S
        self.health.consecutive = 0
        if self.health.state is State.STARTING:
            self._transition(State.OK, "set up")
        else:  # a failed sensor is ok again only once it has given a good reading
            log.info("%s: set up again", self.label)
        return True

    def sample(self) -> None:
        """Take one sample now, waits included, and hand its readings on; failures only change
        health."""
        self._begin_stamp(self.clock.synchronized())
        try:
            with self._busy():
                samples = [self.driver.read() for _ in range(self.rounds)]
        except Exception as exc:  # noqa: BLE001 - one flaky sensor never takes the unit down
            self._read_failed(exc)
            return
        self._finish(samples)

    # --- in steps, for the scheduler --------------------------------------------------------------

    def begin(self, synced: bool | None) -> float | None:
        """Stamp the sample and trigger its first conversion: when to ``resume``, or None when
        the trigger failed (health records it)."""
        self._begin_stamp(synced)
        return self._step(self.driver.trigger)

    def resume(self) -> float | None:
        """Collect what is ready: when to resume again (another conversion, or the next of
        ``average`` reads), or None when the sample is done -- delivered, or failed."""
        try:
            with self._busy():
                measurements = self.driver.collect()
        except Pending as more:
            return more.ready
        except Exception as exc:  # noqa: BLE001 - one flaky sensor never takes the unit down
            self._read_failed(exc)
            return None
        self._samples.append(measurements)
        if len(self._samples) < self.rounds:
            return self._step(self.driver.trigger)
        samples, self._samples = self._samples, []
        self._finish(samples)
        return None

    def _step(self, trigger: Callable[[], float]) -> float | None:
        try:
            with self._busy():
                return trigger()
        except Exception as exc:  # noqa: BLE001 - one flaky sensor never takes the unit down
            self._samples = []
            self._read_failed(exc)
            return None

    def _begin_stamp(self, synced: bool | None) -> None:
        self._stamp = (synced, int(self.clock.time() * NS), int(self.clock.boottime() * NS))
        self._samples = []

    def _finish(self, samples: list[list[Measurement]]) -> None:
        """Process a complete sample and hand its readings on (health: a good read)."""
        try:
            measurements = self.processor.finish(samples)
        except Exception as exc:  # noqa: BLE001 - e.g. samples that cannot be averaged
            self._read_failed(exc)
            return
        synced, time_ns, boot_ns = self._stamp
        self.health.samples += 1
        self.health.consecutive = 0
        if self.health.state is not State.OK:
            self._transition(State.OK, "recovered")
        readings = []
        for m in measurements:
            quality = m.quality if math.isfinite(m.value) else m.quality | Quality.OUT_OF_RANGE
            readings.append(
                Reading(
                    self.sensor.id, m.quantity, m.value, m.unit,
                    time_ns, boot_ns, self.boot_id, synced, int(quality), m.calibration,
                )
            )
        self.deliver(readings)

    def _read_failed(self, exc: Exception) -> None:
        self.health.errors += 1
        self.health.consecutive += 1
        if self.health.consecutive >= FAILURES_BEFORE_FAILED:
            self._set_up = False
            with contextlib.suppress(Exception):  # the chip is already misbehaving
                self.driver.close()
            self._transition(
                State.FAILED, f"{self.health.consecutive} reads failed in a row, re-initialising: "
                f"{_describe(exc)}"
            )
        elif self.health.state is not State.FAILED:
            self._transition(State.WARNING, f"read failed, retrying: {_describe(exc)}")

    def _transition(self, state: State, why: str) -> None:
        previous = self.health.state
        self.health.state = state
        if state is not State.OK:
            self.health.last_error = why
        if state is previous:
            return
        level = logging.INFO if state is State.OK else logging.WARNING
        log.log(level, "%s: %s (%s)", self.label, state.value, why)


def _describe(exc: BaseException) -> str:
    """An error in one sentence for the log and ``envagent status`` (drivers.bus.describe_error:
    "no answer: check wiring, power and address"); the sensor's label already says where."""
    return describe_error(exc)
