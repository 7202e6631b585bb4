"""The outbox for a long-running agent: when it cannot be opened, wait -- do not crash-loop.

A state directory that is not writable (wrong owner after a manual copy, a filesystem remounted
read-only by the kernel after an SD card error) is not fixed by restarting the service every
five seconds. ``ReopeningOutbox`` stands in for :class:`~agent.store.outbox.Outbox`: every use tries
to open the real one (at most every ``retry`` seconds) and otherwise raises the StorageError
that explains what to fix. The writer then holds readings in memory, bounded and counted
(agent.sampling.daemon), the status line and the LED say what is wrong, and the first successful
open
stores everything held.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

from agent.core.errors import StorageError
from agent.core.reading import Reading, StoredReading
from agent.store import salvage
from agent.store.outbox import LatestValue, Outbox, OutboxStats, Subscriber, UpstreamStats
from drivers.clock import Clock

log = logging.getLogger("envagent")

RETRY_S = 30.0


class Store(Protocol):
    """What the agent's parts use of an outbox: :class:`Outbox` or :class:`ReopeningOutbox`."""

    path: Path

    def append(self, readings: Sequence[Reading], *, dropped_before: int = 0) -> None: ...
    def take(self, limit: int, *, upstream: str | None = None,
             hold_boot: str | None = None) -> list[StoredReading]: ...
    def take_alerts(self, limit: int, *, upstream: str | None = None) -> list[StoredReading]: ...
    def ack(self, ids: Iterable[int], *, upstream: str | None = None) -> int: ...
    def quarantine(self, ids: Iterable[int], reason: str, *,
                   upstream: str | None = None) -> int: ...
    def restamp(self, boot_id: str, anchor_wall_ns: int, anchor_boot_ns: int) -> int: ...
    def stats(self) -> OutboxStats: ...
    def upstreams(self) -> list[UpstreamStats]: ...
    def latest(self) -> list[LatestValue]: ...


class ReopeningOutbox:
    def __init__(self, path: Path, *, max_bytes: int, clock: Clock,
                 retry: float = RETRY_S, progress: salvage.Progress | None = None,
                 subscribers: Sequence[Subscriber] | None = None) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.progress = progress  # for Outbox: signs of life while an open checks or salvages
        # for every Outbox it opens: the upstreams' cursors (None: leave them as they are)
        self.subscribers = None if subscribers is None else list(subscribers)
        self.clock = clock
        self.retry = retry
        self.error: StorageError | None = None  # why it is not open, while it is not
        self._outbox: Outbox | None = None
        self._next_try = 0.0
        self._lock = threading.Lock()
        with contextlib.suppress(StorageError):  # logged; sampling starts regardless
            self.get()

    def get(self) -> Outbox:
        """The open outbox, opening it if it is time to try again."""
        with self._lock:
            if self._outbox is not None:
                return self._outbox
            if self.error is not None and self.clock.monotonic() < self._next_try:
                raise self.error
            try:
                self._outbox = Outbox(self.path, max_bytes=self.max_bytes,
                                      progress=self.progress, subscribers=self.subscribers)
            except StorageError as exc:
                if self.error is None or str(exc) != str(self.error):
                    log.error("%s; sampling goes on into memory; trying again every %g s",
                              exc, self.retry)
                self.error = exc
                self._next_try = self.clock.monotonic() + self.retry
                raise
            if self.error is not None:
                log.warning("outbox %s is open now", self.path)
                self.error = None
            return self._outbox

    # The Outbox methods the agent uses, each on the real outbox once it can be opened.

    def append(self, readings: Sequence[Reading], *, dropped_before: int = 0) -> None:
        self.get().append(readings, dropped_before=dropped_before)

    def subscribe(self, subscribers: Sequence[Subscriber]) -> None:
        """Outbox.subscribe now, and for every outbox opened from now on."""
        self.subscribers = list(subscribers)
        self.get().subscribe(self.subscribers)

    def take(self, limit: int, *, upstream: str | None = None,
             hold_boot: str | None = None) -> list[StoredReading]:
        return self.get().take(limit, upstream=upstream, hold_boot=hold_boot)

    def take_alerts(self, limit: int, *, upstream: str | None = None) -> list[StoredReading]:
        return self.get().take_alerts(limit, upstream=upstream)

    def ack(self, ids: Iterable[int], *, upstream: str | None = None) -> int:
        return self.get().ack(ids, upstream=upstream)

    def quarantine(self, ids: Iterable[int], reason: str, *,
                   upstream: str | None = None) -> int:
        return self.get().quarantine(ids, reason, upstream=upstream)

    def restamp(self, boot_id: str, anchor_wall_ns: int, anchor_boot_ns: int) -> int:
        return self.get().restamp(boot_id, anchor_wall_ns, anchor_boot_ns)

    def stats(self) -> OutboxStats:
        return self.get().stats()

    def upstreams(self) -> list[UpstreamStats]:
        return self.get().upstreams()

    def latest(self) -> list[LatestValue]:
        return self.get().latest()

    def recovery(self) -> salvage.Recovery | None:
        return self.get().recovery()

    def close(self) -> None:
        with self._lock:
            if self._outbox is not None:
                self._outbox.close()
                self._outbox = None

    def __enter__(self) -> ReopeningOutbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
