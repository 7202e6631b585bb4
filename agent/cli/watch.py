"""``envagent status --watch`` and ``--follow``: a technician sees data flow before leaving.

``--watch [SECONDS]`` redraws the human status every few seconds. On a terminal each frame is
drawn from the top-left corner over the last one (ANSI cursor home, each line cleared to its end,
the rest of the screen cleared below), so nothing flickers on a slow SSH link and a frame taller
than the window is cut rather than scrolled. Anywhere else -- ``ssh unit envagent status
--watch`` without ``-t``, a pipe, a log file, a test -- escape sequences would be garbage, and
refusing would leave exactly those technicians without a view: each frame is printed whole
instead, frames apart by a blank line.

``--follow`` prints one line per event, as it happens, stamped with the local time::

    10:32:05 committed 60 readings
    10:32:05 delivered 60 readings to db.example.org:8086
    10:32:06 holding 48: clock not synchronised; they wait for it until 10:58 at most

The events are differences between two looks at what the running agent already leaves in the
data directory, half a second apart: the outbox counters (added, delivered, dropped, rejected --
agent.store.outbox, opened read-only), ``uplink-state.json`` (agent.uplink.worker: its state, and
the hold
for the clock, counted as ``status`` counts it) and ``sensors-state.json``
(agent.runtime.statusfile), and ``maintenance.json`` (agent.store.maintenance: on, off, ended by
itself -- judged on this process's clock, as ``status`` judges it).
Nothing new is written to the SD card for it. What those do not record is not invented: the
uplink state is written on transitions only, so there is no time per delivery to show, and two
commits between looks show as one line.

Both modes only read, every file with a size bound (agent.core.atomic): they work for a user who may
not write to the data directory, beside the running agent. Ctrl-C ends them with exit 0.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import NamedTuple, TextIO
from urllib.parse import urlsplit

from agent.cli.statusview import clip, holding
from agent.config import Config, UplinkConfig
from agent.core.errors import ConfigError, StorageError
from agent.core.timebase import HOLD_UNSYNCED_S, NS
from agent.runtime.statusfile import SENSORS_FILE, SensorsFile
from agent.store import maintenance
from agent.store.outbox import Outbox
from agent.uplink.worker import UplinkState, state_file
from drivers.clock import Clock

POLL_S = 0.5  # --follow looks this often: a commit is seen within half a second
HOME, CLEAR_LINE, CLEAR_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"  # ECMA-48 CUP, EL, ED
MAX_EVENT_CHARS = 300  # an error text from a file is cut here: one event, one line
LIVE_STATES = ("ok", "starting")  # an uplink in these has no error worth a line


# --- watch: the status, redrawn -----------------------------------------------------------------


def watch(frame: Callable[[], list[str]], interval: float, clock: Clock,
          out: TextIO | None = None) -> int:
    """Print ``frame()`` every ``interval`` seconds until Ctrl-C; 0 then (see module docstring)."""
    out = out or sys.stdout
    tty, apart = out.isatty(), ""
    try:
        while True:
            footer = f"updated {_stamp(clock)}, every {interval:g} s; Ctrl-C to stop"
            if tty:
                _draw(out, frame(), footer)
            else:
                out.write(apart + "\n".join([*frame(), footer]) + "\n")
                apart = "\n"  # a blank line between frames
            out.flush()
            clock.sleep(interval)
    except KeyboardInterrupt:
        if tty:
            out.write("\n")  # the shell's prompt on a line of its own, below the last frame
        return 0
    except BrokenPipeError:  # `... --watch | head`: the reader has all it wanted
        _silence_stdout()
        return 0


def _draw(out: TextIO, lines: list[str], footer: str) -> None:
    """One frame over the last: home, each line cleared to its end, the rest cleared below.
    No newline after the last line, so a frame as tall as the window never scrolls it."""
    size = shutil.get_terminal_size()
    rows = max(2, size.lines)
    if len(lines) + 1 > rows:
        hidden = len(lines) - (rows - 2)
        lines = [*lines[:rows - 2], f"… {hidden} more lines: a taller window shows them"]
    body = [clip(x, size.columns) for x in (*lines, footer)]
    out.write(HOME + "\n".join(x + CLEAR_LINE for x in body) + CLEAR_BELOW)


def captured(show: Callable[[], object], encoding: str | None) -> list[str]:
    """What ``show`` prints (stdout and stderr, in order), as lines: one-shot ``status`` as the
    watch frame, so the two never differ. An error becomes the frame -- the next one may be
    fine again (a config being edited, an outbox being replaced)."""
    buffer = _Buffer(encoding)
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        try:
            show()
        except ConfigError as exc:
            print("\n".join(exc.problems))
        except OSError as exc:  # StorageError too: it is one
            text = str(exc).strip().replace("\n", "; ") or type(exc).__name__
            print(f"envagent: {text}")
    return buffer.getvalue().rstrip("\n").split("\n")


class _Buffer(io.StringIO):
    """A StringIO that says the terminal's encoding, so the frame uses the same characters
    (sparkline bars or their ASCII stand-ins) as ``status`` printed straight to it."""

    def __init__(self, encoding: str | None) -> None:
        super().__init__()
        self._encoding = encoding

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._encoding or "ascii"


# --- follow: one line per event ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Look:
    """The data directory at one instant. ``added`` None: no outbox there (yet)."""

    added: int | None
    delivered: int
    dropped: int
    rejected: int
    held: int  # readings waiting for the clock (agent.sampling.timekeeping)
    synced: bool | None  # the clock, as this process sees it
    uplinks: tuple[Upstream, ...]  # each configured upstream, in the config's order
    sensors: tuple[tuple[str, str, str | None], ...]  # id, state, last error
    agent: int | None  # pid of the running agent; None: not running
    hold_expired: bool = False  # the hold ran out before the clock synchronised
    hold_until: float | None = None  # wall time the hold ends at the latest
    # maintenance mode: the window on as recorded (since_ns, until_ns), when it ends on this
    # clock (ns) and its note; None: off
    maintenance: tuple[int, int, int, str | None] | None = None

    @property
    def backlog(self) -> int:
        return (self.added or 0) - self.delivered - self.dropped - self.rejected


class Upstream(NamedTuple):
    """One upstream as ``--follow`` sees it."""

    name: str
    state: str | None  # None: its worker left no state file
    error: str | None  # the last error
    delivered: int | None  # readings it acknowledged, from its cursor; None: no cursor


@dataclass(frozen=True, slots=True)
class Station:
    """What ``--follow`` needs to know of the unit: where to look, what to call things."""

    unit: str
    data_dir: Path
    outbox_path: Path
    targets: dict[str, str]  # name -> host[:port], for "delivered 60 readings to ..."
    boot_id: str

    @classmethod
    def of(cls, config: Config, outbox_path: Path, boot_id: str) -> Station:
        return cls(config.unit.id, outbox_path.parent, outbox_path,
                   {u.name: _target(u) for u in config.uplinks}, boot_id)


def _target(uplink: UplinkConfig) -> str:
    parts = urlsplit(uplink.url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host  # an IPv6 address, as in a URL
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{host}:{port}" if port else host


def follow(station: Station, clock: Clock, out: TextIO | None = None) -> int:
    """Print one line per event until Ctrl-C; 0 then (see module docstring)."""
    out = out or sys.stdout

    def say(text: str) -> None:
        out.write(f"{_stamp(clock)} {_one_line(text)}\n")
        out.flush()

    try:
        previous = look(station, clock, None)
        say(_opening(station, previous))
        while True:
            clock.sleep(POLL_S)
            current = look(station, clock, previous)
            for text in changes(previous, current, targets=station.targets,
                                outbox=station.outbox_path):
                say(text)
            previous = current
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        _silence_stdout()
        return 0


def _opening(station: Station, now: Look) -> str:
    if now.added is None:
        return (f"following {station.unit}: no outbox at {station.outbox_path} yet, waiting "
                "for the agent to start; Ctrl-C to stop")
    held = f" ({now.held} held for the clock)" if now.held else ""
    agent = f"agent running (pid {now.agent})" if now.agent else "agent not running"
    uplink = "".join(f", uplink {_named(u.name, now.uplinks)}{u.state}" for u in now.uplinks
                     if u.state is not None)
    mode = ", MAINTENANCE mode on" if now.maintenance is not None else ""
    return (f"following {station.unit} in {station.data_dir}: {now.backlog} readings "
            f"waiting{held}, {agent}{uplink}{mode}; Ctrl-C to stop")


def look(station: Station, clock: Clock, previous: Look | None) -> Look:
    """The data directory now; the outbox's counters of ``previous`` when it cannot be read
    this time (busy, or being replaced) -- a gap is not an event.

    Readings held for the clock are those of the hold the delivery worker records, counted as
    ``status`` counts them (agent.cli.statusview.holding), so the two never disagree and neither
    depends on this process's own idea of the clock.
    """
    now = clock.time()
    (added, delivered, dropped, rejected), cursors = _counters(station, previous)
    states = {name: UplinkState.load(station.data_dir / state_file(name))
              for name in station.targets}
    backlog = (added or 0) - delivered - dropped - rejected
    held = next((h for h in (holding(state, station.boot_id, backlog, now)
                             for state in states.values()) if h is not None), None)
    ran_out = (held is None and previous is not None and previous.hold_until is not None
               and now >= previous.hold_until)
    daemon = SensorsFile.load(station.data_dir / SENSORS_FILE)
    window, _ = maintenance.read_active(station.data_dir, clock, station.boot_id)
    return Look(
        added, delivered, dropped, rejected, held=0 if held is None else held.count,
        synced=clock.synchronized(),
        uplinks=tuple(Upstream(name, None if state is None else state.state,
                               None if state is None else state.last_error, cursors.get(name))
                      for name, state in states.items()),
        sensors=() if daemon is None else tuple(
            (s.id, s.state, s.last_error) for s in daemon.sensors),
        agent=daemon.pid if daemon is not None and daemon.running(station.boot_id) else None,
        hold_expired=ran_out, hold_until=None if held is None else held.until_ns / NS,
        maintenance=None if window is None else (
            window.since_ns, window.until_ns, window.ends_ns(clock, station.boot_id),
            window.note))


Counters = tuple[int | None, int, int, int]


def _counters(station: Station, previous: Look | None) -> tuple[Counters, dict[str, int]]:
    """(added, delivered, dropped, rejected), added None when there is no outbox; and what
    each upstream has acknowledged, by name, from its cursor."""
    if not station.outbox_path.is_file():
        return (None, 0, 0, 0), {}
    try:
        with Outbox.open_readonly(station.outbox_path) as outbox:
            stats, cursors = outbox.stats(), outbox.upstreams()
    except StorageError:
        if previous is None:
            return (None, 0, 0, 0), {}
        return ((previous.added, previous.delivered, previous.dropped, previous.rejected),
                {u.name: u.delivered for u in previous.uplinks if u.delivered is not None})
    return ((stats.added, stats.delivered, stats.dropped, stats.rejected),
            {c.name: c.delivered for c in cursors})


def changes(before: Look, after: Look, *, targets: Mapping[str, str],
            outbox: Path | None = None) -> list[str]:
    """What happened between two looks, one sentence per event, in the order a technician
    reads cause and effect: the agent, the outbox, the clock, readings in, held, out, the
    uplink, the sensors."""
    said: list[str] = []
    if after.agent is not None and after.agent != before.agent:
        said.append(f"agent running (pid {after.agent})")
    said += _maintenance(before, after)
    said += _clock(before, after)
    said += _flow(before, after, targets, outbox)
    known_uplinks = {u.name: u for u in before.uplinks}
    for u in after.uplinks:
        was = known_uplinks.get(u.name)
        if u.state is not None and (was is None or (was.state, was.error) != (u.state, u.error)):
            said.append(f"uplink {_named(u.name, after.uplinks)}{_uplink(u.state, u.error)}")
    known = {s[0]: s for s in before.sensors}
    for sensor in after.sensors:
        if known.get(sensor[0]) != sensor:
            sensor_id, state, error = sensor
            said.append(f"sensor {sensor_id} {state}" +
                        (f": {error}" if error and state != "ok" else ""))
    if before.agent is not None and after.agent is None:
        said.append("agent stopped")
    return said


def _flow(before: Look, after: Look, targets: Mapping[str, str],
          outbox: Path | None) -> list[str]:
    where = f" at {outbox}" if outbox is not None else ""
    if after.added is None:
        return [f"the outbox{where} is gone (moved or deleted)"] if before.added is not None \
            else []
    if before.added is not None and any(
            a < b for a, b in ((after.added, before.added), (after.delivered, before.delivered),
                               (after.dropped, before.dropped),
                               (after.rejected, before.rejected))):
        return [f"the outbox{where} was replaced: its counts start again at "
                f"{after.added} added, {after.backlog} waiting"]
    # an outbox that was not there counts from nothing (its other counters read 0 meanwhile)
    said = [] if before.added is not None else [f"the agent made its outbox{where}"]
    committed, dropped = after.added - (before.added or 0), after.dropped - before.dropped
    delivered, rejected = after.delivered - before.delivered, after.rejected - before.rejected
    if committed > 0:
        said.append(f"committed {_readings(committed)}")
    if dropped > 0:
        said.append(f"dropped {_readings(dropped)} (the outbox was full or damaged: "
                    "envagent status says which)")
    said += _held(before, after)
    said += _delivered(before, after, targets, delivered)
    if rejected > 0:
        said.append(f"quarantined {_readings(rejected)}: upstream refused them for good")
    return said


def _maintenance(before: Look, after: Look) -> list[str]:
    was, now = before.maintenance, after.maintenance
    if now is not None and (was is None or was[:2] != now[:2]):
        note = f" ({now[3]})" if now[3] else ""
        return [f"maintenance mode on{note} until {datetime.fromtimestamp(now[2] / NS):%H:%M}: "
                "readings are flagged"]
    if now is None and was is not None:
        return ["maintenance mode off: readings are no longer flagged"]
    return []


def _clock(before: Look, after: Look) -> list[str]:
    if after.synced == before.synced or after.synced is None:
        return []
    return ["clock synchronised" if after.synced else "clock not synchronised"]


def _held(before: Look, after: Look) -> list[str]:
    if after.held > 0 and after.held != before.held:
        until = "" if after.hold_until is None else \
            f"; they wait for it until {datetime.fromtimestamp(after.hold_until):%H:%M} at most"
        return [f"holding {after.held}: clock not synchronised{until}"]
    if before.held > 0 and after.held == 0:
        if after.hold_expired:
            return [f"no longer holding {before.held}: the clock did not synchronise within "
                    f"{HOLD_UNSYNCED_S / 60:.0f} min of boot; they go upstream flagged as not "
                    "synchronised"]
        return [f"no longer holding: {_readings(before.held)} re-stamped with their true time"]
    return []


def _delivered(before: Look, after: Look, targets: Mapping[str, str],
               removed: int) -> list[str]:
    """"delivered 60 readings to host:port", per upstream from its cursor; from the outbox's
    own count (readings every upstream has) where no cursor says (an outbox without any)."""
    was = {u.name: u.delivered for u in before.uplinks}
    said = []
    for u in after.uplinks:
        old = was.get(u.name)
        if u.delivered is None or old is None or u.delivered <= old:
            continue
        where = targets.get(u.name, u.name)
        to = where if len(after.uplinks) == 1 else f"{u.name} ({where})"
        said.append(f"delivered {_readings(u.delivered - old)} to {to}")
    if not said and removed > 0 and not any(u.delivered is not None for u in after.uplinks):
        target = next(iter(targets.values())) if len(targets) == 1 else None
        said.append(f"delivered {_readings(removed)}" + (f" to {target}" if target else ""))
    return said


def _named(name: str, uplinks: Sequence[Upstream]) -> str:
    """An upstream's name before its state, where there are several to tell apart."""
    return f"{name} " if len(uplinks) > 1 else ""


def _uplink(state: str, error: str | None) -> str:
    return state if state in LIVE_STATES or not error else f"{state}: {error}"


def _readings(n: int) -> str:
    return f"{n} reading" if n == 1 else f"{n} readings"


# --- both -------------------------------------------------------------------------------------


def _stamp(clock: Clock) -> str:
    return datetime.fromtimestamp(clock.time()).strftime("%H:%M:%S")


def _one_line(text: str) -> str:
    """Control characters (a server's reply may hold escape sequences) shown as spaces: one
    event, one line, and nothing that moves the technician's cursor."""
    text = "".join(" " if unicodedata.category(c) == "Cc" else c for c in text)
    return text if len(text) <= MAX_EVENT_CHARS else text[:MAX_EVENT_CHARS - 1] + "…"


def _silence_stdout() -> None:
    """After a broken pipe, let the interpreter's final flush go nowhere instead of printing
    'Exception ignored ... BrokenPipeError' to stderr."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
