"""Doctor's storage checks: room for the outbox to grow to its bound, the database's integrity,
and how long the oldest undelivered reading has waited. All read-only."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from agent.config import Config
from agent.doctor import Check, DiskUsage, Status
from agent.errors import StorageError
from agent.outbox import SCHEMA_VERSION, Outbox
from drivers.clock import Clock

OUTBOX_NAME = "outbox.sqlite"  # as agent.cli.OUTBOX_NAME
# Besides the outbox's own bound: its -wal between checkpoints, the state files, logs and
# package updates. Less free space than this beyond the bound is a WARN.
RESERVE_BYTES = 64 * 1024**2
BACKLOG_WARN_S = 3600.0
BACKLOG_FAIL_S = 24 * 3600.0
QUICK_CHECK_LINES = 3  # of quick_check's complaints, shown in the detail
RESTART_HINT = ("sudo systemctl restart envagent: at start a damaged outbox is moved aside "
                "and what can be read is salvaged")


def check_free_space(config: Config, data_dir: Path,
                     disk_usage: Callable[[Path], DiskUsage]) -> Check:
    """FAIL when the filesystem cannot hold what the outbox may still grow to."""
    max_bytes = config.storage.max_bytes
    outbox = data_dir / OUTBOX_NAME
    used = sum(_size(Path(f"{outbox}{end}")) for end in ("", "-wal", "-shm"))
    existing = data_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    existing = existing.resolve()
    free = disk_usage(existing).free
    growth = max(0, max_bytes - used)
    detail = (f"{human_bytes(free)} free on {existing}; the outbox uses {human_bytes(used)} of "
              f"storage.max_bytes {human_bytes(max_bytes)}")
    if free < growth:
        fits = max(0, used + free - RESERVE_BYTES) // 1024**2
        return Check("free space", Status.FAIL, f"{detail}: it cannot grow to its bound",
                     f'set storage.max_bytes = "{fits}MiB" or less, or free space on {existing}')
    if free < growth + RESERVE_BYTES:
        return Check("free space", Status.WARN, f"{detail}: little room beyond the bound",
                     f"free space on {existing} or lower storage.max_bytes")
    return Check("free space", Status.PASS, detail)


def check_database(data_dir: Path) -> Check:
    """``PRAGMA quick_check`` on a read-only connection (beside a running daemon too)."""
    path = data_dir / OUTBOX_NAME
    if not path.exists():
        return Check("database", Status.PASS, f"no outbox yet at {path}: the agent creates it "
                     "when it first runs")
    try:
        conn = sqlite3.connect(readonly_uri(path), uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        return Check("database", Status.FAIL, f"cannot open {path}: {exc}", RESTART_HINT)
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        rows = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
    except sqlite3.Error as exc:
        return Check("database", Status.FAIL, f"{path}: {exc}", RESTART_HINT)
    finally:
        conn.close()
    if rows != ["ok"]:
        shown = "; ".join(rows[:QUICK_CHECK_LINES])
        return Check("database", Status.FAIL, f"{path} is damaged ({len(rows)} problem(s)): "
                     f"{shown}", RESTART_HINT)
    if version != SCHEMA_VERSION:
        return Check("database", Status.WARN, f"{path} is intact but has outbox schema "
                     f"{version}, this agent writes {SCHEMA_VERSION}",
                     "the agent upgrades an older schema when it starts; a newer one needs "
                     "a newer agent")
    return Check("database", Status.PASS, f"{path}: intact ({human_bytes(_size(path))})")


def readonly_uri(path: Path) -> str:
    """As Outbox.open_readonly: shared -wal/-shm while the daemon runs, else immutable (a plain
    read-only open would create them, owned by whoever runs the doctor)."""
    live = all(Path(f"{path}{end}").exists() for end in ("-wal", "-shm"))
    return path.resolve().as_uri() + ("?mode=ro" if live else "?mode=ro&immutable=1")


def check_backlog(config: Config, data_dir: Path, clock: Clock) -> Check:
    """How long the oldest undelivered reading has waited; only a problem with an uplink."""
    path = data_dir / OUTBOX_NAME
    if not path.exists():
        return Check("backlog", Status.PASS, "no outbox yet: nothing waiting")
    try:
        with Outbox.open_readonly(path) as outbox:
            stats = outbox.stats()
    except StorageError as exc:
        return Check("backlog", Status.SKIP, f"not read: {exc}")
    if stats.oldest_ns is None:
        return Check("backlog", Status.PASS, "nothing waiting")
    age = max(0.0, clock.time() - stats.oldest_ns / 1e9)
    detail = f"{stats.backlog} reading(s) waiting, the oldest for {human_age(age)}"
    if config.uplink is None:
        return Check("backlog", Status.PASS, f"{detail}; no uplink configured, so they are kept")
    hint = ("see the uplink checks below and `envagent status`; `envagent sync` delivers now "
            "and says why it cannot")
    if age > BACKLOG_FAIL_S:
        return Check("backlog", Status.FAIL, f"{detail}: delivery is stuck", hint)
    if age > BACKLOG_WARN_S:
        return Check("backlog", Status.WARN, f"{detail}: delivery is behind", hint)
    return Check("backlog", Status.PASS, detail)


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_age(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
