"""Delivery cursors: one per upstream, so that one upstream down never holds back another.

A reading leaves the outbox when every upstream that takes it is done with it. "Done" for one
upstream: acknowledged, quarantined, outside its ``takes`` filter, or gone (the byte bound).
A cursor says which readings are done for its upstream with a high-water id (every id at or
below it is done) and the few ids above it that were finished out of order: alerts go ahead of
the backlog, a bisected batch may be acknowledged second half first, a poison reading is
quarantined alone. The high-water mark folds over them as soon as everything below is done,
so that set stays a handful of rows; a reading held for the clock (``hold_boot``) is not done,
so the mark waits below it.

Why not a row per reading per upstream: the SD card (DESIGN.md "Disk"). An in-order
acknowledgement of a 5,000-reading batch rewrites one small row (``cursors``: one page for all
upstreams); only out-of-order ids are rows of their own (``cursor_done``, WITHOUT ROWID).

Counting without counting rows: a cursor row keeps its upstream's delivered, rejected and
dropped, and ``skipped`` -- the readings added that are not its own (outside its filter, or
already there when it started "now"). Its backlog is then ``added - skipped - delivered -
rejected - dropped`` with ``added`` from the global counters row, so ``envagent status`` reads
it in another process without a count over a million rows. An upstream that takes everything
never touches its row when readings are added; a filtered one adds what it skips.

Filters are callables in the agent's process, which ``status`` does not have, and SQL cannot
call them: the series ids a filtered cursor takes are kept in ``cursor_series``, each series
asked about once (when a cursor is subscribed, and when a new series is first stored). A
process that opened the outbox without subscribing counts a series first stored by it as not
taken; the next subscribe asks again and recounts.

Bounded work: the next reading of a filtered upstream may lie behind a long run of others'. A
look ahead reads at most :data:`SCAN_ROWS` rows; the cursor moves over the run it passed (in
memory, written with the next acknowledgement or once it is :data:`PERSIST_IDS` ahead), so a run
is read once, not at every take.
"""

from __future__ import annotations

import re
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum

Takes = Callable[[str, str], bool]  # (sensor, quantity) -> whether an upstream takes it

NAME = re.compile(r"[a-z0-9_-]+\Z")  # as [[uplink]] name (agent.config)
STARTS = ("oldest", "now")
# Rows one look ahead reads (a few ms of SQLite's C on a PC, ~10x on a Pi Zero 2) while it holds
# the outbox's lock; a longer run is passed in several, the lock released in between.
SCAN_ROWS = 10_000
# A cursor moved this many ids ahead in memory (take passing others' readings) is written even
# without an acknowledgement, so a restart does not read the run again.
PERSIST_IDS = 100_000
FEW_RUNS = 8  # ids in more runs than this go to SQLite as one list, not a statement per run
RESET_KEY = "cursors_reset"  # meta: cursors were lost (salvage); new ones start "oldest"

UPGRADE = (  # schema 2 -> 3, run by agent.store.outbox
    """CREATE TABLE cursors (name TEXT PRIMARY KEY, high INTEGER NOT NULL,
        skipped INTEGER NOT NULL, delivered INTEGER NOT NULL, rejected INTEGER NOT NULL,
        dropped INTEGER NOT NULL, filtered INTEGER NOT NULL) WITHOUT ROWID""",
    """CREATE TABLE cursor_done (cursor TEXT NOT NULL, id INTEGER NOT NULL,
        PRIMARY KEY (cursor, id)) WITHOUT ROWID""",
    """CREATE TABLE cursor_series (cursor TEXT NOT NULL, series INTEGER NOT NULL,
        PRIMARY KEY (cursor, series)) WITHOUT ROWID""",
)

_ROW = "SELECT name, high, skipped, delivered, rejected, dropped, filtered FROM cursors"
_OLDEST = """SELECT time_ns FROM readings WHERE id > ?1{filtered}
    AND id NOT IN (SELECT id FROM cursor_done WHERE cursor = ?2) ORDER BY id LIMIT 1"""
_OLDEST_FILTER = " AND series IN (SELECT series FROM cursor_series WHERE cursor = ?2)"
_NEXT_ID = "SELECT min(id) FROM readings WHERE id > ?"
# the first row of the upstream's own among the next SCAN_ROWS, and the last of them
_LOOK_AHEAD = """SELECT min(CASE WHEN {own} THEN id END), max(id)
    FROM (SELECT id, series FROM readings WHERE id > ? ORDER BY id LIMIT ?)"""
_WINDOW_END = "SELECT max(id) FROM (SELECT id FROM readings WHERE id > ? ORDER BY id LIMIT ?)"


@dataclass(frozen=True, slots=True)
class Subscriber:
    """An upstream as the store sees it.

    ``takes(sensor, quantity)`` says which readings it wants (None: all of them); ``start``
    says where a NEW cursor starts: "oldest" (every reading still stored) or "now" (only
    readings stored from now on).
    """

    name: str  # [a-z0-9_-], unique
    takes: Takes | None = None
    start: str = "oldest"


@dataclass(frozen=True, slots=True)
class UpstreamStats:
    """One upstream's share of the outbox; cumulative counts since its cursor was made."""

    name: str
    backlog: int  # readings it takes that it has not acknowledged or quarantined
    oldest_ns: int | None  # sample time of its oldest such reading (None when none)
    delivered: int  # acknowledged by this upstream
    rejected: int  # quarantined by this upstream
    dropped: int  # given up (byte bound, full disk) before this upstream had them


@dataclass(frozen=True, slots=True)
class Cursor:
    """A cursor as the outbox's process holds it; replaced, never changed, so a transaction
    that fails leaves the one in force untouched."""

    name: str
    high: int  # every id at or below is done; may be ahead of ``saved_high`` (see the docstring)
    done: frozenset[int]  # ids above ``high`` done out of order
    taken: frozenset[int] | None  # series ids it takes; None: every series
    takes: Takes | None  # asked about a series first stored while subscribed
    saved_high: int  # as the database has them
    saved_done: frozenset[int]


class Fold(Enum):
    """Where a look ahead stopped."""

    BARRIER = "barrier"  # the next reading above ``high`` is one of its own, not done
    MORE = "more"  # read SCAN_ROWS rows of others' readings; more follow
    END = "end"  # nothing of its own above ``high``


@dataclass(frozen=True, slots=True)
class Subscription:
    cursors: dict[str, Cursor]
    removed: list[tuple[str, int]]  # (name, backlog it still had)
    changed: bool  # a cursor was added or removed, or a filter changed


def check(subscribers: Sequence[Subscriber]) -> list[Subscriber]:
    """The subscribers, or ValueError naming what is wrong with them."""
    subs, names = list(subscribers), set()
    for sub in subs:
        if not isinstance(sub, Subscriber):
            raise ValueError(f"subscribe: expected Subscriber, got {sub!r}")
        if not NAME.match(sub.name):
            raise ValueError(f"subscribe: upstream name {sub.name!r} must be letters a-z, "
                             "digits, '_' or '-'")
        if sub.name in names:
            raise ValueError(f"subscribe: upstream name {sub.name!r} appears twice; names "
                             "must be unique")
        if sub.start not in STARTS:
            raise ValueError(f"subscribe: upstream {sub.name!r}: start {sub.start!r} must be "
                             f"one of {', '.join(STARTS)}")
        names.add(sub.name)
    return subs


def load(conn: sqlite3.Connection) -> dict[str, Cursor]:
    """The cursors the database holds (filters as series ids: no callables yet)."""
    done: dict[str, set[int]] = {}
    for name, i in conn.execute("SELECT cursor, id FROM cursor_done"):
        done.setdefault(name, set()).add(i)
    series: dict[str, set[int]] = {}
    for name, s in conn.execute("SELECT cursor, series FROM cursor_series"):
        series.setdefault(name, set()).add(s)
    found = {}
    for name, high, _skipped, _delivered, _rejected, _dropped, filtered in conn.execute(_ROW):
        ids = frozenset(done.get(name, ()))
        taken = frozenset(series.get(name, ())) if filtered else None
        found[name] = Cursor(name, high, ids, taken, None, high, ids)
    return found


def names(cursors: Iterable[str]) -> str:
    return ", ".join(repr(n) for n in sorted(cursors))


def ints(values: Iterable[int]) -> str:
    """Integers for an SQL list: ids from the database, never outside input."""
    return ", ".join(str(int(v)) for v in sorted(values))


def classify(takes: Takes | None, series: Mapping[int, tuple[str, str, str]]) -> \
        frozenset[int] | None:
    """The series ids ``takes`` wants of ``series`` (id -> sensor, quantity, unit)."""
    if takes is None:
        return None
    return frozenset(i for i, (sensor, quantity, _unit) in series.items()
                     if takes(sensor, quantity))


# --- subscribing --------------------------------------------------------------------------------


def subscribe(conn: sqlite3.Connection, current: Mapping[str, Cursor],
              subscribers: Sequence[Subscriber], series: Mapping[int, tuple[str, str, str]],
              *, everything: bool) -> Subscription:
    """Make the cursors exactly ``subscribers``, inside the caller's transaction.

    ``everything``: new cursors start "oldest" whatever they ask (the cursors were lost).
    """
    (top,) = conn.execute("SELECT added FROM counters").fetchone()
    (first,) = conn.execute("SELECT min(id) FROM readings").fetchone()
    wanted = {s.name for s in subscribers}
    removed, changed = [], False
    rows = {row[0]: row for row in conn.execute(_ROW)}
    for name in sorted(set(current) - wanted):
        _, _, skipped, delivered, rejected, dropped, _ = rows[name]
        removed.append((name, top - skipped - delivered - rejected - dropped))
        for table, column in (("cursors", "name"), ("cursor_done", "cursor"),
                              ("cursor_series", "cursor")):
            conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (name,))
        changed = True
    result = {}
    for sub in subscribers:
        taken = classify(sub.takes, series)
        old = current.get(sub.name)
        if old is None:
            oldest = everything or sub.start == "oldest"
            high = first - 1 if oldest and first is not None else top
            # counted once, not derived from the counters: a salvage may have estimated them
            backlog = 0 if high == top else _count(conn, high, taken, frozenset())
            conn.execute("INSERT INTO cursors VALUES (?, ?, ?, 0, 0, 0, ?)",
                         (sub.name, high, top - backlog, taken is not None))
            _set_series(conn, sub.name, taken)
            result[sub.name] = Cursor(sub.name, high, frozenset(), taken, sub.takes, high,
                                      frozenset())
            changed = True
            continue
        # what the database has, not what this process passed in memory under another filter
        cursor = replace(old, high=old.saved_high, done=old.saved_done, takes=sub.takes)
        if old.taken != taken:
            _, _, _, delivered, rejected, dropped, _ = rows[sub.name]
            backlog = _count(conn, cursor.high, taken, cursor.done)
            conn.execute("UPDATE cursors SET skipped = ?, filtered = ? WHERE name = ?",
                         (top - backlog - delivered - rejected - dropped, taken is not None,
                          sub.name))
            _set_series(conn, sub.name, taken)
            cursor = replace(cursor, taken=taken)
            changed = True
        result[sub.name] = cursor
    return Subscription(result, removed, changed)


def _set_series(conn: sqlite3.Connection, name: str, taken: frozenset[int] | None) -> None:
    conn.execute("DELETE FROM cursor_series WHERE cursor = ?", (name,))
    if taken:
        conn.executemany("INSERT INTO cursor_series VALUES (?, ?)",
                         [(name, s) for s in sorted(taken)])


def _count(conn: sqlite3.Connection, high: int, taken: frozenset[int] | None,
           done: frozenset[int]) -> int:
    """Readings above ``high`` of ``taken``, not in ``done``: a scan, for rare events only."""
    sql = "SELECT count(*) FROM readings WHERE id > ?"
    if taken is not None:
        sql += f" AND series IN ({ints(taken)})"
    if done:
        sql += f" AND id NOT IN ({ints(done)})"
    return int(conn.execute(sql, (high,)).fetchone()[0])


# --- moving a cursor ----------------------------------------------------------------------------


def series_filter(cursor: Cursor) -> str:
    """`` AND series IN (...)`` for a filtered cursor, else nothing."""
    return "" if cursor.taken is None else f" AND series IN ({ints(cursor.taken)})"


def count_taken(conn: sqlite3.Connection, cursor: Cursor, ids: Sequence[int]) -> int:
    """How many of the sorted distinct ``ids`` are stored readings ``cursor`` takes."""
    own = series_filter(cursor)
    spans = runs(ids)
    if len(spans) > FEW_RUNS:  # scattered (a filtered upstream's batch): one statement
        sql = f"SELECT count(*) FROM readings WHERE id IN ({ints(ids)}){own}"
        return int(conn.execute(sql).fetchone()[0])
    sql = f"SELECT count(*) FROM readings WHERE id BETWEEN ? AND ?{own}"
    return sum(int(conn.execute(sql, span).fetchone()[0]) for span in spans)


def runs(ids: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted distinct ids as (first, last) runs of consecutive ids: an acknowledged batch is
    usually one run, deleted by one range statement rather than one statement per id."""
    if ids[-1] - ids[0] == len(ids) - 1:
        return [(ids[0], ids[-1])]
    runs, first, previous = [], ids[0], ids[0]
    for i in ids[1:]:
        if i != previous + 1:
            runs.append((first, previous))
            first = i
        previous = i
    runs.append((first, previous))
    return runs




def fold(conn: sqlite3.Connection, cursor: Cursor, done: Sequence[int],
         top: int) -> tuple[Cursor, Fold]:
    """``cursor`` with ``done`` (sorted ids above its high-water mark, done for it) folded in:
    the mark moved over every id done for it, up to its next reading not done or one look
    ahead past the last of ``done``; ``top`` is the highest id handed out (``counters.added``).
    """
    high, i, n = cursor.high, 0, len(done)
    while True:
        while i < n and done[i] <= high + 1:
            if done[-1] - done[i] == n - 1 - i:  # the rest is one run: an in-order ack
                high, i = max(high, done[-1]), n
            else:
                high, i = max(high, done[i]), i + 1
        first, last = look_ahead(conn, cursor, high, done[i:])
        if first is not None:
            high, stop = max(high, first - 1), Fold.BARRIER
        elif last is None:
            high, stop = top, Fold.END
        else:
            high, stop = max(high, last), Fold.MORE
        while i < n and done[i] <= high:
            i += 1
        if stop is not Fold.MORE or i == n:
            return replace(cursor, high=high, done=frozenset(done[i:])), stop


def look_ahead(conn: sqlite3.Connection, cursor: Cursor, high: int,
               done: Sequence[int] = ()) -> tuple[int | None, int | None]:
    """(the first stored id above ``high`` that ``cursor`` takes and is not in ``done``, the
    last id read): at most SCAN_ROWS rows for a filtered cursor; (None, None) when nothing is
    stored above ``high``."""
    not_done = f" AND id NOT IN ({ints(done)})" if done else ""
    if cursor.taken is None:
        (first,) = conn.execute(_NEXT_ID + not_done, (high,)).fetchone()
        return first, first  # (None, None): every reading above is done
    own = f"series IN ({ints(cursor.taken)}){not_done}"
    first, last = conn.execute(_LOOK_AHEAD.format(own=own), (high, SCAN_ROWS)).fetchone()
    return first, last


def window_end(conn: sqlite3.Connection, after: int) -> int | None:
    """The id of the SCAN_ROWS-th stored reading above ``after`` (or the last), None if none."""
    (last,) = conn.execute(_WINDOW_END, (after, SCAN_ROWS)).fetchone()
    return None if last is None else int(last)


def save(conn: sqlite3.Connection, cursor: Cursor, *, delivered: int = 0, rejected: int = 0,
         dropped: int = 0) -> Cursor:
    """Write ``cursor``'s position and counts: one small row, plus out-of-order ids that came
    or went. Returns it as saved."""
    conn.execute("""UPDATE cursors SET high = ?, delivered = delivered + ?,
        rejected = rejected + ?, dropped = dropped + ? WHERE name = ?""",
                 (cursor.high, delivered, rejected, dropped, cursor.name))
    gone = cursor.saved_done - cursor.done
    if gone:
        if max(gone) <= cursor.high:  # folded: the usual way they go
            conn.execute("DELETE FROM cursor_done WHERE cursor = ? AND id <= ?",
                         (cursor.name, cursor.high))
        else:
            conn.executemany("DELETE FROM cursor_done WHERE cursor = ? AND id = ?",
                             [(cursor.name, i) for i in gone])
    new = cursor.done - cursor.saved_done
    if new:
        conn.executemany("INSERT INTO cursor_done VALUES (?, ?)",
                         [(cursor.name, i) for i in sorted(new)])
    return replace(cursor, saved_high=cursor.high, saved_done=cursor.done)


# --- deleting what every upstream is done with --------------------------------------------------


def delete_done(conn: sqlite3.Connection, ranges: Iterable[tuple[int, int]],
                cursors: Mapping[str, Cursor], ids: Sequence[int] = ()) -> tuple[int, int]:
    """Delete the readings in ``ranges`` (first, last id) and of sorted ``ids`` that are done
    for every cursor; return how many count as delivered and as rejected (some upstream
    quarantined it). Nothing with no cursor: a unit without an upstream keeps its readings
    (bounded by the byte bound)."""
    delivered = rejected = 0
    if not cursors:
        return 0, 0
    spans = [(lo, hi, "") for lo, hi in ranges]
    if ids:
        spans.append((ids[0], ids[-1], f" AND id IN ({ints(ids)})"))
    for lo, hi, only in spans:
        clauses = []
        for cursor in cursors.values():
            clause = _done_clause(cursor, lo, hi)
            if clause == "0":
                break  # not done for this one: nothing in the range goes
            if clause:
                clauses.append(clause)
        else:
            where = "id BETWEEN ?1 AND ?2" + only + "".join(f" AND {c}" for c in clauses)
            quarantined = 0
            if conn.execute("SELECT 1 FROM quarantine WHERE id BETWEEN ? AND ? LIMIT 1",
                            (lo, hi)).fetchone():
                (quarantined,) = conn.execute(
                    f"""SELECT count(*) FROM readings WHERE {where}
                    AND id IN (SELECT id FROM quarantine WHERE id BETWEEN ?1 AND ?2)""",
                    (lo, hi)).fetchone()
            deleted = conn.execute(f"DELETE FROM readings WHERE {where}", (lo, hi)).rowcount
            delivered, rejected = delivered + deleted - quarantined, rejected + quarantined
    return delivered, rejected


def _done_clause(cursor: Cursor, lo: int, hi: int) -> str:
    """SQL true for the ids in [lo, hi] done for ``cursor``: "" for all of them, "0" none."""
    if hi <= cursor.high:
        return ""
    parts = [f"id <= {int(cursor.high)}"] if lo <= cursor.high else []
    done = [i for i in cursor.done if lo <= i <= hi]
    if done:
        parts.append(f"id IN ({ints(done)})")
    if cursor.taken is not None:
        parts.append(f"series NOT IN ({ints(cursor.taken)})")
    return f"({' OR '.join(parts)})" if parts else "0"


# --- the outbox's other writes ------------------------------------------------------------------


def appended(conn: sqlite3.Connection, cursors: Mapping[str, Cursor], series: Sequence[int],
             new_series: Mapping[int, tuple[str, str]],
             dropped_before: int) -> dict[str, Cursor]:
    """Count a batch of readings (their series ids) in each cursor, in the append's
    transaction; ``new_series`` (id -> sensor, quantity) may be new to the filters.

    Readings given up before they were stored (``dropped_before``) count as dropped for every
    upstream: what they were is not known, so neither is whether a filter would take them.
    """
    result, per_series = dict(cursors), None
    for name, cursor in cursors.items():
        taken = cursor.taken
        if taken is not None and cursor.takes is not None:
            wanted = [i for i, (sensor, quantity) in new_series.items()
                      if i not in taken and cursor.takes(sensor, quantity)]
            if wanted:
                conn.executemany("INSERT OR IGNORE INTO cursor_series VALUES (?, ?)",
                                 [(name, i) for i in wanted])
                taken = taken | frozenset(wanted)
                result[name] = replace(cursor, taken=taken)
        skipped = 0
        if taken is not None:
            per_series = Counter(series) if per_series is None else per_series
            skipped = sum(n for i, n in per_series.items() if i not in taken)
        if skipped or dropped_before:
            conn.execute("UPDATE cursors SET skipped = skipped + ?, dropped = dropped + ? "
                         "WHERE name = ?", (skipped, dropped_before, name))
    return result


def dropping(conn: sqlite3.Connection, cursors: Mapping[str, Cursor],
             last: int) -> dict[str, Cursor]:
    """Before the byte bound deletes every reading up to ``last``: count, per cursor, those it
    still needed as dropped, and move it past them."""
    result = dict(cursors)
    for name, cursor in cursors.items():
        if cursor.high >= last:
            continue
        done = frozenset(i for i in cursor.done if i <= last)
        needed = _count_between(conn, cursor, last, done)
        moved = replace(cursor, high=last, done=cursor.done - done)
        result[name] = save(conn, moved, dropped=needed)
    return result


def _count_between(conn: sqlite3.Connection, cursor: Cursor, last: int,
                   done: frozenset[int]) -> int:
    sql = f"SELECT count(*) FROM readings WHERE id > ? AND id <= ?{series_filter(cursor)}"
    if done:
        sql += f" AND id NOT IN ({ints(done)})"
    return int(conn.execute(sql, (cursor.high, last)).fetchone()[0])


# --- reading ------------------------------------------------------------------------------------


def stats(conn: sqlite3.Connection) -> list[UpstreamStats]:
    """Every cursor's counts, from the rows (one indexed look-up per upstream with a backlog)."""
    (added,) = conn.execute("SELECT added FROM counters").fetchone()
    found = []
    for name, high, skipped, delivered, rejected, dropped, filtered in conn.execute(
            _ROW + " ORDER BY name").fetchall():
        backlog = added - skipped - delivered - rejected - dropped
        oldest = None
        if backlog > 0:
            sql = _OLDEST.format(filtered=_OLDEST_FILTER if filtered else "")
            row = conn.execute(sql, (high, name)).fetchone()
            oldest = None if row is None else row[0]
        found.append(UpstreamStats(name, backlog, oldest, delivered, rejected, dropped))
    return found
