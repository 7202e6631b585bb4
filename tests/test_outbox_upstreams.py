"""Several upstreams on one outbox: a cursor each, a reading deleted when every upstream that
takes it is done with it, nothing lost or sent twice beyond an at-least-once replay."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.core.reading import ALERT_PREFIX, RESERVED_SENSOR_ID, Reading, StoredReading
from agent.store import cursors
from agent.store.outbox import MIN_BYTES, Outbox, Subscriber, UpstreamStats
from agent.store.storage import ReopeningOutbox
from drivers.base import Quality
from drivers.clock import SystemClock

T0 = 1_700_000_000_000_000_000
BIG = 256 * 1024**2
ALL = 10**6  # more than any test stores


def reading(i: int, sensor: str = "air", **changes: object) -> Reading:
    base = Reading(sensor, "temperature", 20.0 + i / 100, "°C", T0 + i * 10**9, (5 + i) * 10**9,
                   "boot-0", True)
    return base._replace(**changes)  # type: ignore[arg-type]


def alert(i: int) -> Reading:
    return Reading(RESERVED_SENSOR_ID, ALERT_PREFIX + "frost", 1.0, "state", T0 + i * 10**9,
                   (5 + i) * 10**9, "boot-0", True)


def soil_only(sensor: str, quantity: str) -> bool:
    return sensor == "soil"


A, B = Subscriber("a"), Subscriber("b")


def open_box(path: Path, *subs: Subscriber, max_bytes: int = BIG) -> Outbox:
    return Outbox(path, max_bytes=max_bytes, subscribers=list(subs))


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "outbox.sqlite"


@pytest.fixture
def box(path: Path) -> Iterator[Outbox]:
    with open_box(path, A, B) as outbox:
        yield outbox


def ids(batch: list[StoredReading]) -> list[int]:
    return [s.id for s in batch]


def by_name(outbox: Outbox) -> dict[str, UpstreamStats]:
    return {u.name: u for u in outbox.upstreams()}


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


def stored_ids(path: Path) -> list[int]:
    return [int(str(i)) for (i,) in rows(path, "SELECT id FROM readings ORDER BY id")]


def drain(outbox: Outbox, upstream: str, batch: int = 7) -> list[int]:
    """Take and ack until nothing is left for ``upstream``; the ids, in the order sent."""
    sent: list[int] = []
    while taken := outbox.take(batch, upstream=upstream):
        sent += ids(taken)
        assert outbox.ack(ids(taken), upstream=upstream) == len(taken)
    return sent


def assert_consistent(outbox: Outbox) -> None:
    """What a technician compares: the counters add up, globally and per upstream, and each
    upstream's backlog is exactly what it would be sent."""
    stats = outbox.stats()
    assert stats.backlog == len(stored_ids(outbox.path))
    assert stats.added == stats.backlog + stats.delivered + stats.dropped + stats.rejected
    for u in outbox.upstreams():
        assert u.backlog == len(outbox.take(ALL, upstream=u.name)), u


# --- two upstreams ------------------------------------------------------------------------------


def test_a_reading_goes_when_both_upstreams_have_it(path: Path) -> None:
    with open_box(path, A, B) as box:
        box.append([reading(i) for i in range(30)])
        assert drain(box, "a") == list(range(1, 31))
        assert stored_ids(path) == list(range(1, 31))  # b has none of them yet
        assert box.stats().delivered == 0
        cursors_now = by_name(box)
        assert (cursors_now["a"].backlog, cursors_now["a"].delivered) == (0, 30)
        assert (cursors_now["b"].backlog, cursors_now["b"].delivered) == (30, 0)
        assert cursors_now["b"].oldest_ns == reading(0).time_ns
        assert cursors_now["a"].oldest_ns is None
        assert_consistent(box)
    with open_box(path, A, B) as box:  # the cursors are durable
        assert [(u.name, u.backlog) for u in box.upstreams()] == [("a", 0), ("b", 30)]
        assert box.take(10, upstream="a") == []
        assert [s.reading for s in box.take(ALL, upstream="b")] == [reading(i) for i in range(30)]
        assert drain(box, "b", batch=11) == list(range(1, 31))
        stats = box.stats()
        assert (stats.backlog, stats.delivered, stats.rejected, stats.dropped) == (0, 30, 0, 0)
        assert stored_ids(path) == []
        assert [(u.backlog, u.delivered) for u in box.upstreams()] == [(0, 30), (0, 30)]
        assert_consistent(box)


def test_acks_are_counted_once_per_upstream(box: Outbox) -> None:
    box.append([reading(i) for i in range(5)])
    first = ids(box.take(3, upstream="a"))
    assert box.ack(first, upstream="a") == 3
    assert box.ack(first, upstream="a") == 0  # a late duplicate
    assert box.ack([10**9], upstream="a") == 0  # never stored
    assert box.ack(first, upstream="b") == 3  # b's own, counted for b
    assert box.ack([], upstream="b") == 0
    assert by_name(box)["a"].delivered == by_name(box)["b"].delivered == 3
    assert box.stats().delivered == 3
    assert_consistent(box)


def test_one_upstream_down_does_not_slow_the_other(box: Outbox) -> None:
    for start in range(0, 2000, 100):  # b is down all along; a keeps up
        box.append([reading(i) for i in range(start, start + 100)])
        assert len(drain(box, "a", batch=40)) == 100
    assert by_name(box)["a"].backlog == 0
    assert by_name(box)["b"].backlog == 2000 == box.stats().backlog


def test_calls_without_an_upstream_are_refused_once_there_are_cursors(box: Outbox) -> None:
    box.append([reading(0)])
    for call in (lambda: box.take(1), lambda: box.ack([1]), lambda: box.take_alerts(1),
                 lambda: box.quarantine([1], "poison")):
        with pytest.raises(ValueError, match="'a', 'b'"):
            call()
    with pytest.raises(ValueError, match="no cursor for upstream 'c'.*'a', 'b'"):
        box.take(1, upstream="c")
    assert box.stats().backlog == 1


@pytest.mark.parametrize("subs", [[Subscriber("A")], [Subscriber("a b")], [A, A],
                                  [Subscriber("a", start="newest")]])
def test_a_bad_subscriber_list_is_refused(path: Path, subs: list[Subscriber]) -> None:
    with pytest.raises(ValueError, match="subscribe: upstream"):
        open_box(path, *subs)


# --- out-of-order acks --------------------------------------------------------------------------


def done_rows(path: Path, upstream: str) -> list[int]:
    return [int(str(i)) for (i,) in rows(path, f"SELECT id FROM cursor_done WHERE cursor = "
                                               f"'{upstream}' ORDER BY id")]


def high(path: Path, upstream: str) -> int:
    return int(str(rows(path, f"SELECT high FROM cursors WHERE name = '{upstream}'")[0][0]))


def test_an_alert_and_a_bisected_batch_fold_into_the_high_water_mark(path: Path) -> None:
    with open_box(path, A) as box:
        box.append([reading(0), reading(1), reading(2), reading(3), reading(4), alert(5),
                    reading(6), reading(7), reading(8), reading(9)])
        assert ids(box.take_alerts(10, upstream="a")) == [6]
        assert box.ack([6], upstream="a") == 1
        assert done_rows(path, "a") == [6] and high(path, "a") == 0
        assert box.take_alerts(10, upstream="a") == []  # done for a
        batch = box.take(10, upstream="a")
        assert ids(batch) == [1, 2, 3, 4, 5, 7, 8, 9, 10]
        head, tail = batch[:5], batch[5:]  # the server refused the batch: two halves
        assert box.ack(ids(tail), upstream="a") == 4  # the second half answered first
        assert done_rows(path, "a") == [6, 7, 8, 9, 10] and high(path, "a") == 0
        assert stored_ids(path) == [1, 2, 3, 4, 5]  # done for every upstream (just one)
        assert ids(box.take(10, upstream="a")) == [1, 2, 3, 4, 5]
        assert box.ack(ids(head), upstream="a") == 5
        assert done_rows(path, "a") == [] and high(path, "a") == 10
        assert box.stats().delivered == 10 and stored_ids(path) == []


def test_the_out_of_order_table_stays_small_through_a_long_drain(path: Path) -> None:
    with open_box(path, A, B) as box:
        most = 0
        for n in range(200):  # an alert in every batch, sent ahead of it, and halves swapped
            box.append([reading(10 * n + i) for i in range(9)] + [alert(10 * n + 9)])
            for name in ("a", "b"):
                assert box.ack(ids(box.take_alerts(5, upstream=name)), upstream=name) == 1
                batch = box.take(9, upstream=name)
                box.ack(ids(batch[4:]), upstream=name)
                most = max(most, len(done_rows(path, name)))
                box.ack(ids(batch[:4]), upstream=name)
        assert most == 6  # the alert and the second half, until the first half came
        assert done_rows(path, "a") == done_rows(path, "b") == []
        assert by_name(box)["a"].backlog == by_name(box)["b"].backlog == 0
        assert box.stats().delivered == 2000 and stored_ids(path) == []


# --- filters ------------------------------------------------------------------------------------


def test_an_upstream_gets_only_the_readings_it_takes(path: Path) -> None:
    soil = Subscriber("soil", soil_only)
    with open_box(path, soil, A) as box:
        box.append([reading(i, sensor="soil" if i % 3 == 0 else "air") for i in range(30)])
        sent = box.take(ALL, upstream="soil")
        assert {s.reading.sensor for s in sent} == {"soil"} and len(sent) == 10
        assert by_name(box)["soil"].backlog == 10
        drain(box, "a")
        assert len(stored_ids(path)) == 10  # a is done with all; soil still needs its own
        drain(box, "soil", batch=3)
        assert stored_ids(path) == []
        assert [(u.name, u.delivered) for u in box.upstreams()] == [("a", 30), ("soil", 10)]
        assert box.stats().delivered == 30
        assert_consistent(box)


def test_a_long_run_of_others_readings_neither_starves_nor_blocks(
        path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cursors, "SCAN_ROWS", 500)  # the run is 40 look aheads long
    soil = Subscriber("soil", soil_only)
    with open_box(path, soil, A) as box:
        box.append([reading(i) for i in range(20_000)] + [reading(20_000, sensor="soil")])
        steps: list[int] = []
        box._conn.set_progress_handler(lambda: steps.append(1) and 0, 100)
        first = box.take(5, upstream="soil")
        cost_first, steps[:] = len(steps), []
        assert [s.reading for s in first] == [reading(20_000, sensor="soil")]
        again = box.take(5, upstream="soil")  # not read again: the cursor passed the run
        assert again == first and len(steps) < cost_first / 20
        box._conn.set_progress_handler(None, 0)
        drain(box, "a", batch=5000)
        assert stored_ids(path) == [20_001]  # a's acks delete what soil does not take
        assert box.ack(ids(first), upstream="soil") == 1
        assert stored_ids(path) == [] and box.stats().delivered == 20_001
        assert_consistent(box)


def test_readings_nobody_takes_do_not_pile_up(path: Path) -> None:
    with open_box(path, Subscriber("soil", soil_only)) as box:
        box.append([reading(i) for i in range(100)] + [reading(100, sensor="soil")])
        assert box.ack(ids(box.take(5, upstream="soil")), upstream="soil") == 1
        assert stored_ids(path) == []
        stats = box.stats()
        assert (stats.added, stats.delivered) == (101, 101)
        assert by_name(box)["soil"].delivered == 1 and by_name(box)["soil"].backlog == 0


def test_readings_nobody_takes_go_even_if_the_upstream_never_acks(
        path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cursors, "SCAN_ROWS", 100)
    monkeypatch.setattr(cursors, "PERSIST_IDS", 1000)
    with open_box(path, Subscriber("soil", soil_only)) as box:
        box.append([reading(i) for i in range(5000)])  # no soil reading at all
        assert box.take(10, upstream="soil") == []
        assert stored_ids(path) == [] and box.stats().delivered == 5000
        assert high(path, "soil") == 5000  # passed once, and it stays passed after a restart
        assert by_name(box)["soil"].backlog == 0


def test_a_new_series_is_asked_about_once_and_remembered_for_status(path: Path) -> None:
    asked: list[tuple[str, str]] = []

    def takes(sensor: str, quantity: str) -> bool:
        asked.append((sensor, quantity))
        return sensor == "soil"

    with open_box(path, Subscriber("soil", takes)) as box:
        for n in range(3):
            box.append([reading(2 * n), reading(2 * n + 1, sensor="soil")])
        assert sorted(asked) == [("air", "temperature"), ("soil", "temperature")]
        with Outbox.open_readonly(path) as reader:  # status, in another process
            assert by_name(reader)["soil"].backlog == 3


def test_alerts_pass_the_upstream_s_filter(path: Path) -> None:
    agent_s = Subscriber("own", lambda sensor, quantity: sensor == RESERVED_SENSOR_ID)
    with open_box(path, agent_s, Subscriber("soil", soil_only)) as box:
        box.append([reading(0, sensor="soil"), alert(1), reading(2, sensor="soil")])
        assert [s.reading for s in box.take_alerts(5, upstream="own")] == [alert(1)]
        assert box.take_alerts(5, upstream="soil") == []
        assert ids(box.take(5, upstream="soil")) == [1, 3]


# --- held for the clock -------------------------------------------------------------------------


def test_held_readings_are_neither_sent_nor_deleted_until_restamped(path: Path) -> None:
    with open_box(path, A) as box:
        box.append([reading(0), reading(1),
                    reading(2, boot_id="boot-1", synced=False),
                    reading(3, boot_id="boot-1", synced=False),
                    alert(4), reading(5, synced=None)])
        batch = box.take(10, upstream="a", hold_boot="boot-1")
        assert ids(batch) == [1, 2, 5, 6]
        assert box.ack(ids(batch), upstream="a") == 4
        assert stored_ids(path) == [3, 4]  # held: not done, not deleted
        assert high(path, "a") == 2 and done_rows(path, "a") == [5, 6]  # never past them
        assert by_name(box)["a"].backlog == 2
        assert box.take(10, upstream="a", hold_boot="boot-1") == []
    with open_box(path, A) as box:
        assert box.take(10, upstream="a", hold_boot="boot-1") == []
        assert box.restamp("boot-1", T0 + 10**12, 0) == 2
        sent = box.take(10, upstream="a", hold_boot="boot-1")
        assert ids(sent) == [3, 4]
        assert all(s.reading.quality & Quality.CLOCK_RESTAMPED for s in sent)
        assert box.ack(ids(sent), upstream="a") == 2
        assert stored_ids(path) == [] and high(path, "a") == 6 and done_rows(path, "a") == []
        assert box.stats().delivered == 6


def test_a_filtered_upstream_waits_for_held_readings_too(path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cursors, "SCAN_ROWS", 50)
    with open_box(path, Subscriber("soil", soil_only)) as box:
        held = [reading(i, sensor="soil", boot_id="boot-1", synced=False) for i in range(120)]
        box.append([*held, reading(120), reading(121, sensor="soil")])
        assert ids(box.take(10, upstream="soil", hold_boot="boot-1")) == [122]
        assert box.ack([122], upstream="soil") == 1
        assert len(stored_ids(path)) == 121 and high(path, "soil") == 0
        box.restamp("boot-1", T0, 0)
        assert len(drain(box, "soil", batch=50)) == 120
        assert stored_ids(path) == [] and box.stats().delivered == 122


# --- quarantine ---------------------------------------------------------------------------------


def test_a_reading_one_upstream_refuses_stays_for_the_other(box: Outbox) -> None:
    box.append([reading(i) for i in range(4)])
    assert box.quarantine([2], "HTTP 400 field type conflict", upstream="a") == 1
    assert box.quarantine([2], "again", upstream="a") == 0
    [kept] = box.quarantined(10)
    assert (kept.id, kept.reason) == (2, "a: HTTP 400 field type conflict")
    assert ids(box.take(10, upstream="a")) == [1, 3, 4]
    assert ids(box.take(10, upstream="b")) == [1, 2, 3, 4]  # b still gets it
    assert by_name(box)["a"].rejected == 1 and box.stats().rejected == 0
    drain(box, "a")
    assert box.quarantine([2], "HTTP 400 too", upstream="b") == 1
    assert [q.reason for q in box.quarantined(10)] == ["a: HTTP 400 field type conflict"]
    drain(box, "b")
    stats = box.stats()
    assert (stats.backlog, stats.delivered, stats.rejected, stats.quarantined) == (0, 3, 1, 1)
    assert_consistent(box)


def test_a_reading_refused_by_one_and_delivered_by_the_other_counts_as_rejected(
        box: Outbox) -> None:
    box.append([reading(i) for i in range(3)])
    box.quarantine([1], "poison", upstream="a")
    drain(box, "b")  # b delivered all three; a refused 1 and has not sent 2 and 3 yet
    assert stored_ids(box.path) == [2, 3]
    assert (box.stats().delivered, box.stats().rejected) == (0, 1)
    drain(box, "a")
    stats = box.stats()
    assert (stats.delivered, stats.rejected, stats.backlog) == (2, 1, 0)


# --- the byte bound -----------------------------------------------------------------------------


def test_readings_dropped_by_the_bound_count_for_the_upstreams_that_needed_them(
        path: Path) -> None:
    acked_by_a: set[int] = set()
    with open_box(path, A, B, max_bytes=MIN_BYTES) as box:
        n = 0
        while box.stats().dropped < 1000:  # b is down; a acks half of what it takes
            box.append([reading(i) for i in range(n, n + 100)])
            n += 100
            batch = ids(box.take(100, upstream="a"))[:50]
            box.ack(batch, upstream="a")
            acked_by_a.update(batch)
        stats, u = box.stats(), by_name(box)
        stored = set(stored_ids(path))
        dropped = set(range(1, n + 1)) - stored  # b acked nothing, so only the bound deleted
        assert stats.dropped == len(dropped) == u["b"].dropped
        assert u["a"].dropped == len(dropped - acked_by_a) < stats.dropped
        assert u["a"].delivered == len(acked_by_a)
        for name in ("a", "b"):
            c = u[name]
            assert c.backlog + c.delivered + c.dropped + c.rejected == n
        assert_consistent(box)
    with open_box(path, A, B) as box:
        assert_consistent(box)


def test_quarantined_copies_still_needed_are_not_dropped_first(path: Path) -> None:
    with open_box(path, A, B, max_bytes=MIN_BYTES) as box:
        box.append([reading(i) for i in range(300)])
        box.quarantine(ids(box.take(300, upstream="a")), "poison", upstream="a")
        assert box.stats().quarantined == 300  # copies; b still needs the readings
        n = 300
        while box.stats().dropped == 0:
            box.append([reading(i) for i in range(n, n + 50)])
            n += 50
        stats = box.stats()
        assert stats.dropped > 0 and stats.backlog_bytes <= MIN_BYTES
        still_needed = set(stored_ids(path)) & set(range(1, 301))
        assert still_needed and still_needed <= {q.id for q in box.quarantined(ALL)}
        assert by_name(box)["b"].dropped == stats.dropped
        assert_consistent(box)


def test_readings_given_up_before_a_batch_count_for_every_upstream(box: Outbox) -> None:
    box.append([reading(0)], dropped_before=4)
    assert [(u.backlog, u.dropped) for u in box.upstreams()] == [(1, 4), (1, 4)]
    assert box.stats().dropped == 4


# --- subscribing --------------------------------------------------------------------------------


def test_a_new_upstream_starts_at_the_oldest_reading_or_now(path: Path) -> None:
    with open_box(path, A) as box:
        box.append([reading(i) for i in range(10)])
        drain(box, "a", batch=4)
        box.append([reading(i) for i in range(10, 15)])
        box.subscribe([A, Subscriber("old"), Subscriber("new", start="now")])
        u = by_name(box)
        assert (u["old"].backlog, u["new"].backlog) == (5, 0)
        assert ids(box.take(ALL, upstream="old")) == [11, 12, 13, 14, 15]
        assert box.take(ALL, upstream="new") == []
        box.append([reading(15)])
        assert ids(box.take(ALL, upstream="new")) == [16]
        assert_consistent(box)


def test_a_removed_upstream_releases_its_hold_once(path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    with open_box(path, A, B) as box:
        box.append([reading(i) for i in range(40)])
        drain(box, "a")
        box.ack([1, 2], upstream="b")
    caplog.set_level(logging.WARNING, logger="envagent.outbox")
    with open_box(path, A) as box:
        assert stored_ids(path) == []
        stats = box.stats()
        assert (stats.backlog, stats.delivered) == (0, 40)
        assert [u.name for u in box.upstreams()] == ["a"]
        box.subscribe([A])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "upstream 'b' is no longer configured: released its hold on 38 reading(s)" in \
        warnings[0]


def test_with_no_upstream_left_nothing_is_deleted(path: Path) -> None:
    with open_box(path, A) as box:
        box.append([reading(i) for i in range(10)])
        box.ack([1, 2, 3], upstream="a")
        box.subscribe([])
        assert len(stored_ids(path)) == 7 and box.upstreams() == []
        box.append([reading(10)])
        assert box.stats().backlog == 8


def test_a_changed_filter_recounts_the_backlog(path: Path) -> None:
    with open_box(path, A) as box:
        box.append([reading(i, sensor="soil" if i % 2 else "air") for i in range(10)])
        box.ack([1, 2], upstream="a")
    with open_box(path, Subscriber("a", soil_only)) as box:
        assert by_name(box)["a"].backlog == 4  # soil among 3..10
        assert {s.reading.sensor for s in box.take(ALL, upstream="a")} == {"soil"}
        drain(box, "a")
        assert stored_ids(path) == []
        assert_consistent(box)


def schema_2_outbox(path: Path, count: int) -> None:
    """An outbox as the release before cursors left it: schema 2, ``count`` readings waiting."""
    from agent.store import outbox as module

    with sqlite3.connect(path) as conn:
        for statement in (*module._SCHEMA, *module._UPGRADES[1]):
            conn.execute(statement)
        conn.execute("INSERT INTO series VALUES (1, 'air', 'temperature', '°C')")
        conn.execute("INSERT INTO boots VALUES (1, 'boot-0')")
        conn.executemany("INSERT INTO readings VALUES (?, 1, ?, ?, 1, ?, 0, 1, NULL)",
                         [(i + 1, T0 + i * 10**9, (5 + i) * 10**9, 20.0 + i / 100)
                          for i in range(count)])
        conn.execute("UPDATE counters SET added = ?", (count,))
        assert conn.execute("PRAGMA user_version").fetchone() == (2,)


def test_a_schema_2_outbox_upgrades_and_default_gets_every_reading(path: Path) -> None:
    path.parent.mkdir()
    schema_2_outbox(path, 25)
    with open_box(path, Subscriber("default")) as box:
        assert rows(path, "PRAGMA user_version") == [(3,)]
        assert by_name(box)["default"].backlog == 25
        assert [s.reading for s in box.take(ALL, upstream="default")] == [
            reading(i) for i in range(25)]
        drain(box, "default")
        stats = box.stats()
        assert (stats.backlog, stats.delivered, stats.added) == (0, 25, 25)


def test_an_old_outbox_opened_without_subscribing_is_one_queue(path: Path) -> None:
    path.parent.mkdir()
    schema_2_outbox(path, 3)
    with Outbox(path, max_bytes=BIG) as box:  # tools, and the one-queue tests
        assert box.upstreams() == []
        assert box.ack(ids(box.take(2)), upstream=None) == 2
        assert stored_ids(path) == [3]


# --- other processes ----------------------------------------------------------------------------


def test_status_reads_the_upstreams_beside_the_writer(box: Outbox) -> None:
    box.append([reading(i) for i in range(6)])
    drain(box, "a")
    with Outbox.open_readonly(box.path) as reader:
        assert reader.upstreams() == box.upstreams()
        assert by_name(reader)["b"].backlog == 6


CHILD = """
import os, signal, sys
from pathlib import Path
from agent.store.outbox import Outbox, Subscriber
from agent.core.reading import Reading
box = Outbox(Path(sys.argv[1]), max_bytes=64 * 1024**2,
             subscribers=[Subscriber("a"), Subscriber("b")])
box.append([Reading("soil", "moisture", i / 10, "%", i, i, "child", True) for i in range(100)])
first = [s.id for s in box.take(40, upstream="a")]
box.ack(first[20:], upstream="a")       # the second half first: out of order
box.ack(first[:10], upstream="a")
box.take(50, upstream="a")               # taken, sent, never acknowledged
box.ack([s.id for s in box.take(30, upstream="b")], upstream="b")
print("acked", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_kill_between_take_and_ack_replays_only_what_was_not_acked(path: Path) -> None:
    path.parent.mkdir()
    done = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == -9 and done.stdout == "acked\n", done.stderr
    with Outbox.open_readonly(path) as reader:
        u = by_name(reader)
        assert (u["a"].backlog, u["a"].delivered, u["b"].backlog, u["b"].delivered) == (
            70, 30, 70, 30)
    with open_box(path, A, B) as box:
        assert ids(box.take(ALL, upstream="a")) == [*range(11, 21), *range(41, 101)]
        assert ids(box.take(ALL, upstream="b")) == list(range(31, 101))
        assert stored_ids(path) == [*range(11, 21), *range(31, 101)]
        drain(box, "a")
        drain(box, "b")
        stats = box.stats()
        assert (stats.added, stats.delivered, stats.backlog) == (100, 100, 0)


def test_a_salvaged_outbox_sends_every_salvaged_reading_to_every_upstream(path: Path) -> None:
    with open_box(path, A, B) as box:
        box.append([reading(i) for i in range(200)])
        drain(box, "a")
        box.ack(list(range(1, 51)), upstream="b")
    with path.open("r+b") as f:  # a damaged header: moved aside, salvaged
        f.write(bytes(100))
    with open_box(path, A, Subscriber("b", start="now"), Subscriber("c", start="now")) as box:
        recovery = box.recovery()
        assert recovery is not None and recovery.salvaged == 150
        # the cursors were not salvaged: each starts at the oldest, whatever it asked
        assert [(u.name, u.backlog) for u in box.upstreams()] == [("a", 150), ("b", 150),
                                                                   ("c", 150)]
        for name in ("a", "b", "c"):
            assert [s.reading for s in box.take(ALL, upstream=name)] == [
                reading(i) for i in range(50, 200)]
            drain(box, name)
        stats = box.stats()
        assert stats.backlog == 0 and stored_ids(path) == []
        box.subscribe([A, Subscriber("d", start="now")])  # once only: "now" means now again
        box.append([reading(200)])
        assert by_name(box)["d"].backlog == 1


def test_delivery_threads_and_a_sampler_share_the_outbox(box: Outbox) -> None:
    total, errors = 3000, []

    def deliver(name: str) -> None:
        try:
            seen = 0
            while seen < total:
                taken = box.take(64, upstream=name)
                half = len(taken) // 2
                box.ack(ids(taken[half:]), upstream=name)
                box.ack(ids(taken[:half]), upstream=name)
                seen += len(taken)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=deliver, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for start in range(0, total, 30):
        box.append([reading(i) for i in range(start, start + 30)])
    for t in threads:
        t.join(60)
    assert not errors and not any(t.is_alive() for t in threads)
    stats = box.stats()
    assert (stats.added, stats.delivered, stats.backlog) == (total, total, 0)
    assert [(u.delivered, u.backlog) for u in box.upstreams()] == [(total, 0), (total, 0)]


def test_the_reopening_outbox_forwards_upstreams(path: Path) -> None:
    with ReopeningOutbox(path, max_bytes=BIG, clock=SystemClock(), subscribers=[A]) as store:
        store.append([reading(0), alert(1)])
        assert ids(store.take_alerts(5, upstream="a")) == [2]
        assert store.quarantine([2], "poison", upstream="a") == 1
        store.subscribe([A, B])
        assert [(u.name, u.backlog) for u in store.upstreams()] == [("a", 1), ("b", 1)]
        assert store.ack(ids(store.take(5, upstream="a")), upstream="a") == 1
        assert [(u.name, u.backlog) for u in store.upstreams()] == [("a", 0), ("b", 1)]
        store.close()
        assert [u.name for u in store.upstreams()] == ["a", "b"]  # reopened with both
