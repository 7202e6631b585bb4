"""True time on a machine without a clock battery.

Until NTP (or timesyncd) has synchronised it, a Pi's wall clock is wrong but plausible -- often
the time of the last shutdown. Every reading therefore records, besides the wall time, the
CLOCK_BOOTTIME at the same instant, the kernel's boot id and whether the clock was synchronised
(drivers.clock: adjtimex(2)). From that:

- Readings taken before the clock synchronised are **re-stamped** once it has, within the same
  boot: with an anchor (wall, boottime) read while synchronised, a reading's true time is
  ``anchor_wall + (reading.boot_ns - anchor_boot)``. They are marked synced and flagged
  ``CLOCK_RESTAMPED`` so upstream knows how the time was derived.
- While this boot's clock is unsynchronised, its readings are **held back** from delivery (up to
  ``HOLD_UNSYNCED_S`` after boot), so they go upstream with their true time rather than flagged.
  :meth:`TimeKeeper.holding` describes that hold (why, until when at most) for the people who
  must see it: the delivery worker logs it and records it for ``envagent status``
  (agent.uplink.worker), the LED shows it, ``envagent sync`` counts it as readings left (exit 1).
- Readings of a boot that never synchronised (the unit rebooted first), or still unsynchronised
  after the hold, are sent with ``CLOCK_UNSYNCED`` -- never as if their time were true.
- The commissioning records (agent.store.commission) of this boot taken before the sync get the same
  anchor, so their time -- where the readings' ``mounting_height``/``shield`` tags start --
  agrees with the readings'. A ``commission.json`` the agent cannot write is logged once and
  its records go upstream as recorded, flagged.
- Where NTP is absent, an upstream's time can stand in (agent.core.timebase.ExternalTime: an
  HJ 212 platform's time set, CN 1012): this boot's unsynchronised readings are re-stamped from
  its anchor after every commit, the same way, and flagged ``CLOCK_RESTAMPED``; they are held
  meanwhile (past ``HOLD_UNSYNCED_S`` too), so none goes with a time known to be wrong. The
  wall clock itself is never set. Once NTP synchronises, its anchor takes over.
- A step of the wall clock (forward or backward) is detected as a change of
  ``wall - boottime``; it is logged, sensor schedules re-align on their own, and the readings'
  boot-time anchors are unaffected, so re-stamping stays exact across any number of steps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from agent.core.timebase import HOLD_UNSYNCED_S, NS, UNSYNCED_REASON, Anchor, ExternalTime
from agent.store import commission
from agent.store.storage import Store
from drivers.clock import Clock

log = logging.getLogger("envagent.time")

# A change of (wall - boottime) larger than this is a step, not NTP slewing.
STEP_S = 1.0


@dataclass(frozen=True, slots=True)
class Hold:
    """This boot's readings wait for the clock: why, and until when at most (wall-clock ns, as
    this unit's clock counts -- the only clock there is to say it with)."""

    boot_id: str
    reason: str
    until_ns: int


def hold_ends(clock: Clock, hold: float = HOLD_UNSYNCED_S) -> float:
    """The wall time (as ``clock`` counts) at which this boot's hold for the clock ends."""
    return clock.time() + hold - clock.boottime()


class TimeKeeper:
    def __init__(self, clock: Clock, boot_id: str, *, hold: float = HOLD_UNSYNCED_S,
                 commission_dir: Path | None = None,
                 external: ExternalTime | None = None) -> None:
        """``commission_dir``: the data directory whose commissioning records are re-stamped
        with this boot's readings (None: none are); ``external``: an upstream's time, where
        NTP is absent."""
        self.clock = clock
        self.external = external
        self._external_used: Anchor | None = None
        self.boot_id = boot_id
        self.hold = hold
        self.commission_dir = commission_dir
        self._commission_failing = False  # logged once, until a re-stamp succeeds again
        self.synced = clock.synchronized()
        self._offset = self._current_offset()
        self._restamp_due = True  # an earlier run of this boot may have left unsynced readings

    def _current_offset(self) -> float:
        return self.clock.time() - self.clock.boottime()

    def held_boot(self) -> str | None:
        """The boot whose readings delivery must skip for now (this one, while unsynced)."""
        waiting = self.synced is False or (self.synced and self._restamp_due)
        if waiting and (self.clock.boottime() < self.hold or self._external() is not None):
            return self.boot_id
        return None

    def _external(self) -> Anchor | None:
        """The upstream's anchor, while the clock is not synchronised."""
        if self.external is None or self.synced:
            return None
        return self.external.anchor()

    def holding(self) -> Hold | None:
        """The hold people must see: this boot's readings wait because the clock is not
        synchronised. None otherwise -- also in the moment between the sync and the re-stamp,
        when :meth:`held_boot` still skips them for a commit or so."""
        if (self.synced is not False or self.clock.boottime() >= self.hold
                or self._external() is not None):
            return None
        return Hold(self.boot_id, UNSYNCED_REASON, int(hold_ends(self.clock, self.hold) * NS))

    def maintain(self, outbox: Store) -> None:
        """Notice sync changes and steps; re-stamp this boot's unsynced readings once synced.

        Called after each commit, so readings committed just after the sync are re-stamped on
        the next call.
        """
        synced = self.clock.synchronized()
        offset = self._current_offset()
        step = offset - self._offset
        if abs(step) > STEP_S:
            log.warning("the wall clock stepped by %+.1f s (%s)", step,
                        "synchronised" if synced else "not synchronised")
        self._offset = offset
        if synced and not self.synced:
            log.info("the clock is synchronised now")
        if synced is False and self.synced:
            log.warning("the clock lost synchronisation; new readings are held back")
        self.synced = synced
        if synced and self._restamp_due:
            anchor_boot = int(self.clock.boottime() * NS)
            anchor_wall = int(self.clock.time() * NS)
            count = outbox.restamp(self.boot_id, anchor_wall, anchor_boot)
            if count:
                log.info("re-stamped %d reading(s) taken before the clock synchronised", count)
            self._restamp_records(anchor_wall, anchor_boot)
            self._restamp_due = False
        elif (external := self._external()) is not None and (
                self._restamp_due or external != self._external_used):
            if external != self._external_used:
                log.info("the clock is not synchronised: readings are stamped with the time "
                         "%s gave, %+.0f s from this unit's clock", external.source,
                         (external.wall_ns - external.boot_ns) / NS - offset)
            self._external_used = external
            outbox.restamp(self.boot_id, external.wall_ns, external.boot_ns)
            self._restamp_records(external.wall_ns, external.boot_ns)
            self._restamp_due = False

    def _restamp_records(self, anchor_wall_ns: int, anchor_boot_ns: int) -> None:
        """The commissioning records' share of the re-stamp; a file that cannot be written
        (``sudo envagent commission`` while the service runs) costs the records their true
        time, never the readings theirs."""
        if self.commission_dir is None:
            return
        try:
            count = commission.restamp(self.commission_dir, self.boot_id, anchor_wall_ns,
                                       anchor_boot_ns)
        except OSError as exc:
            if not self._commission_failing:
                log.warning("cannot re-stamp the commissioning record(s) taken before the clock "
                            "synchronised: %s; they go upstream with the time recorded, flagged "
                            "clock_synced false", exc)
            self._commission_failing = True
            return
        self._commission_failing = False
        if count:
            log.info("re-stamped %d commissioning record(s) taken before the clock "
                     "synchronised", count)

    def appended(self, any_unsynced: bool) -> None:
        """The writer committed readings; ``any_unsynced``: some had an unsynchronised clock."""
        if any_unsynced:
            self._restamp_due = True
