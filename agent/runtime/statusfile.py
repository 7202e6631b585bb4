"""What the daemon leaves in its data directory for ``envagent status`` in another process: each
sensor's health (``sensors-state.json``) and a day of 15-minute means (``history.json``, see
agent.runtime.history).

SD-card wear decides the cadence. The sensor file is written when a sensor's state or last
error changed, at most every :data:`MIN_WRITE_S`, and when only the error count moved, at most
every :data:`REFRESH_S`; the history when a quarter hour completes. Both atomically (temporary
file, fsync, rename, fsync of the directory), so a reader never sees half a file.

The sensor file also records maintenance mode as the agent applies it (agent.store.maintenance:
``{since_ns, until_ns, note, by}`` or null), written at once when it starts or ends.

The daemon's side is :class:`StatusFiles`: ``tick(workers)`` from the supervisor's tick (every
few seconds, on the watchdog thread -- so it never raises), ``close(workers)`` once at a clean
stop. The file carries the daemon's pid and boot id, so ``status`` can tell a running agent's
states from the last words of one that has stopped.

Both are read with a size bound (agent.core.atomic.read_json); a damaged one -- not UTF-8 or JSON,
too
large, not the shape this version writes -- is logged and read as none: ``status`` shows no
states, the daemon starts a new history.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from agent.config import SensorConfig
from agent.core.atomic import read_json, write_json
from agent.core.errors import StorageError
from agent.core.reading import RESERVED_SENSOR_ID
from agent.core.timebase import NS
from agent.runtime.history import HISTORY_FILE, Accumulator, History, bucket_of
from agent.sampling.timekeeping import hold_ends
from agent.store.maintenance import Window
from agent.store.outbox import LatestValue
from drivers.clock import Clock

log = logging.getLogger("envagent.status")

SENSORS_FILE = "sensors-state.json"
# Bounds for reading them back: ~150 bytes per sensor plus its last error (a line), and ~7 bytes
# per point of a 96-point series (the example station's 22 series: ~17 KiB).
MAX_SENSORS_BYTES = 256 * 1024
MAX_HISTORY_BYTES = 1024 * 1024
# What a file of the right JSON but the wrong shape raises on the way into the dataclasses:
# missing or unknown keys, a list for a dict, 1e999 for an integer.
_SHAPE_ERRORS = (ValueError, TypeError, KeyError, ArithmeticError)
MIN_WRITE_S = 30.0  # a flapping sensor rewrites the file at most this often
REFRESH_S = 900.0  # error counts alone are brought up to date this often
SAMPLE_S = 60.0  # how often the last values are folded into the history
# Per-sensor health readings (agent.runtime.health) share the sensor's id; they are not sparklines.
HEALTH_QUANTITIES = frozenset({"sensor_state", "sensor_errors"})
# A sensor hung inside one read (agent.runtime.supervisor): its state in the file, and why.
STUCK = "stuck"
STUCK_WORDS = ("inside one read that never ends: the chip or its bus does not let go, and every "
               "sensor on that bus waits; the watchdog restarts the agent (power the sensor "
               "down and up, or check its wiring, if it comes back)")


class Worker(Protocol):
    """What is read of a sensor worker (agent.sampling.sampler.SensorWorker)."""

    sensor: SensorConfig

    @property
    def health(self) -> Any: ...  # agent.sampling.sampler.Health: state, errors, last_error


@dataclass(frozen=True, slots=True)
class SensorState:
    id: str
    driver: str
    state: str  # starting, ok, warning, failed; or stuck (STUCK)
    since_ns: int
    errors: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class SensorsFile:
    pid: int
    boot_id: str
    written_ns: int
    sensors: tuple[SensorState, ...]
    # maintenance mode as the agent applies it: since_ns, until_ns, note, by; None: off
    maintenance: dict[str, Any] | None = None
    # the clock as the agent sees it (a rehearsal's is simulated): synchronised (None: the
    # kernel does not say), and the wall time (ns) at which its boot's hold for the clock ends
    clock: dict[str, Any] | None = None

    @classmethod
    def load(cls, path: Path) -> SensorsFile | None:
        """The file's content; None when it is missing, or (logged) damaged or not one this
        version wrote."""
        try:
            data = read_json(path, MAX_SENSORS_BYTES)
            found = cls(data["pid"], data["boot_id"], data["written_ns"],
                        tuple(SensorState(**s) for s in data["sensors"]),
                        data.get("maintenance"), data.get("clock"))
            if not found.well_formed():
                raise ValueError("not the shape this version writes")
        except FileNotFoundError:
            return None
        except (OSError, *_SHAPE_ERRORS) as exc:
            log.warning("%s cannot be read (%s); sensor states are not shown", path, exc)
            return None
        return found

    def well_formed(self) -> bool:
        """Every field of the type written (a hand-edited or damaged file may say anything)."""
        def integer(value: object) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        return (integer(self.pid) and self.pid > 0 and isinstance(self.boot_id, str)
                and integer(self.written_ns) and all(
                    isinstance(s.id, str) and isinstance(s.driver, str)
                    and isinstance(s.state, str) and integer(s.since_ns) and integer(s.errors)
                    and isinstance(s.last_error, str | None) for s in self.sensors)
                and (self.maintenance is None or _maintenance_shape(self.maintenance))
                and (self.clock is None or _clock_shape(self.clock)))

    def running(self, boot_id: str) -> bool:
        """Whether the process that wrote this is still running (in this boot)."""
        if boot_id != self.boot_id:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # alive, under another user (the service's)
            return True
        return True


def _maintenance_shape(value: object) -> bool:
    return (isinstance(value, dict) and set(value) == {"since_ns", "until_ns", "note", "by"}
            and all(isinstance(value[k], int) and not isinstance(value[k], bool)
                    for k in ("since_ns", "until_ns"))
            and isinstance(value["note"], str | None) and isinstance(value["by"], str))


def _clock_shape(value: object) -> bool:
    return (isinstance(value, dict) and set(value) == {"synced", "hold_ends_ns"}
            and isinstance(value["synced"], bool | None)
            and isinstance(value["hold_ends_ns"], int)
            and not isinstance(value["hold_ends_ns"], bool))


def maintenance_record(window: Window | None) -> dict[str, Any] | None:
    """What the sensor file says of maintenance mode."""
    if window is None:
        return None
    return {"since_ns": window.since_ns, "until_ns": window.until_ns, "note": window.note,
            "by": window.by}


def load_history(path: Path) -> History:
    """The history in ``path``; empty when there is none, or (logged) when it is damaged."""
    try:
        return History.from_json(read_json(path, MAX_HISTORY_BYTES))
    except FileNotFoundError:
        return History()
    except (OSError, *_SHAPE_ERRORS) as exc:
        log.warning("%s cannot be read (%s); the sparklines start again", path, exc)
        return History()


class StatusFiles:
    """The daemon's writer of both files; see the module docstring."""

    def __init__(self, data_dir: Path, clock: Clock, *,
                 latest: Callable[[], Sequence[LatestValue]], boot_id: str,
                 maintenance: Callable[[], Window | None] | None = None,
                 synced: Callable[[], bool | None] | None = None) -> None:
        self.sensors_path = data_dir / SENSORS_FILE
        self.history_path = data_dir / HISTORY_FILE
        self.clock = clock
        self._latest = latest
        self._boot_id = boot_id
        self._maintenance = maintenance
        self._written_maintenance: dict[str, Any] | None = None
        self._synced = synced  # the agent's own view of its clock (agent.sampling.timekeeping)
        self._hold_ends_ns = int(hold_ends(clock) * NS)
        self._written_clock: dict[str, Any] | None = None
        self._since: dict[str, tuple[str, int]] = {}  # sensor -> (state, since_ns)
        self._written: tuple[Any, ...] | None = None  # (states and errors) last written
        self._written_counts: tuple[int, ...] | None = None
        self._written_at = -float("inf")  # monotonic
        self._history = load_history(self.history_path)
        self._open = Accumulator()
        self._seen: dict[tuple[str, str, str], int] = {}
        self._started_ns = int(clock.time() * NS)
        self._next_sample = clock.monotonic()
        self._failed = False

    def tick(self, workers: Sequence[Worker], *, stuck: Mapping[str, float] | None = None) -> None:
        """Write what changed, within the limits above; never raises. ``stuck``: the sensors
        hung in one read (agent.runtime.supervisor), by id, with the monotonic time they got in:
        their state is written as ``stuck`` since then."""
        try:
            self._sensors(workers, force=False, stuck=stuck or {})
            now = self.clock.monotonic()
            if now >= self._next_sample:
                self._next_sample = now + SAMPLE_S
                self._observe()
                if self._open.close(self._history, bucket_of(self.clock.time())):
                    write_json(self.history_path, self._history.to_json())
            self._failed = False
        except Exception as exc:  # noqa: BLE001 - a status file must never stop the watchdog
            if not self._failed:
                log.warning("cannot write the status files in %s: %s", self.sensors_path.parent,
                            exc)
            self._failed = True

    def close(self, workers: Sequence[Worker]) -> None:
        """At a clean stop: the final states, and the quarter hour in progress."""
        try:
            self._sensors(workers, force=True)
            self._observe()
            if self._open.close(self._history):
                write_json(self.history_path, self._history.to_json())
        except Exception as exc:  # noqa: BLE001
            log.warning("cannot write the status files in %s: %s", self.sensors_path.parent, exc)

    def _sensors(self, workers: Sequence[Worker], *, force: bool,
                 stuck: Mapping[str, float] | None = None) -> None:
        now_ns = int(self.clock.time() * NS)
        now = self.clock.monotonic()
        states = []
        for w in workers:
            state, error = str(w.health.state), w.health.last_error
            got_in = (stuck or {}).get(w.sensor.id)
            if got_in is not None:
                state, error = STUCK, STUCK_WORDS
            previous = self._since.get(w.sensor.id)
            if previous is None or previous[0] != state:
                since_ns = now_ns if got_in is None else now_ns - int((now - got_in) * NS)
                self._since[w.sensor.id] = previous = (state, since_ns)
            states.append(SensorState(w.sensor.id, w.sensor.driver, state, previous[1],
                                      w.health.errors, error))
        key = tuple((s.state, s.last_error) for s in states)
        counts = tuple(s.errors for s in states)
        mode = None if self._maintenance is None else maintenance_record(self._maintenance())
        seen = None if self._synced is None else {"synced": self._synced(),
                                                 "hold_ends_ns": self._hold_ends_ns}
        elapsed = self.clock.monotonic() - self._written_at
        changed = key != self._written and elapsed >= MIN_WRITE_S
        counted = counts != self._written_counts and elapsed >= REFRESH_S
        if not (force or changed or counted or self._written is None
                or mode != self._written_maintenance  # a mode change: at once
                or seen != self._written_clock):  # the clock's sync too
            return
        document = SensorsFile(os.getpid(), self._boot_id, now_ns, tuple(states), mode, seen)
        write_json(self.sensors_path, asdict(document))
        self._written, self._written_counts = key, counts
        self._written_maintenance = mode
        self._written_clock = seen
        self._written_at = self.clock.monotonic()

    def _observe(self) -> None:
        """Fold each series' last value into its quarter hour, once per value."""
        try:
            latest = self._latest()
        except StorageError:  # the outbox is failing: the status line and the LED say so
            return
        for x in latest:
            key = (x.sensor, x.quantity, x.unit)
            if (x.sensor == RESERVED_SENSOR_ID or x.quantity in HEALTH_QUANTITIES
                    or x.time_ns < self._started_ns or self._seen.get(key) == x.time_ns):
                continue
            self._seen[key] = x.time_ns
            self._open.add(key, x.time_ns / NS, x.value)
