"""HJ 212-2017: the packet layer against the standard's conformance vector, real-time data
(CN 2011) against stored readings, and delivery through the worker to a receiver written from
the standard (tests/hj212_receiver.py) that can misbehave."""

from __future__ import annotations

import random
import tomllib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hj212_receiver import Hj212Receiver

from agent.config import UplinkConfig, parse_config
from agent.config.hj212 import Hj212Config
from agent.core.credentials import CredentialError, Secret, load_token
from agent.core.errors import ConfigError
from agent.core.reading import Reading
from agent.store.outbox import Outbox, Subscriber
from agent.uplink.hj212.archive import CN_DAY, CN_HOUR, CN_MINUTE, Archive, Kind
from agent.uplink.hj212.codes import CodeTable, data_flag, number
from agent.uplink.hj212.packet import (
    MAX_SEGMENT,
    PacketError,
    Reader,
    crc16,
    frame,
    parse_segment,
    unframe,
)
from agent.uplink.hj212.realtime import Realtime
from agent.uplink.hj212.transport import Hj212Sink
from agent.uplink.sink import Outcome
from agent.uplink.transports import build_sink, transport_for
from agent.uplink.worker import Uplink, state_file
from drivers.base import Quality
from drivers.sim.clock import FakeClock

VECTOR = ("QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;Flag=5;"
          "CP=&&RtdInterval=30&&")
NS = 1_000_000_000
T0 = 1_767_225_600 * NS + 223_000_000  # 2026-01-01 00:00:00.223 UTC = 08:00:00.223 in Shanghai
PW = "123456"
MN = "010000A8900016F000169DC0"
SHANGHAI = ZoneInfo("Asia/Shanghai")
STATION = ('[unit]\nid = "u1"\nsite = "Roof"\n[[sensor]]\nid = "air"\ndriver = "bme280"\n'
           'address = 0x76\n[[sensor]]\nid = "dust"\ndriver = "pmsa003i"\naddress = 0x12\n')


def sample(i: int, *, quality: int = 0) -> list[Reading]:
    """One BME280 sample and one PMSA003I sample, each its own sample time."""
    t = T0 + i * 10 * NS
    air = [Reading("air", q, v, u, t, i, "boot-1", True, quality)
           for q, v, u in (("temperature", 21.5 + i / 8, "°C"), ("humidity", 40.25, "%RH"),
                           ("pressure", 1013.25 + i, "hPa"))]
    dust = [Reading("dust", q, v, "µg/m³", t + NS // 2, i, "boot-1", True)
            for q, v in (("pm1", 3.0 + i), ("pm2_5", 8.0 + i), ("pm10", 12.0))]
    return air + dust


def settings(url: str, **hj: object) -> UplinkConfig:
    extra = {"overtime": 0.3, "recount": 2, **hj}
    return UplinkConfig(url=url, name="bureau", format="hj212", backoff_min=0.05,
                        backoff_max=1.0, connect_timeout=1.0,
                        hj212=Hj212Config(mn=MN, **extra))  # type: ignore[arg-type]


def sink_for(url: str, data_dir: Path, **hj: object) -> Hj212Sink:
    config = parse_config(tomllib.loads(STATION), source="t.toml")
    sink = build_sink(config, settings(url, **hj), data_dir=data_dir)
    assert isinstance(sink, Hj212Sink)
    return sink


@pytest.fixture
def receiver() -> Iterator[Hj212Receiver]:
    with Hj212Receiver(password=PW) as platform:
        yield platform


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    with Outbox(tmp_path / "outbox.sqlite", max_bytes=64 * 1024**2,
                subscribers=[Subscriber("bureau")]) as box:
        yield box


def uplink(outbox: Outbox, sink: Hj212Sink, tmp_path: Path, url: str, **hj: object) -> Uplink:
    return Uplink(outbox, sink, settings(url, **hj), clock=FakeClock(),
                  token=lambda: Secret(PW), state_path=tmp_path / state_file("bureau"),
                  rng=random.Random(5))


# --- the packet layer ------------------------------------------------------------------------


def test_the_standards_conformance_vector() -> None:
    assert f"{crc16(VECTOR.encode('ascii')):04X}" == "1C80"
    packet = frame(VECTOR)
    assert packet == b"##0101" + VECTOR.encode() + b"1C80\r\n"
    segment = parse_segment(unframe(packet))
    assert (segment.qn, segment.st, segment.cn, segment.mn, segment.flag, segment.cp) == (
        "20160801085857223", "32", "1062", MN, 5, "RtdInterval=30")
    assert segment.render() == VECTOR


@pytest.mark.parametrize(("packet", "words"), [
    (b"##0102" + VECTOR.encode() + b"1C80\r\n", "the length says 102"),
    (b"##0101" + VECTOR.encode() + b"1C81\r\n", "CRC 1C81 does not match"),
    (b"##0101" + VECTOR.encode() + b"1c80\r\n", "uppercase hex"),
    (b"#!0101" + VECTOR.encode() + b"1C80\r\n", "starts with ##"),
    (frame(VECTOR.replace("ST=32", "ST=3X")), "ST='3X'"),
    (frame(VECTOR.replace("CP=&&RtdInterval=30&&", "CP=&&RtdInterval=30")), "CP=&&"),
    (frame(VECTOR.replace("PW=100000", "PW=1000000")), "PW breaks"),
])
def test_a_bad_packet_is_refused_saying_why(packet: bytes, words: str) -> None:
    with pytest.raises(PacketError, match=words.replace("(", r"\(")) as caught:
        parse_segment(unframe(packet))
    assert isinstance(caught.value, ValueError)


def test_a_segment_never_shows_its_password() -> None:
    segment = parse_segment(VECTOR.replace("PW=100000", "PW=s3Cr3t"))
    assert segment.pw == "s3Cr3t"
    assert "s3Cr3t" not in repr(segment) and "s3Cr3t" not in str(segment)
    assert "s3Cr3t" in segment.render()  # on the wire, where it belongs


@pytest.mark.parametrize("segment", [
    VECTOR.replace("PW=100000", "PW=s3Cr3t").replace("CP=&&RtdInterval=30&&", "CP=&&x"),
    VECTOR.replace("PW=100000", "PWs3Cr3t"),
])
def test_a_bad_segment_is_refused_without_quoting_its_password(segment: str) -> None:
    with pytest.raises(PacketError) as caught:
        parse_segment(segment)
    assert "s3Cr3t" not in str(caught.value) and "PW" in str(caught.value)


def test_the_reader_holds_at_most_one_packet_and_cuts_them_out_of_a_stream() -> None:
    reader = Reader()
    packet = frame(VECTOR)
    assert reader.feed(packet[:50]) == [] and reader.pending == 50
    assert reader.feed(packet[50:] + packet) == [packet, packet]
    with pytest.raises(PacketError, match="at most 1024"):
        Reader().feed(b"##9999")
    with pytest.raises(PacketError, match="##"):
        Reader().feed(b"GET / HTTP/1.1\r\n")


# --- real-time data --------------------------------------------------------------------------


def realtime(codes: tuple[tuple[str, str], ...] = (),
             units: tuple[tuple[str, str], ...] = ()) -> Realtime:
    return Realtime(st=22, mn=MN, zone=SHANGHAI, table=CodeTable(codes, units))


def test_rtd_values_are_the_readings_after_unit_conversion_in_local_time() -> None:
    readings = sample(3)
    groups = list(realtime().groups(readings))
    assert [g.readings for g in groups] == [6]  # one message per second: both sensors
    (segment,) = groups[0].segments
    local = datetime.fromtimestamp(readings[0].time_ns / NS, SHANGHAI)
    assert segment.qn.startswith(local.strftime("%Y%m%d%H%M%S") + "")
    assert segment.qn[:14] == "20260101080030"
    assert segment.cp == ("DataTime=20260101080030;a01001-Rtd=21.875,a01001-Flag=N;"
                          "a01002-Rtd=40.25,a01002-Flag=N;a01006-Rtd=101.625,a01006-Flag=N;"
                          "a34005-Rtd=6,a34005-Flag=N;a34004-Rtd=11,a34004-Flag=N;"
                          "a34002-Rtd=12,a34002-Flag=N")
    assert float(segment.cp.split("a01006-Rtd=")[1].split(",")[0]) == readings[2].value / 10
    again = list(realtime().groups(readings))
    assert again == groups  # a replay is identical, QN and all
    cut = list(realtime().groups(readings[:4]))  # a batch boundary inside the second
    assert cut[0].segments[0].qn != segment.qn  # other content, another QN


def test_a_real_time_qn_is_never_an_aggregates_of_the_same_data_time(tmp_path: Path) -> None:
    day = T0 - 8 * 3600 * NS  # 00:00:00.223 in Shanghai: a minute, an hour and a day start
    failed = Reading("dust", "sensor_state", 2.0, "code", day, 0, "b", True)
    readings = [Reading("air", q, v, u, day, 0, "b", True) for q, v, u in (
        ("temperature", 21.5, "°C"), ("humidity", 40.0, "%RH"), ("pressure", 1013.0, "hPa"),
        ("pm2_5", 8.0, "µg/m³"), ("pm10", 12.0, "µg/m³"), ("pm1", 3.0, "µg/m³"),
        ("co2", 612.0, "ppm"), ("illuminance", 90.0, "lx"))]
    station = Realtime(st=22, mn=MN, zone=SHANGHAI, codes_of={"dust": ["a99002"]},
                       table=CodeTable((("illuminance", "a99001"),)))
    # Every code the station sends, and a failed sensor's code the table lacks, goes first once.
    # (The CRC rule of old never met the aggregates either, by luck: appendix A's CRC has 256
    # values, none 31, 51 or 61 modulo 1000.)
    groups = [next(station.groups([*readings[i:], *readings[:i]]))
              for i in range(len(readings))] + [next(station.groups([failed, *readings]))]
    firsts = {g.segments[0].cp.split(";")[1].split("-")[0] for g in groups}
    assert firsts == {"a01001", "a01002", "a01006", "a34004", "a34002", "a34005", "a05001",
                      "a99001", "a99002"}
    archive = Archive(tmp_path / "hj212.sqlite", zone=SHANGHAI, expected={},
                      kinds=[Kind(CN_MINUTE, 1), Kind(CN_HOUR), Kind(CN_DAY)])
    archive.add(groups[0].samples, day + 2 * 86400 * NS)  # closes the minute, hour and day
    aggregates = {m.qn for m in archive.pending(10)}
    archive.close()
    realtime_qns = {g.segments[0].qn for g in groups}
    assert {qn[:14] for qn in aggregates} == {qn[:14] for qn in realtime_qns} == {
        "20260101000000"}
    assert len(aggregates) == 3 and len(realtime_qns) == len(groups) == 9
    assert not aggregates & realtime_qns


def test_every_part_of_a_second_a_batch_boundary_can_cut_has_a_qn_of_its_own() -> None:
    # The CRC rule of old gave both parts of sample(22) cut after its 3rd or 4th reading one QN
    # (found by trying every cut of sample(0) to sample(3000): about 1 cut in 100 collided).
    readings = sample(22)
    parts = [readings[i:j] for i in range(len(readings)) for j in range(i + 1, len(readings) + 1)]
    groups = [list(realtime().groups(part)) for part in parts]
    # The two halves of any cut, and a part against the parts a restart may cut anew.
    qns = {segment.qn for (group,) in groups for segment in group.segments}
    assert len(qns) == len(parts) == 21
    assert {qn[:14] for qn in qns} == {"20260101080340"}
    assert [list(realtime().groups(part)) for part in parts] == groups  # a replay: same bytes


def test_co2_goes_in_mg_per_m3_at_the_samples_temperature_and_pressure_or_in_ppm() -> None:
    t = T0
    air = [Reading("co2", "co2", 612.0, "ppm", t, 0, "b", True),
           Reading("co2", "temperature", 20.0, "°C", t, 0, "b", True),
           Reading("air", "pressure", 950.0, "hPa", t, 0, "b", True)]
    (group,) = realtime().groups(air)
    expected = 612.0 * 44.01 / (8.314462618 * 293.15 / 95.0)
    assert f"a05001-Rtd={number(expected)}," in group.segments[0].cp
    (alone,) = realtime().groups(air[:1])  # no temperature or pressure: 25 °C, 101.325 kPa
    assert f"a05001-Rtd={number(612.0 * 44.01 / (8.314462618 * 298.15 / 101.325))}," in (
        alone.segments[0].cp)
    (ppm,) = realtime(units=(("a05001", "ppm"),)).groups(air)
    assert "a05001-Rtd=612,a05001-Flag=N" in ppm.segments[0].cp
    (hpa,) = realtime(units=(("a01006", "hPa"),)).groups(air)
    assert "a01006-Rtd=950,a01006-Flag=N" in hpa.segments[0].cp


def test_a_quantity_without_a_code_is_not_sent_and_codes_can_be_added() -> None:
    lux = Reading("light", "illuminance", 612.0, "lx", T0, 0, "b", True)
    assert list(realtime().groups([lux]))[0].segments == ()
    (mapped,) = realtime(codes=(("illuminance", "a99001"),)).groups([lux])
    assert mapped.segments[0].cp.endswith("a99001-Rtd=612,a99001-Flag=N")
    soil = Reading("soil", "temperature", 9.5, "°C", T0, 0, "b", True)
    (own,) = realtime(codes=(("soil.temperature", "a99002"),)).groups([soil])
    assert own.segments[0].cp.endswith("a99002-Rtd=9.5,a99002-Flag=N")


@pytest.mark.parametrize(("quality", "value", "flag"), [
    (0, 1.0, "N"), (Quality.SPIKE, 1.0, "N"), (Quality.CLOCK_RESTAMPED, 1.0, "N"),
    (Quality.OUT_OF_RANGE, 1.0, "T"), (Quality.CLIPPED, 1.0, "T"), (Quality.WARMUP, 1.0, "F"),
    (Quality.STUCK, 1.0, "D"), (Quality.CLOCK_UNSYNCED | Quality.CLIPPED, 1.0, "D"),
    (1 << 12, 1.0, "D"), (0, float("nan"), "D"),
    (Quality.MAINTENANCE, 1.0, "M"), (Quality.MAINTENANCE | Quality.STUCK, float("nan"), "M"),
])
def test_data_flags_from_quality(quality: int, value: float, flag: str) -> None:
    assert data_flag(quality, value) == flag


def test_a_long_message_is_split_into_packets_the_receiver_accepts(
        receiver: Hj212Receiver, tmp_path: Path) -> None:
    codes = [(f"probe_{i}", f"w{i:05d}") for i in range(120)]
    readings = [Reading("probe", q, 1000.0 + i / 3, "x", T0, 0, "b", True)
                for i, (q, _) in enumerate(codes)]
    sink = sink_for(receiver.url, tmp_path, codes=tuple(codes))
    try:
        (group,) = list(sink.realtime.groups(readings))
        assert len(group.segments) > 1
        for number, segment in enumerate(group.segments, start=1):
            assert len(segment.render()) <= MAX_SEGMENT
            assert (segment.flag, segment.pnum, segment.pno) == (7, len(group.segments), number)
            assert segment.cp.startswith("DataTime=20260101080000;")
        answer = sink.send(sink.encode(readings), Secret(PW))
    finally:
        sink.close()
    assert answer.outcome is Outcome.DELIVERED, answer
    assert receiver.errors == []
    got = receiver.data_packets()
    assert len(got) == len(group.segments)
    values = {code: value for packet in got for code, value in packet.values.items()}
    assert values == {code: round(1000.0 + i / 3, 4) for i, (_, code) in enumerate(codes)}


# --- delivery through the worker -------------------------------------------------------------


def test_the_worker_delivers_stored_readings_to_the_platform(
        receiver: Hj212Receiver, outbox: Outbox, tmp_path: Path) -> None:
    readings = [r for i in range(20) for r in sample(i)]
    outbox.append(readings)
    sink = sink_for(receiver.url, tmp_path)
    worker = uplink(outbox, sink, tmp_path, receiver.url)
    try:
        step = worker.step()
    finally:
        sink.close()
    assert step.outcome is Outcome.DELIVERED and step.delivered == len(readings)
    assert outbox.stats().backlog == 0 and receiver.errors == []
    got = receiver.data_packets()
    assert len(got) == 20  # one packet per sample time
    first = got[0]
    assert first.fields["MN"] == MN and first.fields["ST"] == "22"
    assert first.fields["Flag"] == "5"  # HJ 212-2017, acknowledgement wanted
    by_time = {(p.data_time, code): v for p in got for code, v in p.values.items()}
    for r in readings:
        local = datetime.fromtimestamp(r.time_ns // NS, SHANGHAI).strftime("%Y%m%d%H%M%S")
        code = {"temperature": "a01001", "humidity": "a01002", "pressure": "a01006",
                "pm1": "a34005", "pm2_5": "a34004", "pm10": "a34002"}[r.quantity]
        expected = r.value / 10 if r.quantity == "pressure" else r.value
        assert by_time[(local, code)] == round(expected, 4)


@pytest.mark.parametrize("mode", ["no_ack", "wrong_qn"])
def test_withheld_acks_resend_byte_identical_packets_and_delete_nothing(
        receiver: Hj212Receiver, outbox: Outbox, tmp_path: Path, mode: str) -> None:
    receiver.mode = mode
    outbox.append(sample(0))
    sink = sink_for(receiver.url, tmp_path, recount=2)
    worker = uplink(outbox, sink, tmp_path, receiver.url, recount=2)
    try:
        step = worker.step()
    finally:
        sink.close()
    assert step.outcome is Outcome.RETRY and step.delivered == 0
    assert step.answer is not None and "no acknowledgement (CN 9014)" in step.answer.detail
    got = receiver.data_packets()
    assert len(got) == 3  # the packet and its two resends
    assert got[0].raw == got[1].raw == got[2].raw
    assert outbox.stats().backlog == 6


def test_a_late_ack_answers_the_resent_packet_and_nothing_is_sent_twice_more(
        receiver: Hj212Receiver, outbox: Outbox, tmp_path: Path) -> None:
    receiver.mode, receiver.late_s = "late_ack", 0.45  # after overtime (0.3 s), before 0.6 s
    outbox.append(sample(0)[:3])
    sink = sink_for(receiver.url, tmp_path, recount=2)
    worker = uplink(outbox, sink, tmp_path, receiver.url, recount=2)
    try:
        step = worker.step()
    finally:
        sink.close()
    assert step.outcome is Outcome.DELIVERED and outbox.stats().backlog == 0
    got = receiver.data_packets()
    assert len(got) == 2 and got[0].raw == got[1].raw  # one byte-identical resend


def test_acknowledged_sample_times_are_acked_and_the_rest_waits(
        receiver: Hj212Receiver, outbox: Outbox, tmp_path: Path) -> None:
    receiver.ack_limit = 2
    outbox.append([r for i in range(3) for r in sample(i)])
    sink = sink_for(receiver.url, tmp_path, recount=0)
    worker = uplink(outbox, sink, tmp_path, receiver.url, recount=0)
    try:
        step = worker.step()
        assert step.outcome is Outcome.RETRY and step.delivered == 12
        assert outbox.stats().backlog == 6
        receiver.ack_limit = None
        step = worker.step()
    finally:
        sink.close()
    assert step.outcome is Outcome.DELIVERED and outbox.stats().backlog == 0


def test_receiver_down_then_up_everything_arrives(outbox: Outbox, tmp_path: Path) -> None:
    with Hj212Receiver(password=PW) as first:
        port = first.port
    url = f"hj212://127.0.0.1:{port}"
    readings = [r for i in range(10) for r in sample(i)]
    outbox.append(readings)
    sink = sink_for(url, tmp_path)
    worker = uplink(outbox, sink, tmp_path, url)
    try:
        down = worker.step()
        assert down.outcome is Outcome.RETRY and outbox.stats().backlog == len(readings)
        assert down.answer is not None and "127.0.0.1" in down.answer.detail
        with Hj212Receiver(port=port, password=PW) as platform:
            up = worker.step()
            assert up.outcome is Outcome.DELIVERED and outbox.stats().backlog == 0
            assert len(platform.data_packets()) == 10 and platform.errors == []
    finally:
        sink.close()


def test_a_disconnect_mid_packet_is_retried_on_a_new_connection(
        receiver: Hj212Receiver, outbox: Outbox, tmp_path: Path) -> None:
    receiver.mode = "disconnect"
    outbox.append(sample(0))
    sink = sink_for(receiver.url, tmp_path)
    worker = uplink(outbox, sink, tmp_path, receiver.url)
    try:
        assert worker.step().outcome is Outcome.RETRY
        assert worker.step().outcome is Outcome.DELIVERED
    finally:
        sink.close()
    assert outbox.stats().backlog == 0 and receiver.errors == []


def test_no_password_pauses_delivery_with_one_clear_line(tmp_path: Path) -> None:
    sink = sink_for("hj212://127.0.0.1:9", tmp_path)
    try:
        answer = sink.send(b"", None)
        assert answer.outcome is Outcome.AUTH and "password (PW)" in answer.detail
        assert sink.send(b"", Secret("toolong7")).outcome is Outcome.AUTH
    finally:
        sink.close()
    missing = tmp_path / "hj212-pw"
    with pytest.raises(CredentialError) as caught:
        load_token(missing, {}, "bureau", what="HJ 212 password (PW)",
                   key="uplink.password_file")
    assert str(caught.value) == (f"cannot read the HJ 212 password (PW) file {missing}: No such "
                                 "file or directory; create it (one line, readable by the "
                                 "agent's user only) or fix uplink.password_file")


# --- config ----------------------------------------------------------------------------------


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(tomllib.loads(STATION + text), source="t.toml")
    return list(caught.value.problems)


BUREAU = '[[uplink]]\nname = "bureau"\nurl = "hj212://203.0.113.9:6000"\n'


def test_an_hj212_upstream_to_any_host_in_plain_text() -> None:
    text = BUREAU + (f'mn = "{MN}"\nst = 22\npassword_file = "/etc/envagent/hj212-pw"\n'
                     'timezone = "Asia/Urumqi"\novertime = "15s"\nrecount = 2\n'
                     'codes = { pm2_5 = "a34004", humidity = "a01002" }\n')
    config = parse_config(tomllib.loads(STATION + text), source="t.toml")
    (up,) = config.uplinks
    assert up.hj212 == Hj212Config(mn=MN, st=22, timezone="Asia/Urumqi", overtime=15.0,
                                   recount=2, codes=(("pm2_5", "a34004"),
                                                     ("humidity", "a01002")))
    assert up.token_file == Path("/etc/envagent/hj212-pw") and up.format == "hj212"
    assert transport_for(up).name == "HJ 212"


@pytest.mark.parametrize(("lines", "problem"), [
    ('mn = "%s"\n' % ("A" * 25), 'mn = "' + "A" * 25 + '": is 25 characters; HJ 212-2017 '
     "allows 24 at most"),
    (f'mn = "{MN}"\ncodes = {{ pm2_5 = "PM25" }}\n', "codes = { pm2_5 = \"PM25\" }: pm2_5 = "
     "'PM25' is not a pollutant code of HJ 212-2017 (a lowercase letter and 5 digits, such "
     'as "a34004")'),
    (f'mn = "{MN}"\ntimezone = "Asia/Beijing"\n', 'timezone = "Asia/Beijing": unknown time '
     'zone; expected a time zone name such as "Asia/Shanghai"'),
    (f'mn = "{MN}"\nformat = "json"\n', "format: does not apply to an hj212:// upstream: HJ 212 "
     "has its own format (real-time data, CN 2011)"),
    (f'mn = "{MN}"\npw = "123456"\n', "pw: a secret never goes in the config file; put the "
     "HJ 212 password (PW) in a file"),
    ("", "mn: missing; add it"),
    (f'mn = "{MN}"\ncodes = {{ co2 = "a05001" }}\n', 'codes: no sensor of this station '
     'reports "co2"; expected quantities such as temperature, humidity, pressure, pm1, pm2_5, '
     "pm10"),
    (f'mn = "{MN}"\ncodes = {{ "dust.temperature" = "a99001" }}\n', 'no sensor of this '
     'station reports "dust.temperature"'),
    (f'mn = "{MN}"\nminute_interval = "7m"\n', 'minute_interval = "7m": \'7m\' does not divide '
     'an hour; expected a number of minutes dividing an hour, such as "10m" (1m to 60m)'),
    (f'mn = "{MN}"\nunits = {{ a34004 = "mg/m³" }}\n', "'a34004': only a01006, a05001 can be "
     "sent in more than one unit"),
    (f'mn = "{MN}"\nunits = {{ a05001 = "ppb" }}\n', "a05001 = 'ppb': expected one of mg/m³, "
     "ppm"),
    (f'mn = "{MN}"\nsend = ["realtime", "weekly"]\n', "send = [\"realtime\", \"weekly\"]: "
     "expected a list of 'realtime', 'minute', 'hour', 'day'"),
    (f'mn = "{MN}"\nrealtime_interval = "10s"\n', "expected 0 (every sample time) or 30s to "
     "3600s (HJ 212-2017 RtdInterval)"),
])
def test_a_bad_hj212_setting_is_one_clear_line(lines: str, problem: str) -> None:
    (line,) = problems(BUREAU + lines)
    assert problem in line, line
    assert line.startswith("t.toml: uplink 'bureau': ")


def test_hj212_keys_belong_to_hj212_upstreams_and_a_port_is_needed() -> None:
    (line,) = problems('[[uplink]]\nname = "n"\nurl = "https://x.org/write"\nmn = "A1"\n')
    assert line.endswith("mn: applies to hj212:// upstreams only (HJ 212-2017)")
    (line,) = problems('[[uplink]]\nname = "n"\nurl = "hj212://x.org"\nmn = "A1"\n')
    assert "no port (HJ 212 has no default port: ask the platform)" in line


def test_a_reading_sent_with_an_unsynchronised_clock_is_flagged_d(
        receiver: Hj212Receiver, tmp_path: Path) -> None:
    unsynced = [r._replace(synced=False) for r in sample(0)]
    sink = sink_for(receiver.url, tmp_path)
    try:
        assert sink.send(sink.encode(unsynced), Secret(PW)).outcome is Outcome.DELIVERED
    finally:
        sink.close()
    (got,) = receiver.data_packets()
    assert set(got.flags.values()) == {"D"}
