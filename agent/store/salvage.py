"""A damaged outbox is moved aside and salvaged into a fresh one, never deleted, never fatal.

At every start :func:`diagnose` judges the database file set before SQLite writes to it. SQLite
judges first: the main file's header and size, whether the file is writable, then ``PRAGMA
quick_check`` on a read-only connection, which never checkpoints. Then the ``-wal`` is read
frame by frame (:func:`scan_wal`) for what SQLite cannot see: it silently ignores a WAL whose
header does not check out and every commit after a damaged frame, which would lose committed
readings without a word, and it applies a valid-looking WAL from another or an older database,
which would checkpoint foreign pages into ours (the outbox's ``counters.database_id`` tells them
apart). The WAL is read by SQLite's own rules: the log ends at the last valid commit frame of
the header's generation, and frames of earlier generations that a rewound WAL still holds behind
it are ignored -- SQLite rewinds only after checkpointing all of them. A damaged set is renamed to
``<name>.damaged-<UTC time>`` (``-wal`` and ``-shm`` alongside, so SQLite still pairs them) and
kept for a human.

:func:`salvage_into` then copies whatever can be read into the fresh outbox, in its creating
transaction: each table is read in row-id order, and where a read hits an unreadable page (or
subtree) the next readable row id is searched for (galloping, then bisecting) and the ids in
between are skipped -- pure Python, as the Pi may lack the sqlite3 CLI and its ``.recover``. A
partial last page is split off first: SQLite would pad it with zeros and misread its rows. A
damaged 100-byte header is rebuilt for the salvage (page size tried until SQLite reads the
schema, page count from the file size) and put back afterwards. Row ids are kept, so acks stay
valid.

Counting: the newest counters readable anywhere (the file, SQLite's log, or a counters page in
a committed frame SQLite skips) say how many readings the outbox held; those not salvaged are
counted as ``dropped`` (they were given up, and that count goes upstream) and reported as lost.
Without readable counters the loss is estimated from the reading ids on the file's pages, and
the recovery says so. A reading whose series or boot row is unreadable cannot be sent as
sampled, so it is lost too. Ids and counters never go back: ``added`` (which hands out the ids)
continues above every id seen in the file, its WAL and the counters. The event is kept in the
``meta`` table for ``status``.

Cost, measured with a million readings (36 MB) on a development machine: diagnose (quick_check
reads every page) 0.2 s at every start; salvage 4.5 s (1 s reading, the rest writing the new
file). A Pi Zero 2 W is ~25x slower, so salvaging a full outbox there takes minutes: a
``progress`` callback runs every COPY_BATCH rows (and agent.store.outbox calls it while diagnose
runs), and the agent turns it into requests for more start-up time (agent.runtime.notify).
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import pwd
import sqlite3
import stat
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, BinaryIO

from agent.core.atomic import read_bounded, refuse_links, write_new
from agent.core.errors import StorageError

SQLITE_MAGIC = b"SQLite format 3\x00"  # https://sqlite.org/fileformat.html#the_database_header
HEADER_BYTES = 100
# Page sizes to try for a file whose header is lost: agent.store.outbox's (1 KiB), SQLite's default,
# then every other one SQLite allows (a power of two from 512 to 65536).
PAGE_SIZES = (1024, 4096, 512, 2048, 8192, 16384, 32768, 65536)
WAL_MAGICS = (0x377F0682, 0x377F0683)  # low bit: checksums over big-endian words
WAL_VERSION = 3007000
WAL_HEADER = struct.Struct(">8I")  # magic, version, page size, checkpoint, salt1/2, checksum1/2
WAL_FRAME = struct.Struct(">6I")  # page number, db size after commit (0: not a commit), salts...
TABLE_LEAF = 0x0D  # b-tree page type (fileformat.html#b_tree_pages); its header is 8 bytes
# A record's serial type -> its content size in bytes, for the types up to 9 (integers, NULL,
# float); from 12 on, even: a blob of (n - 12) / 2 bytes, odd: a text of (n - 13) / 2.
SERIAL_SIZES = {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 6, 6: 8, 7: 8, 8: 0, 9: 0}
INTEGER_TYPES = {1, 2, 3, 4, 5, 6, 8, 9}
# A read that fails on a damaged page: SQLite's error, or text that is not UTF-8 any more.
UNREADABLE = (sqlite3.DatabaseError, UnicodeDecodeError)
# Errors that say "someone else holds the database", not "the database is damaged".
NOT_DAMAGE = {"SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_NOMEM", "SQLITE_INTERRUPT"}
UNKNOWN_HIGH_KEY = 2**40  # search this far for rows when a table's highest key is unreadable
COPY_BATCH = 1000  # rows per executemany while copying (pages per progress call while scanning)
META_PREFIX = "recovery."
PENDING_KEY = "salvage.pending"
ESTIMATED = "; the counters were unreadable: the loss is estimated from the ids seen"
# A sign of life from long work (copying here, the integrity check in agent.store.outbox) for a
# service manager (agent.runtime.notify).
Progress = Callable[[], object]
Counters = tuple[int, int, int, int]  # added, delivered, dropped, rejected

# table -> columns, the integer primary key first; copied in this order (lookups first)
TABLES = {
    "series": ("id", "sensor", "quantity", "unit"),
    "boots": ("id", "boot_id"),
    "calibrations": ("id", "name"),
    "readings": ("id", "series", "time_ns", "boot_ns", "boot", "value", "quality", "synced",
                 "calibration"),
    "quarantine": ("id", "series", "time_ns", "boot_ns", "boot", "value", "quality", "synced",
                   "calibration", "reason", "quarantined_ns"),
    "latest": ("series", "time_ns", "value", "quality"),
}
READING_TABLES = ("readings", "quarantine")  # their ids come from ``counters.added``


@dataclass(frozen=True, slots=True)
class Damage:
    """Why a database file set cannot be used as is, and whether its WAL is worth reading."""

    reason: str
    use_wal: bool


@dataclass(frozen=True, slots=True)
class Recovery:
    """The last recovery from damage, as ``envagent status`` shows it."""

    at_ns: int  # wall clock when it happened
    reason: str  # ends with ESTIMATED when ``lost`` is an estimate
    moved_to: str  # the damaged main file, renamed
    salvaged: int  # undelivered readings carried into the new outbox
    lost: int  # undelivered readings that could not be read, counted as dropped
    count: int  # recoveries over the outbox's life, as far as the old ones were readable

    @property
    def estimated(self) -> bool:
        """Whether ``lost`` is estimated from ids, the counters being unreadable."""
        return self.reason.endswith(ESTIMATED)


# --- before opening -----------------------------------------------------------------------------


def check_directory(directory: Path, name: str) -> None:
    """Raise StorageError naming the fix if the agent cannot create files in ``directory``.

    SQLite creates ``<name>-wal`` and ``<name>-shm`` beside the outbox, so a read-only directory
    makes every open fail; nothing can be written, so the caller must stop and say why.
    """
    probe = directory / f".{name}.write-test-{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
    except FileExistsError:
        probe.unlink(missing_ok=True)  # left by a process of ours that was killed here
    except OSError as exc:
        user = _user()
        if exc.errno == errno.EROFS:
            fix = "remount it read-write, or set storage.path to a writable directory"
            what = "is on a read-only filesystem"
        else:
            fix = f"`chown {user} {directory}`, or set storage.path to a writable directory"
            what = f"is not writable by user {user} ({exc.strerror})"
        raise StorageError(exc.errno, f"the outbox directory {directory} {what}: SQLite must "
                           f"create {name}-wal and {name}-shm there. Fix: {fix}") from exc


def diagnose(path: Path) -> Damage | None:
    """What is wrong with the database at ``path`` (and its -wal), or None if it can be used.

    The file's header and size, then SQLite (quick_check, with the -wal) judge first; the
    -wal's frames are read for what SQLite cannot see, and name the cause when they explain
    what SQLite found.
    """
    wal = _sibling(path, "-wal")
    wal_size = wal.stat().st_size if wal.exists() else 0
    if not path.exists():
        return Damage("a -wal without its database", False) if wal_size else None
    try:
        with _open_plain(path, write=True) as f:  # also proves the file is writable
            header = f.read(HEADER_BYTES)
    except OSError as exc:
        return Damage(f"cannot open it for writing ({exc.strerror})", bool(wal_size))
    damage = _file_damage(header, path.stat().st_size, wal_size)
    if damage is not None:
        return damage
    problem = _sqlite_problem(path, use_wal=bool(wal_size))
    if wal_size:
        damage = _wal_damage(path, header)
    if damage is None and problem is not None:
        damage = Damage(problem, bool(wal_size)
                        and _sqlite_problem(path, use_wal=False) is not None)
    return damage


def _file_damage(header: bytes, size: int, wal_size: int) -> Damage | None:
    """What the main file's size and header say is wrong with it."""
    if size == 0:
        return None if wal_size else Damage("zero-length file", False)
    if not _valid_header(header):
        if len(header) < HEADER_BYTES and header.startswith(SQLITE_MAGIC):
            return Damage(f"truncated: {size} bytes, shorter than the database header", False)
        return Damage("file is not a database (bad header)", False)
    page_size, pages = _page_size(header), _pages_in_header(header)
    if size % page_size:
        return Damage(f"truncated: {size} bytes is not a whole number of {page_size}-byte pages",
                      bool(wal_size))
    if not wal_size and size < pages * page_size:  # a WAL may hold the missing pages
        return Damage(f"truncated: {size} bytes, the header says {pages * page_size}", False)
    return None


def _wal_damage(path: Path, header: bytes) -> Damage | None:
    """What is wrong with the -wal, judged from its own frames and then by what it contains."""
    try:
        scan = scan_wal(_sibling(path, "-wal"), _page_size(header) if header else 0)
    except OSError as exc:
        return Damage(f"cannot read its -wal ({exc.strerror})", False)
    found = wal_problem(scan, _db_pages(path, header))
    if found is not None:
        return Damage(f"stale -wal: {found[0]}", found[1])
    foreign = _foreign_wal(path)
    return None if foreign is None else Damage(f"stale -wal: {foreign}", False)


# --- the -wal, as SQLite reads it ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WalFrame:
    index: int  # 0 for the frame right after the header
    page: int  # the database page it holds
    commit: int  # the database's size in pages after this commit; 0: not a commit frame
    salts: tuple[int, int]
    offset: int  # where its page's bytes start in the file
    intact: bool  # its checksum continues its predecessor's (the header's): not damaged


@dataclass(slots=True)
class WalScan:
    """A -wal read frame by frame (https://sqlite.org/fileformat2.html#the_write_ahead_log).

    SQLite reads the frames from the first one while their salts match the header's and each
    one's checksum continues the cumulative checksum (seeded from the header's); its log ends
    at the last commit frame among them. After a checkpoint SQLite rewinds the WAL and writes
    it again from the start with new salts, so frames of earlier generations stay behind the
    log until they are overwritten: they are ignored, and lose nothing (the rewind waits until
    every one of them is checkpointed into the database).
    """

    problem: str | None = None  # why SQLite ignores the whole file: its header; None if not
    page_size: int = 0
    salts: tuple[int, int] = (0, 0)  # the header's; with a bad header, the first frame's
    frames: list[WalFrame] = field(default_factory=list)  # every whole frame in the file
    end: int = 0  # frames in SQLite's log, up to and including its last commit frame
    pages: int = 0  # the database's size in pages after the log's last commit; 0: no commit
    first_bad: int | None = None  # the first frame SQLite does not read (None: it reads all)

    def ours(self, frame: WalFrame) -> bool:
        """Whether ``frame`` was written in the header's generation.

        Every rewind gives both salts new values (salt-1 plus one, salt-2 at random), so a frame
        sharing neither with the header is of an earlier generation, and one sharing only one
        is of this generation with a damaged salt (in it, or in the header).
        """
        return frame.salts[0] == self.salts[0] or frame.salts[1] == self.salts[1]

    def _torn(self, frame: WalFrame) -> bool:
        """The frame where the chain breaks, with the right salts: maybe a write that a power
        cut interrupted -- a commit there never completed, nothing after it depends on it."""
        return frame.index == self.first_bad and frame.salts == self.salts

    def lost_commit(self) -> WalFrame | None:
        """The first commit of this generation after the log's end, which SQLite skips: the
        frame where the log breaks is damaged, and every later commit is lost with it."""
        if self.first_bad is None:
            return None
        return next((f for f in self.frames[self.first_bad:]
                     if f.commit and self.ours(f) and not self._torn(f)), None)

    def committed(self) -> list[WalFrame]:
        """This generation's frames up to its last commit frame, readable by SQLite or not:
        the pages of committed transactions (frames after the last commit are of a transaction
        that never committed; earlier generations are in the database already)."""
        mine = [f for f in self.frames if self.ours(f)]
        last = max((f.index for f in mine if f.commit and not self._torn(f)), default=-1)
        return [f for f in mine if f.index <= last]


def scan_wal(wal: Path, page_size: int = 0) -> WalScan:
    """Read ``wal`` as SQLite recovers it; ``page_size`` is the database's (0: unknown).

    A header SQLite rejects makes it ignore every frame, but the frames are still listed
    (with the database's page size if the header's is unusable) so that salvage can count
    what they held. Streams frame by frame: a -wal grows without bound while checkpoints are
    held back.
    """
    with _open_plain(wal) as f:
        head = f.read(WAL_HEADER.size)
        if len(head) < WAL_HEADER.size:
            return WalScan(f"{len(head)} bytes, shorter than a WAL header")
        magic, version, wal_page_size, _, salt1, salt2, sum1, sum2 = WAL_HEADER.unpack(head)
        big = bool(magic & 1)
        checksum = _checksum(head[:24], big, (0, 0))
        if magic not in WAL_MAGICS or version != WAL_VERSION or not _valid_page_size(
                wal_page_size):
            if not page_size:
                return WalScan("not a WAL file (bad header)")
            scan = WalScan("not a WAL file (bad header)", page_size, (salt1, salt2))
        elif page_size and wal_page_size != page_size:
            return WalScan(f"its pages are {wal_page_size} bytes, the database's {page_size}: "
                           "another database's")
        else:
            scan = WalScan(None if checksum == (sum1, sum2) else "its header checksum is wrong",
                           wal_page_size, (salt1, salt2))
        _scan_frames(f, scan, big, checksum, (sum1, sum2))
    if scan.problem is not None and scan.frames:
        scan.salts = scan.frames[0].salts  # the header cannot say; the first frame is newest
    return scan


def _scan_frames(f: BinaryIO, scan: WalScan, big: bool, checksum: tuple[int, int],
                 stored: tuple[int, int]) -> None:
    """List the frames after the header; find where SQLite's log ends.

    ``checksum`` is the header's as computed, ``stored`` as written. A frame of this generation
    is also checked on its own, from its predecessor's stored checksum: after a damaged frame,
    the later ones still prove intact.
    """
    chained = scan.problem is None
    frame_size = WAL_FRAME.size + scan.page_size
    while len(data := f.read(frame_size)) == frame_size:
        page, commit, s1, s2, c1, c2 = WAL_FRAME.unpack_from(data)
        index = len(scan.frames)
        own = (s1, s2) == scan.salts or s1 == scan.salts[0] or s2 == scan.salts[1]
        intact = chained
        if chained:
            checksum = _checksum(data[:8] + data[WAL_FRAME.size:], big, checksum)
            chained = intact = (s1, s2) == scan.salts and checksum == (c1, c2)
        elif own:
            intact = _checksum(data[:8] + data[WAL_FRAME.size:], big, stored) == (c1, c2)
        scan.frames.append(WalFrame(index, page, commit, (s1, s2),
                                    WAL_HEADER.size + index * frame_size + WAL_FRAME.size,
                                    intact))
        stored = (c1, c2)
        if chained and commit:
            scan.end, scan.pages = index + 1, commit
        elif not chained and scan.first_bad is None:
            scan.first_bad = index


def wal_problem(scan: WalScan, db_pages: int = 0) -> tuple[str, bool] | None:
    """Why SQLite would ignore committed frames of this WAL, or apply a wrong one, and whether
    what it does read is worth salvaging; None if SQLite reads every commit in it.

    An outbox never shrinks (no VACUUM), so a log ending smaller than ``db_pages``, the main
    file's size after the last checkpoint, is older than the database, or another database's.
    """
    if scan.problem is not None:
        return scan.problem, False
    lost = scan.lost_commit()
    if lost is not None and scan.end == 0:  # the header, or the first frames, are damaged
        return (f"none of its {len(scan.frames)} frame(s) is read: frame {scan.first_bad} does "
                "not match its header's salts and checksum, and a later commit (frame "
                f"{lost.index}) is lost with it"), False
    if lost is not None:
        return (f"frame {scan.first_bad} is damaged and a later commit (frame {lost.index}) "
                "is lost with it"), True  # SQLite still reads the commits before the damage
    if scan.pages and scan.pages < db_pages:
        return (f"its last commit leaves {scan.pages} pages, the database has {db_pages}: "
                "it is older than the database, or another database's"), False
    return None


def _foreign_wal(path: Path) -> str | None:
    """Whether the WAL carries another outbox's ``database_id`` than the main file holds.

    A -wal from another outbox fits ours page for page (same schema, same creation order) and
    passes every check above; only the id in the counters row, which every commit rewrites,
    tells them apart.
    """
    ids = []
    for use_wal in (False, True):
        try:
            conn = _connect_ro(path, use_wal=use_wal)
            try:
                ids.append(_read_one(conn, "SELECT database_id FROM counters"))
            finally:
                conn.close()
        except sqlite3.Error:
            return None  # not readable this way; quick_check will say more
    main, with_wal = ids
    if main is None or with_wal is None or main == with_wal:
        return None
    return f"it belongs to database {with_wal[0]}, the file is database {main[0]}"


def move_aside(path: Path) -> Path:
    """Rename the file set to ``<name>.damaged-<UTC time>``; return the new main path."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while any(_sibling(aside, end).exists() for end in ("", "-wal", "-shm")):
        n += 1
        aside = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    try:
        for end in ("", "-wal", "-shm"):
            if _sibling(path, end).exists():
                _sibling(path, end).rename(_sibling(aside, end))
    except OSError as exc:
        raise StorageError(exc.errno, f"the outbox {path} is damaged and cannot be moved aside "
                           f"to {aside}: {exc.strerror}") from exc
    return aside


# --- salvage ------------------------------------------------------------------------------------


def salvage_into(conn: sqlite3.Connection, damage: Damage, aside: Path,
                 progress: Progress | None = None) -> Recovery:
    """Copy what is readable from the moved-aside set into ``conn``'s fresh outbox.

    ``conn`` is inside the transaction that created the schema; every table is empty.
    ``progress`` is called after every :data:`COPY_BATCH` rows copied. StorageError, before
    anything is read, when a file of the set is a link or not a regular file
    (agent.core.atomic.refuse_links): the set stays as it is, for a human.
    """
    refuse_links(aside, ("", "-wal", "-shm"))
    _split_partial_page(aside)
    found = _read_damaged(conn, damage, aside, progress)
    _drop_orphans(conn)
    (readings,) = conn.execute("SELECT count(*) FROM readings").fetchone()
    return _record_found(conn, found, damage.reason, aside, readings)


def record_failure(conn: sqlite3.Connection, damage: Damage, aside: Path,
                   error: Exception) -> Recovery:
    """Record a salvage that failed (a bug in it) in ``conn``'s empty outbox: nothing was
    copied, yet the counters and ids go on above what the damaged set shows, as far as that
    can be read without copying, and all it held is counted as lost."""
    try:
        found = _read_damaged(None, damage, aside, None)
    except Exception:  # the bug may be here too: then nothing is known
        found = _Found()
    return _record_found(conn, found, f"{damage.reason}; salvage failed: {error}", aside, 0)


def _read_damaged(conn: sqlite3.Connection | None, damage: Damage, aside: Path,
                  progress: Progress | None) -> _Found:
    """:func:`_read_source` with the header rebuilt where it is damaged, and put back after:
    the moved-aside file stays the evidence, as it was."""
    rebuilt = _rebuild_header(aside)
    try:
        return _read_source(conn, damage, aside, rebuilt, progress)
    finally:
        if rebuilt:
            _restore_header(aside)


def _record_found(conn: sqlite3.Connection, found: _Found, reason: str, aside: Path,
                  salvaged: int) -> Recovery:
    """Counters and ids above all ``found`` shows, the loss counted, the recovery recorded."""
    lost = _set_counters(conn, found, salvaged)
    estimated = found.counters is None and found.top_id > 0
    recovery = Recovery(time.time_ns(), reason + (ESTIMATED if estimated else ""), str(aside),
                        salvaged, lost, found.count + 1)
    record(conn, recovery)
    return recovery


@dataclass(slots=True)
class _Found:
    """What a damaged set says of the outbox it was, as far as it can be read."""

    counters: Counters | None = None  # the newest readable
    top_id: int = 0  # the highest reading id seen: rows, counters, -wal frames, raw pages
    lowest_id: int = 0  # without counters: the lowest reading id on the file's pages
    count: int = 0  # recoveries before this one


def _read_source(conn: sqlite3.Connection | None, damage: Damage, aside: Path, rebuilt: bool,
                 progress: Progress | None) -> _Found:
    """Copy the readable rows into ``conn`` (None: copy nothing); gather the counters and ids
    from everywhere."""
    wal = _wal_facts(aside, _database_id(aside))
    found = _Found(wal.counters, wal.top_id)
    # a rebuilt header makes the file readable again, and its -wal with it if that checks out
    source = _open_source(aside, damage.use_wal or (rebuilt and wal.usable))
    if source is not None:
        try:
            found.counters = _newest(found.counters, _counters(source))
            found.count = int((_read_one(source, "SELECT value FROM meta WHERE key = ?",
                                         (f"{META_PREFIX}count",)) or (0,))[0] or 0)
            present = {bytes(row[0] or b"").decode("utf-8", "replace") for row in _read_all(
                source, "SELECT CAST(name AS BLOB) FROM sqlite_master")}  # one may be damaged
            for table in (t for t in TABLES if t in present):
                known = None
                if table in READING_TABLES and found.counters is not None:
                    known = max(found.counters[0], found.top_id)
                high = _high_key(source, table, known)
                if conn is None:
                    row = _read_one(source, f"SELECT max({TABLES[table][0]}) FROM {table}")
                    top = int(row[0] or 0) if row else 0
                else:
                    top = _copy_table(source, conn, table, high, progress)
                if table in READING_TABLES:
                    found.top_id = max(found.top_id, top)
        finally:
            source.close()
    if found.counters is None:  # the ids left on the file's pages are all there is to go by
        lowest, highest = _raw_reading_ids(aside, progress)
        found.lowest_id, found.top_id = lowest, max(found.top_id, highest)
    return found


def _counters(source: sqlite3.Connection) -> Counters | None:
    row = _read_one(source, "SELECT added, delivered, dropped, rejected FROM counters")
    if row is None or not all(isinstance(v, int) for v in row):
        return None
    added, delivered, dropped, rejected = row
    return added, delivered, dropped, rejected


def _newest(a: Counters | None, b: Counters | None) -> Counters | None:
    """The later of two versions of the counters: each of them only ever grows."""
    if a is None or b is None:
        return a if b is None else b
    return a if sum(a) >= sum(b) else b


def mark_pending(conn: sqlite3.Connection, damage: Damage, aside: Path) -> None:
    """Note in ``meta`` that ``aside`` is still to be salvaged (until :func:`record`)."""
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                 (PENDING_KEY, json.dumps([damage.reason, damage.use_wal, str(aside)])))


def pending(conn: sqlite3.Connection) -> tuple[Damage, Path] | None:
    """The salvage noted by :func:`mark_pending` and not yet recorded as done, if any."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (PENDING_KEY,)).fetchone()
    if row is None:
        return None
    reason, use_wal, aside = json.loads(row[0])
    return Damage(reason, use_wal), Path(aside)


def record(conn: sqlite3.Connection, recovery: Recovery) -> None:
    """Keep ``recovery`` in ``meta``, replacing the previous one; the salvage is done."""
    conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                     [(META_PREFIX + f.name, getattr(recovery, f.name))
                      for f in fields(Recovery)])
    conn.execute("DELETE FROM meta WHERE key = ?", (PENDING_KEY,))


def read_recovery(conn: sqlite3.Connection) -> Recovery | None:
    """The last recovery recorded in this outbox, if any."""
    rows: dict[str, Any] = dict(conn.execute("SELECT key, value FROM meta WHERE key LIKE ?",
                                             (META_PREFIX + "%",)).fetchall())
    names = [META_PREFIX + f.name for f in fields(Recovery)]
    if not all(rows.get(name) is not None for name in names):
        return None
    return Recovery(*(rows[name] for name in names))


def _split_partial_page(aside: Path) -> None:
    """Move a partial last page to ``<aside>-partial-page``: SQLite would read it padded with
    zeros, and rows in it would come back with wrong values instead of failing. The two files
    together are the damaged file as it was."""
    try:
        with _open_plain(aside, write=True) as f:
            header = f.read(HEADER_BYTES)
            size = f.seek(0, os.SEEK_END)
            if len(header) < HEADER_BYTES or not header.startswith(SQLITE_MAGIC):
                return
            partial = size % _page_size(header)
            if partial:
                f.seek(size - partial)
                write_new(_sibling(aside, "-partial-page"), f.read())
                f.truncate(size - partial)
    except OSError:
        return  # nothing to salvage from a file that cannot be read


def _open_source(aside: Path, use_wal: bool) -> sqlite3.Connection | None:
    """A read-only connection to the damaged set (it never checkpoints), or None if none opens."""
    try:
        conn = _connect_ro(aside, use_wal=use_wal)
        conn.execute("PRAGMA cell_size_check = ON")  # report damage rather than misread it
        conn.execute("PRAGMA writable_schema = ON")  # read a truncated file, not refuse it
        return conn
    except sqlite3.Error:
        return None


def _connect_ro(path: Path, *, use_wal: bool) -> sqlite3.Connection:
    """Read-only: never checkpoints a WAL into the file; ``immutable`` ignores the WAL."""
    query = "mode=ro" if use_wal else "mode=ro&immutable=1"
    return sqlite3.connect(f"{path.resolve().as_uri()}?{query}", uri=True)


def _high_key(source: sqlite3.Connection, table: str, known: int | None) -> int:
    """An upper bound of the keys in ``table``; ``known``: the highest id the counters (and
    the -wal) say was handed out, for the reading tables."""
    top = _read_one(source, f"SELECT max({TABLES[table][0]}) FROM {table}")
    if top is None:
        return UNKNOWN_HIGH_KEY if known is None else known
    return max(int(top[0] or 0), known or 0)


def _copy_table(source: sqlite3.Connection, conn: sqlite3.Connection, table: str,
                high: int, progress: Progress | None) -> int:
    """Copy the readable rows of ``table`` with keys up to ``high``; return the highest key."""
    columns = TABLES[table]
    insert = f"INSERT OR IGNORE INTO {table} VALUES ({', '.join('?' * len(columns))})"
    highest = 0
    batch: list[tuple[Any, ...]] = []
    for row in _readable_rows(source, table, high):
        batch.append(row)
        highest = max(highest, int(row[0]))
        if len(batch) >= COPY_BATCH:
            conn.executemany(insert, batch)
            batch = []
            if progress is not None:
                progress()
    conn.executemany(insert, batch)
    return highest


def _readable_rows(source: sqlite3.Connection, table: str,
                   high: int) -> Iterator[tuple[Any, ...]]:
    """The rows of ``table`` with keys in [0, high] that can be read, in key order.

    A read that fails has hit an unreadable page (or subtree). Python's cursor may have read
    one row ahead when it failed, so the next rows are tried one at a time, and at the first that
    fails, the next key from which reading works again is searched for, skipping those between.
    """
    columns = TABLES[table]
    select = (f"SELECT {', '.join(columns)} FROM {table} WHERE {columns[0]} BETWEEN ? AND ? "
              f"ORDER BY {columns[0]}")
    position = 0
    while position <= high:
        last = position - 1
        try:
            for row in source.execute(select, (position, high)):
                yield row
                last = max(last, int(row[0]))
            return
        except UNREADABLE:
            position = last + 1
        try:
            row = source.execute(f"{select} LIMIT 1", (position, high)).fetchone()
        except UNREADABLE:
            position = _next_readable(source, table, position, high)
            continue
        if row is None:
            return
        yield row
        position = max(position, int(row[0]) + 1)


def _next_readable(source: sqlite3.Connection, table: str, bad: int, high: int) -> int:
    """The first key after ``bad`` from which a read works (``high + 1`` if none).

    Gallops (1, 2, 4, ... keys on) past the unreadable stretch, then bisects back to its end,
    so a damaged page costs a few dozen probes however many rows it held.
    """
    key = TABLES[table][0]
    probe = f"SELECT {key} FROM {table} WHERE {key} BETWEEN ? AND ? ORDER BY {key} LIMIT 1"

    def readable(start: int) -> bool:
        try:
            source.execute(probe, (start, high)).fetchall()
        except UNREADABLE:
            return False
        return True

    failing, step = bad, 1
    while bad + step <= high and not readable(bad + step):
        failing, step = bad + step, step * 2
    good = min(bad + step, high + 1)
    while good - failing > 1:
        middle = (good + failing) // 2
        good, failing = (middle, failing) if readable(middle) else (good, middle)
    return good


def _drop_orphans(conn: sqlite3.Connection) -> None:
    """Delete rows whose lookup rows were lost: they cannot be sent as sampled."""
    for table in ("readings", "quarantine"):
        conn.execute(f"""DELETE FROM {table} WHERE series NOT IN (SELECT id FROM series)
            OR boot NOT IN (SELECT id FROM boots)
            OR (calibration IS NOT NULL AND calibration NOT IN (SELECT id FROM calibrations))""")
    conn.execute("DELETE FROM latest WHERE series NOT IN (SELECT id FROM series)")


def _set_counters(conn: sqlite3.Connection, found: _Found, readings: int) -> int:
    """Carry the counters over, ``added`` above every id seen; count the readings that were
    held but not salvaged as dropped, and return how many.

    Without readable counters: ids come from ``added``, so it restarts at the highest id seen;
    ids missing between the oldest reading (salvaged, else seen on the file's pages) and that
    one are counted as dropped, older ones as delivered (delivery and the byte bound both
    remove the oldest first) -- an estimate.
    """
    (quarantined,) = conn.execute("SELECT count(*) FROM quarantine").fetchone()
    if found.counters is not None:
        added, delivered, dropped, rejected = found.counters
        added = max(added, found.top_id)  # ids above the counters are of later commits
        backlog = added - delivered - dropped - rejected
        lost = max(0, backlog - readings)
        added += max(0, readings - backlog)  # more rows than the counters knew: keep them
    else:
        (first,) = conn.execute("SELECT min(id) FROM readings").fetchone()
        if first is None:
            first = found.lowest_id or found.top_id + 1
        (later,) = conn.execute("SELECT count(*) FROM quarantine WHERE id >= ?",
                                (first,)).fetchone()
        added, rejected, dropped = found.top_id, quarantined, 0
        lost = max(0, found.top_id - first + 1 - readings - later)
        delivered = added - readings - lost - rejected
        if delivered < 0:  # quarantined rows of ids never counted: count them as added
            added, delivered = added - delivered, 0
    conn.execute("UPDATE counters SET added = ?, delivered = ?, dropped = ?, rejected = ?",
                 (added, delivered, dropped + lost, rejected))
    return lost


def _read_all(conn: sqlite3.Connection, sql: str) -> list[tuple[Any, ...]]:
    """All rows, or none if they cannot be read."""
    try:
        return [tuple(row) for row in conn.execute(sql)]
    except UNREADABLE:
        return []


def _read_one(conn: sqlite3.Connection, sql: str,
              params: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
    """One row, or None if there is none or it cannot be read."""
    try:
        row = conn.execute(sql, params).fetchone()
    except UNREADABLE:
        return None
    return None if row is None else tuple(row)


def _sqlite_problem(path: Path, *, use_wal: bool) -> str | None:
    """What SQLite finds wrong with the file (and its WAL), read-only; None if nothing."""
    try:
        conn = _connect_ro(path, use_wal=use_wal)
        conn.text_factory = lambda b: b.decode("utf-8", "replace")  # names from damaged pages
        try:
            rows = conn.execute("PRAGMA quick_check(5)").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        if exc.sqlite_errorname in NOT_DAMAGE:
            raise StorageError(f"cannot check the outbox {path}: {exc}") from exc
        return f"SQLite: {exc}"
    except UnicodeDecodeError:  # Python decodes SQLite's message, which quotes damaged names
        return "SQLite: an error naming text that is not UTF-8: the schema is damaged"
    if rows == [("ok",)]:
        return None
    return "quick_check: " + "; ".join(str(r[0]) for r in rows)


# --- what SQLite cannot read: a lost header, skipped frames, pages ------------------------------


def _rebuild_header(aside: Path) -> bool:
    """Give a file whose 100-byte header is damaged a new one, if its pages then read as an
    outbox; the original goes to ``<aside>-header`` until :func:`_restore_header` puts it
    back. Returns whether the file now has a rebuilt header.

    Page size: the damaged header's own field when it is valid, then the -wal's, then each one
    SQLite allows, until SQLite reads the schema and the counters; page count from the file
    size. The freelist is lost (its pages only hold deleted rows).
    """
    kept = _sibling(aside, "-header")
    try:
        with _open_plain(aside, write=True) as f:
            header = f.read(HEADER_BYTES)
            size = f.seek(0, os.SEEK_END)
            saved = _saved_header(kept)
            if saved is not None and saved != header:
                return True  # rebuilt by a salvage that was killed before it put it back
            if _valid_header(header) or len(header) < HEADER_BYTES:
                return False
            if saved is None:  # never through a link planted at the name (agent.core.atomic)
                write_new(kept, header)
            for page_size in _page_size_candidates(aside, header):
                if size % page_size == 0:
                    f.seek(0)
                    f.write(_new_header(page_size, size // page_size))
                    f.flush()
                    if _reads_as_outbox(aside):
                        return True
            f.seek(0)
            f.write(header)
        kept.unlink()
    except (OSError, ValueError):  # ValueError: a -header that is not ours (DamagedFileError)
        pass  # a file that cannot be written is salvaged as it is
    return False


def _saved_header(kept: Path) -> bytes | None:
    """The header a salvage saved at ``kept``, None when there is none; OSError or
    DamagedFileError (a ValueError) when what is there is not one (a link, a larger file)."""
    try:
        return read_bounded(kept, HEADER_BYTES, follow=False)
    except FileNotFoundError:
        return None


def _restore_header(aside: Path) -> None:
    """Put the damaged header back: the moved-aside file stays the evidence, as it was."""
    kept = _sibling(aside, "-header")
    try:
        original = _saved_header(kept)
        if original is None:
            return
        with _open_plain(aside, write=True) as f:
            f.write(original)
        kept.unlink()
    except (OSError, ValueError):  # ValueError: a -header that is not ours (DamagedFileError)
        pass  # kept beside it: the two files together are the damaged file as it was


def _page_size_candidates(aside: Path, header: bytes) -> list[int]:
    """The page sizes a file with a damaged header may have, the likeliest first."""
    found = []
    if len(header) >= 18:  # the page size field, at offset 16, may have survived
        (own,) = struct.unpack_from(">H", header, 16)
        found.append(65536 if own == 1 else own)
    wal = _sibling(aside, "-wal")
    if wal.exists():
        try:
            with _open_plain(wal) as f:
                head = f.read(WAL_HEADER.size)
            if len(head) == WAL_HEADER.size and WAL_HEADER.unpack(head)[0] in WAL_MAGICS:
                found.append(WAL_HEADER.unpack(head)[2])
        except OSError:
            pass
    return list(dict.fromkeys(p for p in (*found, *PAGE_SIZES) if _valid_page_size(p)))


def _new_header(page_size: int, pages: int) -> bytes:
    """A database header (https://sqlite.org/fileformat.html#the_database_header) for an
    outbox: WAL mode (file format 2), no reserved bytes, payload fractions 64/32/32, change
    counter 1, no freelist, schema cookie 1, schema format 4, UTF-8."""
    header = bytearray(HEADER_BYTES)
    header[:16] = SQLITE_MAGIC
    struct.pack_into(">H6B", header, 16, 1 if page_size == 65536 else page_size,
                     2, 2, 0, 64, 32, 32)
    struct.pack_into(">12I", header, 24, 1, pages, 0, 0, 1, 4, 0, 0, 1, 0, 0, 0)
    major, minor, patch = sqlite3.sqlite_version_info
    struct.pack_into(">2I", header, 92, 1, major * 1_000_000 + minor * 1000 + patch)
    return bytes(header)


def _reads_as_outbox(path: Path) -> bool:
    """Whether SQLite reads the schema, the counters and the newest reading of ``path``."""
    try:
        conn = _connect_ro(path, use_wal=False)
        try:
            names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
            conn.execute("SELECT added FROM counters").fetchall()
            conn.execute("SELECT max(id) FROM readings").fetchall()
        finally:
            conn.close()
    except (sqlite3.Error, UnicodeDecodeError):
        return False
    return {"counters", "readings"} <= names


def _database_id(aside: Path) -> str | None:
    """The main file's ``counters.database_id`` (without its -wal), if readable."""
    try:
        conn = _connect_ro(aside, use_wal=False)
        try:
            row = _read_one(conn, "SELECT database_id FROM counters")
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return row[0] if row is not None and isinstance(row[0], str) else None


@dataclass(slots=True)
class _WalFacts:
    """What the committed frames of a -wal say, SQLite reading them or not."""

    counters: Counters | None = None  # the newest version of the counters row in them
    top_id: int = 0  # the highest reading id on their pages
    usable: bool = False  # SQLite reads a log in it that fits the file


def _wal_facts(aside: Path, database_id: str | None) -> _WalFacts:
    """The counters and reading ids in the committed frames of ``aside``'s -wal, from the
    raw pages, so commits SQLite skips are counted too: only frames whose checksum proves them
    intact. Nothing if the -wal is another database's (its counters carry another
    ``database_id``)."""
    wal = _sibling(aside, "-wal")
    try:
        with _open_plain(aside) as f:
            header = f.read(HEADER_BYTES)
        if not wal.exists():
            return _WalFacts()
        valid = _valid_header(header)
        scan = scan_wal(wal, _page_size(header) if valid else 0)
        facts = _WalFacts(usable=wal_problem(scan, _db_pages(aside, header) if valid else 0)
                          is None and scan.end > 0)
        with _open_plain(wal) as f:
            for frame in (each for each in scan.committed() if each.intact):
                f.seek(frame.offset)
                page = f.read(scan.page_size)
                row = _counters_row(page)
                if row is not None:
                    if None not in (database_id, row[4]) and row[4] != database_id:
                        return _WalFacts()
                    facts.counters = _newest(facts.counters, row[:4])
                ids = _reading_ids(page) if frame.page != 1 else None
                if ids is not None:
                    facts.top_id = max(facts.top_id, ids[1])
    except OSError:
        return _WalFacts()
    return facts


def _raw_reading_ids(aside: Path, progress: Progress | None) -> tuple[int, int]:
    """The lowest and highest reading ids on the file's table leaf pages, read without
    SQLite, for when the counters are unreadable; (0, 0) if none. A freed page may still hold
    rows of delivered readings, so the lowest is a guess and the highest an upper bound."""
    lowest = highest = 0
    try:
        with _open_plain(aside) as f:
            header = f.read(HEADER_BYTES)
            page_size = _page_size_candidates(aside, header)[0]
            f.seek(page_size)  # page 1 holds the schema
            for n in itertools.count(1):
                page = f.read(page_size)
                if len(page) < page_size:
                    break
                ids = _reading_ids(page)
                if ids is not None:
                    lowest = min(lowest or ids[0], ids[0])
                    highest = max(highest, ids[1])
                if progress is not None and n % COPY_BATCH == 0:
                    progress()
    except OSError:
        pass
    return lowest, highest


def _counters_row(page: bytes) -> tuple[int, int, int, int, str | None] | None:
    """The outbox's counters row if ``page`` is its page: a table leaf holding one row, id 1,
    of four integers (added, delivered, dropped, rejected) and the database id."""
    cells = _leaf_cells(page)
    if cells is None or len(cells) != 1 or cells[0][0] != 1:
        return None
    values = _record(cells[0][1])
    if values is None or len(values) not in (4, 5):
        return None
    numbers, database_id = values[:4], (values[4:] or [None])[0]
    if not all(type(v) is int for v in numbers) or not isinstance(database_id, str | None):
        return None
    added, delivered, dropped, rejected = (v if isinstance(v, int) else 0 for v in numbers)
    return added, delivered, dropped, rejected, database_id


def _reading_ids(page: bytes) -> tuple[int, int] | None:
    """The lowest and highest row id if ``page`` is a leaf of ``readings`` or ``quarantine``:
    every row a record of their 9 or 11 columns, the first (the id) stored as NULL."""
    cells = _leaf_cells(page)
    if not cells:
        return None
    for _, payload in cells:
        types = _record_types(payload)
        if types is None or len(types) not in (9, 11) or types[0] != 0:
            return None
    return cells[0][0], cells[-1][0]


def _leaf_cells(page: bytes) -> list[tuple[int, bytes]] | None:
    """(row id, payload) of each cell if ``page`` is a well-formed table b-tree leaf whose
    rows lie on it whole, in row-id order; else None (https://sqlite.org/fileformat.html
    #b_tree_pages; an outbox reserves no bytes at the end of its pages)."""
    try:
        if page[0] != TABLE_LEAF:
            return None
        count, content = struct.unpack_from(">HH", page, 3)
        if not 8 + 2 * count <= (content or 65536) <= len(page):
            return None
        cells, previous = [], -1
        for (pointer,) in struct.iter_unpack(">H", page[8:8 + 2 * count]):
            if pointer < content:
                return None
            size, at = _varint(page, pointer)
            row_id, at = _varint(page, at)
            if not previous < row_id < 2**63 or size > len(page) - 35 or at + size > len(page):
                return None  # out of order, negative, or spilling to overflow pages
            cells.append((row_id, page[at:at + size]))
            previous = row_id
    except (IndexError, struct.error):
        return None
    return cells


def _record_types(payload: bytes) -> list[int] | None:
    """The serial types of a record (https://sqlite.org/fileformat.html#record_format), if
    its header and contents fill ``payload`` exactly."""
    try:
        size, at = _varint(payload, 0)
        types, body = [], size
        while at < size:
            serial, at = _varint(payload, at)
            if serial in (10, 11):
                return None
            types.append(serial)
            body += SERIAL_SIZES[serial] if serial < 12 else (serial - 12) // 2
    except IndexError:
        return None
    return types if at == size and body == len(payload) else None


def _record(payload: bytes) -> list[object] | None:
    """A record's values: integers, floats, texts, blobs, None."""
    types = _record_types(payload)
    if types is None:
        return None
    (at, _) = _varint(payload, 0)
    values: list[object] = []
    for serial in types:
        size = SERIAL_SIZES[serial] if serial < 12 else (serial - 12) // 2
        raw = payload[at:at + size]
        if serial in (8, 9):
            values.append(serial - 8)
        elif serial in INTEGER_TYPES:
            values.append(int.from_bytes(raw, "big", signed=True))
        elif serial == 7:
            values.append(struct.unpack(">d", raw)[0])
        elif serial == 0:
            values.append(None)
        else:
            values.append(raw.decode("utf-8", "replace") if serial % 2 else raw)
        at += size
    return values


def _varint(data: bytes, at: int) -> tuple[int, int]:
    """SQLite's big-endian variable-length integer at ``at``: (value, where the next starts).
    Raises IndexError past the end of ``data``."""
    value = 0
    for i in range(8):
        byte = data[at + i]
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, at + i + 1
    return (value << 8) | data[at + 8], at + 9


def _checksum(data: bytes, big: bool, seed: tuple[int, int]) -> tuple[int, int]:
    """The WAL's running checksum (fileformat.html#checksum_algorithm) over ``data``."""
    words = struct.unpack(f"{'>' if big else '<'}{len(data) // 4}I", data)
    s0, s1 = seed
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def _valid_page_size(size: int) -> bool:
    """A power of two from 512 to 65536, as SQLite allows."""
    return 512 <= size <= 65536 and size & (size - 1) == 0


def _valid_header(header: bytes) -> bool:
    """Whether ``header`` is a whole database header with a page size SQLite accepts."""
    if len(header) < HEADER_BYTES or not header.startswith(SQLITE_MAGIC):
        return False
    (size,) = struct.unpack_from(">H", header, 16)
    return size == 1 or _valid_page_size(size)


def _page_size(header: bytes) -> int:
    (size,) = struct.unpack_from(">H", header, 16)  # offset 16; the value 1 means 65536
    return 65536 if size == 1 else max(size, 512)


def _pages_in_header(header: bytes) -> int:
    """The in-header database size, when valid (change counter == version-valid-for)."""
    counter, pages = struct.unpack_from(">2I", header, 24)  # offsets 24 and 28
    (valid_for,) = struct.unpack_from(">I", header, 92)
    return int(pages) if counter == valid_for else 0


def _db_pages(path: Path, header: bytes) -> int:
    """The main file's size in pages after the last checkpoint, which writes it whole: the
    header's count, unless the file is shorter (a damaged count must not make a -wal look
    older than the file)."""
    if not header:
        return 0
    pages = path.stat().st_size // _page_size(header)
    in_header = _pages_in_header(header)
    return min(in_header, pages) if in_header else pages


def _open_plain(path: Path, *, write: bool = False) -> BinaryIO:
    """``path`` opened for reading (``write``: and writing), never through a symbolic link
    (``O_NOFOLLOW``) and never unless it is a regular file -- one with one name, to write: the
    moved-aside files stay in a directory the service's user can change, and a salvage may run as
    root (``sudo envagent sync``). OSError otherwise."""
    flags = (os.O_RDWR if write else os.O_RDONLY) | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(path, flags)
    try:
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode) or (write and found.st_nlink != 1):
            raise OSError(errno.EPERM, "not a regular file of its own (a hard link, a FIFO or "
                          "a device)", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "r+b" if write else "rb")
    except BaseException:
        os.close(fd)
        raise


def _sibling(path: Path, end: str) -> Path:
    return path.with_name(path.name + end)


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())
