"""Maintenance mode: while a technician works on the unit, its readings are flagged MAINTENANCE
(``drivers.base.Quality``, 128), so a sensor being swapped, cleaned or breathed on is not
reported as pollution. Upstream gets the bit with every reading; HJ 212 maps it to its data
flag M.

The mode is one small record in the data directory, ``maintenance.json``, written whole
(agent.core.atomic) by ``envagent maintenance on|off`` or by the running agent when the service
button is held (agent.runtime.service). It works beside a running agent: the agent looks at
the file's inode, size and times (one ``stat``) before each sample and re-reads it only when
they changed (:class:`Watch`), so a change counts from the next sample on.

Every window ends by itself: ``--for`` (default :data:`DEFAULT_FOR_S`, at most
:data:`MAX_FOR_S`), so a mode left on by mistake flags hours, not weeks. The end is measured on
CLOCK_BOOTTIME in the boot that turned the mode on -- a clock that synchronises (and jumps) in
the meantime neither ends it early nor stretches it. After a reboot the wall clock ends it,
bounded again by the time since this boot: it never outlasts its own length however wrong the
restored clock is. ``off`` keeps the record with the time it ended (``status`` says so).

A damaged record (too large, not JSON, the wrong shape) is read as "off" with one WARNING:
never a crash, never readings flagged by a file nobody can read. ``maintenance on`` replaces
it and ``maintenance off`` removes it.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.core.atomic import DamagedFileError, read_json, write_json
from agent.core.timebase import NS
from drivers.clock import Clock

log = logging.getLogger("envagent.maintenance")

FILE = "maintenance.json"
FORMAT = "envagent-maintenance/1"
MAX_BYTES = 4096  # a record is ~300 bytes with a full note
DEFAULT_FOR_S = 4 * 3600.0  # a site visit; longer work says --for
MIN_FOR_S = 1.0
MAX_FOR_S = 7 * 86400.0  # a week: beyond it, turn it on again
MAX_NOTE = 200  # characters, as a commissioning note
# Anyone may read the record whoever wrote it: `sudo envagent maintenance on` with a strict
# umask must not leave the service unable to see the mode.
FILE_MODE = 0o644
BY_COMMAND = "command"
BY_BUTTON = "button"
_BY = (BY_COMMAND, BY_BUTTON)


class MaintenanceFileError(DamagedFileError):
    """``maintenance.json`` is not a record this agent writes."""


@dataclass(frozen=True, slots=True)
class Window:
    """One maintenance window, as recorded.

    ``since_ns``/``until_ns`` are the wall clock's times when it went on and of its planned
    end (for people); ``for_s`` is its length on CLOCK_BOOTTIME from ``boot_ns`` in boot
    ``boot_id`` (for the agent). ``ended_ns``: when ``off`` ended it (None: not ended by hand).
    """

    since_ns: int
    until_ns: int
    for_s: float
    boot_id: str
    boot_ns: int
    note: str | None = None
    by: str = BY_COMMAND
    ended_ns: int | None = None
    ended_by: str | None = None

    def remaining(self, now: float, boottime: float, boot_id: str | None) -> float:
        """Seconds left at wall time ``now`` and CLOCK_BOOTTIME ``boottime`` of ``boot_id``;
        0 or less once it is over (module docstring)."""
        if self.ended_ns is not None:
            return 0.0
        elapsed = boottime - self.boot_ns / NS
        if boot_id == self.boot_id and elapsed >= 0:
            return self.for_s - elapsed
        return min(self.until_ns / NS - now, self.for_s - boottime)

    def active(self, clock: Clock, boot_id: str | None) -> bool:
        return self.remaining(clock.time(), clock.boottime(), boot_id) > 0

    def ends_ns(self, clock: Clock, boot_id: str | None) -> int:
        """The wall time it ends by itself, on this clock now (a synchronisation since it went
        on moves the wall time, not the end)."""
        left = self.remaining(clock.time(), clock.boottime(), boot_id)
        return round((clock.time() + max(0.0, left)) * NS)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, data: object, path: Path) -> Window:
        """The window in a record read from ``path``; MaintenanceFileError for any other shape."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise MaintenanceFileError(f"{path} is not a maintenance record of this agent "
                                       f"version (expected format {FORMAT!r})")
        fields = {k: v for k, v in data.items() if k != "format"}
        try:
            window = cls(**fields)
        except TypeError as exc:
            raise MaintenanceFileError(f"{path}: {exc}") from None
        if not window.well_formed():
            raise MaintenanceFileError(f"{path}: a field has the wrong type or value")
        return window

    def well_formed(self) -> bool:
        def integer(value: object) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        return (integer(self.since_ns) and integer(self.until_ns) and integer(self.boot_ns)
                and isinstance(self.for_s, int | float) and not isinstance(self.for_s, bool)
                and math.isfinite(self.for_s) and 0 < self.for_s <= MAX_FOR_S
                and isinstance(self.boot_id, str) and self.by in _BY
                and (self.note is None or isinstance(self.note, str) and len(self.note) <= MAX_NOTE
                     and self.note.isprintable())  # status prints it to a terminal
                and (self.ended_ns is None or integer(self.ended_ns))
                and (self.ended_by is None or self.ended_by in _BY))

    def describe(self) -> str:
        """For the log: "since 2026-11-21 10:32:00 UTC, ends 14:32:00 UTC by itself (by the
        button; note: ...)"."""
        who = "the button" if self.by == BY_BUTTON else "envagent maintenance on"
        note = f"; note: {self.note}" if self.note else ""
        return (f"since {_utc(self.since_ns)}, ends {_utc(self.until_ns)} by itself at the "
                f"latest (turned on by {who}{note})")


def load(data_dir: Path) -> Window | None:
    """The recorded window, over or not; None when there is none. MaintenanceFileError when
    the record is damaged, OSError when it cannot be read."""
    path = data_dir / FILE
    try:
        data = read_json(path, MAX_BYTES)
    except FileNotFoundError:
        return None
    except MaintenanceFileError:
        raise
    except DamagedFileError as exc:
        raise MaintenanceFileError(str(exc)) from None
    return Window.from_json(data, path)


def turn_on(data_dir: Path, clock: Clock, boot_id: str, *, for_s: float = DEFAULT_FOR_S,
            note: str | None = None, by: str = BY_COMMAND) -> Window:
    """Start a window of ``for_s`` seconds from now (a window already on is replaced: its end
    moves, its ``since`` stays); OSError when the record cannot be written."""
    if not MIN_FOR_S <= for_s <= MAX_FOR_S:
        raise ValueError(f"for_s must be from {MIN_FOR_S:g} to {MAX_FOR_S:g} s, not {for_s!r}")
    now, boottime = clock.time(), clock.boottime()
    since_ns = round(now * NS)
    try:
        current = load(data_dir)
    except (OSError, ValueError):  # damaged or unreadable: replaced by the new one
        current = None
    if current is not None and current.remaining(now, boottime, boot_id) > 0:
        since_ns = current.since_ns  # on since then; only its end moves
    window = Window(since_ns=since_ns, until_ns=round((now + for_s) * NS), for_s=for_s,
                    boot_id=boot_id, boot_ns=round(boottime * NS), note=note, by=by)
    write_json(data_dir / FILE, window.to_json(), indent=1, mode=FILE_MODE)
    return window


def turn_off(data_dir: Path, clock: Clock, boot_id: str, *,
             by: str = BY_COMMAND) -> Window | None:
    """End the window that is on (its record kept, with the time it ended); None when none
    was on. A damaged record is removed. OSError when the record cannot be written."""
    path = data_dir / FILE
    try:
        current = load(data_dir)
    except MaintenanceFileError:
        path.unlink(missing_ok=True)
        return None
    if current is None or not current.active(clock, boot_id):
        return None
    ended = replace(current, ended_ns=round(clock.time() * NS), ended_by=by)
    write_json(path, ended.to_json(), indent=1, mode=FILE_MODE)
    return ended


def read_active(data_dir: Path, clock: Clock, boot_id: str | None) -> tuple[Window | None,
                                                                              str | None]:
    """For the commands: the window on now (None when off) and, when the record could not be
    read, why (the mode then counts as off, as it does for the agent)."""
    try:
        window = load(data_dir)
    except (OSError, ValueError) as exc:
        return None, f"{data_dir / FILE} cannot be read ({_reason(exc)}): maintenance counts as off"
    if window is None or not window.active(clock, boot_id):
        return None, None
    return window, None


def to_json(window: Window | None, clock: Clock, boot_id: str | None) -> dict[str, Any] | None:
    """``status --json``'s ``maintenance``: ``{since, until, note, by}``, or None when off."""
    if window is None:
        return None
    return {"since": _iso(window.since_ns), "until": _iso(window.ends_ns(clock, boot_id)),
            "note": window.note, "by": window.by}


class Watch:
    """The running agent's view of the mode: :meth:`active` before each sample (any sensor's
    thread) and on each supervisor tick.

    One ``stat`` per look; the record is read again only when the file changed, and the end
    is checked on the clock every time. The start and the end of a window are logged once
    each (INFO), a record that cannot be read once per change of the file (WARNING).
    """

    def __init__(self, data_dir: Path, clock: Clock, boot_id: str) -> None:
        self.path = data_dir / FILE
        self.data_dir = data_dir
        self.clock = clock
        self.boot_id = boot_id
        self._key: tuple[int, ...] | None = None  # the file's identity when last read
        self._window: Window | None = None  # the record last read
        self._on: Window | None = None  # the window on at the last look
        self._lock = threading.Lock()  # sensor threads and the supervisor look at once

    def active(self) -> bool:
        """Whether readings sampled now are taken in maintenance mode."""
        return self.current() is not None

    def current(self) -> Window | None:
        """The window on now; None when the mode is off."""
        with self._lock:
            self._refresh()
            window = self._window
            if window is not None and not window.active(self.clock, self.boot_id):
                window = None
            self._transition(window)
            return window

    def _refresh(self) -> None:
        key: tuple[int, ...] | None
        try:
            st = self.path.stat()
        except FileNotFoundError:
            key = None
        except OSError as exc:
            key = (-1,)
            if self._key != key:
                log.warning("cannot look at %s (%s): maintenance counts as off", self.path,
                            _reason(exc))
                self._key, self._window = key, None
            return
        else:
            key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if key == self._key:
            return
        self._key = key
        try:
            self._window = None if key is None else load(self.data_dir)
        except (OSError, ValueError) as exc:
            log.warning("%s cannot be read (%s): maintenance counts as off; "
                        "`envagent maintenance off` removes it", self.path, _reason(exc))
            self._window = None

    def _transition(self, window: Window | None) -> None:
        was = self._on
        self._on = window
        if window is not None and (was is None or was.since_ns != window.since_ns
                                   or was.until_ns != window.until_ns):
            log.info("maintenance mode on %s: readings are flagged maintenance",
                     window.describe())
        elif window is None and was is not None:
            ended = self._window
            if ended is not None and ended.since_ns == was.since_ns and ended.ended_ns:
                how = ("by the button" if ended.ended_by == BY_BUTTON
                       else "by envagent maintenance off")
            elif ended is None and self._key is None:
                how = f"{FILE} was removed"
            else:
                how = "by itself, its time is up"
            log.info("maintenance mode off (%s, on since %s): readings are no longer "
                     "flagged", how, _utc(was.since_ns))


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _utc(time_ns: int) -> str:
    return datetime.fromtimestamp(time_ns / NS, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _iso(time_ns: int) -> str:
    return datetime.fromtimestamp(time_ns / NS, UTC).isoformat(timespec="seconds")
