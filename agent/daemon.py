"""The sampling half of the agent: sensor threads feed one writer that commits in batches.

Readings wait in memory for at most ``storage.commit_interval`` and are then committed in one
transaction -- the trade-off between SD-card wear (every commit rewrites at least a page) and what
a power cut can take. A clean stop (SIGTERM, SIGINT, ``--duration``) commits everything sampled.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Mapping
from pathlib import Path

from agent.config import Config
from agent.outbox import Outbox
from agent.reading import Reading
from agent.sampler import SensorWorker
from drivers.base import Driver
from drivers.bus import Bus
from drivers.clock import Clock

log = logging.getLogger("envagent")

BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
# How long a stop waits for a sensor thread stuck in a read before leaving it behind.
JOIN_TIMEOUT_S = 2.0


def read_boot_id(path: Path = BOOT_ID_PATH) -> str:
    return path.read_text().strip()


def make_drivers(
    config: Config, buses: Mapping[int, Bus], clock: Clock, registry: Mapping[str, type[Driver]]
) -> list[Driver]:
    return [
        registry[s.driver](buses[s.bus], s.address, clock=clock, options=s.options)
        for s in config.sensors
    ]


class Agent:
    def __init__(
        self,
        config: Config,
        drivers: list[Driver],
        *,
        outbox: Outbox,
        clock: Clock,
        boot_id: str,
    ) -> None:
        self.config = config
        self.outbox = outbox
        self.clock = clock
        self.stop = threading.Event()
        self._queue: queue.SimpleQueue[list[Reading]] = queue.SimpleQueue()
        self._pending: list[Reading] = []
        self.workers = [
            SensorWorker(
                sensor, driver, clock=clock, deliver=self._queue.put, boot_id=boot_id,
                stop=self.stop,
            )
            for sensor, driver in zip(config.sensors, drivers, strict=True)
        ]
        self.committed = 0

    def request_stop(self) -> None:
        """Ask ``run`` to finish: safe from a signal handler or another thread."""
        self.stop.set()
        self._queue.put([])  # wakes the writer if it is waiting for readings

    def run(self, duration: float | None = None) -> None:
        """Sample until ``stop`` is set (or ``duration`` seconds pass), then commit and return."""
        clock = self.clock
        started = clock.monotonic()
        end = None if duration is None else started + duration
        commit_interval = self.config.storage.commit_interval
        next_commit = started + commit_interval
        for worker in self.workers:
            worker.thread.start()
        log.info(
            "sampling %d sensor(s); committing every %gs to %s",
            len(self.workers), commit_interval, self.outbox.path,
        )
        try:
            while not self.stop.is_set():
                now = clock.monotonic()
                if end is not None and now >= end:
                    break
                wake = next_commit if end is None else min(next_commit, end)
                self._collect(max(0.0, wake - now))
                if clock.monotonic() >= next_commit:
                    self.commit()
                    next_commit += commit_interval
        finally:
            self.stop.set()
            for worker in self.workers:
                worker.thread.join(JOIN_TIMEOUT_S)
                if worker.thread.is_alive():
                    log.warning("%s: still busy in a read at shutdown; left behind", worker.label)
            self._drain()
            self.commit()

    def _collect(self, timeout: float) -> None:
        """Wait up to ``timeout`` for readings from the sensor threads, then take all queued."""
        try:
            self._pending.extend(self._queue.get(timeout=timeout) if timeout > 0 else [])
        except queue.Empty:
            return
        self._drain()

    def _drain(self) -> None:
        while True:
            try:
                self._pending.extend(self._queue.get_nowait())
            except queue.Empty:
                return

    def commit(self) -> None:
        if not self._pending:
            return
        self.outbox.append(self._pending)
        self.committed += len(self._pending)
        self._pending = []
