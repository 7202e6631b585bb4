"""Health upstream: the agent's own state, sampled every ``[health] interval`` and delivered
exactly like the data.

Why as readings: health sent on a side channel would be lost in the very outages it should
explain. Appended to the outbox by the writer, it is buffered across outages, delivered in order
and never given up before the data is. The backlog a sample reports is the outbox just before
that sample was appended.

Every reading of one sample carries the same wall time, boot time, boot id and synced flag.
Three kinds:

- the unit's, under the reserved sensor id ``envagent`` (config refuses it for a real sensor):
  ``uptime``, ``backlog``, ``backlog_bytes``, ``backlog_age``, ``dropped``, ``quarantined``
  (the outbox as a whole), ``clock_synced``, ``storage_failing``, and where known
  ``disk_written`` and ``cpu_temperature``;
- each upstream's, under ``envagent@<name>`` (sent with the tags ``sensor=envagent`` and
  ``uplink=<name>``): ``uplink_state``, and from its cursor in the outbox ``backlog``,
  ``backlog_age``, ``dropped`` and ``quarantined`` -- so every upstream also learns how the
  others fare;
- each sensor's, under that sensor's own id, so upstream they carry its ``sensor`` and
  ``driver`` tags and one query returns every sensor: ``sensor_state`` and ``sensor_errors``.

Names are lowercase letters, digits and ``_`` only. A sensor id inside a field key
(``air-2.state``) would not do: QuestDB refuses a ``.`` in a column name and MetricsQL reads
``-`` in a bare metric name as a minus. ``dropped`` and ``quarantined`` are the outbox's counters
and survive restarts; ``sensor_errors`` and ``disk_written`` count from the start of this process
and go back to 0 at a restart (``uptime`` shows when).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from agent.core.atomic import read_bounded
from agent.core.reading import RESERVED_SENSOR_ID, Reading, upstream_sensor
from agent.core.timebase import NS
from agent.sampling.daemon import Agent
from agent.sampling.sampler import State
from agent.store.storage import Store
from agent.uplink.worker import Uplink
from drivers.clock import Clock

log = logging.getLogger("envagent.health")

HEALTH_SENSOR = RESERVED_SENSOR_ID  # the sensor id of the unit's own readings
# proc(5): ``write_bytes`` is what this process (all its threads) caused to be sent to storage.
PROC_IO = Path("/proc/self/io")
MAX_PROC_IO_BYTES = 4096  # seven "key: number" lines, ~200 bytes
# Linux thermal sysfs (Documentation/driver-api/thermal/sysfs-api.rst): ``temp`` is in
# millidegrees Celsius; zone 0 is the SoC on a Raspberry Pi.
THERMAL_ZONE = Path("/sys/class/thermal/thermal_zone0/temp")
MAX_THERMAL_BYTES = 64  # one integer and a line break
MILLIDEGREES_PER_DEGREE = 1000.0
FIRST_SAMPLE_S = 5.0  # after start: the first sample, so a restart shows up upstream at once
JOIN_TIMEOUT_S = 2.0

# Codes of the ``sensor_state`` and ``uplink_state`` readings: 0 is healthy, higher is worse,
# except "starting" (nothing known yet). Stored and sent upstream: never renumber.
SENSOR_STATE = {State.OK: 0, State.WARNING: 1, State.FAILED: 2, State.STARTING: 3}
UPLINK_STATE = {"ok": 0, "retrying": 1, "failing": 2, "starting": 3, "auth_blocked": 4}


def read_write_bytes(path: Path = PROC_IO) -> int | None:
    """``write_bytes`` from ``path``; None where the kernel does not account task I/O."""
    try:
        text = read_bounded(path, MAX_PROC_IO_BYTES).decode("ascii")
    except (OSError, ValueError):  # DamagedFileError and UnicodeDecodeError too
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "write_bytes":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def read_cpu_temperature(path: Path = THERMAL_ZONE) -> float | None:
    """Degrees Celsius from a thermal zone; None on a board without one (or while it errs)."""
    try:
        text = read_bounded(path, MAX_THERMAL_BYTES).decode("ascii")
        return int(text.strip()) / MILLIDEGREES_PER_DEGREE
    except (OSError, ValueError):
        return None


class HealthReporter:
    """Samples the agent's health and hands it to the writer (``agent.submit`` by default)."""

    def __init__(
        self,
        agent: Agent,
        outbox: Store,
        uplinks: Sequence[Uplink],
        *,
        clock: Clock,
        boot_id: str,
        submit: Callable[[list[Reading]], None] | None = None,
        io_path: Path = PROC_IO,
        thermal_path: Path = THERMAL_ZONE,
    ) -> None:
        self.agent, self.outbox, self.uplinks, self.clock = agent, outbox, tuple(uplinks), clock
        self.boot_id = boot_id
        self.submit = agent.submit if submit is None else submit
        self.io_path, self.thermal_path = io_path, thermal_path
        self.started = clock.monotonic()
        self._failing = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> list[Reading]:
        """One health sample: the unit's readings, then each sensor's."""
        clock = self.clock
        time_ns = int(clock.time() * NS)
        boot_ns = int(clock.boottime() * NS)
        synced = clock.synchronized()

        def reading(sensor: str, quantity: str, value: float, unit: str) -> Reading:
            return Reading(sensor, quantity, float(value), unit, time_ns, boot_ns, self.boot_id,
                           synced)

        stats = self.outbox.stats()
        age = 0 if stats.oldest_ns is None else max(0, time_ns - stats.oldest_ns)
        unit: list[tuple[str, float, str]] = [
            ("uptime", round(clock.monotonic() - self.started, 3), "s"),
            ("backlog", stats.backlog, "readings"),
            ("backlog_bytes", stats.backlog_bytes, "B"),
            ("backlog_age", round(age / NS, 3), "s"),
            ("dropped", stats.dropped, "readings"),
            ("quarantined", stats.rejected, "readings"),
            ("storage_failing", self.agent.storage_failing, "bool"),
        ]
        if synced is not None:
            unit.append(("clock_synced", synced, "bool"))
        written = read_write_bytes(self.io_path)
        if written is not None:
            unit.append(("disk_written", written, "B"))
        temperature = read_cpu_temperature(self.thermal_path)
        if temperature is not None:
            unit.append(("cpu_temperature", temperature, "°C"))
        readings = [reading(HEALTH_SENSOR, q, value, u) for q, value, u in unit]
        cursors = {c.name: c for c in self.outbox.upstreams()} if self.uplinks else {}
        for uplink in self.uplinks:
            sensor = upstream_sensor(uplink.name)
            readings.append(reading(sensor, "uplink_state",
                                    UPLINK_STATE.get(uplink.state.state, -1), "code"))
            cursor = cursors.get(uplink.name)
            if cursor is None:  # not subscribed (yet): nothing known of its share
                continue
            waited = 0 if cursor.oldest_ns is None else max(0, time_ns - cursor.oldest_ns)
            readings += [reading(sensor, "backlog", cursor.backlog, "readings"),
                         reading(sensor, "backlog_age", round(waited / NS, 3), "s"),
                         reading(sensor, "dropped", cursor.dropped, "readings"),
                         reading(sensor, "quarantined", cursor.rejected, "readings")]
        for worker in self.agent.workers:
            health, sensor = worker.health, worker.sensor.id
            readings.append(reading(sensor, "sensor_state", SENSOR_STATE[health.state], "code"))
            readings.append(reading(sensor, "sensor_errors", health.errors, "errors"))
        return readings

    def report(self) -> bool:
        """Sample and submit; a sample that fails is logged (once, until one works) and skipped."""
        try:
            readings = self.sample()
        except Exception as exc:  # noqa: BLE001 - the outbox or a bug: health must not end sampling
            if not self._failing:
                log.warning("cannot sample the agent's health (%s: %s); trying again every "
                            "interval", type(exc).__name__, exc)
            self._failing = True
            return False
        if self._failing:
            log.info("sampling the agent's health again")
            self._failing = False
        self.submit(readings)
        return True

    def start(self, interval: float, *, first: float = FIRST_SAMPLE_S) -> None:
        """Report ``first`` seconds from now, then every ``interval`` (monotonic) until stopped."""
        self._thread = threading.Thread(target=self.run, args=(interval, first), name="health",
                                        daemon=True)
        self._thread.start()

    def run(self, interval: float, first: float = FIRST_SAMPLE_S) -> None:
        clock = self.clock
        due = clock.monotonic() + first
        while not clock.wait(self._stop, max(0.0, due - clock.monotonic())):
            self.report()
            now = clock.monotonic()
            due += interval
            if due <= now:  # after a stall (a suspend): go on from now, no burst of catch-ups
                due = now + interval

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(JOIN_TIMEOUT_S)
