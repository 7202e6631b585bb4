"""A damaged outbox is moved aside and salvaged into a fresh one, never deleted, never fatal.

At every start :func:`diagnose` looks at the database file set before SQLite writes to it: the
main file's header and size; the ``-wal``, parsed here (SQLite silently ignores a WAL whose
header or frames do not check out, which would lose committed readings without a word, and it
applies a valid-looking WAL from another database, which would checkpoint foreign pages into
ours -- the outbox's ``counters.database_id`` tells them apart); whether the file is writable;
and ``PRAGMA quick_check`` on a read-only connection, which never checkpoints. A damaged set is
renamed to ``<name>.damaged-<UTC time>`` (``-wal`` and ``-shm`` alongside, so SQLite still pairs
them) and kept for a human.

:func:`salvage_into` then copies whatever can be read into the fresh outbox, in its creating
transaction: each table is read in row-id order, and where a read hits an unreadable page (or
subtree) the next readable row id is searched for (galloping, then bisecting) and the ids in
between are skipped -- pure Python, as the Pi may lack the sqlite3 CLI and its ``.recover``. A
partial last page is split off first: SQLite would pad it with zeros and misread its rows. Row
ids are kept, so acks and the id allocator stay valid. The counters carry over where readable;
readings that were in the backlog but could not be read are counted as ``dropped`` (they were
given up, and that count goes upstream). A reading whose series or boot row is unreadable cannot
be sent as sampled, so it is lost too. The event is kept in the ``meta`` table for ``status``.

Cost, measured with a million readings (36 MB) on a development machine: diagnose (quick_check
reads every page) 0.2 s at every start; salvage 4.5 s (1 s reading, the rest writing the new
file). A Pi Zero 2 W is ~25x slower, so salvaging a full outbox there takes minutes: a
``progress`` callback runs every COPY_BATCH rows (and agent.outbox calls it while diagnose
runs), and the agent turns it into requests for more start-up time (agent.notify).
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import sqlite3
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from agent.errors import StorageError

SQLITE_MAGIC = b"SQLite format 3\x00"  # https://sqlite.org/fileformat.html#the_database_header
HEADER_BYTES = 100
WAL_MAGICS = (0x377F0682, 0x377F0683)  # low bit: checksums over big-endian words
WAL_VERSION = 3007000
WAL_HEADER = struct.Struct(">8I")  # magic, version, page size, checkpoint, salt1/2, checksum1/2
WAL_FRAME = struct.Struct(">6I")  # page number, db size after commit (0: not a commit), salts...
# Errors that say "someone else holds the database", not "the database is damaged".
NOT_DAMAGE = {"SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_NOMEM", "SQLITE_INTERRUPT"}
UNKNOWN_HIGH_KEY = 2**40  # search this far for rows when a table's highest key is unreadable
COPY_BATCH = 1000  # rows per executemany while copying
META_PREFIX = "recovery."
PENDING_KEY = "salvage.pending"
# A sign of life from long work (copying here, the integrity check in agent.outbox) for a
# service manager (agent.notify).
Progress = Callable[[], object]

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


@dataclass(frozen=True, slots=True)
class Damage:
    """Why a database file set cannot be used as is, and whether its WAL is worth reading."""

    reason: str
    use_wal: bool


@dataclass(frozen=True, slots=True)
class Recovery:
    """The last recovery from damage, as ``envagent status`` shows it."""

    at_ns: int  # wall clock when it happened
    reason: str
    moved_to: str  # the damaged main file, renamed
    salvaged: int  # undelivered readings carried into the new outbox
    lost: int  # undelivered readings that could not be read, counted as dropped
    count: int  # recoveries over the outbox's life, as far as the old ones were readable


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
    """What is wrong with the database at ``path`` (and its -wal), or None if it can be used."""
    wal = _sibling(path, "-wal")
    wal_size = wal.stat().st_size if wal.exists() else 0
    if not path.exists():
        return Damage("a -wal without its database", False) if wal_size else None
    try:
        with path.open("r+b") as f:  # r+ also proves the file is writable
            header = f.read(HEADER_BYTES)
    except OSError as exc:
        return Damage(f"cannot open it for writing ({exc.strerror})", bool(wal_size))
    damage = _file_damage(header, path.stat().st_size, wal_size)
    if damage is None and wal_size:
        damage = _wal_damage(path, wal.read_bytes(), header)
    if damage is None:
        damage = _sqlite_damage(path, use_wal=bool(wal_size))
    return damage


def _file_damage(header: bytes, size: int, wal_size: int) -> Damage | None:
    """What the main file's size and header say is wrong with it."""
    if size == 0:
        return None if wal_size else Damage("zero-length file", False)
    if not header.startswith(SQLITE_MAGIC):
        return Damage("file is not a database (bad header)", False)
    if len(header) < HEADER_BYTES:
        return Damage(f"truncated: {size} bytes, shorter than the database header", False)
    page_size, pages = _page_size(header), _pages_in_header(header)
    if size % page_size:
        return Damage(f"truncated: {size} bytes is not a whole number of {page_size}-byte pages",
                      bool(wal_size))
    if not wal_size and size < pages * page_size:  # a WAL may hold the missing pages
        return Damage(f"truncated: {size} bytes, the header says {pages * page_size}", False)
    return None


def _wal_damage(path: Path, wal: bytes, header: bytes) -> Damage | None:
    """What is wrong with the -wal, judged from its own bytes and then by what it contains."""
    page_size = _page_size(header) if header else 0
    found = wal_problem(wal, page_size, _pages_in_header(header) if header else 0)
    if found is not None:
        return Damage(f"stale -wal: {found[0]}", found[1])
    foreign = _foreign_wal(path)
    return None if foreign is None else Damage(f"stale -wal: {foreign}", False)


def _sqlite_damage(path: Path, *, use_wal: bool) -> Damage | None:
    """What quick_check finds; if the -wal seems to be what does not fit, salvage without it."""
    problem = _sqlite_problem(path, use_wal=use_wal)
    if problem is None:
        return None
    return Damage(problem, use_wal and _sqlite_problem(path, use_wal=False) is not None)


def wal_problem(data: bytes, page_size: int, db_pages: int = 0) -> tuple[str, bool] | None:
    """Why SQLite would ignore (part of) this WAL and whether the rest is worth reading; None if
    every commit in it is readable.

    Format: https://sqlite.org/fileformat.html#the_write_ahead_log. SQLite reads the frames up
    to the first whose salt or cumulative checksum is wrong and ignores the rest -- normal for
    frames left over from before the WAL restarted, but not for a commit after that point. An
    outbox never shrinks (no VACUUM), so a last commit smaller than ``db_pages``, the main file's
    size after the last checkpoint, comes from an older or another database.
    """
    if len(data) < WAL_HEADER.size:
        return f"{len(data)} bytes, shorter than a WAL header", False
    magic, version, wal_page_size, _, salt1, salt2, sum1, sum2 = WAL_HEADER.unpack_from(data)
    if magic not in WAL_MAGICS or version != WAL_VERSION:
        return "not a WAL file (bad header)", False
    if page_size and wal_page_size != page_size:
        return (f"its pages are {wal_page_size} bytes, the database's {page_size}: "
                "another database's"), False
    big = bool(magic & 1)
    checksum = _checksum(data[:24], big, (0, 0))
    if checksum != (sum1, sum2):
        return "its header checksum is wrong", False
    frame_size = WAL_FRAME.size + wal_page_size
    frames = (len(data) - WAL_HEADER.size) // frame_size
    first_bad, last_commit = None, 0
    for i in range(frames):
        start = WAL_HEADER.size + i * frame_size
        _, commit, s1, s2, c1, c2 = WAL_FRAME.unpack_from(data, start)
        ours = (s1, s2) == (salt1, salt2)
        if first_bad is None:
            body = data[start:start + 8] + data[start + WAL_FRAME.size:start + frame_size]
            checksum = _checksum(body, big, checksum)
            if not ours or checksum != (c1, c2):
                first_bad = i
            last_commit = commit or last_commit
        elif ours and commit:
            return (f"frame {first_bad} is damaged and a later commit (frame {i}) is lost with "
                    "it"), True  # SQLite still reads the commits before the damage
    if frames and first_bad == 0:
        return f"none of its {frames} frame(s) matches its header's salt and checksum", False
    if last_commit and last_commit < db_pages:
        return (f"its last commit leaves {last_commit} pages, the database has {db_pages}: "
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
    ``progress`` is called after every :data:`COPY_BATCH` rows copied.
    """
    old_counters, old_count, max_id = None, 0, 0
    _split_partial_page(aside)
    source = _open_source(aside, damage.use_wal)
    if source is not None:
        try:
            old_counters = _read_one(source, "SELECT added, delivered, dropped, rejected "
                                             "FROM counters")
            old_count = int((_read_one(source, "SELECT value FROM meta WHERE key = ?",
                                       (f"{META_PREFIX}count",)) or (0,))[0] or 0)
            present = {row[0] for row in _read_all(source, "SELECT name FROM sqlite_master")}
            for table in (t for t in TABLES if t in present):
                high = _high_key(source, table, old_counters)
                max_id = max(max_id, _copy_table(source, conn, table, high, progress))
        finally:
            source.close()
    _drop_orphans(conn)
    (readings,) = conn.execute("SELECT count(*) FROM readings").fetchone()
    lost = _set_counters(conn, old_counters, readings, max_id)
    recovery = Recovery(time.time_ns(), damage.reason, str(aside), readings, lost,
                        old_count + 1)
    record(conn, recovery)
    return recovery


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
        with aside.open("r+b") as f:
            header = f.read(HEADER_BYTES)
            size = f.seek(0, os.SEEK_END)
            if len(header) < HEADER_BYTES or not header.startswith(SQLITE_MAGIC):
                return
            partial = size % _page_size(header)
            if partial:
                f.seek(size - partial)
                _sibling(aside, "-partial-page").write_bytes(f.read())
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


def _high_key(source: sqlite3.Connection, table: str, counters: tuple[Any, ...] | None) -> int:
    """An upper bound of the keys in ``table``: reading ids come from the ``added`` counter."""
    top = _read_one(source, f"SELECT max({TABLES[table][0]}) FROM {table}")
    added = int(counters[0]) if counters and table in ("readings", "quarantine") else None
    if top is None:
        return UNKNOWN_HIGH_KEY if added is None else added
    return max(int(top[0] or 0), added or 0)


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
        except sqlite3.DatabaseError:
            position = last + 1
        try:
            row = source.execute(f"{select} LIMIT 1", (position, high)).fetchone()
        except sqlite3.DatabaseError:
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
        except sqlite3.DatabaseError:
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


def _set_counters(conn: sqlite3.Connection, old: tuple[Any, ...] | None, readings: int,
                  max_id: int) -> int:
    """Carry the counters over; count readings that were due but not salvaged as dropped.

    Without readable counters: ids come from ``added``, so it restarts at the highest id
    salvaged; ids missing between the oldest salvaged reading and that one are counted as
    dropped, older ones as delivered (delivery and the byte bound both remove the oldest first).
    Returns how many readings were counted as dropped.
    """
    (quarantined,) = conn.execute("SELECT count(*) FROM quarantine").fetchone()
    if old is not None:
        added, delivered, dropped, rejected = (int(v) for v in old)
        added = max(added, max_id)
        backlog = added - delivered - dropped - rejected
        lost = max(0, backlog - readings)
        added += max(0, readings - backlog)  # more rows than the counters knew: keep them
    else:
        (first,) = conn.execute("SELECT coalesce(min(id), ?) FROM readings",
                                (max_id + 1,)).fetchone()
        (later,) = conn.execute("SELECT count(*) FROM quarantine WHERE id >= ?",
                                (first,)).fetchone()
        added, rejected, dropped = max_id, quarantined, 0
        lost = max(0, max_id - first + 1 - readings - later)
        delivered = added - readings - lost - rejected
    conn.execute("UPDATE counters SET added = ?, delivered = ?, dropped = ?, rejected = ?",
                 (added, delivered, dropped + lost, rejected))
    return lost


def _read_all(conn: sqlite3.Connection, sql: str) -> list[tuple[Any, ...]]:
    """All rows, or none if they cannot be read."""
    try:
        return [tuple(row) for row in conn.execute(sql)]
    except sqlite3.DatabaseError:
        return []


def _read_one(conn: sqlite3.Connection, sql: str,
              params: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
    """One row, or None if there is none or it cannot be read."""
    try:
        row = conn.execute(sql, params).fetchone()
    except sqlite3.DatabaseError:
        return None
    return None if row is None else tuple(row)


def _sqlite_problem(path: Path, *, use_wal: bool) -> str | None:
    """What SQLite finds wrong with the file (and its WAL), read-only; None if nothing."""
    try:
        conn = _connect_ro(path, use_wal=use_wal)
        try:
            rows = conn.execute("PRAGMA quick_check(5)").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        if exc.sqlite_errorname in NOT_DAMAGE:
            raise StorageError(f"cannot check the outbox {path}: {exc}") from exc
        return f"SQLite: {exc}"
    if rows == [("ok",)]:
        return None
    return "quick_check: " + "; ".join(str(r[0]) for r in rows)


def _checksum(data: bytes, big: bool, seed: tuple[int, int]) -> tuple[int, int]:
    """The WAL's running checksum (fileformat.html#checksum_algorithm) over ``data``."""
    words = struct.unpack(f"{'>' if big else '<'}{len(data) // 4}I", data)
    s0, s1 = seed
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def _page_size(header: bytes) -> int:
    (size,) = struct.unpack_from(">H", header, 16)  # offset 16; the value 1 means 65536
    return 65536 if size == 1 else max(size, 512)


def _pages_in_header(header: bytes) -> int:
    """The in-header database size, when valid (change counter == version-valid-for)."""
    counter, pages = struct.unpack_from(">2I", header, 24)  # offsets 24 and 28
    (valid_for,) = struct.unpack_from(">I", header, 92)
    return int(pages) if counter == valid_for else 0


def _sibling(path: Path, end: str) -> Path:
    return path.with_name(path.name + end)


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())
