"""HJ 212-2017 beyond real-time data: minute, hourly and daily data computed on the unit from
the stored readings over intervals of the platform's local time, and the platform's requests
(history pulls, time, RtdInterval, OverTime/ReCount) answered on the open connection -- against
the receiver written from the standard (tests/hj212_receiver.py)."""

from __future__ import annotations

import json
import random
import statistics
import time
import tomllib
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hj212_receiver import Hj212Receiver, Received

from agent.config import UplinkConfig, parse_config
from agent.config.hj212 import Hj212Config
from agent.core.credentials import Secret
from agent.core.errors import ConfigError
from agent.core.reading import ALERT_PREFIX, RESERVED_SENSOR_ID, Reading
from agent.core.timebase import ExternalTime
from agent.store.outbox import Outbox, Subscriber
from agent.uplink.hj212.transport import Hj212Sink
from agent.uplink.sink import Outcome
from agent.uplink.transports import build_sink
from agent.uplink.worker import Uplink, state_file
from drivers.base import Quality
from drivers.sim.clock import FakeClock

NS = 1_000_000_000
T0 = 1_767_225_600 * NS + 223_000_000  # 2026-01-01 08:00:00.223 in Shanghai
PW = "123456"
MN = "88888880000001"
SHANGHAI = ZoneInfo("Asia/Shanghai")
STATION = ('[unit]\nid = "u1"\nsite = "Roof"\n[[sensor]]\nid = "air"\ndriver = "bme280"\n'
           'address = 0x76\ninterval = "10s"\n[[sensor]]\nid = "dust"\ndriver = "pmsa003i"\n'
           'address = 0x12\ninterval = "10s"\n')


def readings(start: int, count: int, *, skip: range = range(0),
             quality: int = 0) -> list[Reading]:
    """BME280 temperature and pressure and a PM2.5 every 10 s from sample ``start``."""
    out = []
    for i in range(start, start + count):
        if i in skip:
            continue
        t = T0 + i * 10 * NS
        out += [Reading("air", "temperature", 20 + (i * 7 % 13) / 4, "°C", t, i, "b", True,
                        quality),
                Reading("air", "pressure", 1000 + (i % 5), "hPa", t, i, "b", True, quality),
                Reading("dust", "pm2_5", 10 + (i * 3 % 11), "µg/m³", t, i, "b", True, quality)]
    return out


def settings(url: str, **hj: object) -> UplinkConfig:
    extra = {"overtime": 0.5, "recount": 1, "minute_interval": 10, "max_packets_per_s": 500.0,
             **hj}
    return UplinkConfig(url=url, name="bureau", format="hj212", backoff_min=0.05,
                        backoff_max=1.0, connect_timeout=1.0,
                        hj212=Hj212Config(mn=MN, **extra))  # type: ignore[arg-type]


@pytest.fixture
def receiver() -> Iterator[Hj212Receiver]:
    with Hj212Receiver(password=PW) as platform:
        yield platform


class Station:
    """An outbox, the HJ 212 sink and its worker, over one data directory."""

    def __init__(self, data_dir: Path, url: str, *,
                 wall: Callable[[], float] = time.time, **hj: object) -> None:
        config = parse_config(tomllib.loads(STATION), source="t.toml")
        self.settings = settings(url, **hj)
        self.outbox = Outbox(data_dir / "outbox.sqlite", max_bytes=64 * 1024**2,
                             subscribers=[Subscriber("bureau")])
        sink = build_sink(config, self.settings, data_dir=data_dir, wall=wall)
        assert isinstance(sink, Hj212Sink)
        self.sink = sink
        self.worker = Uplink(self.outbox, sink, self.settings, clock=FakeClock(),
                             token=lambda: Secret(PW),
                             state_path=data_dir / state_file("bureau"), rng=random.Random(3))

    def deliver(self, batch: list[Reading]) -> None:
        self.outbox.append(batch)
        while self.outbox.stats().backlog:
            step = self.worker.step()
            assert step.outcome is Outcome.DELIVERED, step.answer

    def close(self) -> None:
        self.sink.close()
        self.outbox.close()


@pytest.fixture
def station(tmp_path: Path, receiver: Hj212Receiver) -> Iterator[Station]:
    unit = Station(tmp_path, receiver.url)
    yield unit
    unit.close()


def local(t_ns: int) -> datetime:
    return datetime.fromtimestamp(t_ns // NS, SHANGHAI)


def expected_aggregates(batch: list[Reading], minutes: int) -> dict[tuple[str, str], dict]:
    """(DataTime, code) -> Min/Avg/Max of the readings of each local-time interval."""
    codes = {"temperature": ("a01001", 1.0), "pressure": ("a01006", 0.1),
             "pm2_5": ("a34004", 1.0)}
    values: dict[tuple[str, str], list[float]] = {}
    for r in batch:
        when = local(r.time_ns)
        start = when.replace(minute=when.minute - when.minute % minutes, second=0)
        code, factor = codes[r.quantity]
        values.setdefault((start.strftime("%Y%m%d%H%M%S"), code), []).append(r.value * factor)
    return {key: {"Min": round(min(v), 4), "Avg": round(statistics.fmean(v), 4),
                  "Max": round(max(v), 4)} for key, v in values.items()}


def by_interval(packets: list[Received]) -> dict[tuple[str, str], dict]:
    return {(p.data_time, code): stats for p in packets for code, stats in p.stats.items()}


def test_minute_data_are_the_stored_readings_of_each_local_time_interval(
        station: Station, receiver: Hj212Receiver) -> None:
    batch = readings(0, 200)  # 08:00:00 to 08:33:10: three whole 10-minute intervals
    for start in range(0, len(batch), 90):
        station.deliver(batch[start:start + 90])
    assert receiver.errors == []
    minute = receiver.data_packets("2051")
    assert [p.data_time for p in minute] == ["20260101080000", "20260101081000",
                                             "20260101082000"]
    got = by_interval(minute)
    want = expected_aggregates(batch, 10)
    for key, stats in got.items():
        assert stats == pytest.approx(want[key], abs=1.1e-4), key
    assert {p.flags["a01001"] for p in minute} == {"N"}
    assert minute[0].fields["Flag"] == "5" and minute[0].fields["ST"] == "22"
    assert receiver.data_packets("2061") == []  # the hour is not over yet


def test_an_alert_sent_ahead_of_a_backlog_does_not_close_its_intervals_early(
        station: Station, receiver: Hj212Receiver) -> None:
    """Alerts go ahead of the backlog (agent.uplink.worker), newer than what waits: they must
    not prove the backlog's intervals complete before its readings have arrived."""
    station.deliver(readings(0, 60))  # 08:00 to 08:09:50, then the link goes down
    backlog = readings(60, 140)  # 08:10:00 to 08:33:10
    alert = Reading(RESERVED_SENSOR_ID, ALERT_PREFIX + "flood", 1.0, "", backlog[-1].time_ns,
                    199, "b", True)
    station.deliver([*backlog, alert])
    assert receiver.errors == []
    minute = receiver.data_packets("2051")
    assert [p.data_time for p in minute] == ["20260101080000", "20260101081000",
                                             "20260101082000"]
    want = expected_aggregates(readings(0, 200), 10)
    for key, stats in by_interval(minute).items():
        assert stats == pytest.approx(want[key], abs=1.1e-4), key
    assert {p.flags["a01001"] for p in minute} == {"N"}  # whole, not "partly down"


def test_hourly_and_daily_data_and_an_interval_partly_down_is_flagged_not_filled(
        station: Station, receiver: Hj212Receiver) -> None:
    # 08:00 to 09:10 with the unit down from 08:20 to 08:25 (samples 120 to 149).
    batch = readings(0, 430, skip=range(120, 150))
    station.deliver(batch)
    minute = {p.data_time: p for p in receiver.data_packets("2051")}
    assert minute["20260101082000"].flags == {"a01001": "F", "a01006": "F", "a34004": "F"}
    assert minute["20260101081000"].flags["a01001"] == "N"
    (hour,) = receiver.data_packets("2061")
    assert hour.data_time == "20260101080000"
    assert hour.flags["a01001"] == "F"  # the hour had the gap too
    want = expected_aggregates([r for r in batch if local(r.time_ns).hour == 8], 60)
    got = by_interval([hour])
    assert got.keys() == want.keys()
    for key, stats in want.items():
        assert got[key] == pytest.approx(stats, abs=1.1e-4)
    # The day closes with readings of the next local day: 16 hours after 08:00.
    station.deliver(readings(16 * 360, 20))
    assert [p.data_time for p in receiver.data_packets("2031")] == ["20260101000000"]


def test_a_batch_sent_again_after_a_crash_counts_once(tmp_path: Path,
                                                      receiver: Hj212Receiver) -> None:
    batch = readings(0, 70)
    first = Station(tmp_path, receiver.url)
    first.outbox.append(batch)
    body = first.sink.encode(batch)
    assert first.sink.send(body, Secret(PW)).outcome is Outcome.DELIVERED
    first.close()  # the outbox was never acked: the next start sends the batch again
    again = Station(tmp_path, receiver.url)
    try:
        again.deliver(readings(70, 10))
    finally:
        again.close()
    (interval,) = receiver.data_packets("2051")
    want = expected_aggregates(batch[:180], 10)
    for key, stats in by_interval([interval]).items():
        assert stats == pytest.approx(want[key], abs=1.1e-4)


def answers(receiver: Hj212Receiver, qn: str, *, timeout: float = 5.0) -> list[Received]:
    """What the unit sent with ``qn``, once its 9012 (or a refusing 9011) came."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = [r for r in receiver.received if r.fields["QN"] == qn]
        if any(r.cn == "9012" or (r.cn == "9011" and r.fields["CP"] != "QnRtn=1")
               for r in got):
            return got
        time.sleep(0.02)
    raise AssertionError(f"no answer to QN {qn}: {receiver.received[-3:]}")


def test_a_history_pull_is_answered_from_the_aggregates_held(
        station: Station, receiver: Hj212Receiver) -> None:
    station.deliver(readings(0, 200))
    sent = {p.data_time: p.raw for p in receiver.data_packets("2051")}
    qn = receiver.request("2051", "BeginTime=20260101080000;EndTime=20260101081500",
                          qn="20260101090000001")
    got = answers(receiver, qn)
    assert [r.cn for r in got] == ["9011", "2051", "2051", "9012"]
    assert got[0].fields["CP"] == "QnRtn=1" and got[-1].fields["CP"] == "ExeRtn=1"
    assert [r.data_time for r in got[1:3]] == ["20260101080000", "20260101081000"]
    assert got[1].stats == next(p.stats for p in receiver.data_packets("2051")
                                if p.data_time == "20260101080000")
    assert int(got[1].fields["Flag"]) & 1 == 0  # an answer asks for no acknowledgement
    assert set(sent) >= {"20260101080000", "20260101081000"}
    none = receiver.request("2061", "BeginTime=20250101000000;EndTime=20250102000000",
                            qn="20260101090000002")
    assert [r.fields["CP"] for r in answers(receiver, none)] == ["QnRtn=1", "ExeRtn=100"]
    wrong = receiver.request("2051", "BeginTime=20260101080000;EndTime=20260101081500",
                             qn="20260101090000003", password="654321")
    assert [r.fields["CP"] for r in answers(receiver, wrong)] == ["QnRtn=3"]
    assert receiver.errors == []


def test_the_platform_reads_the_time_and_rtd_interval_and_sets_them(
        station: Station, receiver: Hj212Receiver) -> None:
    station.deliver(readings(0, 3))
    got = answers(receiver, receiver.request("1011", "", qn="20260101090000011"))
    assert [r.cn for r in got] == ["9011", "1011", "9012"]
    assert got[1].fields["CP"].startswith("SystemTime=")
    refused = answers(receiver, receiver.request("1012", "SystemTime=20260101090000",
                                                 qn="20260101090000012"))
    assert refused[-1].fields["CP"] == "ExeRtn=3"  # this unit's clock is NTP's
    assert answers(receiver, receiver.request("1062", "RtdInterval=45",
                                              qn="20260101090000013"))[-1].fields["CP"] == (
        "ExeRtn=3")  # not a multiple of the 10 s sampling
    assert answers(receiver, receiver.request("1062", "RtdInterval=60",
                                              qn="20260101090000014"))[-1].fields["CP"] == (
        "ExeRtn=1")
    rtd = answers(receiver, receiver.request("1061", "", qn="20260101090000015"))
    assert rtd[1].fields["CP"] == "RtdInterval=60"
    before = len(receiver.data_packets())
    station.deliver(readings(3, 30))  # 08:00:30 to 08:05:20: on the minute 5 times
    times = [p.data_time for p in receiver.data_packets()[before:]]
    assert times == ["20260101080100", "20260101080200", "20260101080300", "20260101080400",
                     "20260101080500"]
    assert answers(receiver, receiver.request("1000", "OverTime=5;ReCount=2",
                                              qn="20260101090000016"))[-1].fields["CP"] == (
        "ExeRtn=1")
    assert (station.sink.overtime, station.sink.recount) == (5.0, 2)
    unknown = answers(receiver, receiver.request("3020", "", qn="20260101090000017"))
    assert unknown[0].fields["CP"] == "QnRtn=8"


def test_what_the_platform_set_outlives_a_restart(tmp_path: Path,
                                                  receiver: Hj212Receiver) -> None:
    first = Station(tmp_path, receiver.url)
    first.deliver(readings(0, 2))
    answers(receiver, receiver.request("1062", "RtdInterval=120", qn="20260101090000021"))
    first.close()
    again = Station(tmp_path, receiver.url)
    try:
        assert again.sink.rtd_interval == 120
    finally:
        again.close()


def test_a_heartbeat_keeps_a_quiet_line_alive(tmp_path: Path, receiver: Hj212Receiver) -> None:
    receiver.heartbeat_cn = "9015"
    # 08:00:00.31, a sample time: the beat's QN is neither a real-time message's of that second
    # (its number 100-999) nor an aggregate's (031, 051, 061), or a platform that drops a
    # repeated QN could drop data for it
    unit = Station(tmp_path, receiver.url, wall=lambda: T0 // NS + 0.31, heartbeat=1.0,
                   heartbeat_cn="9015")
    try:
        unit.deliver(readings(0, 1))
        time.sleep(2.6)
    finally:
        unit.close()
    beats = [r for r in receiver.received if r.cn == "9015"]
    assert len(beats) >= 1 and receiver.errors == []
    assert {b.fields["QN"] for b in beats} == {"20260101080000032"}


def test_maintenance_readings_are_flagged_m_in_real_time_and_aggregate_data(
        station: Station, receiver: Hj212Receiver) -> None:
    batch = readings(0, 30) + readings(30, 10, quality=int(Quality.MAINTENANCE)) + readings(
        40, 40)
    station.deliver(batch)
    realtime = receiver.data_packets()
    assert {p.flags["a01001"] for p in realtime[30:40]} == {"M"}
    assert {p.flags["a01001"] for p in realtime[:30]} == {"N"}
    (interval,) = receiver.data_packets("2051")
    assert interval.flags == {"a01001": "M", "a01006": "M", "a34004": "M"}


def test_two_sensors_for_one_code_is_one_clear_line(tmp_path: Path) -> None:
    config = parse_config(tomllib.loads(
        STATION + '[[sensor]]\nid = "soil"\ndriver = "sht4x"\naddress = 0x44\n'),
        source="t.toml")
    with pytest.raises(ConfigError) as caught:
        build_sink(config, settings("hj212://127.0.0.1:9"), data_dir=tmp_path)
    assert str(caught.value).count("\n") == 0
    assert "a01001 (temperature) would come from sensors 'air' and 'soil'" in str(caught.value)
    mapped = settings("hj212://127.0.0.1:9", codes=(("soil.temperature", "a99001"),
                                                    ("soil.humidity", "a99002")))
    build_sink(config, mapped, data_dir=tmp_path).close()


def time_set(tmp_path: Path, receiver: Hj212Receiver, clock: FakeClock,
             said: str) -> tuple[list[Received], ExternalTime]:
    """The platform sets the time to ``said`` (CN 1012) while NTP has not synchronised
    ``clock``: the answers, and the time source the agent would take it from."""
    config = parse_config(tomllib.loads(STATION), source="t.toml")
    external = ExternalTime(clock.synchronized, clock.boottime)
    sink = build_sink(config, settings(receiver.url), data_dir=tmp_path, external_time=external)
    try:
        assert sink.send(sink.encode(readings(0, 1)), Secret(PW)).outcome is Outcome.DELIVERED
        return answers(receiver, receiver.request("1012", f"SystemTime={said}",
                                                  qn="20260301120000001")), external
    finally:
        sink.close()


def test_a_time_set_is_taken_as_the_true_time_when_ntp_has_not_synchronised(
        tmp_path: Path, receiver: Hj212Receiver) -> None:
    clock = FakeClock(synced=False)
    got, external = time_set(tmp_path, receiver, clock, "20260301120000")
    assert got[-1].fields["CP"] == "ExeRtn=1"
    anchor = external.anchor()
    assert anchor is not None and anchor.wall_ns == int(
        datetime(2026, 3, 1, 12, tzinfo=SHANGHAI).timestamp()) * NS
    assert anchor.boot_ns == int(clock.boottime() * NS)


@pytest.mark.parametrize("said", ["99991231235959", "20000101000000"])
def test_an_implausible_time_set_is_refused_and_holds_nothing_back(
        tmp_path: Path, receiver: Hj212Receiver, said: str,
        caplog: pytest.LogCaptureFixture) -> None:
    got, external = time_set(tmp_path, receiver, FakeClock(synced=False), said)
    assert got[-1].fields["CP"] == "ExeRtn=3"
    assert external.anchor() is None  # readings are not stamped with it, nor held for it
    assert f"sets the time to {said}; refused: not a plausible time" in caplog.text


def test_a_failed_sensors_codes_go_flagged_d_without_a_value(
        station: Station, receiver: Hj212Receiver) -> None:
    from agent.runtime.health import SENSOR_STATE
    from agent.sampling.sampler import State

    t = T0 + 5 * NS
    failed = Reading("dust", "sensor_state", float(SENSOR_STATE[State.FAILED]), "code", t, 0,
                     "b", True)
    ok = Reading("air", "sensor_state", float(SENSOR_STATE[State.OK]), "code", t, 0, "b", True)
    station.deliver(readings(0, 1) + [failed, ok])
    dead = receiver.data_packets()[-1]
    # The PMSA003I's three codes; the healthy BME280 adds nothing.
    assert dead.flags == {"a34005": "D", "a34004": "D", "a34002": "D"} and dead.values == {}


def test_status_counts_the_minute_hourly_and_daily_data_the_platform_has_not_acknowledged(
        station: Station, receiver: Hj212Receiver, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from agent.cli.main import main

    station.deliver(readings(0, 200))  # 08:00 to 08:33:10: three 10-minute intervals, acked
    receiver.ack_limit = receiver.acked  # then the platform stops acknowledging
    station.outbox.append(readings(200, 70))  # to 08:44:50: closes 08:30-08:40
    assert station.worker.step().outcome is Outcome.RETRY
    (tmp_path / "pw").write_text(PW)
    config = tmp_path / "station.toml"
    config.write_text(STATION + f'[[uplink]]\nname = "bureau"\nurl = "{receiver.url}"\n'
                      f'mn = "{MN}"\npassword_file = "{tmp_path / "pw"}"\n')
    args = ["status", "--config", str(config), "--data-dir", str(tmp_path)]
    assert main([*args, "--json"]) == 0
    (uplink,) = json.loads(capsys.readouterr().out)["uplinks"]
    assert uplink["aggregates_waiting"] == 1
    assert main(args) == 0
    shown = capsys.readouterr().out
    assert "minute/hourly/daily data: 1 waiting" in shown
    assert "not delivering: server does not acknowledge" in shown  # reached, not unreachable


def test_status_says_nothing_of_an_archive_it_cannot_read_and_still_answers(
        tmp_path: Path, receiver: Hj212Receiver, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    from agent.cli.main import main

    unit = Station(tmp_path, receiver.url)
    unit.deliver(readings(0, 70))
    unit.close()
    archive = tmp_path / "hj212-bureau.sqlite"
    for leftover in (Path(f"{archive}-wal"), Path(f"{archive}-shm")):
        leftover.unlink(missing_ok=True)
    archive.write_bytes(b"not a database" * 100)  # damaged
    (tmp_path / "pw").write_text(PW)
    config = tmp_path / "station.toml"
    config.write_text(STATION + f'[[uplink]]\nname = "bureau"\nurl = "{receiver.url}"\n'
                      f'mn = "{MN}"\npassword_file = "{tmp_path / "pw"}"\n')
    assert main(["status", "--config", str(config), "--data-dir", str(tmp_path), "--json"]) == 0
    (uplink,) = json.loads(capsys.readouterr().out)["uplinks"]
    assert uplink["aggregates_waiting"] is None
    assert "cannot read the HJ 212 archive" in caplog.text
