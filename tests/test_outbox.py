"""The outbox: exact round trips, FIFO, idempotent acks, the byte bound, and durability."""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlite_utils

from agent.core.errors import StorageError, StorageFullError
from agent.core.reading import Reading
from agent.store.outbox import MIN_BYTES, PAGE_SIZE, Outbox
from drivers.base import Quality

T0 = 1_700_000_000_000_000_000  # ns since the epoch, November 2023
BIG = 256 * 1024**2


def reading(i: int = 0, **changes: object) -> Reading:
    base = Reading(
        sensor="air", quantity="temperature", value=20.0 + i / 100, unit="°C",
        time_ns=T0 + i * 10**9, boot_ns=(5 + i) * 10**9, boot_id="boot-0", synced=True,
    )
    return base._replace(**changes)  # type: ignore[arg-type]


def exact(r: Reading) -> tuple[object, ...]:
    """Fields compared bit for bit: NaN equals NaN, -0.0 differs from 0.0, True from 1.

    Quality flags come back as the plain ints they are stored as.
    """

    def key(v: object) -> object:
        if isinstance(v, float):
            return struct.pack("<d", v)
        if isinstance(v, bool) or v is None:
            return repr(v)
        return int(v) if isinstance(v, int) else v

    return tuple(key(v) for v in r)


def count_rows(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT count(*) FROM readings").fetchone()[0])


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    with Outbox(tmp_path / "state" / "outbox.sqlite", max_bytes=BIG) as box:
        yield box


# --- round trip -----------------------------------------------------------------------------

ODD_READINGS = [
    reading(0),
    reading(1, calibration="bme280-2024-03", quality=Quality.WARMUP | Quality.SPIKE),
    reading(2, synced=None),
    reading(3, synced=False, quality=Quality.CLOCK_UNSYNCED),
    reading(4, value=math.nan),
    reading(5, value=-0.0),
    reading(6, value=-273.15, quantity="dew_point"),
    reading(7, value=math.inf),
    reading(8, value=-math.inf),
    reading(9, value=5e-324),
    reading(10, value=1.0e300, unit="µg/m³"),
    reading(11, sensor="Gewächshaus-Süd", quantity="température", unit="°C"),
    reading(12, sensor="温室 🌱", boot_id="3f2a9c1e-0000-4e5f-9a8b-0123456789ab"),
    reading(13, time_ns=-5, boot_ns=0),  # a pre-epoch clock: stored, not "fixed"
    reading(14, time_ns=2**63 - 1, boot_ns=2**63 - 1),
]


def test_every_field_round_trips_exactly(outbox: Outbox) -> None:
    outbox.append(ODD_READINGS)
    stored = outbox.take(100)
    assert [exact(s.reading) for s in stored] == [exact(r) for r in ODD_READINGS]
    assert [s.reading.synced for s in stored][:4] == [True, True, None, False]


def test_integral_floats_stay_floats(outbox: Outbox) -> None:
    outbox.append([reading(0, value=415.0)])
    [stored] = outbox.take(1)
    assert type(stored.reading.value) is float and stored.reading.value == 415.0


def test_take_is_fifo_across_batches_and_does_not_remove(outbox: Outbox) -> None:
    for start in (0, 10, 20):
        outbox.append([reading(i) for i in range(start, start + 10)])
    first = outbox.take(15)
    assert [s.reading for s in first] == [reading(i) for i in range(15)]
    assert [s.id for s in first] == sorted(s.id for s in first)
    assert outbox.take(15) == first
    assert outbox.take(0) == []
    assert len(outbox.take(1000)) == 30


# --- ack and counters -----------------------------------------------------------------------


def test_ack_deletes_and_is_idempotent(outbox: Outbox) -> None:
    outbox.append([reading(i) for i in range(5)])
    ids = [s.id for s in outbox.take(3)]
    assert outbox.ack(ids) == 3
    assert outbox.ack(ids) == 0  # a retried ack
    assert outbox.ack([ids[0], ids[0], 10**9]) == 0  # duplicates and unknown ids
    assert outbox.ack([]) == 0
    assert [s.reading for s in outbox.take(10)] == [reading(3), reading(4)]
    stats = outbox.stats()
    assert (stats.added, stats.delivered, stats.backlog) == (5, 3, 2)


def test_only_the_ack_skips_the_fsync_appends_stay_durable(outbox: Outbox) -> None:
    """An ack may be undone by a power cut (a replay follows); a stored reading may not."""
    def synchronous() -> str:
        (level,) = outbox._conn.execute("PRAGMA synchronous").fetchone()
        return {1: "NORMAL", 2: "FULL"}[level]

    outbox.append([reading(i) for i in range(3)])
    assert synchronous() == "FULL"
    outbox.ack([s.id for s in outbox.take(1)])
    assert synchronous() == "FULL"  # back for the next append
    outbox._conn.execute("PRAGMA busy_timeout = 10")
    blocker = sqlite3.connect(outbox.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer: the next ack cannot begin
    with pytest.raises(StorageError, match="locked"):
        outbox.ack([2])
    assert synchronous() == "FULL"  # restored after the failure too
    blocker.execute("ROLLBACK")
    blocker.close()
    assert [s.reading for s in outbox.take(5)] == [reading(1), reading(2)]


def test_ids_are_never_reused_after_the_outbox_drained(outbox: Outbox) -> None:
    outbox.append([reading(0)])
    [old] = outbox.take(1)
    outbox.ack([old.id])
    outbox.append([reading(1)])
    [new] = outbox.take(1)
    assert new.id > old.id
    assert outbox.ack([old.id]) == 0  # a late duplicate ack cannot hit the new reading
    assert outbox.take(1) == [new]


def test_stats_track_backlog_and_counters(outbox: Outbox) -> None:
    empty = outbox.stats()
    assert (empty.backlog, empty.oldest_ns, empty.newest_ns) == (0, None, None)
    assert (empty.added, empty.delivered, empty.dropped, empty.rejected) == (0, 0, 0, 0)
    outbox.append([reading(i) for i in range(4)])
    outbox.append([reading(i) for i in range(4, 7)])
    outbox.ack([s.id for s in outbox.take(2)])
    stats = outbox.stats()
    assert stats.backlog == 5 == count_rows(outbox.path)
    assert (stats.oldest_ns, stats.newest_ns) == (reading(2).time_ns, reading(6).time_ns)
    assert (stats.added, stats.delivered, stats.dropped, stats.rejected) == (7, 2, 0, 0)
    assert 0 < stats.backlog_bytes < MIN_BYTES


def test_latest_keeps_the_last_value_per_series_after_ack(outbox: Outbox) -> None:
    outbox.append([reading(0), reading(1, quantity="humidity", unit="%", value=55.0),
                   reading(2)])
    outbox.append([reading(3, value=math.nan, quality=Quality.OUT_OF_RANGE)])
    outbox.ack([s.id for s in outbox.take(10)])
    by_quantity = {x.quantity: x for x in outbox.latest()}
    assert set(by_quantity) == {"humidity", "temperature"}
    humidity, temperature = by_quantity["humidity"], by_quantity["temperature"]
    assert (humidity.sensor, humidity.unit, humidity.value) == ("air", "%", 55.0)
    assert math.isnan(temperature.value)
    assert (temperature.time_ns, temperature.quality) == (reading(3).time_ns, 2)


# --- quarantine -----------------------------------------------------------------------------


def test_quarantine_moves_refused_readings_aside_and_counts_them(outbox: Outbox) -> None:
    outbox.append(ODD_READINGS[:6])
    taken = outbox.take(6)
    poison = [taken[1].id, taken[4].id]
    assert outbox.quarantine(iter(poison), "400: field type conflict") == 2
    assert [s.reading for s in outbox.take(10)] == [ODD_READINGS[i] for i in (0, 2, 3, 5)]
    stats = outbox.stats()
    assert (stats.added, stats.rejected, stats.quarantined, stats.backlog) == (6, 2, 2, 4)
    kept = outbox.quarantined(10)
    assert [q.id for q in kept] == poison
    assert [exact(q.reading) for q in kept] == [exact(ODD_READINGS[i]) for i in (1, 4)]
    assert {q.reason for q in kept} == {"400: field type conflict"}
    assert kept[0].quarantined_ns == kept[1].quarantined_ns > 0
    assert outbox.quarantined(1) == kept[:1]


def test_quarantine_skips_unknown_delivered_and_repeated_ids(outbox: Outbox) -> None:
    outbox.append([reading(i) for i in range(4)])
    ids = [s.id for s in outbox.take(4)]
    outbox.ack(ids[:1])
    assert outbox.quarantine([ids[0], ids[1], ids[1], 10**9], "poison") == 1
    assert outbox.quarantine([ids[1]], "again") == 0
    assert outbox.quarantine([], "nothing") == 0
    assert outbox.ack(ids[1:2]) == 0  # a late ack of a quarantined reading changes nothing
    stats = outbox.stats()
    assert (stats.delivered, stats.rejected, stats.quarantined, stats.backlog) == (1, 1, 1, 2)


def test_quarantine_is_one_transaction(outbox: Outbox) -> None:
    outbox.append([reading(i) for i in range(3)])
    statements: list[str] = []
    outbox._conn.set_trace_callback(statements.append)
    outbox.quarantine([s.id for s in outbox.take(3)], "poison")
    assert [s for s in statements if s in ("BEGIN IMMEDIATE", "COMMIT")] == [
        "BEGIN IMMEDIATE", "COMMIT"]


def test_a_full_outbox_deletes_quarantined_rows_before_readings(tmp_path: Path) -> None:
    with Outbox(tmp_path / "small.sqlite", max_bytes=MIN_BYTES) as box:
        box.append([reading(i) for i in range(300)])
        box.quarantine([s.id for s in box.take(300)], "poison " * 10)
        start = 300
        while (stats := box.stats()).quarantined == 300:
            box.append([reading(i) for i in range(start, start + 50)])
            start += 50
        assert stats.dropped == 0 and stats.backlog_bytes <= MIN_BYTES
        assert (stats.added, stats.rejected, stats.backlog) == (start, 300, start - 300)
        assert [q.id for q in box.quarantined(300)] == list(range(301 - stats.quarantined, 301))


def test_a_schema_1_outbox_is_upgraded_in_place(tmp_path: Path) -> None:
    from agent.store import outbox as module

    path = tmp_path / "outbox.sqlite"
    with sqlite3.connect(path) as conn:
        for statement in module._SCHEMA:
            conn.execute(statement)
    with Outbox(path, max_bytes=BIG) as box:
        box.append([reading(0)])
        assert box.quarantine([s.id for s in box.take(1)], "poison") == 1
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (module.SCHEMA_VERSION,)


# --- the byte bound -------------------------------------------------------------------------


def test_a_full_outbox_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    with Outbox(tmp_path / "small.sqlite", max_bytes=MIN_BYTES) as box:
        dropped_before = 0
        for start in range(0, 5000, 100):
            box.append([reading(i) for i in range(start, start + 100)])
            stats = box.stats()
            assert stats.backlog_bytes <= MIN_BYTES
            if stats.dropped > dropped_before:  # dropped down to the low-water mark, 90 %
                assert stats.backlog_bytes <= 0.9 * MIN_BYTES
            dropped_before = stats.dropped
        assert stats.dropped > 0
        assert stats.added == 5000 == stats.backlog + stats.dropped
        assert stats.backlog == count_rows(box.path) > 500  # dropping is not thrashing
        kept = box.take(5000)
        assert [s.reading for s in kept] == [reading(i) for i in range(5000 - stats.backlog, 5000)]


def test_a_bound_too_small_for_the_tables_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        Outbox(tmp_path / "tiny.sqlite", max_bytes=MIN_BYTES - 1)


# --- all or nothing -------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [{"time_ns": object()}, {"boot_ns": 2**64}, {"sensor": {}}])
def test_a_batch_that_fails_midway_leaves_nothing(outbox: Outbox, bad: dict[str, object]) -> None:
    outbox.append([reading(0)])
    batch = [reading(1, sensor="new-sensor", boot_id="boot-1", calibration="c1"),
             reading(2, **bad), reading(3)]
    with pytest.raises((sqlite3.Error, OverflowError, TypeError)):
        outbox.append(batch)
    assert [s.reading for s in outbox.take(10)] == [reading(0)]
    assert outbox.stats().added == 1
    assert [x.sensor for x in outbox.latest()] == ["air"]
    with sqlite3.connect(outbox.path) as conn:
        assert conn.execute("SELECT count(*) FROM series").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM boots").fetchone() == (1,)
    # ids cached during the failed batch must not leak into the next one
    good = [reading(4, sensor="other", boot_id="boot-2"), batch[0]]
    outbox.append(good)
    assert [s.reading for s in outbox.take(10)] == [reading(0), *good]


# --- durability and opening -----------------------------------------------------------------

CHILD = """
import os, signal, sys
from pathlib import Path
from agent.store.outbox import Outbox
from agent.core.reading import Reading
box = Outbox(Path(sys.argv[1]), max_bytes=64 * 1024**2)
box.append([Reading("soil", "moisture", i / 10, "%", i, i, "child", i % 2 == 0, i, None)
            for i in range(50)])
if sys.argv[2] == "close":
    box.close()
else:
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize(("ending", "returncode"), [("close", 0), ("sigkill", -9)])
def test_a_committed_batch_survives_its_process(tmp_path: Path, ending: str,
                                                returncode: int) -> None:
    path = tmp_path / "outbox.sqlite"
    done = subprocess.run([sys.executable, "-c", CHILD, str(path), ending],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == returncode, done.stderr
    expected = [Reading("soil", "moisture", i / 10, "%", i, i, "child", i % 2 == 0, i)
                for i in range(50)]
    with Outbox.open_readonly(path) as reader:  # `status` right after a crash
        assert [s.reading for s in reader.take(100)] == expected
    with Outbox(path, max_bytes=BIG) as box:
        assert [s.reading for s in box.take(100)] == expected
        assert box.stats().added == 50


def test_reopening_keeps_readings_counters_and_latest(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    with Outbox(path, max_bytes=BIG) as box:
        box.append(ODD_READINGS)
        box.ack([s.id for s in box.take(3)])
        before = (box.take(100), box.stats(), box.latest())
    with Outbox(path, max_bytes=BIG) as box:
        after = (box.take(100), box.stats(), box.latest())
        box.append([reading(99)])
        assert box.take(100)[-1].id > max(s.id for s in before[0])
    assert repr(after) == repr(before)  # repr: NaN compares equal to itself this way


def test_readonly_reads_while_the_writer_works(outbox: Outbox) -> None:
    outbox.append([reading(0), reading(1)])
    with Outbox.open_readonly(outbox.path) as reader:
        assert [s.reading for s in reader.take(10)] == [reading(0), reading(1)]
        outbox.append([reading(2)])
        assert reader.stats().backlog == 3
        assert [x.time_ns for x in reader.latest()] == [reading(2).time_ns]
        with pytest.raises(StorageError, match="read-only"):
            reader.append([reading(3)])
        with pytest.raises(StorageError, match="read-only"):
            reader.ack([1])
    outbox.ack([1])
    assert outbox.stats().backlog == 2


def test_readonly_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    with Outbox(path, max_bytes=BIG) as box:
        box.append([reading(0)])
    files = sorted(os.listdir(tmp_path))
    with Outbox.open_readonly(path) as reader:
        assert reader.stats().backlog == 1
        assert sorted(os.listdir(tmp_path)) == files
    assert sorted(os.listdir(tmp_path)) == files
    missing = tmp_path / "nowhere" / "outbox.sqlite"
    with pytest.raises(StorageError, match="no outbox"):
        Outbox.open_readonly(missing)
    assert not missing.parent.exists()


def test_readonly_refuses_a_database_that_is_not_an_outbox(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(StorageError, match="is it an outbox"):
        Outbox.open_readonly(path)


def test_a_newer_schema_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    Outbox(path, max_bytes=BIG).close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(StorageError, match="schema 99"):
        Outbox(path, max_bytes=BIG)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (99,)


def test_an_unusable_directory_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StorageError, match="outbox directory"):
        Outbox(tmp_path / "file" / "outbox.sqlite", max_bytes=BIG)


def test_a_full_disk_is_a_storage_error_and_commits_nothing(outbox: Outbox) -> None:
    outbox.append([reading(0)])
    _forbid_growth(outbox)
    with pytest.raises(StorageFullError, match="full"):
        outbox.append([reading(i, sensor=f"s{i}") for i in range(1, 200)])
    assert outbox.stats().added == 1
    outbox._conn.execute("PRAGMA max_page_count = 1000000")
    outbox.append([reading(1)])
    assert [s.reading for s in outbox.take(10)] == [reading(0), reading(1)]


def _forbid_growth(box: Outbox) -> None:
    """SQLITE_FULL on demand, portably: the file may not grow by another page."""
    pages = box._conn.execute("PRAGMA page_count").fetchone()[0]
    box._conn.execute(f"PRAGMA max_page_count = {pages}")


def test_readings_given_up_before_a_batch_are_counted_with_it(outbox: Outbox) -> None:
    outbox.append([reading(0)])
    outbox.append([reading(1), reading(2)], dropped_before=5)
    outbox.append([], dropped_before=3)
    stats = outbox.stats()
    assert (stats.added, stats.dropped, stats.backlog) == (11, 8, 3)
    assert [s.id for s in outbox.take(10)] == [1, 7, 8]  # the given-up ones used ids 2..6
    _forbid_growth(outbox)
    with pytest.raises(StorageFullError):
        outbox.append([reading(i, sensor=f"s{i}") for i in range(3, 200)], dropped_before=4)
    assert outbox.stats() == stats  # all or nothing, the count included


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB filesystem (tmpfs), so the kernel itself answers ENOSPC."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a 1 MiB tmpfs needs root; the max_page_count tests still run")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_really_full_filesystem_stores_nothing_then_recovers(small_disk: Path) -> None:
    path = small_disk / "outbox.sqlite"
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * 600 * 1024)
    stored: list[Reading] = []
    with Outbox(path, max_bytes=BIG) as box:
        with pytest.raises(StorageFullError, match="filesystem is full"):
            for start in range(0, 10**6, 100):
                batch = [reading(i) for i in range(start, start + 100)]
                box.append(batch)
                stored += batch
        assert len(stored) > 0 and box.stats().added == len(stored)
        assert [s.reading for s in box.take(10**6)] == stored
        filler.unlink()  # space is back
        box.append([reading(-1)])
        stored.append(reading(-1))
    with Outbox(path, max_bytes=BIG) as box:
        assert [s.reading for s in box.take(10**6)] == stored
        assert box.recovery() is None and box.stats().dropped == 0


def test_the_agent_holds_readings_while_the_disk_is_full(
        outbox: Outbox, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    from agent.config import Config, UnitConfig
    from agent.sampling import daemon
    from drivers.clock import SystemClock

    monkeypatch.setattr(daemon, "MAX_HELD_READINGS", 100)
    agent = daemon.Agent(Config(UnitConfig("unit-1", "site")), [], outbox=outbox,
                         clock=SystemClock(), boot_id="boot-0")
    outbox.append([reading(0)])
    _forbid_growth(outbox)
    caplog.set_level(logging.WARNING, logger="envagent")
    for start, size in ((1, 60), (61, 60), (121, 50)):
        agent._pending += [reading(i, sensor=f"s{i}") for i in range(start, start + size)]
        agent.commit()
    assert outbox.stats().added == 1 and agent.committed == 0
    outbox._conn.execute("PRAGMA max_page_count = 1000000")  # space is back
    agent.commit()
    stats = outbox.stats()
    assert (stats.added, stats.dropped, stats.backlog, agent.committed) == (171, 70, 101, 100)
    assert [s.reading for s in outbox.take(1000)] == [reading(0)] + [
        reading(i, sensor=f"s{i}") for i in range(71, 171)]  # the oldest were given up
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2  # once entering, once leaving the state
    assert "filesystem is full" in messages[0] and "holding up to 100" in messages[0]
    assert "70 reading(s) were given up" in messages[1]
    agent.commit()  # nothing pending, nothing given up: no transaction
    assert outbox.stats() == stats


def test_a_reading_row_is_integers_and_one_untyped_value(outbox: Outbox) -> None:
    db = sqlite_utils.Database(outbox.path)
    readings = {c.name: c.type for c in db.table("readings").columns}
    assert readings.pop("value") == ""  # BLOB affinity: floats stay exactly as bound
    assert set(readings.values()) == {"INTEGER"}
    assert db.table("latest").pks == ["series"]
    assert {tuple(i.columns) for i in db.table("series").indexes if i.unique} == {
        ("sensor", "quantity", "unit")}
    db.close()


def test_the_journal_is_wal_with_small_pages(outbox: Outbox) -> None:
    with sqlite3.connect(outbox.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA page_size").fetchone() == (PAGE_SIZE,)


def test_a_batch_is_one_transaction(outbox: Outbox) -> None:
    statements: list[str] = []
    outbox._conn.set_trace_callback(statements.append)
    outbox.append([reading(i, sensor=f"s{i}") for i in range(50)])
    outbox.ack(s.id for s in outbox.take(50))
    assert [s for s in statements if s in ("BEGIN IMMEDIATE", "COMMIT")] == [
        "BEGIN IMMEDIATE", "COMMIT", "BEGIN IMMEDIATE", "COMMIT"]


def test_commits_are_synchronous_full(outbox: Outbox) -> None:
    # synchronous is per connection, so only the outbox's own connection can tell
    assert outbox._conn.execute("PRAGMA synchronous").fetchone() == (2,)  # 2 = FULL


# --- threads --------------------------------------------------------------------------------


def test_a_sampler_and_a_delivery_thread_share_the_outbox(outbox: Outbox) -> None:
    batches, size = 200, 10
    delivered: list[Reading] = []
    sampling_done = threading.Event()

    def sample() -> None:
        for b in range(batches):
            outbox.append([reading(b * size + i) for i in range(size)])
        sampling_done.set()

    def deliver() -> None:
        while not (sampling_done.is_set() and outbox.stats().backlog == 0):
            taken = outbox.take(37)
            delivered.extend(s.reading for s in taken)
            outbox.ack(s.id for s in taken)

    threads = [threading.Thread(target=sample), threading.Thread(target=deliver)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not any(t.is_alive() for t in threads)
    assert delivered == [reading(i) for i in range(batches * size)]
    stats = outbox.stats()
    assert (stats.added, stats.delivered, stats.backlog) == (2000, 2000, 0)
