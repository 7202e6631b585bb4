"""The outbox: every reading, durable in SQLite until upstream has it, in bounded space.

Durability: a batch is stored when its one transaction commits (WAL, ``synchronous=FULL``); a
reading is deleted only by :meth:`Outbox.ack`, after upstream answered 2xx for it.

Byte bound, the one policy: after each append, if the live data ((page_count - freelist_count)
x page_size) exceeds ``max_bytes``, the OLDEST undelivered readings are deleted, in the same
transaction, until the live data is under 90 % of the bound, and counted in ``dropped``. A unit
offline for good is better served by recent data than by refusing new readings; the 10 %
headroom makes a full outbox drop in chunks, not on every commit. A reading taken for delivery
and dropped before its ack counts as dropped, even if it did reach upstream.

Schema (version in ``PRAGMA user_version``): a ``readings`` row is integers and one value, the
strings live once in ``series``, ``boots`` and ``calibrations`` (~40 bytes a reading). ``latest``
keeps the last value per series for ``envagent status`` after readings are gone. ``counters``
(one row) is updated in the transaction that adds or removes the rows it counts, so the backlog
is ``added - delivered - dropped - rejected`` without counting a million rows.

Quarantine (schema 2): a reading upstream refuses for good (poison data) is moved, in one
transaction that also counts it in ``rejected``, from ``readings`` to ``quarantine`` -- same
columns plus the reason and the wall time it was quarantined -- so it stops blocking delivery but
stays inspectable. Quarantined rows are already counted, so the byte bound deletes the oldest of
them first, silently, before it drops any undelivered reading. ``meta`` (key/value) records
events that outlive a process, such as a recovery from a damaged database (see agent.store.salvage).
A schema 1 database is upgraded in place when the agent opens it for writing.

Several upstreams (schema 3): each has a delivery cursor (agent.store.cursors); a reading is
deleted when every upstream that takes it has acknowledged or quarantined it. ``upstream=None``
is the one-queue outbox of before, for an outbox without cursors (tests, tools): ``ack``
deletes. A reading one upstream quarantines is copied to ``quarantine`` at once and stays in
``readings`` while others need it; when it goes it counts as rejected, not delivered. The byte
bound then deletes only copies whose reading is gone.

Write volume: WAL appends every page a commit touches (readings, latest, counters), so new
databases use 1 KiB pages (~3x fewer bytes per commit than 4 KiB), and row ids come from the
``added`` counter instead of AUTOINCREMENT's ``sqlite_sequence`` page. Such ids are never
reused, even after the outbox drained or was salvaged (agent.store.salvage continues ``added`` above
every id it sees), so a late duplicate ack cannot delete a newer reading.

Values: SQLite stores NaN as NULL, which reads back as NaN. The value columns have no declared
type: REAL affinity would store 21.0 as an integer and -0.0 (``round(-0.04, 1)``) as 0, and a
replay must send exactly what was sampled.

Threads: one connection behind one lock. SQLite has one writer anyway; a single connection
keeps the id cache coherent, never gets SQLITE_BUSY from itself and holds one page cache in a
35 MiB budget. Calls take milliseconds; delivery sends over HTTP after ``take`` returned.
(sqlite-utils is not imported here: it costs ~11 MiB of RSS, a third of that budget.)
"""

from __future__ import annotations

import errno
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from agent.core.atomic import BUSY_TIMEOUT_S, connect_readonly, connect_writable, refuse_links
from agent.core.errors import StorageError, StorageFullError
from agent.core.reading import ALERT_PREFIX, Reading, StoredReading, is_alert
from agent.core.reading import RESERVED_SENSOR_ID as ALERT_SENSOR
from agent.store import cursors, salvage
from agent.store.cursors import Cursor, Fold, Subscriber, UpstreamStats
from drivers.base import Quality

log = logging.getLogger("envagent.outbox")

SCHEMA_VERSION = 3  # PRAGMA user_version of a database this module created
PAGE_SIZE = 1024  # bytes; applies to new databases only (SQLite fixes it at creation)
LOW_WATER = 0.9  # a full outbox drops down to this fraction of max_bytes
# The integrity check at every start is one SQLite call that reads the whole file (a full 256 MiB
# outbox: ~2 s on a PC, a minute or more on a Pi Zero) and reports nothing while it runs:
# ``progress`` is called this often meanwhile.
CHECK_PROGRESS_S = 1.0
MIN_BYTES = 64 * 1024  # below this the fixed tables (~10 pages) leave little room for readings
ROW_BYTES = 64  # a generous guess of bytes per reading row, to size each drop step

_SCHEMA = (
    """CREATE TABLE series (id INTEGER PRIMARY KEY, sensor TEXT NOT NULL,
        quantity TEXT NOT NULL, unit TEXT NOT NULL, UNIQUE (sensor, quantity, unit))""",
    "CREATE TABLE boots (id INTEGER PRIMARY KEY, boot_id TEXT NOT NULL UNIQUE)",
    "CREATE TABLE calibrations (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)",
    """CREATE TABLE readings (id INTEGER PRIMARY KEY, series INTEGER NOT NULL REFERENCES series,
        time_ns INTEGER NOT NULL, boot_ns INTEGER NOT NULL, boot INTEGER NOT NULL REFERENCES boots,
        value, quality INTEGER NOT NULL, synced INTEGER,
        calibration INTEGER REFERENCES calibrations)""",
    """CREATE TABLE latest (series INTEGER PRIMARY KEY REFERENCES series,
        time_ns INTEGER NOT NULL, value, quality INTEGER NOT NULL)""",
    """CREATE TABLE counters (added INTEGER NOT NULL, delivered INTEGER NOT NULL,
        dropped INTEGER NOT NULL, rejected INTEGER NOT NULL)""",
    "INSERT INTO counters VALUES (0, 0, 0, 0)",
    "PRAGMA user_version = 1",
)
# user_version -> the statements that upgrade it by one
_UPGRADES = {
    1: (
        """CREATE TABLE quarantine (id INTEGER PRIMARY KEY, series INTEGER NOT NULL,
            time_ns INTEGER NOT NULL, boot_ns INTEGER NOT NULL, boot INTEGER NOT NULL,
            value, quality INTEGER NOT NULL, synced INTEGER, calibration INTEGER,
            reason TEXT NOT NULL, quarantined_ns INTEGER NOT NULL)""",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID",
        # every commit rewrites the counters page, so every -wal carries this id: it lets
        # salvage.diagnose tell a -wal of another database from ours
        "ALTER TABLE counters ADD COLUMN database_id TEXT",
        "UPDATE counters SET database_id = lower(hex(randomblob(8)))",
        "PRAGMA user_version = 2",
    ),
    2: (*cursors.UPGRADE, "PRAGMA user_version = 3"),
}
# lookup table -> its key columns; the hot path caches (table, *key) -> id
_LOOKUPS = {"series": ("sensor", "quantity", "unit"), "boots": ("boot_id",),
            "calibrations": ("name",)}

_INSERT = "INSERT INTO readings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
_UPSERT_LATEST = """INSERT INTO latest (series, time_ns, value, quality) VALUES (?, ?, ?, ?)
    ON CONFLICT (series) DO UPDATE
    SET time_ns = excluded.time_ns, value = excluded.value, quality = excluded.quality"""
_SELECT = """SELECT r.id, s.sensor, s.quantity, r.value, s.unit, r.time_ns, r.boot_ns,
        b.boot_id, r.synced, r.quality, c.name{extra}
    FROM {table} r JOIN series s ON s.id = r.series JOIN boots b ON b.id = r.boot
    LEFT JOIN calibrations c ON c.id = r.calibration
    ORDER BY r.id LIMIT ?"""
_TAKE = _SELECT.format(table="readings", extra="")
_TAKE_HOLDING = _SELECT.replace(
    "ORDER BY", "WHERE NOT (b.boot_id = ? AND r.synced = 0) ORDER BY").format(
    table="readings", extra="")
# Alert readings (agent.sampling.alerts) in the outbox: the one scan that finds them after a start.
_ALERT_IDS = """SELECT r.id FROM readings r JOIN series s ON s.id = r.series
    WHERE s.sensor = ? AND substr(s.quantity, 1, ?) = ?"""
_TAKE_BY_ID = _SELECT.replace("ORDER BY r.id LIMIT ?", "WHERE r.id IN ({marks}) ORDER BY r.id")
MAX_ALERT_IDS = 500  # alert readings looked up per take_alerts (far fewer are ever waiting)
SIMULATED_KEY = "simulated"  # meta: 1 in a rehearsal's outbox, 0 in a real agent's
_RESTAMP = """UPDATE readings SET time_ns = boot_ns + ?, synced = 1, quality = quality | ?
    WHERE synced = 0 AND boot = (SELECT id FROM boots WHERE boot_id = ?)"""
_TAKE_ROWS = """SELECT id, series, value, time_ns, boot_ns, boot, synced, quality, calibration
    FROM readings {where} ORDER BY id LIMIT ?"""
_NOT_HELD = "NOT (boot = ? AND synced = 0)"
_TAKE_ROWS_HOLDING = _TAKE_ROWS.format(where=f"WHERE {_NOT_HELD}")
# one upstream's: above its high-water mark (in a window, for a filtered one)
_TAKE_AFTER = _TAKE_ROWS.format(where="WHERE id > ?")
_TAKE_AFTER_HOLDING = _TAKE_ROWS.format(where=f"WHERE id > ? AND {_NOT_HELD}")
_TAKE_WINDOW = _TAKE_ROWS.format(where="WHERE id > ? AND id <= ?{series}{held}")
_ROWS_BY_ID = _TAKE_ROWS.replace("{where} ORDER BY id LIMIT ?", "WHERE id IN ({marks}) ORDER BY id")
_TAKE_ROWS = _TAKE_ROWS.format(where="")
_QUARANTINED = _SELECT.format(table="quarantine", extra=", r.reason, r.quarantined_ns")
_SCAN = _SELECT.replace(
    "ORDER BY r.id LIMIT ?", "WHERE r.time_ns >= ? AND r.time_ns < ? ORDER BY r.id").format(
    table="readings", extra="")
_MIN_NS, _MAX_NS = -(2**63), 2**63 - 1  # SQLite's INTEGER range: no bound
_READING_COLUMNS = "id, series, time_ns, boot_ns, boot, value, quality, synced, calibration"
_QUARANTINE = f"""INSERT INTO quarantine SELECT {_READING_COLUMNS}, ?, ?
    FROM readings WHERE id = ?"""
_QUARANTINE_COPY = _QUARANTINE.replace("INSERT", "INSERT OR IGNORE")  # the first reason stays
# a copy whose reading is still stored (quarantined by one upstream, needed by another) stays
_DROP_QUARANTINED = """DELETE FROM quarantine WHERE id IN (SELECT q.id FROM quarantine q
    WHERE NOT EXISTS (SELECT 1 FROM readings r WHERE r.id = q.id) ORDER BY q.id LIMIT ?)"""
_DELETE_RUN = "DELETE FROM readings WHERE id BETWEEN ? AND ?"
_OLDEST_STEP = "SELECT max(id) FROM (SELECT id FROM readings ORDER BY id LIMIT ?)"
_ENDS = """SELECT (SELECT time_ns FROM readings ORDER BY id LIMIT 1),
    (SELECT time_ns FROM readings ORDER BY id DESC LIMIT 1)"""
_LATEST = """SELECT s.sensor, s.quantity, s.unit, l.time_ns, l.value, l.quality
    FROM latest l JOIN series s ON s.id = l.series ORDER BY s.sensor, s.quantity, s.unit"""


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """The outbox at one instant.

    ``backlog_bytes`` is the live size of the database -- the quantity the bound applies to -- so
    it includes ~10 KiB of fixed tables even when the backlog is empty. ``oldest_ns`` and
    ``newest_ns`` are the sample times of the first and last undelivered reading in append order.
    """

    backlog: int
    backlog_bytes: int
    oldest_ns: int | None
    newest_ns: int | None
    added: int
    delivered: int
    dropped: int
    rejected: int
    # rows kept in quarantine for inspection, counted in rejected (a copy of a reading another
    # upstream still needs: once that one is done with it too)
    quarantined: int = 0


@dataclass(frozen=True, slots=True)
class QuarantinedReading:
    """A reading upstream refused for good, moved aside with why and when (ns since epoch)."""

    id: int
    reading: Reading
    reason: str
    quarantined_ns: int


@dataclass(frozen=True, slots=True)
class LatestValue:
    """The last value appended for one sensor, quantity and unit."""

    sensor: str
    quantity: str
    unit: str
    time_ns: int
    value: float
    quality: int


class Outbox:
    """The durable, bounded queue between sampling and delivery; see the module docstring."""

    def __init__(self, path: Path, *, max_bytes: int,
                 progress: salvage.Progress | None = None,
                 subscribers: Sequence[Subscriber] | None = None) -> None:
        """Open (creating, upgrading, or moving aside and salvaging) the outbox at ``path``.

        ``progress`` is called as the opening goes on: while the integrity check runs and during
        a salvage, which takes minutes on a Pi Zero for a full outbox. ``subscribers``: the
        upstreams to keep cursors for (:meth:`subscribe`); None leaves the cursors as they are.
        """
        if max_bytes < MIN_BYTES:
            raise ValueError(f"outbox max_bytes must be at least {MIN_BYTES}, got {max_bytes}")
        if subscribers is not None:
            subscribers = cursors.check(subscribers)  # before anything is opened
        self.path = path
        self.max_bytes: int | None = max_bytes
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(exc.errno, f"cannot create the outbox directory {path.parent}: "
                               f"{exc.strerror}; check storage.path and its owner") from exc
        salvage.check_directory(path.parent, path.name)
        refuse_links(path)  # before anything reads or moves it: a link is never written through
        damage = _diagnose(path, progress)
        aside = None if damage is None else salvage.move_aside(path)
        self._open(lambda: connect_writable(path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                            check_same_thread=False))
        if damage is not None and aside is not None:
            with self._lock, self._transaction() as conn:
                salvage.mark_pending(conn, damage, aside)
            log.warning("outbox %s is damaged (%s): moved it aside to %s (with any -wal/-shm), "
                        "started a new one; salvaging what can be read", path, damage.reason,
                        aside)
        with self._lock, self._storage_errors():
            unfinished = salvage.pending(self._conn)  # also one a kill interrupted
        if unfinished is not None:
            self._recover(*unfinished, progress)
        if subscribers is not None:
            self.subscribe(subscribers)

    @classmethod
    def open_readonly(cls, path: Path) -> Outbox:
        """Open for ``envagent status``: reads only, creates nothing, works beside the daemon
        (agent.core.atomic.connect_readonly)."""
        self = cls.__new__(cls)
        self.path, self.max_bytes = path, None
        if not path.is_file():
            raise StorageError(f"no outbox at {path}: has the agent run with this storage.path?")
        self._open(lambda: connect_readonly(path, isolation_level=None, check_same_thread=False))
        return self

    def _open(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._lock = threading.Lock()
        self._ids: dict[tuple[str, ...], int] = {}
        # the other way round, for take: lookup rows never change once committed
        self._series_names: dict[int, tuple[str, str, str]] = {}
        self._boot_names: dict[int, str] = {}
        self._calibration_names: dict[int | None, str] = {}
        self._warned_full = False
        self._alert_ids: set[int] | None = None  # rows of alert readings; None: not looked yet
        self._cursors: dict[str, Cursor] = {}  # replaced, never changed: see cursors.Cursor
        conn = None
        try:
            conn = connect()
            if self.max_bytes is not None:
                conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # before WAL creates the file
                if conn.execute("PRAGMA journal_mode = WAL").fetchone() != ("wal",):
                    raise StorageError(f"{self.path}: SQLite refused WAL mode; put "
                                       "storage.path on a local filesystem")
                conn.execute("PRAGMA synchronous = FULL")
                conn.execute("BEGIN IMMEDIATE")  # closing conn on an error rolls this back
                changed = _create_or_upgrade(conn)
                conn.execute("COMMIT")
                if changed:  # the schema and database_id into the main file, for diagnose
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version != SCHEMA_VERSION:
                raise StorageError(f"{self.path} has outbox schema {version}, this agent reads "
                                   f"{SCHEMA_VERSION}: is it an outbox, from this agent version?")
            self._cursors = cursors.load(conn)
            (self._page_size,) = conn.execute("PRAGMA page_size").fetchone()
        except BaseException as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, sqlite3.Error):
                raise StorageError(f"cannot open the outbox {self.path}: {exc}. Check that it is "
                                   "on a local filesystem the agent's user can write; if the "
                                   "file is damaged, move it aside to start a new one") from exc
            raise
        self._conn = conn

    def _recover(self, damage: salvage.Damage, aside: Path,
                 progress: salvage.Progress | None) -> None:
        """Salvage the moved-aside database into this fresh one, in one transaction that also
        clears the pending mark: a kill midway leaves the mark, and the next start does it again."""
        # Salvage copies readings, not cursors: every upstream is then sent every salvaged
        # reading again (a byte-identical replay), whatever its ``start``.
        reset = "INSERT OR REPLACE INTO meta (key, value) VALUES (?, 1)"
        try:
            with self._lock, self._transaction() as conn:
                recovery = salvage.salvage_into(conn, damage, aside, progress)
                conn.execute(reset, (cursors.RESET_KEY,))
        except Exception as exc:  # a salvage bug must not stop sampling: keep the files
            if isinstance(exc, StorageError):  # a link planted in the set: it says what to do
                log.error("outbox %s: not salvaging %s: %s", self.path, aside, exc)
            else:
                log.exception("outbox %s: salvaging %s failed", self.path, aside)
            with self._lock, self._transaction() as conn:
                recovery = salvage.record_failure(conn, damage, aside, exc)
                conn.execute(reset, (cursors.RESET_KEY,))
        log.warning("outbox %s: salvaged %d undelivered reading(s) from %s; %d unreadable "
                    "counted as dropped%s", self.path, recovery.salvaged, aside, recovery.lost,
                    " (an estimate: the counters were unreadable)" if recovery.estimated else "")

    def scan(self, since_ns: int | None, until_ns: int | None,
             chunk: int) -> Iterator[list[Reading]]:
        """The stored readings with ``since_ns <= time_ns < until_ns`` (None: no bound), oldest
        appended first, ``chunk`` at a time: one statement, so one consistent snapshot however
        long the caller takes between chunks (``envagent export`` on a read-only outbox)."""
        bounds = (_MIN_NS if since_ns is None else since_ns,
                  _MAX_NS if until_ns is None else until_ns)
        with self._storage_errors():
            rows = self._conn.execute(_SCAN, bounds)
            while chunk_rows := rows.fetchmany(chunk):
                yield [_reading(row[1:]) for row in chunk_rows]

    # --- writing (the sampler and delivery threads) -------------------------------------------

    def append(self, readings: Sequence[Reading], *, dropped_before: int = 0) -> None:
        """Store the whole batch in one transaction: all of it, or none and the error raised.

        ``dropped_before`` counts readings the caller sampled before this batch but gave up
        without storing (e.g. while the disk was full); they are counted as added and dropped in
        the same transaction, so the count cannot be lost or doubled. Raises StorageFullError
        when the filesystem is full.
        """
        if not readings and not dropped_before:
            return
        new_ids: dict[tuple[str, ...], int] = {}  # cached only once the transaction commits
        with self._lock:
            with self._transaction() as conn:
                if dropped_before:
                    conn.execute("UPDATE counters SET added = added + ?1, dropped = dropped + ?1",
                                 (dropped_before,))
                (first,) = conn.execute("SELECT added FROM counters").fetchone()
                rows, latest = [], {}
                for row_id, r in enumerate(readings, start=first + 1):
                    series = self._id(conn, ("series", r.sensor, r.quantity, r.unit), new_ids)
                    boot = self._id(conn, ("boots", r.boot_id), new_ids)
                    cal = (None if r.calibration is None
                           else self._id(conn, ("calibrations", r.calibration), new_ids))
                    rows.append((row_id, series, r.time_ns, r.boot_ns, boot, r.value, r.quality,
                                 r.synced, cal))
                    latest[series] = (series, r.time_ns, r.value, r.quality)
                conn.executemany(_INSERT, rows)
                conn.executemany(_UPSERT_LATEST, latest.values())
                conn.execute("UPDATE counters SET added = added + ?", (len(rows),))
                moved = self._cursors
                if moved:
                    new_series = {i: (key[1], key[2]) for key, i in new_ids.items()
                                  if key[0] == "series"}
                    moved = cursors.appended(conn, moved, [row[1] for row in rows],
                                             new_series, dropped_before)
                moved = self._enforce_bound(conn, moved)
            self._ids.update(new_ids)
            self._cursors = moved
            if self._alert_ids is not None:
                self._alert_ids.update(
                    row_id for row_id, r in enumerate(readings, start=first + 1)
                    if is_alert(r.sensor, r.quantity))

    def ack(self, ids: Iterable[int], *, upstream: str | None = None) -> int:
        """Delete readings upstream has accepted; return how many were still here.

        An id already gone (acknowledged twice, or dropped meanwhile) is skipped and not counted.
        The deletion is not fsync'd (see ``_transaction``): a power cut may undo it, and then
        those readings are sent again -- an exact replay, which upstream collapses.

        With ``upstream``: they are done for that upstream (counted in its ``delivered``, ids
        already done for it not counted), and deleted once done for every upstream.
        """
        unique = sorted(set(ids))
        if upstream is not None:
            return self._finish(upstream, unique, None) if unique else 0
        self._one_queue("ack")
        if not unique:
            return 0
        with self._lock, self._transaction(durable=False) as conn:
            deleted = conn.executemany(_DELETE_RUN, cursors.runs(unique)).rowcount
            conn.execute("UPDATE counters SET delivered = delivered + ?", (deleted,))
        return deleted

    def quarantine(self, ids: Iterable[int], reason: str, *, upstream: str | None = None) -> int:
        """Move undelivered readings upstream refused for good out of the way; return how many.

        One transaction moves them to ``quarantine`` with ``reason`` and counts them in
        ``rejected``; ids not (or no longer) in the outbox are skipped and not counted.

        With ``upstream``: they are done for it and counted in its ``rejected``; a copy goes to
        ``quarantine`` (the reason prefixed with its name) and the reading stays while other
        upstreams need it.
        """
        unique = sorted(set(ids))
        if upstream is not None:
            return self._finish(upstream, unique, reason) if unique else 0
        self._one_queue("quarantine")
        if not unique:
            return 0
        now = time.time_ns()
        with self._lock, self._transaction() as conn:
            conn.executemany(_QUARANTINE, [(reason, now, i) for i in unique])
            moved = conn.executemany("DELETE FROM readings WHERE id = ?",
                                     [(i,) for i in unique]).rowcount
            conn.execute("UPDATE counters SET rejected = rejected + ?", (moved,))
        return moved

    def _finish(self, upstream: str, unique: list[int], reason: str | None) -> int:
        """Mark sorted ``unique`` ids done for ``upstream`` -- acknowledged, or quarantined for
        ``reason`` -- and delete what every upstream is done with, in one transaction."""
        with self._lock:
            cursor = self._cursor(upstream)
            fresh = [i for i in unique if i > cursor.high and i not in cursor.done]
            if not fresh:
                return 0
            with self._transaction(durable=reason is not None) as conn:
                counted = cursors.count_taken(conn, cursor, fresh)
                if reason is not None:
                    conn.executemany(_QUARANTINE_COPY, [(f"{upstream}: {reason}",
                                                         time.time_ns(), i) for i in fresh])
                (top,) = conn.execute("SELECT added FROM counters").fetchone()
                done = sorted(cursor.done.union(fresh)) if cursor.done else fresh
                moved, _ = cursors.fold(conn, cursor, done, top)
                moved = cursors.save(conn, moved, delivered=0 if reason else counted,
                                     rejected=counted if reason else 0)
                after = {**self._cursors, upstream: moved}
                # what may be done for all now: what this moved past, and what is done above it
                passed = [(cursor.saved_high + 1, moved.high)] if moved.high > cursor.saved_high \
                    else []
                self._delete_done(conn, passed, after, [i for i in fresh if i > moved.high])
            self._cursors = after  # with the lock: another upstream's ack may be next
        return counted

    def _delete_done(self, conn: sqlite3.Connection, ranges: list[tuple[int, int]],
                     after: dict[str, Cursor], ids: Sequence[int] = ()) -> None:
        """:func:`cursors.delete_done`, counted in ``counters``."""
        delivered, rejected = cursors.delete_done(conn, ranges, after, ids)
        if delivered or rejected:
            conn.execute("UPDATE counters SET delivered = delivered + ?, "
                         "rejected = rejected + ?", (delivered, rejected))

    def _cursor(self, upstream: str) -> Cursor:
        """The cursor of ``upstream`` (with the lock held), or ValueError saying which exist."""
        try:
            return self._cursors[upstream]
        except KeyError:
            raise ValueError(f"outbox {self.path} has no cursor for upstream {upstream!r}; "
                             f"it has: {cursors.names(self._cursors) or 'none'} (subscribe "
                             "it first)") from None

    def _one_queue(self, what: str) -> None:
        """ValueError unless this is the one-queue outbox (no cursors)."""
        if self._cursors:
            raise ValueError(f"{what} without upstream=...: the outbox {self.path} keeps a "
                             f"cursor per upstream ({cursors.names(self._cursors)}); say which")

    def _id(self, conn: sqlite3.Connection, key: tuple[str, ...],
            new_ids: dict[tuple[str, ...], int]) -> int:
        """The id of a lookup row (series, boot, calibration), inserting it when new."""
        found = self._ids.get(key)
        if found is None:
            found = new_ids.get(key)
        if found is None:
            table, *values = key
            columns = _LOOKUPS[table]
            where = " AND ".join(f"{c} = ?" for c in columns)
            row = conn.execute(f"SELECT id FROM {table} WHERE {where}", values).fetchone()
            if row is None:
                marks = ", ".join("?" * len(columns))
                sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"
                row = (conn.execute(sql, values).lastrowid,)
            found = new_ids[key] = row[0]
        return found

    def _enforce_bound(self, conn: sqlite3.Connection,
                       moved: dict[str, Cursor]) -> dict[str, Cursor]:
        """Apply the byte bound; return the cursors (``moved``) past what it dropped."""
        assert self.max_bytes is not None
        live = self._live_bytes(conn)
        if live <= self.max_bytes:
            return moved
        target, dropped = int(self.max_bytes * LOW_WATER), 0
        while live > target:  # quarantined rows first: they are counted already
            step = max(self._page_size, live - target) // ROW_BYTES
            if conn.execute(_DROP_QUARANTINED, (step,)).rowcount == 0:
                break
            live = self._live_bytes(conn)
        while live > target:
            # at least a page worth: deleting fewer rows rarely frees a page
            step = max(self._page_size, live - target) // ROW_BYTES
            (last,) = conn.execute(_OLDEST_STEP, (step,)).fetchone()
            if last is None:
                break
            if moved:
                moved = cursors.dropping(conn, moved, last)
            deleted = conn.execute("DELETE FROM readings WHERE id <= ?", (last,)).rowcount
            dropped, live = dropped + deleted, self._live_bytes(conn)
        conn.execute("UPDATE counters SET dropped = dropped + ?", (dropped,))
        if not self._warned_full:  # once per process; the dropped counter goes upstream
            self._warned_full = True
            log.warning("outbox %s is full (max_bytes %d): dropped the %d oldest undelivered "
                        "reading(s), and will keep dropping the oldest", self.path,
                        self.max_bytes, dropped)
        return moved

    # --- reading (any thread, and `envagent status` from another process) ---------------------

    def take(self, limit: int, *, upstream: str | None = None,
             hold_boot: str | None = None) -> list[StoredReading]:
        """The oldest ``limit`` undelivered readings, exactly as appended; they stay until acked.

        Readings of boot ``hold_boot`` taken with an unsynchronised clock are skipped: they wait
        to be re-stamped (agent.sampling.timekeeping). With ``upstream``: the oldest readings it
        takes and has not finished.
        """
        limit = max(0, limit)
        if upstream is not None:
            return self._take_for(upstream, limit, hold_boot)
        self._one_queue("take")
        with self._lock, self._storage_errors():
            # The hot path of a drain (~100,000 readings a second, bench/bench_drain.py): the
            # readings' own columns, names from the in-memory lookup tables -- no join, and
            # one str object per name instead of four per row.
            conn = self._conn
            held = None if hold_boot is None else conn.execute(
                "SELECT id FROM boots WHERE boot_id = ?", (hold_boot,)).fetchone()
            query, args = ((_TAKE_ROWS, (limit,)) if held is None
                           else (_TAKE_ROWS_HOLDING, (held[0], limit)))
            try:
                return self._stored(conn.execute(query, args).fetchall())
            except KeyError:  # a series, boot or calibration this process has not seen yet
                self._load_names(conn)
            try:
                return self._stored(conn.execute(query, args).fetchall())
            except KeyError:  # a row whose series or boot is missing: the join leaves it out
                if hold_boot is None:
                    rows = conn.execute(_TAKE, (limit,)).fetchall()
                else:
                    rows = conn.execute(_TAKE_HOLDING, (hold_boot, limit)).fetchall()
        return [StoredReading(row[0], _reading(row[1:])) for row in rows]

    def _take_for(self, upstream: str, limit: int,
                  hold_boot: str | None) -> list[StoredReading]:
        """:meth:`take` for one upstream."""
        with self._lock, self._storage_errors():
            cursor, conn = self._cursor(upstream), self._conn
            held = self._held(conn, hold_boot)
            if cursor.taken is not None:
                pass  # filtered: below, a look ahead at a time
            elif limit == 0:
                return []
            else:  # the hot path of a drain: one range read, as the one-queue take
                query, args = ((_TAKE_AFTER, (cursor.high,)) if held is None
                               else (_TAKE_AFTER_HOLDING, (cursor.high, held)))
                rows = conn.execute(query, (*args, limit + len(cursor.done))).fetchall()
                if cursor.done:
                    rows = [row for row in rows if row[0] not in cursor.done][:limit]
                return self._as_stored(conn, rows)
        return self._take_filtered(upstream, limit, held)

    def _take_filtered(self, upstream: str, limit: int, held: int | None) -> list[StoredReading]:
        """:meth:`take` for an upstream with a filter: a long run of readings it does not take
        is read one look ahead at a time, the lock released in between, and passed for good."""
        found: list[StoredReading] = []
        start = None  # where the next window starts; None: at the cursor
        while len(found) < limit:
            with self._lock, self._storage_errors():
                conn, cursor = self._conn, self._cursor(upstream)
                if start is None or start <= cursor.high:
                    cursor, stop = self._advance(conn, cursor)
                    start = cursor.high
                    if stop is Fold.END:
                        break
                    if stop is Fold.MORE:
                        continue
                last = cursors.window_end(conn, start)
                if last is None:
                    break
                sql = _TAKE_WINDOW.format(series=cursors.series_filter(cursor),
                                          held="" if held is None else f" AND {_NOT_HELD}")
                args = (start, last) + (() if held is None else (held,))
                rows = conn.execute(sql, (*args, limit - len(found) + len(cursor.done)))
                found += self._as_stored(conn, [row for row in rows
                                                if row[0] not in cursor.done])
                start = last
        return found[:limit]

    def _advance(self, conn: sqlite3.Connection, cursor: Cursor) -> tuple[Cursor, Fold]:
        """Move ``cursor`` over the readings it does not take after its mark (one look ahead),
        in memory; written once far ahead (cursors.PERSIST_IDS), else with the next ack."""
        (top,) = conn.execute("SELECT added FROM counters").fetchone()
        moved, stop = cursors.fold(conn, cursor, sorted(cursor.done), top)
        if moved.high - moved.saved_high >= cursors.PERSIST_IDS and self.max_bytes is not None:
            with self._transaction(durable=False):
                moved = cursors.save(conn, moved)
                after = {**self._cursors, cursor.name: moved}
                self._delete_done(conn, [(cursor.saved_high + 1, moved.high)], after)
        self._cursors = {**self._cursors, cursor.name: moved}
        return moved, stop

    def _held(self, conn: sqlite3.Connection, hold_boot: str | None) -> int | None:
        """The row id of boot ``hold_boot``, if it has one."""
        if hold_boot is None:
            return None
        row = conn.execute("SELECT id FROM boots WHERE boot_id = ?", (hold_boot,)).fetchone()
        return None if row is None else int(row[0])

    def _as_stored(self, conn: sqlite3.Connection,
                   rows: list[tuple[Any, ...]]) -> list[StoredReading]:
        """``_TAKE_ROWS`` rows as readings, names from the caches (read again when one is
        missing); a row whose series or boot is lost is left out, as the join does."""
        try:
            return self._stored(rows)
        except KeyError:
            self._load_names(conn)
        try:
            return self._stored(rows)
        except KeyError:
            ids = [row[0] for row in rows]
        found = []
        for at in range(0, len(ids), MAX_ALERT_IDS):
            chunk = ids[at:at + MAX_ALERT_IDS]
            query = _TAKE_BY_ID.format(table="readings", extra="",
                                       marks=", ".join("?" * len(chunk)))
            found += [StoredReading(row[0], _reading(row[1:]))
                      for row in conn.execute(query, chunk)]
        return found

    def take_alerts(self, limit: int, *, upstream: str | None = None) -> list[StoredReading]:
        """The oldest ``limit`` undelivered alert readings (agent.sampling.alerts), to send ahead
        of the
        backlog -- not held for an unsynchronised clock: an alert late is worse than flagged.

        Alerts are rare and a backlog can be a million rows, so the outbox keeps the row ids of
        alert readings in memory (one scan finds those already stored, the first time) and this
        costs primary-key lookups, never a scan. Ids gone meanwhile (acked, dropped,
        quarantined) are forgotten here. With ``upstream``: those it takes and has not finished.
        """
        if upstream is None:
            self._one_queue("take_alerts")
        with self._lock, self._storage_errors():
            conn = self._conn
            if self._alert_ids is None:
                args = (ALERT_SENSOR, len(ALERT_PREFIX), ALERT_PREFIX)
                self._alert_ids = {i for (i,) in conn.execute(_ALERT_IDS, args)}
            if not self._alert_ids or limit <= 0:
                return []
            if upstream is not None:
                return self._alerts_for(conn, self._cursor(upstream), limit)
            ids = sorted(self._alert_ids)[:MAX_ALERT_IDS]
            query = _TAKE_BY_ID.format(table="readings", extra="", marks=", ".join("?" * len(ids)))
            rows = conn.execute(query, ids).fetchall()
            self._alert_ids.difference_update(set(ids) - {row[0] for row in rows})
        return [StoredReading(row[0], _reading(row[1:])) for row in rows][:limit]

    def _alerts_for(self, conn: sqlite3.Connection, cursor: Cursor,
                    limit: int) -> list[StoredReading]:
        """:meth:`take_alerts` for one upstream, with the lock held."""
        assert self._alert_ids is not None
        ids = sorted(i for i in self._alert_ids
                     if i > cursor.high and i not in cursor.done)[:MAX_ALERT_IDS]
        if not ids:
            return []
        rows = conn.execute(_ROWS_BY_ID.format(marks=", ".join("?" * len(ids))), ids).fetchall()
        self._alert_ids.difference_update(set(ids) - {row[0] for row in rows})
        if cursor.taken is not None:
            rows = [row for row in rows if row[1] in cursor.taken]
        return self._as_stored(conn, rows[:limit])

    def _stored(self, rows: Iterable[tuple[Any, ...]]) -> list[StoredReading]:
        """``_TAKE_ROWS`` rows as readings; KeyError when a name is not in the lookup caches."""
        nan, series, boots = math.nan, self._series_names, self._boot_names
        calibration_name = self._calibration_names.get  # a LEFT JOIN: a lost name is None
        # tuple.__new__ skips the named tuples' Python-level __new__: a third of the cost
        new = tuple.__new__
        return [new(StoredReading, (i, new(Reading, (
                    s[0], s[1], nan if value is None else value, s[2], time_ns, boot_ns,
                    boots[boot], None if synced is None else bool(synced), quality,
                    calibration_name(calibration)))))
                for i, series_id, value, time_ns, boot_ns, boot, synced, quality, calibration
                in rows for s in (series[series_id],)]

    def _load_names(self, conn: sqlite3.Connection) -> None:
        """Read the lookup tables (small: a row per series, boot and calibration) into memory."""
        self._series_names.update(
            (i, (sensor, quantity, unit))
            for i, sensor, quantity, unit in conn.execute("SELECT id, sensor, quantity, unit "
                                                          "FROM series"))
        self._boot_names.update(conn.execute("SELECT id, boot_id FROM boots"))
        self._calibration_names.update(conn.execute("SELECT id, name FROM calibrations"))

    def subscribe(self, subscribers: Sequence[Subscriber]) -> None:
        """Keep a delivery cursor for exactly these upstreams (agent.store.cursors).

        A new one starts at the oldest reading still stored or after the newest (its
        ``start``); after a salvage every new one starts at the oldest. One no longer listed is
        removed, its hold released (logged). Readings then done for every upstream are deleted,
        counted as delivered. With none, acks delete nothing: the readings wait, bounded.
        """
        subs = cursors.check(subscribers)
        with self._lock:
            with self._transaction() as conn:
                self._load_names(conn)
                reset = conn.execute("SELECT 1 FROM meta WHERE key = ?",
                                     (cursors.RESET_KEY,)).fetchone() is not None
                made = cursors.subscribe(conn, self._cursors, subs, self._series_names,
                                         everything=reset)
                conn.execute("DELETE FROM meta WHERE key = ?", (cursors.RESET_KEY,))
                if made.changed:
                    (lo, hi) = conn.execute("SELECT min(id), max(id) FROM readings").fetchone()
                    if lo is not None:
                        self._delete_done(conn, [(lo, hi)], made.cursors)
            self._cursors = made.cursors
        for name, backlog in made.removed:
            log.warning("outbox %s: upstream %r is no longer configured: released its hold on "
                        "%d reading(s)", self.path, name, backlog)

    def upstreams(self) -> list[UpstreamStats]:
        """Each upstream's backlog and counts, by name, from one consistent snapshot."""
        with self._lock, self._transaction(write=False) as conn:
            return cursors.stats(conn)

    def restamp(self, boot_id: str, anchor_wall_ns: int, anchor_boot_ns: int) -> int:
        """Give this boot's unsynchronised readings their true time from a synchronised anchor.

        ``time = anchor_wall + (boot_ns - anchor_boot)``; they become synced and are flagged
        CLOCK_RESTAMPED. Returns how many readings were re-stamped.
        """
        with self._lock, self._transaction() as conn:
            cursor = conn.execute(_RESTAMP, (anchor_wall_ns - anchor_boot_ns,
                                             int(Quality.CLOCK_RESTAMPED), boot_id))
            return cursor.rowcount

    def quarantined(self, limit: int) -> list[QuarantinedReading]:
        """The oldest ``limit`` quarantined readings, for inspection."""
        with self._lock, self._storage_errors():
            rows = self._conn.execute(_QUARANTINED, (max(0, limit),)).fetchall()
        return [QuarantinedReading(row[0], _reading(row[1:11]), row[11], row[12]) for row in rows]

    def recovery(self) -> salvage.Recovery | None:
        """The last time this outbox was recovered from a damaged database, if ever."""
        with self._lock, self._storage_errors():
            return salvage.read_recovery(self._conn)

    def simulated(self) -> bool | None:
        """Whether a rehearsal (``--simulate``) made this outbox: True, False for a real
        agent's, None when no agent has said yet (made by a version before the mark)."""
        with self._lock, self._storage_errors():
            row = self._conn.execute("SELECT value FROM meta WHERE key = ?",
                                     (SIMULATED_KEY,)).fetchone()
        return None if row is None else bool(row[0])

    def mark_simulated(self, simulated: bool) -> None:
        """Record whose readings these are, so a real agent never delivers a rehearsal's as
        its own and a rehearsal never writes among real ones (agent.store.rehearsal)."""
        with self._lock, self._transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                         (SIMULATED_KEY, int(simulated)))

    def stats(self) -> OutboxStats:
        """Backlog and counters, from one consistent snapshot."""
        with self._lock, self._transaction(write=False) as conn:
            added, delivered, dropped, rejected = conn.execute(
                "SELECT added, delivered, dropped, rejected FROM counters").fetchone()
            oldest, newest = conn.execute(_ENDS).fetchone()
            (quarantined,) = conn.execute("SELECT count(*) FROM quarantine").fetchone()
            live = self._live_bytes(conn)
        return OutboxStats(
            backlog=added - delivered - dropped - rejected, backlog_bytes=live,
            oldest_ns=oldest, newest_ns=newest,
            added=added, delivered=delivered, dropped=dropped, rejected=rejected,
            quarantined=quarantined,
        )

    def latest(self) -> list[LatestValue]:
        """The last value appended per sensor, quantity and unit, delivered or not."""
        with self._lock, self._storage_errors():
            rows = self._conn.execute(_LATEST).fetchall()
        return [LatestValue(s, q, u, t, _float(v), quality) for s, q, u, t, v, quality in rows]

    def _live_bytes(self, conn: sqlite3.Connection) -> int:
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        (free,) = conn.execute("PRAGMA freelist_count").fetchone()
        return int((pages - free) * self._page_size)

    # --- transactions and errors --------------------------------------------------------------

    @contextmanager
    def _transaction(self, *, write: bool = True,
                     durable: bool = True) -> Iterator[sqlite3.Connection]:
        """Commit on success, roll back on any exception (which then propagates).

        A commit that is not ``durable`` skips the fsync (``synchronous = NORMAL``, still
        atomic and consistent in WAL mode): it reaches the disk with the next durable commit,
        or the kernel's writeback, whichever comes first. Only for what may be undone by a
        power cut without losing a reading -- an acknowledgement. It also spares the SD card
        a journal commit and a rewrite of the -wal's last page per delivery.
        """
        if write and self.max_bytes is None:
            raise StorageError(f"the outbox {self.path} is open read-only")
        conn = self._conn
        with self._storage_errors():
            if not durable:
                conn.execute("PRAGMA synchronous = NORMAL")
            try:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            finally:
                if not durable:
                    conn.execute("PRAGMA synchronous = FULL")

    @contextmanager
    def _storage_errors(self) -> Iterator[None]:
        """Turn failures of the storage (disk full, I/O, damage) into StorageError.

        Errors about the data (a value SQLite cannot bind) are the caller's and propagate as is.
        """
        try:
            yield
        except sqlite3.Error as exc:
            if type(exc) not in (sqlite3.OperationalError, sqlite3.DatabaseError):
                raise
            if exc.sqlite_errorname == "SQLITE_FULL":
                raise StorageFullError(errno.ENOSPC, f"outbox {self.path}: the filesystem is "
                                       "full; nothing of this batch was stored") from exc
            raise StorageError(f"outbox {self.path}: {exc}; check free space and the storage "
                               "device; a damaged file is moved aside at the next start") from exc

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _diagnose(path: Path, progress: salvage.Progress | None) -> salvage.Damage | None:
    """:func:`salvage.diagnose`, with ``progress`` called as it starts and every
    :data:`CHECK_PROGRESS_S` until it returns."""
    if progress is None:
        return salvage.diagnose(path)
    done = threading.Event()

    def tick() -> None:
        while not done.wait(CHECK_PROGRESS_S):
            progress()

    progress()
    ticker = threading.Thread(target=tick, name="outbox-check", daemon=True)
    ticker.start()
    try:
        return salvage.diagnose(path)
    finally:
        done.set()
        ticker.join()


def _create_or_upgrade(conn: sqlite3.Connection) -> bool:
    """Create the schema in an empty database, or upgrade an older one; inside a transaction.

    Returns whether anything changed.
    """
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    before = version
    if version == 0:
        for statement in _SCHEMA:
            conn.execute(statement)
        version = 1
    while version in _UPGRADES:
        for statement in _UPGRADES[version]:
            conn.execute(statement)
        version += 1
    return bool(version != before)


def _reading(row: tuple[Any, ...]) -> Reading:
    """A Reading from the columns of ``_SELECT`` after the id."""
    sensor, quantity, value, unit, time_ns, boot_ns, boot_id, synced, quality, calibration = row
    return Reading(sensor, quantity, _float(value), unit, time_ns, boot_ns, boot_id,
                   None if synced is None else bool(synced), quality, calibration)


def _float(value: float | None) -> float:
    """SQLite returns NaN as NULL."""
    return math.nan if value is None else value
