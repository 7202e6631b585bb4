"""The time facts every layer shares: nanoseconds, how a time is written, which boot this is,
and how long readings of an unsynchronised boot wait for the clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

NS = 1_000_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The kernel's random id of this boot (proc(5)): readings stamped in one boot share it, so a
# later sync can re-stamp exactly the readings whose boot-time anchor it knows.
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
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
# The same, short enough for one status line or a sync report.
SYNC_ADVICE_SHORT = "sudo timedatectl set-ntp true, UDP port 123 open (envagent doctor)"


def iso_ns(time_ns: int) -> str:
    """``2026-11-21T06:00:00.123456789Z``: UTC, always nine fractional digits."""
    seconds, ns = divmod(time_ns, NS)
    return f"{(EPOCH + timedelta(seconds=seconds)):%Y-%m-%dT%H:%M:%S}.{ns:09d}Z"


def read_boot_id(path: Path = BOOT_ID_PATH) -> str:
    return path.read_text().strip()


def current_boot() -> str | None:
    """This boot's id, or None where the kernel does not say (not Linux)."""
    try:
        return read_boot_id()
    except OSError:
        return None
