"""Health upstream: the values tell the truth, travel the data's durable path, and stay
queryable per sensor after the line-protocol encoding."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from httpfaults import FaultServer, parse_line

from agent.config import HealthConfig, UplinkConfig, parse_config
from agent.core.atomic import DamagedFileError
from agent.core.errors import ConfigError
from agent.core.reading import Reading, upstream_sensor
from agent.core.timebase import BOOT_ID_PATH, NS, current_boot, read_boot_id
from agent.runtime.health import (
    HEALTH_SENSOR,
    HealthReporter,
    read_cpu_temperature,
    read_write_bytes,
)
from agent.sampling.daemon import Agent
from agent.store.outbox import Outbox, Subscriber
from agent.uplink.encoders import make_encoder
from agent.uplink.http import HttpSink
from agent.uplink.httpwire import make_session
from agent.uplink.lineprotocol import LineProtocolEncoder
from agent.uplink.worker import Uplink
from drivers.base import Driver
from drivers.bme280 import BME280
from drivers.sim.bme280 import BME280Model
from drivers.sim.clock import FakeClock
from drivers.sim.simbus import Nack, SimBus

ONE = [Subscriber("default")]  # the one upstream of these tests


ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "envagent.example.toml"
SITE = "汉中 wetland, east"
UNIT = {"id": "demo-001", "site": SITE}
SENSORS = [
    {"id": "air", "driver": "bme280", "address": 0x76, "interval": "10s"},
    {"id": "porch-2", "driver": "bme280", "address": 0x77, "interval": "10s"},
]
CONFIG = parse_config({"unit": UNIT, "sensor": SENSORS}, source="test.toml")
DRIVERS = {"air": "bme280", "porch-2": "bme280"}
PROC_IO = "rchar: 9\nwchar: 9\nsyscr: 1\nsyscw: 1\nread_bytes: 0\nwrite_bytes: 1310720\n" \
          "cancelled_write_bytes: 4096\n"
SAFE_NAME = re.compile(r"[a-z][a-z0-9_]*")  # a QuestDB column, a bare MetricsQL metric name


@dataclass
class Station:
    agent: Agent
    outbox: Outbox
    bus: SimBus
    clock: FakeClock
    reporter: HealthReporter


@pytest.fixture
def station(tmp_path: Path) -> Iterator[Station]:
    yield from make_station(tmp_path)


def make_station(tmp_path: Path, *, synced: bool | None = True,
                 thermal: str | None = "48312\n") -> Iterator[Station]:
    clock = FakeClock(start=100.0, wall=1_767_225_600.0, synced=synced)
    bus = SimBus(1, clock=clock)
    for address in (0x76, 0x77):
        bus.attach(address, BME280Model(clock=clock))
    drivers: list[Driver] = [BME280(bus, s.address, clock=clock) for s in CONFIG.sensors]
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "io").write_text(PROC_IO)
    if thermal is not None:
        (tmp_path / "temp").write_text(thermal)
    with Outbox(tmp_path / "outbox.sqlite", max_bytes=4 * 1024**2, subscribers=ONE) as outbox:
        agent = Agent(CONFIG, drivers, outbox=outbox, clock=clock, boot_id="b00t")
        reporter = HealthReporter(agent, outbox, (), clock=clock, boot_id="b00t",
                                  io_path=tmp_path / "io", thermal_path=tmp_path / "temp")
        yield Station(agent, outbox, bus, clock, reporter)


def values(readings: list[Reading]) -> dict[tuple[str, str], float]:
    found = {(r.sensor, r.quantity): r.value for r in readings}
    assert len(found) == len(readings), "one reading per sensor and quantity"
    return found


def old_readings(count: int, *, start_ns: int) -> list[Reading]:
    return [Reading("air", "temperature", 20.0 + i, "°C", start_ns + i * NS, i * NS, "b00t", True)
            for i in range(count)]


# --- the values --------------------------------------------------------------------------------


def test_a_sample_reports_the_unit_and_every_sensor_with_one_time(station: Station) -> None:
    station.clock.advance(42.0)
    readings = station.reporter.sample()
    assert values(readings) == {
        (HEALTH_SENSOR, "uptime"): 42.0,
        (HEALTH_SENSOR, "backlog"): 0.0,
        (HEALTH_SENSOR, "backlog_bytes"): station.outbox.stats().backlog_bytes,
        (HEALTH_SENSOR, "backlog_age"): 0.0,
        (HEALTH_SENSOR, "dropped"): 0.0,
        (HEALTH_SENSOR, "quarantined"): 0.0,
        (HEALTH_SENSOR, "storage_failing"): 0.0,
        (HEALTH_SENSOR, "clock_synced"): 1.0,
        (HEALTH_SENSOR, "disk_written"): 1310720.0,
        (HEALTH_SENSOR, "cpu_temperature"): 48.312,
        ("air", "sensor_state"): 3.0,  # starting: not set up yet
        ("air", "sensor_errors"): 0.0,
        ("porch-2", "sensor_state"): 3.0,
        ("porch-2", "sensor_errors"): 0.0,
    }
    clock = station.clock
    assert {(r.time_ns, r.boot_ns, r.boot_id, r.synced, r.quality) for r in readings} == {
        (int(clock.time() * NS), int(clock.boottime() * NS), "b00t", True, 0)}
    units = {r.quantity: r.unit for r in readings}
    assert units["uptime"] == units["backlog_age"] == "s"
    assert units["backlog_bytes"] == units["disk_written"] == "B"
    assert units["cpu_temperature"] == "°C"


def test_sensor_failures_are_counted_and_change_the_state(station: Station) -> None:
    air, porch = station.agent.workers
    assert air._try_setup() and porch._try_setup()
    station.bus.inject(0x76, Nack(count=1))
    air.sample()  # a failed read: warning
    porch.sample()
    health = values(station.reporter.sample())
    assert (health[("air", "sensor_state")], health[("air", "sensor_errors")]) == (1.0, 1.0)
    assert (health[("porch-2", "sensor_state")], health[("porch-2", "sensor_errors")]) == (0, 0)
    station.bus.inject(0x76, Nack(count=None))
    air.sample()
    air.sample()  # three in a row: failed
    health = values(station.reporter.sample())
    assert (health[("air", "sensor_state")], health[("air", "sensor_errors")]) == (2.0, 3.0)
    station.bus.clear_faults()
    assert air._try_setup()
    air.sample()  # recovered: the state clears, the count stays
    health = values(station.reporter.sample())
    assert (health[("air", "sensor_state")], health[("air", "sensor_errors")]) == (0.0, 3.0)


def test_backlog_values_equal_the_outbox_stats(station: Station) -> None:
    now_ns = int(station.clock.time() * NS)
    station.outbox.append(old_readings(10, start_ns=now_ns - 3600 * NS), dropped_before=4)
    taken = station.outbox.take(3, upstream="default")
    station.outbox.ack([taken[0].id], upstream="default")
    station.outbox.quarantine([taken[1].id, taken[2].id], "HTTP 400: bad", upstream="default")
    stats = station.outbox.stats()
    health = values(station.reporter.sample())
    assert health[(HEALTH_SENSOR, "backlog")] == stats.backlog == 7
    assert health[(HEALTH_SENSOR, "backlog_bytes")] == stats.backlog_bytes
    assert health[(HEALTH_SENSOR, "dropped")] == stats.dropped == 4
    assert health[(HEALTH_SENSOR, "quarantined")] == stats.rejected == 2
    assert stats.oldest_ns is not None
    assert health[(HEALTH_SENSOR, "backlog_age")] == (now_ns - stats.oldest_ns) / NS == 3597.0


def test_clock_state_is_reported_and_stamped(tmp_path: Path) -> None:
    for synced, reported in ((False, 0.0), (None, None)):
        for station in make_station(tmp_path / str(synced), synced=synced):
            readings = station.reporter.sample()
            assert values(readings).get((HEALTH_SENSOR, "clock_synced")) == reported
            assert {r.synced for r in readings} == {synced}


@pytest.mark.parametrize("thermal", [None, "", "not a number\n"])
def test_no_usable_thermal_zone_leaves_the_temperature_out(tmp_path: Path,
                                                          thermal: str | None) -> None:
    for station in make_station(tmp_path, thermal=thermal):
        assert (HEALTH_SENSOR, "cpu_temperature") not in values(station.reporter.sample())


def test_the_readers_of_proc_and_sysfs(tmp_path: Path) -> None:
    (tmp_path / "io").write_text(PROC_IO)
    assert read_write_bytes(tmp_path / "io") == 1310720
    (tmp_path / "io").write_text("rchar: 1\n")
    assert read_write_bytes(tmp_path / "io") is None
    assert read_write_bytes(tmp_path / "absent") is None
    (tmp_path / "temp").write_text("-5250\n")
    assert read_cpu_temperature(tmp_path / "temp") == -5.25
    assert read_cpu_temperature(tmp_path) is None  # a directory: EISDIR, like a zone that errs
    if Path("/proc/self/io").exists():  # the real one, on Linux
        written = read_write_bytes()
        assert isinstance(written, int) and written >= 0


def test_the_readers_of_proc_and_sysfs_are_bounded(tmp_path: Path) -> None:
    # not the kernel's file (a bind mount, a test, a damaged sysfs): a few bytes are read, never
    # megabytes, and a FIFO costs nothing (O_NONBLOCK), not a hung health thread
    (tmp_path / "io").write_text("rchar: 1\n" * 100_000 + PROC_IO)
    assert read_write_bytes(tmp_path / "io") is None
    (tmp_path / "temp").write_text("4" * 100 + "\n")
    assert read_cpu_temperature(tmp_path / "temp") is None
    os.mkfifo(tmp_path / "fifo")
    code = ("from pathlib import Path\n"
            "from agent.runtime.health import read_cpu_temperature, read_write_bytes\n"
            f"print(read_cpu_temperature(Path({str(tmp_path / 'fifo')!r})),\n"
            f"      read_write_bytes(Path({str(tmp_path / 'fifo')!r})))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=10, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.stdout.split() == ["None", "None"], result.stderr


def test_a_boot_id_file_is_read_with_a_bound(tmp_path: Path) -> None:
    (tmp_path / "boot_id").write_text("0b1c6f4e-7a3d-4c55-9d0e-2f6a8b7c9d10\n")
    assert read_boot_id(tmp_path / "boot_id") == "0b1c6f4e-7a3d-4c55-9d0e-2f6a8b7c9d10"
    (tmp_path / "boot_id").write_text("0" * 10_000_000)
    with pytest.raises(DamagedFileError, match="larger than 64 bytes"):
        read_boot_id(tmp_path / "boot_id")
    if BOOT_ID_PATH.exists():  # the real one, on Linux
        assert read_boot_id() == current_boot() and len(read_boot_id()) == 36


def make_uplink(url: str, outbox: Outbox) -> Uplink:
    settings = UplinkConfig(url=url, allow_insecure=True, connect_timeout=1.0,
                            deadline=2.0)
    encoder = make_encoder("influx", unit="demo-001", site=SITE, drivers=DRIVERS,
                           measurement=settings.measurement)
    sink = HttpSink(settings.url, encoder, make_session(), connect_timeout=1.0, deadline=2.0)
    return Uplink(outbox, sink, settings, clock=FakeClock(), token=lambda: None,
                  rng=random.Random(1))


def test_each_upstream_reports_its_state_and_its_share_of_the_backlog(station: Station) -> None:
    """Per upstream, as sensor envagent@<name> (sent tagged uplink=<name>): its state, and from
    its cursor its own backlog -- the unit's backlog stays the outbox's as a whole."""
    own = upstream_sensor("default")
    assert not any(s == own for s, _ in values(station.reporter.sample()))  # no upstream
    with FaultServer() as closed:
        url = closed.url()
    uplink = make_uplink(url, station.outbox)
    station.reporter.uplinks = (uplink,)
    assert values(station.reporter.sample())[(own, "uplink_state")] == 3.0  # starting
    station.outbox.append(old_readings(4, start_ns=0))
    uplink.step()  # connection refused
    health = values(station.reporter.sample())
    assert health[(own, "uplink_state")] == 1.0  # retrying
    assert health[(own, "backlog")] == health[(HEALTH_SENSOR, "backlog")] == 4
    assert (health[(own, "dropped")], health[(own, "quarantined")]) == (0, 0)


# --- the durable path --------------------------------------------------------------------------


def test_reports_go_through_the_writer_into_the_outbox(station: Station) -> None:
    assert station.reporter.report()
    station.agent.request_stop()
    station.agent.run()  # stops at once: drains what was submitted and commits it
    stored = [s.reading for s in station.outbox.take(100, upstream="default")]
    assert station.agent.committed == len(stored) == 14
    assert values(stored).keys() == values(station.reporter.sample()).keys()


def test_the_schedule_is_first_soon_then_every_interval(station: Station) -> None:
    batches: list[list[Reading]] = []

    def submit(readings: list[Reading]) -> None:
        batches.append(readings)
        if len(batches) == 3:
            station.reporter.stop()

    station.reporter.submit = submit
    started = station.clock.time()
    station.reporter.run(interval=300.0, first=5.0)  # the fake clock jumps instead of waiting
    times = [batch[0].time_ns / NS - started for batch in batches]
    assert times == [5.0, 305.0, 605.0]


def test_a_failing_sample_is_logged_once_and_skipped(station: Station,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    station.outbox.close()  # every stats() now fails
    assert not station.reporter.report() and not station.reporter.report()
    assert len([r for r in caplog.records if "cannot sample" in r.getMessage()]) == 1


# --- upstream ----------------------------------------------------------------------------------


def encoded_lines(readings: list[Reading], measurement: str = "envagent") -> list[str]:
    encoder = LineProtocolEncoder(unit="demo-001", site=SITE, drivers=DRIVERS,
                                  measurement=measurement)
    return encoder.lines(readings)


def test_line_protocol_puts_each_sensors_health_on_its_own_tags(station: Station) -> None:
    air, _ = station.agent.workers
    assert air._try_setup()
    station.bus.inject(0x76, Nack(count=1))
    air.sample()
    readings = station.reporter.sample()
    parsed = [parse_line(line) for line in encoded_lines(readings)]
    by_sensor = {tags["sensor"]: (measurement, tags, fields, stamp)
                 for measurement, tags, fields, stamp in parsed}
    assert len(parsed) == len(by_sensor) == 3  # the unit, air, porch-2
    stamp = readings[0].time_ns
    _, tags, fields, at = by_sensor["air"]
    assert tags == {"driver": "bme280", "sensor": "air", "site": SITE, "unit": "demo-001"}
    assert (fields, at) == ({"sensor_state": 1.0, "sensor_errors": 1.0}, stamp)
    assert by_sensor["porch-2"][2] == {"sensor_state": 3.0, "sensor_errors": 0.0}  # starting
    measurement, tags, fields, _ = by_sensor[HEALTH_SENSOR]
    assert measurement == "envagent" and "driver" not in tags
    assert fields["backlog"] == 0.0 and fields["cpu_temperature"] == 48.312
    for _, _, fields, _ in parsed:
        assert all(SAFE_NAME.fullmatch(name) for name in fields), fields


def test_a_real_victoriametrics_answers_per_sensor_queries(victoriametrics: Any,
                                                           station: Station) -> None:
    victoriametrics.delete_series('{__name__=~"healthit_.*"}')
    air, porch = station.agent.workers
    assert air._try_setup() and porch._try_setup()
    station.bus.inject(0x77, Nack(count=None))
    for _ in range(3):
        porch.sample()
    body = "".join(line + "\n" for line in encoded_lines(station.reporter.sample(), "healthit"))
    victoriametrics.write(body)
    states = victoriametrics.query_export('{__name__="healthit_sensor_state"}')
    assert [(s["metric"]["sensor"], s["metric"]["driver"], s["values"]) for s in states] == [
        ("air", "bme280", [0.0]), ("porch-2", "bme280", [2.0])]
    answer = requests.get(f"{victoriametrics.url}/api/v1/query", timeout=10, params={
        "query": 'max by (sensor) (last_over_time(healthit_sensor_errors[1y]))',
        "time": str(int(station.clock.time()) + 1)}).json()
    assert {r["metric"]["sensor"]: r["value"][1] for r in answer["data"]["result"]} == {
        "air": "0", "porch-2": "3"}
    (backlog,) = victoriametrics.query_export('{__name__="healthit_backlog"}')
    assert backlog["metric"]["sensor"] == HEALTH_SENSOR


# --- configuration -----------------------------------------------------------------------------


def config_problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config({"unit": UNIT, **data}, source="e.toml")
    return caught.value.problems


def test_health_interval_defaults_to_five_minutes_and_is_bounded() -> None:
    assert parse_config({"unit": UNIT}).health == HealthConfig(300.0)
    assert parse_config({"unit": UNIT, "health": {"interval": "30s"}}).health.interval == 30.0
    assert parse_config({"unit": UNIT, "health": {"interval": "1h"}}).health.interval == 3600.0
    assert config_problems({"health": {"interval": "10s"}}) == [
        'e.toml: health.interval = "10s": expected a duration from 30s to 1h']
    assert config_problems({"health": {"every": "1m"}}) == [
        "e.toml: health.every: unknown key; valid keys are interval"]
    assert config_problems({"health": 5}) == ["e.toml: health = 5: expected a table [health]"]


def test_no_sensor_may_take_the_reserved_id() -> None:
    sensor = {**SENSORS[0], "id": HEALTH_SENSOR}
    assert config_problems({"sensor": [sensor]}) == [
        "e.toml: sensor 'envagent': id = \"envagent\": reserved for the agent's own health "
        "readings; "
        "choose another id"]


def test_the_examples_health_section_uncommented_is_valid_and_shows_the_default() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    section = text.partition("# [health]\n")[2].partition("# ----")[0]
    body = "\n".join(line[2:] for line in section.splitlines() if " = " in line)
    assert body == 'interval = "5m"'
    assert "health" not in tomllib.loads(text)  # commented out: the default applies
    config = parse_config({"unit": UNIT, "health": tomllib.loads(body)})
    assert config.health == HealthConfig()


# --- the real `envagent run` -------------------------------------------------------------------


def test_envagent_run_stores_health_with_the_data(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        '[unit]\nid = "h-1"\nsite = "roof"\n[storage]\ncommit_interval = "1s"\n'
        '[[sensor]]\nid = "air"\ndriver = "bme280"\naddress = 0x76\ninterval = "1s"\n'
        '[health]\ninterval = "30s"\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("NOTIFY_SOCKET", None)
    done = subprocess.run(
        [sys.executable, "-m", "agent", "run", "--simulate", "--config", str(config),
         "--data-dir", str(tmp_path / "data"), "--duration", "7"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    with Outbox.open_readonly(tmp_path / "data" / "outbox.sqlite") as outbox:
        stored = [s.reading for s in outbox.take(10_000)]
    health = [r for r in stored if r.sensor == HEALTH_SENSOR or r.quantity.startswith("sensor_")]
    assert {r.time_ns for r in health} == {health[0].time_ns}  # one report, ~5 s after start
    got = values(health)
    assert 4.0 <= got[(HEALTH_SENSOR, "uptime")] < 7.0
    assert got[("air", "sensor_state")] == 0.0 and got[("air", "sensor_errors")] == 0.0
    assert got[(HEALTH_SENSOR, "dropped")] == 0.0
    data = [r for r in stored if r.quantity == "temperature"]
    assert data and any(r.time_ns < health[0].time_ns for r in data)  # in order, with the data
    assert all(r.boot_id == data[0].boot_id for r in health)
