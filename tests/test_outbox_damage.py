"""A damaged outbox at start: moved aside, salvaged, counted, said -- never fatal, never silent.

Each test damages a real database the way storage does (truncation, a bad page, a stale WAL,
permissions) and opens it again as the daemon would.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import pwd
import shutil
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.core.errors import StorageError
from agent.core.reading import Reading
from agent.store import salvage
from agent.store.outbox import CHECK_PROGRESS_S, Outbox

BIG = 256 * 1024**2
NOBODY = 65534  # uid and gid of `nobody` on Debian
T0 = 1_700_000_000_000_000_000


def reading(i: int, sensor: str = "air") -> Reading:
    return Reading(sensor, "temperature", 20.0 + i / 100, "°C", T0 + i * 10**9, i, "boot-0",
                   True, 0, "cal-1" if i % 3 == 0 else None)


def fill(path: Path, start: int, stop: int, batch: int = 100) -> None:
    with Outbox(path, max_bytes=BIG) as box:
        for b in range(start, stop, batch):
            box.append([reading(i) for i in range(b, min(b + batch, stop))])


KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from agent.store.outbox import Outbox
from agent.core.reading import Reading
path, start, stop, batch, sensor = Path(sys.argv[1]), *map(int, sys.argv[2:5]), sys.argv[5]
box = Outbox(path, max_bytes=256 * 1024**2)
for b in range(start, stop, batch):
    box.append([Reading(sensor, "temperature", 20.0 + i / 100, "°C", {T0} + i * 10**9, i,
                        "boot-0", True, 0, "cal-1" if i % 3 == 0 else None)
                for i in range(b, min(b + batch, stop))])
os.kill(os.getpid(), signal.SIGKILL)
""".replace("{T0}", str(T0))


def killed_writer(path: Path, start: int, stop: int, batch: int, sensor: str = "air") -> None:
    """Append in a child that is SIGKILLed: its commits stay in the -wal."""
    done = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path), str(start), str(stop),
                           str(batch), sensor], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == -9, done.stderr
    assert Path(f"{path}-wal").stat().st_size > 0


def asides(path: Path) -> list[Path]:
    return sorted(p for p in path.parent.glob(f"{path.name}.damaged-*")
                  if not p.name.endswith(("-wal", "-shm", "-partial-page")))


def reopen(path: Path, caplog: pytest.LogCaptureFixture, salvaged: int,
           lost: int | None = None) -> salvage.Recovery:
    """Open as the daemon does; check the warning, the record, and that sampling works."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="envagent.outbox"), Outbox(path,
                                                                         max_bytes=BIG) as box:
        recovery = box.recovery()
        assert recovery is not None
        [aside] = asides(path)[-1:]
        assert recovery.moved_to == str(aside) and recovery.salvaged == salvaged
        assert lost is None or recovery.lost == lost
        moved, done = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert f"moved it aside to {aside}" in moved
        assert recovery.reason.split("; salvage failed")[0].removesuffix(salvage.ESTIMATED) \
            in moved
        assert f"salvaged {recovery.salvaged} undelivered reading(s) from {aside}" in done
        assert box.stats().backlog == recovery.salvaged == len(box.take(10**6))
        box.append([reading(10**6)])  # sampling resumes
        assert box.take(10**6)[-1].reading == reading(10**6)
    with Outbox.open_readonly(path) as status:  # `envagent status` shows it, and it stays
        assert status.recovery() == recovery
    return recovery


def salvaged_readings(path: Path) -> list[tuple[int, Reading]]:
    with Outbox.open_readonly(path) as box:
        return [(s.id, s.reading) for s in box.take(10**6) if s.reading != reading(10**6)]


# --- the main file ------------------------------------------------------------------------------


def test_a_healthy_outbox_and_a_killed_writers_wal_are_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    fill(path, 0, 500)
    killed_writer(path, 500, 40_500, 500)  # past a checkpoint: the -wal restarted, old frames
    assert salvage.diagnose(path) is None
    with Outbox(path, max_bytes=BIG) as box:
        assert box.stats().backlog == 40_500 and box.recovery() is None
    assert asides(path) == []


def test_opening_shows_progress_all_along(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # Salvaging a full outbox takes minutes on a Pi Zero; systemd must see it moving
    # (agent.runtime.notify)
    path = tmp_path / "outbox.sqlite"
    fill(path, 0, 12_000, batch=1000)
    os.truncate(path, path.stat().st_size // 2 // 1024 * 1024)
    calls: list[int] = []
    with Outbox(path, max_bytes=BIG, progress=lambda: calls.append(len(calls))) as box:
        recovery = box.recovery()
    assert recovery is not None and recovery.salvaged > 5000
    # one as the integrity check starts, then one per batch copied
    assert len(calls) >= 1 + recovery.salvaged // salvage.COPY_BATCH

    healthy = salvage.diagnose(path)

    def slow_check(path: Path) -> salvage.Damage | None:  # a full outbox on a Pi Zero: a minute
        time.sleep(3.5 * CHECK_PROGRESS_S)
        return healthy

    monkeypatch.setattr(salvage, "diagnose", slow_check)
    calls.clear()
    with Outbox(path, max_bytes=BIG, progress=lambda: calls.append(len(calls))):
        assert 3 <= len(calls) <= 4  # as the check starts, then every CHECK_PROGRESS_S


def test_a_zero_length_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "outbox.sqlite"
    path.write_bytes(b"")
    recovery = reopen(path, caplog, salvaged=0, lost=0)
    assert recovery.reason == "zero-length file"
    assert asides(path)[0].stat().st_size == 0  # kept, not deleted


@pytest.mark.parametrize(("damage", "salvaged"), [("garbage", 0), ("magic", 100)])
def test_a_garbage_header(tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str,
                          salvaged: int) -> None:
    path = tmp_path / "outbox.sqlite"
    if damage == "garbage":
        path.write_bytes(b"not a database, just a file that is long enough " * 100)
    else:  # the rest of the file is intact: the header is rebuilt for the salvage
        fill(path, 0, 100)
        with path.open("r+b") as f:
            f.write(b"SQLite format 2\x00")
    before = path.read_bytes()
    recovery = reopen(path, caplog, salvaged=salvaged, lost=0)
    assert recovery.reason == "file is not a database (bad header)"
    assert asides(path)[0].read_bytes() == before  # evidence kept as it was
    assert sorted(p.name for p in tmp_path.iterdir() if "damaged" in p.name) == [
        asides(path)[0].name]  # no header left beside it


@pytest.mark.parametrize("cut", ["whole pages", "mid page"])
def test_a_truncated_file(tmp_path: Path, caplog: pytest.LogCaptureFixture, cut: str) -> None:
    path = tmp_path / "outbox.sqlite"
    fill(path, 0, 3000)
    size = path.stat().st_size
    os.truncate(path, size // 2 // 1024 * 1024 - (0 if cut == "whole pages" else 100))
    damaged = path.read_bytes()
    recovery = reopen(path, caplog, salvaged=pytest.approx(1500, rel=0.3))  # type: ignore[arg-type]
    assert recovery.reason.startswith("truncated: ")
    kept = salvaged_readings(path)
    assert recovery.salvaged + recovery.lost == 3000  # the counters were readable
    assert all(r == reading(i - 1) for i, r in kept)  # ids are kept: id n is reading n - 1
    with Outbox.open_readonly(path) as box:
        stats = box.stats()
    assert (stats.added, stats.dropped) == (3000 + 1, recovery.lost)
    [aside] = asides(path)
    tail = Path(f"{aside}-partial-page")
    assert tail.exists() == (cut == "mid page")  # split off: SQLite would misread it
    assert aside.read_bytes() + (tail.read_bytes() if tail.exists() else b"") == damaged


def _leaf_ids(page: bytes) -> list[int]:
    """Row ids on a table b-tree leaf page (https://sqlite.org/fileformat.html#b_tree_pages)."""
    assert page[0] == 0x0D
    (cells,) = struct.unpack_from(">H", page, 3)
    ids = []
    for i in range(cells):
        (offset,) = struct.unpack_from(">H", page, 8 + 2 * i)
        _, offset = _varint(page, offset)  # payload size, then the row id
        ids.append(_varint(page, offset)[0])
    return ids


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for i in range(8):
        value = (value << 7) | (data[pos + i] & 0x7F)
        if data[pos + i] < 0x80:
            return value, pos + i + 1
    return (value << 8) | data[pos + 8], pos + 9


def _pages(path: Path, table: str, pagetype: str) -> list[int]:
    # closed, not just committed: an open connection keeps SQLite's in-process index of the
    # -wal alive, and later connections would trust it over a -wal changed on disk
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = conn.execute("SELECT pageno FROM dbstat WHERE name = ? AND pagetype = ? "
                            "ORDER BY path", (table, pagetype)).fetchall()
    return [r[0] for r in rows]


def _flip(path: Path, pageno: int, length: int = 64) -> bytes:
    """Invert the first ``length`` bytes of a page; return the page as it was."""
    with path.open("r+b") as f:
        f.seek((pageno - 1) * 1024)
        page = f.read(1024)
        f.seek((pageno - 1) * 1024)
        f.write(bytes(b ^ 0xFF for b in page[:length]))
    return page


def test_a_corrupted_leaf_page_loses_exactly_its_rows(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "outbox.sqlite"
    fill(path, 0, 3000)
    leaves = _pages(path, "readings", "leaf")
    ids = _leaf_ids(_flip(path, leaves[len(leaves) // 2]))
    recovery = reopen(path, caplog, salvaged=3000 - len(ids), lost=len(ids))
    assert recovery.reason.startswith(("quick_check: ", "SQLite: "))
    kept = salvaged_readings(path)
    assert [i for i, _ in kept] == [i for i in range(1, 3001) if i not in ids]
    assert all(r == reading(i - 1) for i, r in kept)


def test_a_corrupted_interior_page_loses_only_its_subtree(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "outbox.sqlite"
    fill(path, 0, 12_000, batch=1000)
    interior = _pages(path, "readings", "internal")
    assert len(interior) >= 3  # a root and at least two children
    _flip(path, interior[1])  # the root's first child: the oldest readings
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA quick_check").fetchone() != ("ok",)
    recovery = reopen(path, caplog, salvaged=pytest.approx(6000, rel=0.9))  # type: ignore[arg-type]
    assert recovery.salvaged + recovery.lost == 12_000
    kept = salvaged_readings(path)
    assert kept[-1][0] == 12_000 and all(r == reading(i - 1) for i, r in kept)
    assert [i for i, _ in kept] == list(range(12_001 - len(kept), 12_001))  # one lost stretch


def next_id(path: Path) -> int:
    """The id the outbox hands out next (reopen appended reading(10**6) after the salvage)."""
    with Outbox.open_readonly(path) as box:
        return max(s.id for s in box.take(10**6) if s.reading == reading(10**6))


@pytest.mark.parametrize("wal", [False, True])
def test_a_zeroed_header_is_rebuilt_and_every_reading_salvaged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, wal: bool) -> None:
    # issue 11: "0 lost" while every reading was gone
    path = tmp_path / "outbox.sqlite"
    fill(path, 0, 234)
    if wal:
        killed_writer(path, 234, 300, 11)  # and its -wal is read with it
    total = 300 if wal else 234
    with path.open("r+b") as f:
        f.write(bytes(100))
    damaged = path.read_bytes()
    recovery = reopen(path, caplog, salvaged=total, lost=0)
    assert recovery.reason == "file is not a database (bad header)"
    assert salvaged_readings(path) == [(i + 1, reading(i)) for i in range(total)]
    assert next_id(path) == total + 1
    assert asides(path)[0].read_bytes() == damaged  # the header went back: evidence as it was
    assert not Path(f"{asides(path)[0]}-header").exists()


def test_a_lost_schema_page_counts_the_readings_it_held_as_an_estimate(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # page 1 gone (header and schema): nothing reads, the ids on the pages still tell
    path = tmp_path / "outbox.sqlite"
    fill(path, 0, 3000)
    with path.open("r+b") as f:
        f.write(bytes(1024))
    recovery = reopen(path, caplog, salvaged=0, lost=3000)
    assert recovery.estimated and recovery.reason.endswith(salvage.ESTIMATED)
    assert next_id(path) == 3001  # ids never go back
    with Outbox.open_readonly(path) as box:
        stats = box.stats()
    assert (stats.added, stats.dropped, stats.backlog) == (3001, 3000, 1)


def test_unreadable_counters_are_estimated_from_the_ids(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "outbox.sqlite"
    fill(path, 0, 1000)
    with Outbox(path, max_bytes=BIG) as box:
        box.ack(s.id for s in box.take(100))
    [counters] = _pages(path, "counters", "leaf")
    _flip(path, counters, length=8)
    assert reopen(path, caplog, salvaged=900, lost=0).estimated
    with Outbox.open_readonly(path) as box:
        stats = box.stats()
    assert (stats.added, stats.delivered, stats.dropped) == (1001, 100, 0)


def test_a_schema_entry_that_is_not_utf8_is_damage_not_a_crash(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # SQLite's error quotes the damaged name, and Python cannot decode the message
    path = tmp_path / "outbox.sqlite"
    fill(path, 0, 300)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA writable_schema = ON")
    conn.execute("UPDATE sqlite_master SET name = CAST(x'6361ff' AS TEXT), "
                 "sql = 'CREATE TABLE garbage(' WHERE name = 'calibrations'")
    conn.close()
    recovery = reopen(path, caplog, salvaged=200, lost=100)  # every 3rd had a calibration
    assert recovery.reason.startswith("SQLite: ")
    assert salvaged_readings(path) == [(i + 1, reading(i)) for i in range(300) if i % 3]


def test_repeated_damage_is_counted_and_never_loops(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "outbox.sqlite"
    fill(path, 0, 1000)
    leaves = _pages(path, "readings", "leaf")
    lost = len(_leaf_ids(_flip(path, leaves[3])))
    first = reopen(path, caplog, salvaged=1000 - lost, lost=lost)
    leaves = _pages(path, "readings", "leaf")
    lost2 = len(_leaf_ids(_flip(path, leaves[-2])))
    second = reopen(path, caplog, salvaged=1001 - lost - lost2, lost=lost2)
    assert (first.count, second.count) == (1, 2) and len(asides(path)) == 2
    with Outbox(path, max_bytes=BIG) as box:  # healthy now: no third recovery
        assert box.recovery() == second and box.stats().dropped == lost + lost2
    assert len(asides(path)) == 2


def test_a_failing_salvage_still_starts_a_fresh_outbox(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> salvage.Recovery:
        raise RuntimeError("a bug in salvage")

    path = tmp_path / "outbox.sqlite"
    path.write_bytes(b"\x00" * 4096)
    monkeypatch.setattr(salvage, "salvage_into", broken)
    recovery = reopen(path, caplog, salvaged=0, lost=0)
    assert "salvage failed: a bug in salvage" in recovery.reason
    assert any(r.levelno == logging.ERROR and r.exc_info for r in caplog.records)


def test_a_failing_salvage_still_counts_what_was_held_and_keeps_ids_going(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> int:
        raise RuntimeError("a bug in copying")

    path = tmp_path / "outbox.sqlite"
    fill(path, 0, 500)
    with Outbox(path, max_bytes=BIG) as box:
        box.ack(s.id for s in box.take(100))
    os.truncate(path, path.stat().st_size - 1024)
    monkeypatch.setattr(salvage, "_copy_table", broken)
    recovery = reopen(path, caplog, salvaged=0, lost=400)
    assert "salvage failed: a bug in copying" in recovery.reason
    assert next_id(path) == 501
    with Outbox.open_readonly(path) as box:
        stats = box.stats()
    assert (stats.added, stats.delivered, stats.dropped) == (501, 100, 400)


def test_a_salvage_killed_midway_is_done_again_at_the_next_start(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    class Killed(BaseException):
        """Like SIGKILL for the transaction: it never commits."""

    def killed(*args: object) -> salvage.Recovery:
        raise Killed

    path = tmp_path / "outbox.sqlite"
    fill(path, 0, 300)
    os.truncate(path, path.stat().st_size - 1024)
    real = salvage.salvage_into
    monkeypatch.setattr(salvage, "salvage_into", killed)
    with pytest.raises(Killed):
        Outbox(path, max_bytes=BIG)
    monkeypatch.setattr(salvage, "salvage_into", real)
    caplog.clear()
    with Outbox(path, max_bytes=BIG) as box:
        recovery = box.recovery()
        assert recovery is not None and recovery.reason.startswith("truncated")
        assert recovery.salvaged == box.stats().backlog > 200 and len(asides(path)) == 1
        assert "salvaged" in caplog.text


# --- the -wal -----------------------------------------------------------------------------------


def _rewrite_wal(path: Path, change: Callable[[bytearray], None]) -> None:
    wal = Path(f"{path}-wal")
    data = bytearray(wal.read_bytes())
    change(data)
    wal.write_bytes(bytes(data))
    Path(f"{path}-shm").unlink()  # a stale index would hide the change; SQLite rebuilds it


def test_a_wal_from_another_outbox(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path, other = tmp_path / "outbox.sqlite", tmp_path / "other.sqlite"
    fill(path, 0, 2000)
    killed_writer(other, 0, 300, 100, sensor="someone else")
    shutil.copy(f"{other}-wal", f"{path}-wal")
    recovery = reopen(path, caplog, salvaged=2000, lost=0)
    assert "another database" in recovery.reason or "belongs to database" in recovery.reason
    assert salvaged_readings(path) == [(i + 1, reading(i)) for i in range(2000)]


def test_an_older_wal_of_the_same_outbox(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "outbox.sqlite"
    killed_writer(path, 0, 10, 10)
    old_wal = Path(f"{path}-wal").read_bytes()
    fill(path, 10, 2010)
    Path(f"{path}-wal").write_bytes(old_wal)  # e.g. restored from a backup beside a newer file
    recovery = reopen(path, caplog, salvaged=2010, lost=0)
    assert "older than the database" in recovery.reason


def _fix_header_checksum(data: bytearray) -> None:
    big = bool(struct.unpack_from(">I", data)[0] & 1)
    struct.pack_into(">2I", data, 24, *salvage._checksum(bytes(data[:24]), big, (0, 0)))


def _bad_salt(data: bytearray) -> None:
    data[16] ^= 0x01
    _fix_header_checksum(data)


def _bad_header_checksum(data: bytearray) -> None:
    data[16] ^= 0x01


def _not_a_wal(data: bytearray) -> None:
    data[:] = b"\xa5" * len(data)


@pytest.mark.parametrize(("damage", "reason"), [
    (_bad_salt, "none of its"), (_bad_header_checksum, "header checksum"),
    (_not_a_wal, "not a WAL file")])
def test_a_wal_sqlite_would_silently_ignore(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                            damage: Callable[[bytearray], None],
                                            reason: str) -> None:
    path = tmp_path / "outbox.sqlite"
    fill(path, 0, 100)
    killed_writer(path, 100, 200, 10)
    _rewrite_wal(path, damage)
    recovery = reopen(path, caplog, salvaged=100)
    assert reason in recovery.reason
    assert salvaged_readings(path) == [(i + 1, reading(i)) for i in range(100)]
    assert Path(f"{asides(path)[0]}-wal").stat().st_size > 0  # the evidence went aside too


def test_a_damaged_frame_keeps_the_commits_before_it(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "outbox.sqlite"
    fill(path, 0, 100)
    killed_writer(path, 100, 300, 10)  # 20 commits in the -wal
    frames = (Path(f"{path}-wal").stat().st_size - 32) // (24 + 1024)

    def flip_a_middle_frame(data: bytearray) -> None:
        data[32 + frames // 2 * (24 + 1024) + 24 + 500] ^= 0xFF

    _rewrite_wal(path, flip_a_middle_frame)
    recovery = reopen(path, caplog, salvaged=pytest.approx(200, rel=0.45))  # type: ignore[arg-type]
    assert "is lost with it" in recovery.reason
    kept = salvaged_readings(path)
    assert 100 < len(kept) < 300 and kept == [(i + 1, reading(i)) for i in range(len(kept))]


def _garbage_in_a_middle_frame(path: Path) -> int:
    """300 readings, the last 200 in 20 commits in the -wal, a middle frame's page garbage."""
    fill(path, 0, 100)
    killed_writer(path, 100, 300, 10)
    frames = (Path(f"{path}-wal").stat().st_size - 32) // (24 + 1024)

    def garbage(data: bytearray) -> None:
        start = 32 + frames // 2 * (24 + 1024) + 24
        data[start:start + 1024] = b"\xa5" * 1024

    _rewrite_wal(path, garbage)
    return 300


def _wal_header_salt_damaged(path: Path) -> int:
    """200 readings, the last 100 in a -wal whose header's salt-1 has a bit flipped."""
    fill(path, 0, 100)
    killed_writer(path, 100, 200, 10)
    _rewrite_wal(path, _bad_salt)
    return 200


def _schema_page_lost(path: Path) -> int:
    """3000 readings; page 1 (the header and the schema) zeroed."""
    fill(path, 0, 3000)
    with path.open("r+b") as f:
        f.write(bytes(1024))
    return 3000


def test_commits_lost_after_a_damaged_frame_are_counted_and_their_ids_never_reused(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # issue 11: garbage in the middle of the -wal lost half the readings, reported as 0 lost
    path = tmp_path / "outbox.sqlite"
    _garbage_in_a_middle_frame(path)  # 20 commits in the -wal, one frame of the 10th garbage
    recovery = reopen(path, caplog, salvaged=pytest.approx(200, rel=0.45))  # type: ignore[arg-type]
    assert recovery.salvaged + recovery.lost == 300 and recovery.lost > 0
    assert not recovery.estimated  # the counters in the frames after the damage say so
    assert next_id(path) == 301  # above the ids of the lost commits
    with Outbox.open_readonly(path) as box:
        stats = box.stats()
    assert (stats.added, stats.dropped) == (301, recovery.lost)


def test_a_damaged_counters_frame_does_not_make_the_wal_anothers(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # the frames after it still prove intact (each one's checksum continues its predecessor's)
    path = tmp_path / "outbox.sqlite"
    fill(path, 0, 100)
    [counters] = _pages(path, "counters", "leaf")
    killed_writer(path, 100, 300, 10)
    size = 24 + 1024
    wal = Path(f"{path}-wal").read_bytes()
    holding = [i for i in range((len(wal) - 32) // size)
               if struct.unpack_from(">I", wal, 32 + i * size)[0] == counters]
    middle = holding[len(holding) // 2]

    def garble_its_database_id(data: bytearray) -> None:
        data[32 + middle * size + 24 + 1024 - 3] ^= 0x40  # the row's last column, at the end

    _rewrite_wal(path, garble_its_database_id)
    recovery = reopen(path, caplog, salvaged=pytest.approx(200, rel=0.45))  # type: ignore[arg-type]
    assert "is lost with it" in recovery.reason
    assert recovery.salvaged + recovery.lost == 300 and next_id(path) == 301


@pytest.mark.parametrize("damage", [_bad_salt, _bad_header_checksum])
def test_a_wal_sqlite_ignores_is_counted_as_lost(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture,
                                                 damage: Callable[[bytearray], None]) -> None:
    path = tmp_path / "outbox.sqlite"
    fill(path, 0, 100)
    killed_writer(path, 100, 200, 10)
    _rewrite_wal(path, damage)  # SQLite would read none of its 10 commits
    reopen(path, caplog, salvaged=100, lost=100)
    assert next_id(path) == 201
    with Outbox.open_readonly(path) as box:
        assert box.stats().dropped == 100


@pytest.mark.parametrize("damage", [_garbage_in_a_middle_frame, _wal_header_salt_damaged,
                                    _schema_page_lost])
def test_ids_continue_above_every_id_the_damaged_set_handed_out(
        tmp_path: Path, damage: Callable[[Path], int]) -> None:
    # issue 11: ids are never reused, so a late ack cannot delete a newer reading
    path = tmp_path / "outbox.sqlite"
    highest = damage(path)
    with Outbox(path, max_bytes=BIG) as box:
        assert box.recovery() is not None
        assert box.stats().added == highest
        box.append([reading(10**6)])
        assert next_id(path) == highest + 1


# --- permissions: run as an unprivileged user, as the service does ----------------------------


@pytest.fixture
def shared_tmp(tmp_path: Path) -> Iterator[Path]:
    """A directory `nobody` can reach when the tests run as root (tmp_path's parent is 0700)."""
    if os.geteuid() != 0:
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="envagent-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def unprivileged(fn: Callable[[], Any]) -> Any:
    """``fn()`` as `nobody` when running as root (root ignores file modes); its result or error
    comes back as a string."""
    if os.geteuid() != 0:
        return _outcome(fn)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop root, run, report, exit without pytest's cleanup
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            outcome = _outcome(fn)
        except BaseException as exc:
            outcome = f"child failed: {exc!r}"
        with os.fdopen(write, "wb") as pipe:
            pickle.dump(outcome, pipe)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        outcome = pickle.load(pipe)
    os.waitpid(pid, 0)
    return outcome


def _outcome(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except StorageError as exc:
        return f"StorageError: {exc}"


def _user_owns(path: Path) -> None:
    if os.geteuid() == 0:
        os.chown(path, NOBODY, NOBODY)


def _open_and_report(path: Path) -> Any:
    with Outbox(path, max_bytes=BIG) as box:
        recovery = box.recovery()
        return (box.stats().backlog, recovery and recovery.reason, recovery and recovery.salvaged)


@pytest.mark.parametrize("existing", [False, True])
def test_a_read_only_directory_is_an_error_saying_how_to_fix_it(shared_tmp: Path,
                                                                existing: bool) -> None:
    state = shared_tmp / "state"
    state.mkdir()
    path = state / "outbox.sqlite"
    if existing:
        fill(path, 0, 10)
    state.chmod(0o555)
    outcome = unprivileged(lambda: _open_and_report(path))
    user = "nobody" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    assert isinstance(outcome, str) and outcome.startswith("StorageError: ")
    assert f"the outbox directory {state} is not writable by user {user}" in outcome
    assert f"Fix: `chown {user} {state}`" in outcome
    assert sorted(os.listdir(state)) == (["outbox.sqlite"] if existing else [])


def test_a_read_only_filesystem_is_an_error_saying_how_to_fix_it(tmp_path: Path) -> None:
    mount = tmp_path / "ro"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        fill(mount / "outbox.sqlite", 0, 10)
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        with pytest.raises(StorageError, match=f"{mount} is on a read-only filesystem.*"
                                               "remount it read-write"):
            Outbox(mount / "outbox.sqlite", max_bytes=BIG)
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_read_only_database_file_is_moved_aside_and_salvaged(shared_tmp: Path) -> None:
    state = shared_tmp / "state"
    state.mkdir()
    path = state / "outbox.sqlite"
    fill(path, 0, 500)
    _user_owns(state)  # the directory is the service's, the file is not (root's 0644)
    path.chmod(0o444)
    backlog, reason, salvaged = unprivileged(lambda: _open_and_report(path))
    assert (backlog, salvaged) == (500, 500)
    assert reason.startswith("cannot open it for writing (Permission denied)")
    assert len(asides(path)) == 1


def test_the_saved_header_is_never_written_through_a_planted_link(tmp_path: Path) -> None:
    # issue 11 point 9: the header saved beside the evidence has a name others can predict
    # (outbox.sqlite.damaged-<time>-header); a root agent must not create a file through it
    aside = tmp_path / "outbox.sqlite.damaged-20261206T120000Z"
    fill(aside, 0, 50)
    with aside.open("r+b") as f:
        f.write(bytes(100))
    victim = tmp_path / "victim"
    Path(f"{aside}-header").symlink_to(victim)
    assert not salvage._rebuild_header(aside)  # salvaged as it is, rather than through the link
    assert not victim.exists()
    assert Path(f"{aside}-header").is_symlink()
