"""One thread per sensor: set up, sample on schedule, and recover -- never permanently dead.

Each sensor runs on its own thread so a slow or hung sensor delays nobody else. Health follows
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
from agent.sampling.scheduler import Schedule
from drivers.base import Driver, Quality
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
        self.first_setup = threading.Event()  # set once setup was tried (success or not)
        self.thread = threading.Thread(target=self.run, name=f"sensor-{sensor.id}", daemon=True)

    @property
    def label(self) -> str:
        return f"{self.sensor.driver} '{self.sensor.id}' at {self.sensor.where}"

    def run(self) -> None:
        schedule = Schedule(self.sensor.interval, self.clock)
        offset = self._wall_offset()
        while not self.stop.is_set():
            if not self._set_up:
                if self.power is not None and self.health.state is State.FAILED:
                    self._power_cycle()
                set_up = self._try_setup()
                self.first_setup.set()
                if not set_up:
                    self.clock.wait(self.stop, self._reprobe_delay)
                    self._reprobe_delay = min(self._reprobe_delay * 2, REPROBE_CAP_S)
                    continue
                schedule.realign()
            if self.clock.wait(self.stop, schedule.delay()):
                break
            if abs(self._wall_offset() - offset) > WALL_STEP_S:
                # The wall clock stepped (NTP sync, a manual date): keep slots on its multiples.
                offset = self._wall_offset()
                schedule.realign()
                continue
            self.sample()
            schedule.advance()

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
        """Marks a setup or read in progress, so the supervisor can tell a hung one."""
        self.busy_since = self.clock.monotonic()
        try:
            yield
        finally:
            self.busy_since = None

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
        """Take one sample now and hand its readings on; failures only change health."""
        synced = self.clock.synchronized()
        time_ns = int(self.clock.time() * NS)
        boot_ns = int(self.clock.boottime() * NS)
        try:
            with self._busy():
                measurements = self.processor.sample(self.driver.read)
        except Exception as exc:  # noqa: BLE001 - one flaky sensor never takes the unit down
            self._read_failed(exc)
            return
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
