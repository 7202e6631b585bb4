"""The time facts every layer shares: nanoseconds, how a time is written, which boot this is,
and how long readings of an unsynchronised boot wait for the clock."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

NS = 1_000_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The kernel's random id of this boot (proc(5)): readings stamped in one boot share it, so a
# later sync can re-stamp exactly the readings whose boot-time anchor it knows.
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
MAX_BOOT_ID_BYTES = 64  # a UUID, 36 characters and a line break
# How long after boot readings wait for the clock to synchronise before they are sent flagged.
# NTP normally syncs within a minute of the network coming up; a unit that cannot reach a time
# server for half an hour still delivers, honestly flagged (agent.sampling.timekeeping).
HOLD_UNSYNCED_S = 1800.0
UNSYNCED_REASON = "the clock is not synchronised"
# How to get the clock synchronised, for doctor, status and sync: the steps a technician takes.
SYNC_ADVICE = ("check `timedatectl status` (System clock synchronized? NTP service active?); "
               "turn NTP on with `sudo timedatectl set-ntp true`; let UDP port 123 out through "
               "the firewall (cellular links often block it: ask the operator for an NTP server "
               "inside its network and set it in /etc/systemd/timesyncd.conf); a unit that "
               "cannot reach NTP at all needs an RTC module (e.g. DS3231, "
               "dtoverlay=i2c-rtc,ds3231 in /boot/firmware/config.txt)")
# The true time an upstream may tell this unit (ExternalTime.offer), as Unix seconds: nothing
# earlier than this agent's first release is true, and nothing beyond 2100 is plausible for a
# unit in the field (a time nanoseconds cannot hold in SQLite's INTEGER, past 2262, would stop
# every re-stamp).
PLAUSIBLE_TIME_S = (datetime(2024, 1, 1, tzinfo=UTC).timestamp(),
                    datetime(2100, 1, 1, tzinfo=UTC).timestamp())
# The same, short enough for one status line or a sync report.
SYNC_ADVICE_SHORT = "sudo timedatectl set-ntp true, UDP port 123 open (envagent doctor)"


def iso_ns(time_ns: int) -> str:
    """``2026-11-21T06:00:00.123456789Z``: UTC, always nine fractional digits."""
    seconds, ns = divmod(time_ns, NS)
    return f"{(EPOCH + timedelta(seconds=seconds)):%Y-%m-%dT%H:%M:%S}.{ns:09d}Z"


def read_boot_id(path: Path = BOOT_ID_PATH) -> str:
    """This boot's id; OSError when it cannot be read, DamagedFileError (a ValueError) when it is
    not a small ASCII file."""
    from agent.core.atomic import DamagedFileError, read_bounded  # sqlite3 and json: lazily

    raw = read_bounded(path, MAX_BOOT_ID_BYTES)
    try:
        return raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise DamagedFileError(f"{path} is not ASCII") from None


def current_boot() -> str | None:
    """This boot's id, or None where the kernel does not say (not Linux)."""
    try:
        return read_boot_id()
    except (OSError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class Anchor:
    """A true wall time (ns) and this boot's CLOCK_BOOTTIME (ns) at the same instant, and who
    said it."""

    wall_ns: int
    boot_ns: int
    source: str


class ExternalTime:
    """The time an upstream told this unit -- an HJ 212 platform's time set (CN 1012) -- as one
    more clock source for agent.sampling.timekeeping while NTP has not synchronised the clock.
    The wall clock itself is never set: readings are re-stamped from the anchor, so there is
    never a silent jump."""

    def __init__(self, synchronized: Callable[[], bool | None],
                 boottime: Callable[[], float]) -> None:
        self._synchronized, self._boottime = synchronized, boottime
        self._lock = threading.Lock()
        self._anchor: Anchor | None = None

    def offer(self, wall_s: float, source: str) -> bool:
        """Take ``wall_s`` as the true time now, unless NTP keeps the clock (then False).
        ValueError for a time outside :data:`PLAUSIBLE_TIME_S`."""
        low, high = PLAUSIBLE_TIME_S
        if not low <= wall_s < high:
            start, end = (f"{EPOCH + timedelta(seconds=t):%Y-%m-%d}" for t in (low, high))
            raise ValueError(f"not a plausible time (from {start} to {end})")
        if self._synchronized():
            return False
        with self._lock:
            self._anchor = Anchor(int(wall_s * NS), int(self._boottime() * NS), source)
        return True

    def anchor(self) -> Anchor | None:
        with self._lock:
            return self._anchor
