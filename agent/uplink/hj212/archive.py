"""What an HJ 212 upstream keeps of its own beside the outbox: the samples its minute, hourly
and daily data are computed from, those aggregates (for the platform's history pulls), the
aggregate messages not yet acknowledged, and the settings the platform changed.

Why a store of its own: the outbox deletes a reading once every upstream has it, but a daily
average needs a day of readings, and the platform may ask for last week's hourly data. The
file is ``hj212-<name>.sqlite`` in the data directory (WAL, ``synchronous=NORMAL`` as the
outbox), written once per delivered batch.

How nothing is lost or counted twice: a batch's samples go in (keyed by code and sample time,
so a batch sent again after a crash adds nothing) BEFORE its real-time packets go out, and the
worker acks the outbox only after that. An interval is closed -- its aggregate computed once,
stored and queued -- when a reading at least ``CLOSE_MARGIN_S`` past its end has been seen:
readings come oldest first, so by then every reading of the interval has arrived. Alerts
are the exception: they go ahead of a backlog, so the transport does not count them as seen.
Intervals are the platform's local time (``timezone``): minutes (``minute_interval``, dividing
an hour), hours, days from local midnight; ``DataTime`` is the interval's start.

An aggregate's values are the Min, Avg and Max of every finite sample of the interval; its
flag is the first that applies of: M (a sample taken in maintenance mode), F (fewer samples
than the sensor's interval gives, less one: the unit or the sensor was down for part of it --
flagged, never filled in), D, T (a sample so flagged), N.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from agent.core.atomic import connect_readonly, connect_writable
from agent.core.timebase import NS
from agent.uplink.hj212.codes import number

CN_MINUTE = "2051"  # appendix C: 上传污染物分钟数据
CN_HOUR = "2061"  # 上传污染物小时数据
CN_DAY = "2031"  # 上传污染物日历史数据
CLOSE_MARGIN_S = 60  # an interval closes once a reading this far past its end was seen
KEEP_DAYS = 7  # aggregates kept for history pulls
FLAG_ORDER = "MFDT"  # an aggregate's flag: the first of these that applies, else N
ARCHIVE_FILE = "hj212-{}.sqlite"  # in the data directory, per upstream name
# An aggregate's QN is its DataTime and these; real-time QNs (realtime.QN_FIRST or more) and
# the heartbeat's (transport.Hj212Sink._qn_now) never end in them: change one only with the
# others.
QN_MS = {CN_MINUTE: "051", CN_HOUR: "061", CN_DAY: "031"}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    code TEXT NOT NULL, t_ns INTEGER NOT NULL, value REAL, flag TEXT NOT NULL,
    PRIMARY KEY (code, t_ns)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS samples_time ON samples (t_ns);
CREATE TABLE IF NOT EXISTS aggregates (
    cn TEXT NOT NULL, start_s INTEGER NOT NULL, qn TEXT NOT NULL, cp TEXT NOT NULL,
    PRIMARY KEY (cn, start_s)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outgoing (
    seq INTEGER PRIMARY KEY, cn TEXT NOT NULL, start_s INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS marks (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class Kind:
    """Minute, hourly or daily data: its CN and, for minutes, the interval's length."""

    cn: str
    minutes: int = 0


@dataclass(frozen=True, slots=True)
class Sample:
    code: str
    t_ns: int
    value: float | None  # None: the instrument gave no finite value
    flag: str


@dataclass(frozen=True, slots=True)
class Message:
    """An aggregate to deliver: its CN, QN and CP (DataTime and the items)."""

    seq: int
    cn: str
    qn: str
    cp: str


def interval_start(t_s: int, kind: Kind, zone: ZoneInfo) -> int:
    """The start (Unix seconds) of the local-time interval of ``kind`` holding ``t_s``."""
    local = datetime.fromtimestamp(t_s, zone)
    if kind.cn == CN_DAY:
        local = local.replace(hour=0, minute=0, second=0, microsecond=0)
    elif kind.cn == CN_HOUR:
        local = local.replace(minute=0, second=0, microsecond=0)
    else:
        local = local.replace(minute=local.minute - local.minute % kind.minutes, second=0,
                              microsecond=0)
    return int(local.timestamp())


def interval_end(start_s: int, kind: Kind, zone: ZoneInfo) -> int:
    if kind.cn == CN_DAY:
        local = datetime.fromtimestamp(start_s, zone) + timedelta(days=1)
        return int(local.replace(hour=0, minute=0, second=0).timestamp())
    return start_s + (3600 if kind.cn == CN_HOUR else kind.minutes * 60)


def data_time(t_s: int, zone: ZoneInfo) -> str:
    """``yyyyMMddHHmmss`` in the platform's local time."""
    return datetime.fromtimestamp(t_s, zone).strftime("%Y%m%d%H%M%S")


def parse_data_time(text: str, zone: ZoneInfo) -> int:
    """Unix seconds of a ``yyyyMMddHHmmss`` local time; ValueError when it is not one."""
    if len(text) != 14 or not text.isdigit():
        raise ValueError(f"{text[:20]!r} is not yyyyMMddHHmmss")
    return int(datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=zone).timestamp())


def archive_path(data_dir: Path, upstream: str) -> Path:
    return data_dir / ARCHIVE_FILE.format(upstream)


def waiting_in(path: Path) -> int:
    """How many aggregates the archive at ``path`` holds unacknowledged, read beside the agent
    that writes it (``envagent status``); 0 when there is no archive yet. sqlite3.Error when
    it cannot be read."""
    if not path.is_file():
        return 0
    conn = connect_readonly(path)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM outgoing").fetchone()[0])
    finally:
        conn.close()


class Archive:
    """``hj212-<name>.sqlite``; every method is one transaction, safe from any thread."""

    def __init__(self, path: Path, *, zone: ZoneInfo, kinds: Sequence[Kind],
                 expected: Mapping[str, float], keep_days: int = KEEP_DAYS) -> None:
        self.zone, self.kinds, self.expected = zone, tuple(kinds), dict(expected)
        self.keep_s = keep_days * 86400
        self._lock = threading.Lock()
        # StorageError for a link planted at the name: never written through, even as root
        self._conn = connect_writable(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # --- marks: small integers kept across restarts ---------------------------------------

    def mark(self, key: str) -> int | None:
        with self._lock:
            row = self._conn.execute("SELECT value FROM marks WHERE key = ?", (key,)).fetchone()
        return None if row is None else int(row[0])

    def set_mark(self, key: str, value: int) -> None:
        with self._transaction() as conn:
            _set_mark(conn, key, value)

    # --- samples in, aggregates out ------------------------------------------------------

    def add(self, samples: Iterable[Sample], seen_ns: int) -> int:
        """Store a batch's samples and close the intervals a reading at ``seen_ns`` proves
        complete; how many aggregates that queued."""
        rows = [(s.code, s.t_ns, s.value, s.flag) for s in samples]
        with self._transaction() as conn:
            conn.executemany("INSERT OR IGNORE INTO samples VALUES (?, ?, ?, ?)", rows)
            seen = max(seen_ns, _get_mark(conn, "seen_ns") or 0)
            _set_mark(conn, "seen_ns", seen)
            queued = sum(self._close(conn, kind, seen // NS) for kind in self.kinds)
            self._forget(conn)
        return queued

    def _close(self, conn: sqlite3.Connection, kind: Kind, seen_s: int) -> int:
        key = f"closed:{kind.cn}"
        start = _get_mark(conn, key)
        if start is None:  # the first interval is the one of the oldest sample
            row = conn.execute("SELECT MIN(t_ns) FROM samples").fetchone()
            if row[0] is None:
                return 0
            start = interval_start(row[0] // NS, kind, self.zone)
        queued = 0
        while (end := interval_end(start, kind, self.zone)) + CLOSE_MARGIN_S <= seen_s:
            cp = self._aggregate(conn, kind, start, end)
            if cp is not None:
                qn = data_time(start, self.zone) + QN_MS[kind.cn]
                conn.execute("INSERT OR REPLACE INTO aggregates VALUES (?, ?, ?, ?)",
                             (kind.cn, start, qn, cp))
                conn.execute("INSERT INTO outgoing (cn, start_s) VALUES (?, ?)",
                             (kind.cn, start))
                queued += 1
            start = end
            _set_mark(conn, key, start)
            if start + CLOSE_MARGIN_S > seen_s:
                break
            # Jump over a long gap (a unit off for a week) instead of walking every interval.
            row = conn.execute("SELECT MIN(t_ns) FROM samples WHERE t_ns >= ?",
                               (start * NS,)).fetchone()
            if row[0] is not None and row[0] // NS >= interval_end(start, kind, self.zone):
                start = interval_start(row[0] // NS, kind, self.zone)
                _set_mark(conn, key, start)
        return queued

    def _aggregate(self, conn: sqlite3.Connection, kind: Kind, start: int,
                   end: int) -> str | None:
        """The CP of one interval's aggregate; None when no sample falls in it."""
        rows = conn.execute(
            "SELECT code, MIN(value), AVG(value), MAX(value), COUNT(*), "
            "group_concat(DISTINCT flag) FROM samples WHERE t_ns >= ? AND t_ns < ? "
            "GROUP BY code ORDER BY code", (start * NS, end * NS)).fetchall()
        if not rows:
            return None
        items = [f"DataTime={data_time(start, self.zone)}"]
        for code, low, mean, high, count, flags in rows:
            interval = self.expected.get(code)
            short = interval is not None and count < (end - start) / interval - 1
            flag = next((f for f in FLAG_ORDER
                         if (f == "F" and short) or f in (flags or "")), "N")
            if mean is None:
                items.append(f"{code}-Flag={flag}")
            else:
                items.append(f"{code}-Min={number(low)},{code}-Avg={number(mean)},"
                             f"{code}-Max={number(high)},{code}-Flag={flag}")
        return ";".join(items)

    def _forget(self, conn: sqlite3.Connection) -> None:
        """Samples every open interval is past, aggregates older than ``keep_days``."""
        opens = [_get_mark(conn, f"closed:{kind.cn}") for kind in self.kinds]
        if self.kinds and None not in opens:
            oldest = min(o for o in opens if o is not None)
            conn.execute("DELETE FROM samples WHERE t_ns < ?", (oldest * NS,))
        elif not self.kinds:
            conn.execute("DELETE FROM samples")
        seen = _get_mark(conn, "seen_ns") or 0
        conn.execute("DELETE FROM aggregates WHERE start_s < ? AND NOT EXISTS (SELECT 1 FROM "
                     "outgoing o WHERE o.cn = aggregates.cn AND o.start_s = aggregates.start_s)",
                     (seen // NS - self.keep_s,))

    # --- delivery and history ------------------------------------------------------------

    def pending(self, limit: int) -> list[Message]:
        """The oldest aggregates not yet acknowledged."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT o.seq, a.cn, a.qn, a.cp FROM outgoing o JOIN aggregates a "
                "ON a.cn = o.cn AND a.start_s = o.start_s ORDER BY o.seq LIMIT ?",
                (limit,)).fetchall()
        return [Message(*row) for row in rows]

    def delivered(self, seq: int) -> None:
        with self._transaction() as conn:
            conn.execute("DELETE FROM outgoing WHERE seq = ?", (seq,))

    def history(self, cn: str, begin_s: int, end_s: int) -> list[tuple[str, str]]:
        """QN and CP of the aggregates of ``cn`` whose intervals start from ``begin_s`` to
        ``end_s``, oldest first."""
        with self._lock:
            return self._conn.execute(
                "SELECT qn, cp FROM aggregates WHERE cn = ? AND start_s BETWEEN ? AND ? "
                "ORDER BY start_s", (cn, begin_s, end_s)).fetchall()


def _get_mark(conn: sqlite3.Connection, key: str) -> int | None:
    row = conn.execute("SELECT value FROM marks WHERE key = ?", (key,)).fetchone()
    return None if row is None else int(row[0])


def _set_mark(conn: sqlite3.Connection, key: str, value: int) -> None:
    conn.execute("INSERT OR REPLACE INTO marks VALUES (?, ?)", (key, value))
