"""``envagent status`` for people: delivery in words, each sensor's state, last values and a
24-hour sparkline, in the terminal's width (down to 40 columns, a phone over SSH).

Sources: the outbox (backlog, counters, last values), ``uplink-state.json``, and what the daemon
leaves in the data directory (agent.runtime.statusfile). Where the daemon left no sensor states (an
older agent, or one that never ran) the per-sensor health readings in the outbox stand in.

Readings held for the clock (agent.sampling.timekeeping) come from the hold the delivery worker
records in
``uplink-state.json``: of this boot, not past its end, and still in the outbox. Its count is the
backlog -- while a hold lasts everything older has gone and every new reading is held, and the
backlog is current where the worker's own count is refreshed only every minute. ``envagent sync``
words what it left behind with the same phrases (:func:`sync_left`).

Maintenance mode comes from its record (agent.store.maintenance), judged on this process's
clock: it is on or off whether or not an agent runs, and a damaged record is said to count as
off.

Firing alerts come from the outbox too: the last ``alert_<id>`` reading of each configured rule
(agent.sampling.alerts), 1 while it fires -- the daemon's rules live in another process, and that
reading
is what went upstream. Each is shown with its rule and the watched quantity's last value.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.config import AlertConfig, Config, UplinkConfig
from agent.core.timebase import HOLD_UNSYNCED_S, NS, SYNC_ADVICE_SHORT, UNSYNCED_REASON
from agent.runtime.history import HISTORY_FILE, POINTS, bucket_of
from agent.runtime.statusfile import HEALTH_QUANTITIES, SENSORS_FILE, SensorsFile, load_history
from agent.sampling.alerts import ALERT_SENSOR, FIRING, alert_quantity
from agent.store.maintenance import BY_BUTTON, Window
from agent.store.outbox import LatestValue, OutboxStats
from agent.store.salvage import Recovery
from agent.uplink.sink import NOT_ACKNOWLEDGED, THIS_UNIT
from agent.uplink.worker import UplinkState, state_file
from drivers.clock import Clock

log = logging.getLogger("envagent.status")

BARS = "▁▂▃▄▅▆▇█"
ASCII_BARS = "_.-=+*#@"
LABEL = 9  # "outbox   "
MIN_WIDTH = 40
MIN_INLINE_SPARK = 6  # narrower than this, a sparkline goes on a line of its own
NBSP = "\u00a0"  # keeps "1 234" together when a line wraps
# agent.runtime.health.SENSOR_STATE
STATE_CODES = {0: "ok", 1: "warning", 2: "failed", 3: "starting"}


def cols(text: str) -> int:
    """Terminal columns: East Asian wide characters take two, combining marks none."""
    return sum(0 if unicodedata.combining(c) else
               2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def clip(text: str, width: int) -> str:
    if cols(text) <= width:
        return text
    out, used = "", 0
    for c in text:
        if used + cols(c) > width - 1:
            break
        out, used = out + c, used + cols(c)
    return out + "…"


def wrap(text: str, width: int, indent: int = LABEL) -> list[str]:
    """Greedy word wrap by columns; continuation lines indented; an overlong word clipped."""
    lines: list[str] = []
    body = text.lstrip(" ")
    line = text[:len(text) - len(body)]  # a leading indent stays
    for word in body.split(" "):
        candidate = f"{line} {word}" if line.strip() else line + word
        if cols(candidate) <= width or not line.strip():
            line = candidate
        else:
            lines.append(line)
            line = " " * indent + word
    lines.append(line)
    return [clip(x, width) for x in lines]


def count(n: int) -> str:
    return f"{n:,}".replace(",", NBSP)


def ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"


def clock_time(time_ns: int, now: float) -> str:
    """10:32 today, else 3 May 10:32 (local time)."""
    when, today = datetime.fromtimestamp(time_ns / 1e9), datetime.fromtimestamp(now)
    return when.strftime("%H:%M" if when.date() == today.date() else "%d %b %H:%M")


def sync_words(state: UplinkState | None, backlog: int, now: float) -> str:
    """"delivered 2 min ago, 0 waiting", "not delivering: ...", "not started: ..."."""
    waiting = count(backlog)
    if state is None:
        return f"not started: the agent has not run with this uplink yet, {waiting} waiting"
    if state.state in ("ok", "starting"):
        if state.last_success_ns:
            return f"delivered {ago(now - state.last_success_ns / 1e9)} ago, {waiting} waiting"
        return f"nothing delivered yet, {waiting} waiting"
    since = f" (since {clock_time(state.since_ns, now)})" if state.since_ns else ""
    return f"not delivering: {trouble_words(state)}{since}, {waiting} waiting"


def trouble_words(state: UplinkState) -> str:
    """Why delivery stopped, in a few words: "server unreachable", "server answers HTTP 503",
    "server does not acknowledge"."""
    error = state.last_error or ""
    reason = {"auth_blocked": "server refused the token", "failing": "server refuses the writes",
              "retrying": "server unreachable"}.get(state.state, state.state)
    if state.state == "auth_blocked" and "token file" in error:
        reason = "the token file is unusable"
    elif state.state == "retrying" and error.startswith(("HTTP 5", "HTTP 429", "HTTP 408")):
        reason = f"server answers {error.split(':')[0]}"
    elif state.state == "retrying" and error.startswith(NOT_ACKNOWLEDGED):
        reason = "server does not acknowledge"
    elif state.state == "retrying" and error.startswith(THIS_UNIT):
        reason = error.split(":")[0]  # "this unit cannot write its HJ 212 archive"
    return reason


def maintenance_words(window: Window | None, clock: Clock, boot_id: str | None,
                      now: float) -> str:
    """"MAINTENANCE on since 10:32 (ends 14:32 by itself): readings are flagged", or that it
    is off."""
    if window is None:
        return "maintenance mode off: readings are not flagged"
    who = ", turned on with the button" if window.by == BY_BUTTON else ""
    note = f"; note: {window.note}" if window.note else ""
    return (f"MAINTENANCE on since {clock_time(window.since_ns, now)} (ends "
            f"{clock_time(window.ends_ns(clock, boot_id), now)} by itself{who}): readings are "
            f"flagged{note}")


# --- readings held for the clock ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Holding:
    """Readings held for the clock: how many, since and until when (wall ns), and why."""

    count: int
    since_ns: int | None
    until_ns: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count,
                "since": None if self.since_ns is None else _iso(self.since_ns),
                "until": _iso(self.until_ns), "reason": self.reason}


def holding(state: UplinkState | None, boot_id: str, backlog: int,
            now: float) -> Holding | None:
    """The hold the delivery worker recorded, if it still holds readings (module docstring)."""
    if state is None or state.hold_boot != boot_id or state.hold_until_ns is None:
        return None
    if backlog <= 0 or state.hold_until_ns <= now * 1e9:
        return None
    return Holding(backlog, state.hold_since_ns, state.hold_until_ns,
                   state.hold_reason or UNSYNCED_REASON)


def uplink_states(config: Config, data_dir: Path) -> list[tuple[str, UplinkState | None]]:
    """Each configured upstream's name and the state its worker left in ``data_dir`` (None:
    it never ran there)."""
    return [(u.name, UplinkState.load(data_dir / state_file(u.name))) for u in config.uplinks]


def aggregates_waiting(settings: UplinkConfig, data_dir: Path) -> int | None:
    """How many of an HJ 212 upstream's minute, hourly and daily data wait for the platform's
    acknowledgement (in its archive, agent.uplink.hj212.archive); None for another upstream,
    or when the archive cannot be read (logged)."""
    if settings.hj212 is None:
        return None
    from agent.uplink.hj212.archive import archive_path, waiting_in  # HJ 212 units only

    path = archive_path(data_dir, settings.name)
    try:
        return waiting_in(path)
    except sqlite3.Error as exc:
        log.warning("cannot read the HJ 212 archive %s: %s", path, exc)
        return None


def held_in(config: Config, data_dir: Path, boot_id: str, backlog: int,
            now: float) -> Holding | None:
    """:func:`holding`, from the states the workers left in ``data_dir``: the clock holds the
    same readings back from every upstream, so the first that says so tells it."""
    for _, state in uplink_states(config, data_dir):
        held = holding(state, boot_id, backlog, now)
        if held is not None:
            return held
    return None


def clock_json(synced: bool | None, held: Holding | None) -> dict[str, Any]:
    """``status --json``'s ``clock``: ``{synchronised, holding: {count, since, until, reason}
    or null}``."""
    return {"synchronised": synced, "holding": None if held is None else held.to_json()}


def clock_words(config: Config, synced: bool | None, held: Holding | None, now: float,
                hold_ends: float | None) -> str:
    """The status's clock row: synchronised or not, what that does to the readings, and what
    to do. ``hold_ends``: the wall time this boot's hold for the clock ends (None: unknown)."""
    if held is not None and synced:
        return (f"synchronised; {count(held.count)} readings held for it go upstream "
                "re-stamped at the agent's next commit (or with envagent sync when it is "
                "not running)")
    if held is not None:
        since = "" if held.since_ns is None else f" since {clock_time(held.since_ns, now)}"
        why = "for it" if held.reason == UNSYNCED_REASON else f"({held.reason})"
        return (f"NOT synchronised: {count(held.count)} readings held {why}{since}, until "
                f"{clock_time(held.until_ns, now)} at most (then sent flagged); fix: "
                f"{SYNC_ADVICE_SHORT}")
    if synced is None:
        return "unknown: cannot tell whether it is synchronised"
    if synced:
        return "synchronised"
    if not config.uplinks:
        effect = "readings are stored flagged, re-stamped if it synchronises before a reboot"
    elif hold_ends is not None and hold_ends > now:
        effect = (f"new readings are held for it until {clock_time(int(hold_ends * 1e9), now)} "
                  "at most")
    else:
        effect = ("readings go upstream flagged clock_unsynced (held for it only the first "
                  f"{ago(HOLD_UNSYNCED_S)} after boot)")
    return f"NOT synchronised: {effect}; fix: {SYNC_ADVICE_SHORT}"


def sync_left(state: UplinkState, where: str, *, failed: bool, quarantined: int,
              backlog: int, now: float) -> str | None:
    """Why ``envagent sync`` left readings behind (and exits 1), in words; None when all of it
    went. ``state``: the uplink's state after the flush, its hold included."""
    reasons = []
    if failed:
        reasons.append(_failure_words(state, where) + f"; {backlog} reading(s) wait in the "
                       "outbox")
    if state.hold_boot is not None and state.hold_count:
        until = "" if state.hold_until_ns is None else \
            f", or flagged at {clock_time(state.hold_until_ns, now)} at most"
        reason = state.hold_reason or UNSYNCED_REASON
        reasons.append(f"{state.hold_count} reading(s) held: {reason}; they go upstream "
                       f"re-stamped once it is{until}; fix: {SYNC_ADVICE_SHORT}, then sync "
                       "again")
    if quarantined:
        reasons.append(f"{quarantined} reading(s) refused by the server, moved to quarantine "
                       "(the log names each; envagent status counts them)")
    if not reasons and backlog:
        reasons.append(f"{backlog} reading(s) are still in the outbox; sync again")
    return "; ".join(reasons) or None


def _failure_words(state: UplinkState, where: str) -> str:
    """A failed delivery in words: the server's answer (redacted, bounded: agent.uplink.worker) or
    the kind of failure -- never the text of a client-side exception."""
    error = state.last_error or ""
    kind = error.split(";")[0].split(":")[0].strip() or "no answer"
    if state.state == "auth_blocked":
        return (f"could not deliver: {where} refused the upload token ({kind}): fix the token "
                "file, then sync again")
    if state.state == "failing":
        hint = error.split("; ", 1)[1] if "; " in error else "check uplink.url and the server"
        return f"could not deliver: {where} refuses the writes ({kind}): {hint}"
    if kind.startswith("HTTP"):
        return f"could not deliver: {error}; the server has trouble, sync again later"
    return (f"could not deliver: cannot reach {where} ({kind}): check the network and "
            "uplink.url, then sync again")


@dataclass(frozen=True, slots=True)
class FiringAlert:
    """A configured alert whose last alert reading says firing (see the module docstring)."""

    rule: AlertConfig
    since_ns: int  # the time of the reading that fired it
    now: LatestValue | None  # the watched quantity's last value

    def describe(self, now: float) -> str:
        """"pm25 since 10:32: dust pm2_5 above 75 µg/m³ for 10 min; now 80.1 µg/m³"."""
        rule, last = self.rule, self.now
        uom = f"{NBSP}{last.unit}" if last is not None else ""  # a value and its unit: one word
        side = "above" if rule.above is not None else "below"
        held = f" for {ago(rule.hold).replace(' ', NBSP)}" if rule.hold else ""
        value = "" if last is None else f"; now {_value(last.value)}{uom}"
        return (f"{rule.id} since {clock_time(self.since_ns, now)}: {rule.sensor} "
                f"{rule.quantity} {side} {rule.threshold:g}{uom}{held}{value}")

    def to_json(self) -> dict[str, Any]:
        rule, last = self.rule, self.now
        return {"id": rule.id, "sensor": rule.sensor, "quantity": rule.quantity,
                "above": rule.above, "below": rule.below, "clear": rule.clear, "for_s": rule.hold,
                "since": _iso(self.since_ns),
                "value": None if last is None or not math.isfinite(last.value) else last.value,
                "unit": None if last is None else last.unit}


def firing_alerts(config: Config, latest: Sequence[LatestValue]) -> list[FiringAlert]:
    """The configured alerts whose last alert reading in the outbox says firing."""
    last = {(x.sensor, x.quantity): x for x in latest}
    found = []
    for rule in config.alerts:
        alert = last.get((ALERT_SENSOR, alert_quantity(rule.id)))
        if alert is not None and alert.value == FIRING:
            found.append(FiringAlert(rule, alert.time_ns, last.get((rule.sensor, rule.quantity))))
    return found


def sparkline(points: Sequence[float | None], width: int, bars: str = BARS) -> str:
    """``points`` squeezed into ``width`` columns (a column's mean), scaled min to max."""
    width = max(1, min(width, len(points)))
    columns: list[float | None] = []
    for i in range(width):
        part = [p for p in points[i * len(points) // width:(i + 1) * len(points) // width]
                if p is not None]
        columns.append(sum(part) / len(part) if part else None)
    known = [c for c in columns if c is not None]
    if not known:
        return " " * width
    low, high = min(known), max(known)
    top = len(bars) - 1
    return "".join(
        " " if c is None else bars[top // 2 if high == low else round((c - low) / (high - low)
                                                                      * top)]
        for c in columns)


def render(config: Config, data_dir: Path, stats: OutboxStats, latest: Sequence[LatestValue],
           *, recovery: Recovery | None, synced: bool | None, boot_id: str, now: float,
           width: int, bars: str = BARS, hold_ends: float | None = None,
           backlogs: Mapping[str, int] | None = None,
           maintenance: tuple[Window | None, str | None, Clock] | None = None) -> list[str]:
    """The human status, every line at most ``width`` columns; ``hold_ends``: the wall time
    this boot's hold for the clock ends (agent.sampling.timekeeping), None when unknown;
    ``backlogs``: each upstream's share of the backlog by name (its cursor in the outbox);
    ``maintenance``: the window on (agent.store.maintenance.read_active), why its record
    could not be read, and the clock it was judged on."""
    backlogs = backlogs or {}
    width = max(MIN_WIDTH, width)
    unit = config.unit
    lines = [clip(f"{unit.id} · {unit.site}", width)]

    def row(label: str, text: str) -> None:
        lines.extend(wrap(f"{label:<{LABEL - 1}} {text}", width))

    if maintenance is not None:  # first: the technician's own doing, not to be left on
        window, damaged, clock = maintenance
        if window is not None:
            lines.extend(wrap(maintenance_words(window, clock, boot_id, now), width))
        elif damaged is not None:
            row("maint", damaged)
    for alert in firing_alerts(config, latest):  # first: what a technician must see
        row("ALERT", alert.describe(now))
    states = uplink_states(config, data_dir)
    if not states:
        row("sync", f"no uplink configured, {count(stats.backlog)} kept")
    for settings, (name, uplink) in zip(config.uplinks, states, strict=True):
        who = "" if len(states) == 1 else f"{name}: "  # one upstream: as it always was
        cursor = backlogs.get(name)
        aggregates = aggregates_waiting(settings, data_dir)
        more = f"; minute/hourly/daily data: {count(aggregates)} waiting" if aggregates else ""
        row("sync", who + sync_words(uplink, stats.backlog if cursor is None else cursor, now)
            + more)
        if uplink is not None:
            since = f" since {clock_time(uplink.since_ns, now)}" if uplink.since_ns else ""
            row("uplink", f"{who}{uplink.state}{since}")
            if uplink.state not in ("ok", "starting") and uplink.last_error:
                row("", uplink.last_error)
    held = held_in(config, data_dir, boot_id, stats.backlog, now)
    row("clock", clock_words(config, synced, held, now, hold_ends))
    oldest = "" if stats.oldest_ns is None else \
        f", oldest {ago(now - stats.oldest_ns / 1e9)} old"
    row("outbox", f"{count(stats.backlog)} readings{oldest}; dropped {count(stats.dropped)}, "
        f"quarantined {count(stats.rejected)}")
    if recovery is not None:
        row("damage", f"recovered {clock_time(recovery.at_ns, now)}: {recovery.reason}; "
            f"{count(recovery.salvaged)} salvaged, {count(recovery.lost)} lost; the damaged "
            f"file is kept as {recovery.moved_to}")
    daemon = SensorsFile.load(data_dir / SENSORS_FILE)
    if daemon is None:
        row("agent", "no sensor states recorded (not running, or an older version)")
    elif daemon.running(boot_id):
        row("agent", f"running (pid {daemon.pid})")
    else:
        row("agent", f"not running; states as it left them at "
            f"{clock_time(daemon.written_ns, now)}")
    lines += _sensors(config, data_dir, daemon, latest, now, width, bars)
    return lines


def agent_clock(data_dir: Path, boot_id: str) -> tuple[bool | None, float] | None:
    """The running agent's own clock (a rehearsal's is simulated): synchronised, and the wall
    time its boot's hold for the clock ends; None when no agent runs or it did not say."""
    daemon = SensorsFile.load(data_dir / SENSORS_FILE)
    if daemon is None or daemon.clock is None or not daemon.running(boot_id):
        return None
    return daemon.clock["synced"], daemon.clock["hold_ends_ns"] / NS


def sensors_json(data_dir: Path, boot_id: str) -> dict[str, Any] | None:
    """For ``status --json``: the states the daemon recorded, and whether it still runs."""
    daemon = SensorsFile.load(data_dir / SENSORS_FILE)
    if daemon is None:
        return None
    return {"running": daemon.running(boot_id), "pid": daemon.pid,
            "written": _iso(daemon.written_ns),
            "states": [{"id": s.id, "driver": s.driver, "state": s.state,
                        "since": _iso(s.since_ns), "errors": s.errors,
                        "last_error": s.last_error} for s in daemon.sensors]}


def _iso(time_ns: int) -> str:
    return datetime.fromtimestamp(time_ns / 1e9, UTC).isoformat(timespec="seconds")


def _sensors(config: Config, data_dir: Path, daemon: SensorsFile | None,
             latest: Sequence[LatestValue], now: float, width: int, bars: str) -> list[str]:
    states = {s.id: s for s in daemon.sensors} if daemon is not None else {}
    history = load_history(data_dir / HISTORY_FILE)
    last_bucket = bucket_of(now)
    values = [x for x in latest if x.quantity not in HEALTH_QUANTITIES]
    q_width = min(12 if width < 60 else 16, max((cols(x.quantity) for x in values), default=8))
    u_width = min(5, max((cols(x.unit) for x in values), default=2))
    fixed = 2 + q_width + 1 + 8 + 1 + u_width + 1
    lines = wrap("sparklines: the last 24 hours, newest on the right", width, 4) \
        if values else []
    for sensor in config.sensors:
        state = states.get(sensor.id)
        if state is not None:
            text = state.state if state.state == "ok" else \
                f"{state.state} since {clock_time(state.since_ns, now)}"
            error = None if state.state == "ok" else state.last_error
        else:
            code = next((x for x in latest if x.sensor == sensor.id
                         and x.quantity == "sensor_state"), None)
            text = "state unknown" if code is None else \
                f"{STATE_CODES.get(int(code.value), '?')} at {clock_time(code.time_ns, now)}"
            error = None
        lines.extend(wrap(f"{sensor.id} ({sensor.driver}): {text}", width, 4))
        if error:
            lines.extend(wrap(f"    {error}", width, 4))
        for x in (x for x in values if x.sensor == sensor.id):
            series = history.series.get((x.sensor, x.quantity, x.unit))
            points: list[float | None] = (series.window(last_bucket) if series is not None
                                          else [None] * POINTS)
            if points[-1] is None and bucket_of(x.time_ns / 1e9) == last_bucket:
                points[-1] = x.value
            head = (f"  {clip(x.quantity, q_width):<{q_width}} {_value(x.value):>8} "
                    f"{clip(x.unit, u_width):<{u_width}}")
            room = width - fixed
            if room >= MIN_INLINE_SPARK:
                lines.append(clip(f"{head} {sparkline(points, room, bars)}".rstrip(), width))
            else:
                lines.append(clip(head.rstrip(), width))
                lines.append(clip(f"    {sparkline(points, width - 4, bars)}".rstrip(), width))
    return lines


def _value(value: float) -> str:
    if not math.isfinite(value):
        return "—"
    if abs(value) >= 1000:
        return f"{value:.0f}"
    return f"{value:.1f}" if abs(value) >= 100 else f"{value:.2f}"
