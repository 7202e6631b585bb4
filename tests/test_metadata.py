"""Commissioning upstream: each record once as metadata (after a 2xx only, retried with backoff,
never ahead of an alert, never holding up readings), and the readings' tags by sample time, so a
replay stays byte-identical across a re-commissioning. Against the loopback recording server and
a real VictoriaMetrics."""

from __future__ import annotations

import errno
import io
import json
import logging
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from httpfaults import parse_line
from recording_server import Exchange, RecordingServer
from victoriametrics import VictoriaMetrics

from agent.config import Config, parse_config
from agent.core.reading import Reading
from agent.core.timebase import NS, iso_ns
from agent.sampling.timekeeping import TimeKeeper
from agent.store import commission
from agent.store.commission import FILE, FORMAT, Facts, history, make_record
from agent.store.outbox import Outbox, Subscriber
from agent.uplink import metadata
from agent.uplink.export import Station, export
from agent.uplink.worker import Outcome, Uplink, build_uplink
from drivers.sim.clock import FakeClock

ONE = [Subscriber("default")]  # the one upstream of these tests


T0 = 1_767_225_600_000_000_000
SITE = "汉中 wetland, east"
SERIALS = [{"id": "soil", "driver": "sht4x", "bus": 1, "address": 0x44, "serial": "0x01020304"},
           {"id": "air", "driver": "bme280", "bus": 1, "address": 0x76}]  # a BME280 has none


def config(url: str, *, fmt: str = "influx", measurement: str = "envagent") -> Config:
    return parse_config(tomllib.loads(
        f'[unit]\nid = "meta-001"\nsite = "{SITE}"\nlatitude = 33.0675\nlongitude = 107.0238\n'
        'elevation_m = 510\n'
        '[[sensor]]\nid = "air"\ndriver = "bme280"\naddress = 0x76\n'
        '[[sensor]]\nid = "soil"\ndriver = "sht4x"\naddress = 0x44\n'
        f'[uplink]\nurl = "{url}"\nallow_insecure_http = true\nformat = "{fmt}"\n'
        f'measurement = "{measurement}"\nbackoff_min = "1s"\nbackoff_max = "10s"\n'))


def commissioned(data: Path, cfg: Config, time_ns: int, **facts: Any) -> dict[str, Any]:
    """A record as ``envagent commission`` appends it, at ``time_ns``."""
    record = make_record(cfg, Facts(**facts), SERIALS, time_ns=time_ns, clock_synced=True,
                         boot_id="boot-1", boot_ns=5 * NS)
    commission.append(data, record)
    return record


def samples(start_s: int, count: int) -> list[Reading]:
    return [Reading(sensor, "temperature", 20.0 + i / 4, "°C", T0 + (start_s + i) * NS,
                    (start_s + i) * NS, "boot-1", True)
            for i in range(count) for sensor in ("air", "soil")]


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    with Outbox(tmp_path / "outbox.sqlite", max_bytes=64 * 1024**2, subscribers=ONE) as box:
        yield box


def uplink_for(cfg: Config, outbox: Outbox, data: Path, clock: FakeClock,
               timekeeper: TimeKeeper | None = None) -> Uplink:
    """No token (the server wants none); with ``timekeeper``, wired as ``envagent run`` does."""
    if timekeeper is None:
        return build_uplink(cfg, cfg.uplinks[0], outbox, clock, data, environ={})
    return build_uplink(cfg, cfg.uplinks[0], outbox, clock, data, environ={},
                        held_boot=timekeeper.held_boot)


def is_metadata(exchange: Exchange) -> bool:
    return b"_commission," in exchange.body or FORMAT.encode() in exchange.body


def readings_sent(server: RecordingServer) -> list[Exchange]:
    return [e for e in server.snapshot() if not is_metadata(e)]


# --- metadata, once ---------------------------------------------------------------------------


def test_each_record_goes_upstream_once_as_one_point(tmp_path: Path, outbox: Outbox) -> None:
    data = tmp_path / "data"
    with RecordingServer() as server:
        cfg = config(server.url())
        record = commissioned(data, cfg, T0 - 3600 * NS, technician="Ana Ruiz",
                              mounting_height_m=2.5, radiation_shield="Stevenson screen, white")
        outbox.append(samples(0, 3))
        uplink = uplink_for(cfg, outbox, data, FakeClock())
        assert uplink.flush().ok
        first = server.snapshot()
        assert [is_metadata(e) for e in first] == [True, False]  # the metadata, then readings
        (line,) = first[0].body.decode().splitlines()
        assert parse_line(line) == ("envagent_commission", {
            "unit": "meta-001", "site": SITE, "technician": "Ana Ruiz",
            "shield": "Stevenson screen, white", "serial_soil": "0x01020304"}, {
            "latitude": 33.0675, "longitude": 107.0238, "elevation_m": 510.0,
            "mounting_height_m": 2.5, "clock_synced": 1, "record": 1}, record["time_ns"])
        assert first[0].path == "/write?precision=ns"
        assert [r["sent"] for r in history(data)] == [True]

        outbox.append(samples(10, 2))
        assert uplink.flush().ok  # the same process: nothing more to send
        again = uplink_for(cfg, outbox, data, FakeClock())
        outbox.append(samples(20, 2))
        assert again.flush().ok  # a restart: the file says sent
        assert not any(is_metadata(e) for e in server.snapshot()[len(first):])
        assert len(server.snapshot()) == len(first) + 2


def test_a_5xx_leaves_the_record_unsent_readings_go_on_and_it_is_sent_after_the_backoff(
        tmp_path: Path, outbox: Outbox, caplog: pytest.LogCaptureFixture) -> None:
    data, clock = tmp_path / "data", FakeClock()
    refusals = iter([503, 503])

    def respond(exchange: Exchange) -> int:
        return next(refusals, 204) if is_metadata(exchange) else 204

    with RecordingServer(respond) as server:
        cfg = config(server.url())
        commissioned(data, cfg, T0 - 3600 * NS, mounting_height_m=2.0)
        outbox.append(samples(0, 3))
        uplink = uplink_for(cfg, outbox, data, clock)
        with caplog.at_level(logging.WARNING, "envagent.metadata"):
            report = uplink.flush()
        assert report.ok and report.delivered == 6  # the readings did not wait
        assert uplink.state.state == "ok"
        assert [r["sent"] for r in history(data)] == [False]
        assert "cannot send 1 commissioning record(s)" in caplog.text

        outbox.append(samples(10, 1))
        assert uplink.flush().ok  # still within the backoff (1 s at first): not tried
        assert sum(map(is_metadata, server.snapshot())) == 1
        for _ in range(2):  # the second attempt fails too, the third gets through
            clock.advance(10.0)  # backoff_max: whatever the jitter drew
            uplink.step()
        assert [e.status for e in server.snapshot() if is_metadata(e)] == [503, 503, 204]
        assert [r["sent"] for r in history(data)] == [True]
        assert caplog.text.count("cannot send") == 1  # logged on the transition only


def test_a_backend_that_refuses_the_document_gets_it_once_per_start_readings_go_on(
        tmp_path: Path, outbox: Outbox, caplog: pytest.LogCaptureFixture) -> None:
    # A custom JSON backend that takes batches of readings but answers 400 to anything else.
    data, clock = tmp_path / "data", FakeClock()

    def respond(exchange: Exchange) -> int:
        return 400 if is_metadata(exchange) else 204

    with RecordingServer(respond) as server:
        cfg = config(server.url("/ingest"), fmt="json")
        commissioned(data, cfg, T0 - 3600 * NS, mounting_height_m=2.0)
        uplink = uplink_for(cfg, outbox, data, clock)
        with caplog.at_level(logging.WARNING, "envagent.metadata"):
            for second in range(0, 600, 10):  # ten minutes of commits, past any backoff
                outbox.append(samples(second, 1))
                assert uplink.flush().ok
                clock.advance(10.0)
        assert uplink.state.state == "ok" and outbox.stats().backlog == 0
        assert sum(map(is_metadata, server.snapshot())) == 1
        assert caplog.text.count("refused 1 commissioning record(s): HTTP 400") == 1
        assert [r["sent"] for r in history(data)] == [False]

        commissioned(data, cfg, T0 - 1800 * NS, note="second visit")  # a new record is tried
        outbox.append(samples(700, 1))
        assert uplink.flush().ok
        meta = [json.loads(e.body) for e in server.snapshot() if is_metadata(e)]
        assert [doc["count"] for doc in meta] == [1, 1]  # the new one only

        restarted = uplink_for(cfg, outbox, data, FakeClock())  # unsent: tried once more
        outbox.append(samples(710, 1))
        assert restarted.flush().ok
        meta = [json.loads(e.body) for e in server.snapshot() if is_metadata(e)]
        assert [doc["count"] for doc in meta] == [1, 1, 2]


def test_the_metadata_never_goes_ahead_of_an_alert(tmp_path: Path, outbox: Outbox) -> None:
    data = tmp_path / "data"
    with RecordingServer() as server:
        cfg = config(server.url())
        commissioned(data, cfg, T0 - 3600 * NS)
        outbox.append(samples(0, 5))
        outbox.append([Reading("envagent", "alert_pm25", 1.0, "state", T0 + 6 * NS, 6 * NS,
                               "boot-1", True)])
        assert uplink_for(cfg, outbox, data, FakeClock()).flush().ok
        sent = server.snapshot()
        assert [is_metadata(e) for e in sent] == [False, True, False]
        assert b"alert_pm25" in sent[0].body


def test_the_json_format_posts_the_metadata_document(tmp_path: Path, outbox: Outbox) -> None:
    data = tmp_path / "data"
    with RecordingServer() as server:
        cfg = config(server.url("/ingest"), fmt="json")
        first = commissioned(data, cfg, T0 - 3600 * NS, mounting_height_m=2.5)
        second = commissioned(data, cfg, T0 - 1800 * NS, note="second visit")
        outbox.append(samples(0, 1))
        assert uplink_for(cfg, outbox, data, FakeClock()).flush().ok
        meta, batch = server.snapshot()
    assert meta.path == "/ingest" and meta.headers["content-type"].startswith("application/json")
    document = json.loads(meta.body)
    assert document == commission.metadata_document("meta-001", [first, second])
    assert document["format"] == FORMAT and document["count"] == 2
    assert all("sent" not in r for r in document["records"])
    items = json.loads(batch.body)["readings"]
    assert "mounting_height" not in items[0]  # the second visit gave no height: no key


# --- tags by sample time, and replays -----------------------------------------------------------


def test_a_replay_is_byte_identical_across_a_re_commissioning(tmp_path: Path,
                                                              outbox: Outbox) -> None:
    """A batch refused before a new visit is sent again after it -- by the same process, and
    re-encoded after a restart -- with the same bytes: the tags in force when it was sampled."""
    data, answers = tmp_path / "data", iter([503, 503])

    def respond(exchange: Exchange) -> int:
        return 204 if is_metadata(exchange) else next(answers, 204)

    with RecordingServer(respond) as server:
        cfg = config(server.url())
        commissioned(data, cfg, T0 - 3600 * NS, mounting_height_m=2.0, radiation_shield="screen")
        outbox.append(samples(0, 4))
        uplink = uplink_for(cfg, outbox, data, FakeClock())
        assert uplink.step().outcome is Outcome.RETRY
        commissioned(data, cfg, T0 + 3600 * NS, mounting_height_m=3.0)  # the next visit
        assert uplink.step().outcome is Outcome.RETRY  # the retry
        outbox.append(samples(3600, 2))  # sampled since
        assert uplink_for(cfg, outbox, data, FakeClock()).flush().ok  # after a restart
        refused, retried, replayed = readings_sent(server)
    assert retried.body == refused.body
    old = refused.body.decode().splitlines()
    assert {(parse_line(x)[1]["mounting_height"], parse_line(x)[1]["shield"]) for x in old} == {
        ("2", "screen")}
    new = replayed.body.decode().splitlines()
    assert new[:len(old)] == old  # the batch boundaries may differ after a restart, no line does
    assert {parse_line(x)[1]["mounting_height"] for x in new[len(old):]} == {"3"}
    assert not any("shield" in parse_line(x)[1] for x in new[len(old):])


def test_readings_before_any_commissioning_have_no_such_tags(tmp_path: Path,
                                                             outbox: Outbox) -> None:
    data = tmp_path / "data"
    with RecordingServer() as server:
        cfg = config(server.url())
        commissioned(data, cfg, T0 + 2 * NS, mounting_height_m=2.0)
        outbox.append(samples(0, 4))  # at T0 .. T0 + 3 s: two before the visit, two after
        assert uplink_for(cfg, outbox, data, FakeClock()).flush().ok
        (batch,) = readings_sent(server)
    heights = [parse_line(line)[1].get("mounting_height")
               for line in batch.body.decode().splitlines()]
    assert heights == [None] * 4 + ["2"] * 4


def test_the_file_is_read_only_when_it_changed(tmp_path: Path, outbox: Outbox,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    data, reads = tmp_path / "data", []
    real = metadata.history
    monkeypatch.setattr(metadata, "history", lambda d: reads.append(d) or real(d))
    with RecordingServer() as server:
        cfg = config(server.url())
        commissioned(data, cfg, T0 - 3600 * NS, mounting_height_m=2.0)
        uplink = uplink_for(cfg, outbox, data, FakeClock())
        for _ in range(5):
            uplink.step()  # sends the record (which rewrites the file once: sent) ...
        assert len(reads) == 2  # ... so: the first look, and once after marking it sent
        commissioned(data, cfg, T0, mounting_height_m=3.0)
        uplink.step()
        assert len(reads) == 3 and sum(map(is_metadata, server.snapshot())) == 2


def test_a_damaged_file_stops_nothing(tmp_path: Path, outbox: Outbox,
                                      caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / FILE).write_text("{ half a record")
    with RecordingServer() as server:
        outbox.append(samples(0, 2))
        uplink = uplink_for(config(server.url()), outbox, data, FakeClock())
        with caplog.at_level(logging.WARNING, "envagent.metadata"):
            report = uplink.flush()
            outbox.append(samples(5, 2))
            assert uplink.flush().ok
        assert report.ok and report.delivered == 4 and uplink.state.state == "ok"
        assert not any(map(is_metadata, server.snapshot()))
    assert caplog.text.count("commissioning record") == 1  # once per change of the file


def test_the_export_carries_the_tags_the_uplink_sends(tmp_path: Path, outbox: Outbox) -> None:
    """An exported line and the delivered one must be the same point, or the store keeps two."""
    data = tmp_path / "data"
    with RecordingServer() as server:
        cfg = config(server.url())
        commissioned(data, cfg, T0 + 2 * NS, mounting_height_m=2.0, radiation_shield="screen")
        batch = samples(0, 4)
        outbox.append(batch)
        assert uplink_for(cfg, outbox, data, FakeClock()).flush().ok
        (sent,) = readings_sent(server)
    out = io.StringIO()
    export(iter([batch]), out, "lp", Station.from_config(cfg, data), current_boot=None,
           clock_synced=True)
    assert out.getvalue().encode() == sent.body


# --- a record taken before the clock synchronised -----------------------------------------------
# The oracle, as in test_timekeeping: something that happened at boot time b of this boot truly
# happened at T0 + b. Until NTP, the wall clock is days behind (fake-hwclock's last shutdown).

STALE_S = 5 * 86_400


def stale_boot(boottime_s: float = 100.0) -> FakeClock:
    """A boot ``boottime_s`` in, its wall clock days behind and not synchronised."""
    return FakeClock(start=boottime_s, wall=T0 / NS - STALE_S + boottime_s, synced=False)


def commissioned_on(data: Path, cfg: Config, clock: FakeClock, boot_id: str,
                    **facts: Any) -> dict[str, Any]:
    """A record as ``envagent commission`` takes it (agent.store.commission.record_now) on
    ``clock``."""
    record = make_record(cfg, Facts(**facts), SERIALS, time_ns=round(clock.time() * 1e6) * 1000,
                         clock_synced=clock.synchronized(), boot_id=boot_id,
                         boot_ns=int(clock.boottime() * NS))
    commission.append(data, record)
    return record


def sampled_on(clock: FakeClock, boot_id: str, *boot_s: int) -> list[Reading]:
    """Readings at these boot times, stamped with what ``clock``'s wall said then."""
    offset_ns = round((clock.time() - clock.boottime()) * NS)
    return [Reading("air", "temperature", 20.0, "°C", b * NS + offset_ns, b * NS, boot_id,
                    clock.synchronized()) for b in boot_s]


def ntp_syncs(clock: FakeClock, after_s: float = 60.0) -> None:
    clock.advance(after_s)
    clock.set_wall(T0 / NS + clock.boottime(), synced=True)


def lines_of(exchange: Exchange) -> list[tuple[str, dict[str, str], dict[str, object], int]]:
    return [parse_line(line) for line in exchange.body.decode().splitlines()]


def test_a_record_taken_before_the_clock_synchronised_waits_and_goes_with_its_true_time(
        tmp_path: Path, outbox: Outbox) -> None:
    data, clock = tmp_path / "data", stale_boot(100.0)
    timekeeper = TimeKeeper(clock, "boot-1", commission_dir=data)
    with RecordingServer() as server:
        cfg = config(server.url())
        taken = commissioned_on(data, cfg, clock, "boot-1", mounting_height_m=2.5)
        # The previous boot's readings, at their true times: an hour before the visit, but
        # days after the time the record says.
        outbox.append(samples(-3600, 2))
        outbox.append(sampled_on(clock, "boot-1", 90, 110))  # just before and after the visit
        uplink = uplink_for(cfg, outbox, data, clock, timekeeper)
        timekeeper.maintain(outbox)
        assert uplink.flush().ok
        (earlier,) = server.snapshot()  # this boot's readings wait, and so does the record
        assert not is_metadata(earlier)
        assert [tags.get("mounting_height") for _, tags, _, _ in lines_of(earlier)] == [None] * 4
        assert history(data) == [taken]

        ntp_syncs(clock)  # at boot time 160 s
        timekeeper.maintain(outbox)
        true_ns = T0 + 100 * NS  # anchor wall + (the record's boot time - the anchor's)
        assert history(data) == [taken | {
            "time": iso_ns(true_ns), "time_ns": true_ns, "clock_synced": True,
            "clock_restamped": True, "unsynced_time": taken["time"],
            "unsynced_time_ns": taken["time_ns"]}]
        assert uplink.flush().ok
        meta, batch = server.snapshot()[1:]
    (point,) = lines_of(meta)
    assert point[3] == true_ns
    assert (point[2]["clock_synced"], point[2]["clock_restamped"]) == (1, 1)
    assert [(t, tags.get("mounting_height")) for _, tags, _, t in lines_of(batch)] == [
        (T0 + 90 * NS, None), (T0 + 110 * NS, "2.5")]  # the tags start at the true time
    assert [r["sent"] for r in history(data)] == [True]
    assert history(data)[0]["id"] == taken["id"]  # the id names the record, not its time


def test_a_record_of_a_boot_that_never_synchronised_goes_as_recorded_flagged(
        tmp_path: Path, outbox: Outbox) -> None:
    data, clock = tmp_path / "data", stale_boot(100.0)
    before = FakeClock(start=50.0, wall=T0 / NS - 2 * STALE_S, synced=False)  # a reboot since
    timekeeper = TimeKeeper(clock, "boot-2", commission_dir=data)
    with RecordingServer() as server:
        cfg = config(server.url())
        old = commissioned_on(data, cfg, before, "boot-1", mounting_height_m=2.0)
        before.advance(10.0)
        outbox.append(sampled_on(before, "boot-1", 60))
        new = commissioned_on(data, cfg, clock, "boot-2", mounting_height_m=3.0)
        uplink = uplink_for(cfg, outbox, data, clock, timekeeper)
        timekeeper.maintain(outbox)
        assert uplink.flush().ok
        meta, batch = server.snapshot()
        (point,) = lines_of(meta)  # boot-1's: it can never be corrected; boot-2's waits
        assert (point[3], point[2]["clock_synced"]) == (old["time_ns"], 0)
        assert "clock_restamped" not in point[2]
        ((_, tags, fields, _),) = lines_of(batch)  # flagged, and tagged from the time recorded
        assert tags["mounting_height"] == "2" and fields["temperature_q"] == 16

        ntp_syncs(clock)
        timekeeper.maintain(outbox)
        first, second = history(data)
        # never re-stamped with another boot's anchor
        assert first == old | {"sent": True, "sent_to": ["default"]}
        assert second["time_ns"] == T0 + 100 * NS and second["unsynced_time_ns"] == new["time_ns"]


def test_a_commission_file_the_agent_cannot_write_costs_the_record_its_true_time_only(
        tmp_path: Path, outbox: Outbox, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """E.g. root's, from ``sudo envagent commission`` while the service ran: logged once, the
    readings are still re-stamped and the record goes as recorded, flagged."""
    data, clock = tmp_path / "data", stale_boot(100.0)
    timekeeper = TimeKeeper(clock, "boot-1", commission_dir=data)

    def refused(path: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    with RecordingServer() as server:
        cfg = config(server.url())
        taken = commissioned_on(data, cfg, clock, "boot-1", mounting_height_m=2.5)
        outbox.append(sampled_on(clock, "boot-1", 90, 110))
        uplink = uplink_for(cfg, outbox, data, clock, timekeeper)
        monkeypatch.setattr(commission, "write_json", refused)
        ntp_syncs(clock)
        with caplog.at_level(logging.WARNING):
            timekeeper.maintain(outbox)
            assert uplink.flush().ok  # marking it sent fails too
            timekeeper.appended(any_unsynced=True)  # held again until another re-stamp ...
            outbox.append(sampled_on(clock, "boot-1", 170))
            assert uplink.flush().ok
            timekeeper.maintain(outbox)  # ... which fails again
            assert uplink.flush().ok
        meta, batch, later = server.snapshot()  # the record once, whatever the file says
    assert caplog.text.count("cannot re-stamp the commissioning record(s)") == 1
    assert f"cannot write {data / FILE}: Permission denied" in caplog.text
    assert caplog.text.count("are sent again after a restart") == 1
    (point,) = lines_of(meta)
    assert (point[3], point[2]["clock_synced"]) == (taken["time_ns"], 0)
    assert [t for _, _, _, t in lines_of(batch)] == [T0 + 90 * NS, T0 + 110 * NS]
    assert [t for _, _, _, t in lines_of(later)] == [T0 + 170 * NS]
    assert history(data) == [taken]


# --- a real VictoriaMetrics ---------------------------------------------------------------------


def test_the_commissioning_point_and_the_tags_in_victoriametrics(
        victoriametrics: VictoriaMetrics, tmp_path: Path, outbox: Outbox) -> None:
    vm, data = victoriametrics, tmp_path / "data"
    vm.delete_series('{__name__=~"metait_.*"}')
    cfg = config(vm.write_url, measurement="metait")
    record = commissioned(data, cfg, T0 - 3600 * NS, technician="Ana Ruiz",
                          mounting_height_m=2.5, radiation_shield="Stevenson screen, white")
    outbox.append(samples(0, 2))
    assert uplink_for(cfg, outbox, data, FakeClock()).flush().ok
    point = {"unit": "meta-001", "site": SITE, "technician": "Ana Ruiz",
             "shield": "Stevenson screen, white", "serial_soil": "0x01020304"}
    at = [record["time_ns"] // 1_000_000]
    assert vm.query_export('{__name__=~"metait_commission_.*"}') == [
        {"metric": {"__name__": f"metait_commission_{field}", **point}, "values": [value],
         "timestamps": at}
        for field, value in (("clock_synced", 1), ("elevation_m", 510), ("latitude", 33.0675),
                             ("longitude", 107.0238), ("mounting_height_m", 2.5),
                             ("record", 1))]
    readings = vm.query_export('metait_temperature{mounting_height="2.5"}')
    assert [s["metric"]["sensor"] for s in readings] == ["air", "soil"]
    assert {s["metric"]["shield"] for s in readings} == {"Stevenson screen, white"}
    assert [len(s["values"]) for s in readings] == [2, 2]
