"""``envagent status`` for people: the daemon's status files (written rarely, atomically), the
24-hour history, delivery in words, and lines that fit the terminal down to 40 columns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.cli.statusview import (
    clip,
    clock_time,
    cols,
    firing_alerts,
    render,
    sparkline,
    sync_words,
    wrap,
)
from agent.config import Config, SensorConfig, parse_config
from agent.core.timebase import read_boot_id
from agent.runtime.history import POINTS, RESOLUTION_S, Accumulator, History, Series, bucket_of
from agent.runtime.statusfile import (
    MIN_WRITE_S,
    REFRESH_S,
    SENSORS_FILE,
    STUCK,
    STUCK_WORDS,
    SensorsFile,
    StatusFiles,
    load_history,
)
from agent.sampling.sampler import Health, State
from agent.store.outbox import LatestValue, OutboxStats
from agent.uplink.worker import STATE_FILE, UplinkState
from drivers.sim.clock import FakeClock

ROOT = Path(__file__).resolve().parents[1]
UNIT = '[unit]\nid = "t-1"\nsite = "roof"\n'
STATION = (UNIT + '[storage]\ncommit_interval = "1s"\n'
           '[[sensor]]\nid = "air"\ndriver = "bme280"\naddress = 0x76\ninterval = "1s"\n'
           '[[sensor]]\nid = "probes"\ndriver = "ads1115"\naddress = 0x48\ninterval = "1s"\n'
           'channel0_quantity = "soil_moisture"\nchannel0_unit = "%"\n'
           'channel0_scale = [[2.8, 0.0], [1.2, 100.0]]\n')
LONG_ERROR = ("3 reads failed in a row, re-initialising: EREMOTEIO (Remote I/O error) at "
              "1:0x76 after the cable was pulled")
# Fires on the first reading (the simulated air is far above -40 °C) and never clears.
WARM = ('[[alert]]\nid = "air_warm"\nsensor = "air"\nquantity = "temperature"\nabove = -40\n'
        'clear = -45\n')


def envagent(*args: str, cwd: Path, columns: int = 80) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": str(columns)}
    return subprocess.run([sys.executable, "-m", "agent", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60, env=env)


@dataclass
class Worker:
    sensor: SensorConfig
    health: Health


def workers(text: str = STATION) -> list[Worker]:
    config = parse_config(tomllib.loads(text))
    return [Worker(s, Health(State.OK)) for s in config.sensors]


def value(sensor: str, quantity: str, v: float, time_s: float, unit: str = "°C") -> LatestValue:
    return LatestValue(sensor, quantity, unit, int(time_s * 1e9), v, 0)


# --- the daemon's side ---------------------------------------------------------------------------


def test_sensor_states_are_written_on_change_at_most_every_30_s(tmp_path: Path) -> None:
    clock, crew = FakeClock(), workers()
    files = StatusFiles(tmp_path, clock, latest=list, boot_id="boot-a")
    path = tmp_path / SENSORS_FILE
    files.tick(crew)  # the first tick always writes: status learns the daemon's pid
    first = path.stat().st_mtime_ns
    assert [s.state for s in SensorsFile.load(path).sensors] == ["ok", "ok"]  # type: ignore
    crew[0].health.state, crew[0].health.last_error = State.FAILED, LONG_ERROR
    clock.advance(MIN_WRITE_S / 2)
    files.tick(crew)
    assert path.stat().st_mtime_ns == first  # changed, but too soon
    clock.advance(MIN_WRITE_S / 2)
    files.tick(crew)
    written = SensorsFile.load(path)
    assert written is not None and written.pid == os.getpid() and written.boot_id == "boot-a"
    air = written.sensors[0]
    assert (air.state, air.last_error) == ("failed", LONG_ERROR)
    assert air.since_ns == int((clock.time() - MIN_WRITE_S / 2) * 1e9)  # when it was first seen
    before = path.read_bytes()
    crew[0].health.errors += 5  # only a count moved: not worth a write for 15 minutes
    clock.advance(MIN_WRITE_S * 2)
    files.tick(crew)
    assert path.read_bytes() == before
    clock.advance(REFRESH_S)
    files.tick(crew)
    assert SensorsFile.load(path).sensors[0].errors == 5  # type: ignore[union-attr]



def test_a_sensor_stuck_in_one_read_is_written_stuck_since_it_got_in(tmp_path: Path) -> None:
    clock, crew = FakeClock(wall=1_800_000_000.0), workers()
    files = StatusFiles(tmp_path, clock, latest=list, boot_id="boot-a")
    files.tick(crew)
    got_in = clock.monotonic()
    clock.advance(MIN_WRITE_S + 5)
    files.tick(crew, stuck={"air": got_in})  # its worker still says ok: it never came back
    air, probes = SensorsFile.load(tmp_path / SENSORS_FILE).sensors  # type: ignore[union-attr]
    assert (air.state, air.last_error) == (STUCK, STUCK_WORDS)
    assert air.since_ns == int((clock.time() - MIN_WRITE_S - 5) * 1e9)
    assert probes.state == "ok"
    clock.advance(MIN_WRITE_S)
    files.tick(crew)  # the read came back
    assert SensorsFile.load(tmp_path / SENSORS_FILE).sensors[0].state == "ok"  # type: ignore

def test_a_status_file_that_cannot_be_written_never_raises(tmp_path: Path) -> None:
    files = StatusFiles(tmp_path / "missing" / "dir", FakeClock(), latest=list, boot_id="b")
    files.tick(workers())
    files.close(workers())


def test_running_is_this_pid_in_this_boot(tmp_path: Path) -> None:
    StatusFiles(tmp_path, FakeClock(), latest=list, boot_id="boot-a").tick(workers())
    written = SensorsFile.load(tmp_path / SENSORS_FILE)
    assert written is not None
    assert written.running("boot-a") and not written.running("boot-b")
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    gone = SensorsFile(int(finished.stdout), "boot-a", 0, ())
    assert not gone.running("boot-a")


def test_history_keeps_quarter_hour_means_for_a_day() -> None:
    series = Series(10, [1.0])
    series.add(12, 3.0)
    assert (series.end, series.values) == (12, [1.0, None, 3.0])
    series.add(12, 5.0)  # a restart within the quarter hour: averaged in
    assert series.values[-1] == 4.0
    series.add(11, 9.0)  # late: ignored
    series.add(12 + POINTS + 5, 7.0)
    assert len(series.values) == POINTS and series.values[-1] == 7.0
    assert series.window(series.end, 3) == [None, None, 7.0]
    history = History()
    history.add(("a", "t", "°C"), 5, float("nan"))
    assert not history.series
    restored = History.from_json(json.loads(json.dumps(history.to_json())))
    assert restored == history
    assert History.from_json({"version": 99}).series == {}


def test_the_daemon_folds_values_into_quarter_hours_and_writes_when_one_completes(
        tmp_path: Path) -> None:
    start = 1_800_000_000.0 - 1_800_000_000.0 % RESOLUTION_S + 60  # a minute into a quarter
    clock = FakeClock(wall=start)
    seen: list[LatestValue] = []
    files = StatusFiles(tmp_path, clock, latest=lambda: seen, boot_id="b")
    for minute in range(20):  # a value a minute: minutes 0-13 fill the first quarter hour
        seen[:] = [value("air", "temperature", 20.0 + minute, clock.time()),
                   value("air", "sensor_state", 0, clock.time(), "code"),
                   value("envagent", "backlog", 5, clock.time(), "readings")]
        files.tick([])
        clock.advance(60)
    history = load_history(tmp_path / "history.json")
    assert list(history.series) == [("air", "temperature", "°C")]  # no health readings
    assert history.series[("air", "temperature", "°C")].values == [26.5]  # mean of 20..33
    files.close([])  # a clean stop keeps the quarter hour in progress too
    series = load_history(tmp_path / "history.json").series[("air", "temperature", "°C")]
    assert series.values == [26.5, 36.5] and series.end == bucket_of(start) + 1
    accumulator = Accumulator()
    accumulator.add(("a", "b", "c"), start, float("inf"))
    assert accumulator.close(History()) == 0


# --- what people read ----------------------------------------------------------------------------


def test_sync_in_words() -> None:
    now = 1_800_000_000.0
    ok = UplinkState("ok", int((now - 3600) * 1e9), int((now - 120) * 1e9))
    assert sync_words(ok, 0, now) == "delivered 2 min ago, 0 waiting"
    blocked = UplinkState("auth_blocked", int((now - 600) * 1e9), None, "HTTP 401: unauthorized")
    words = sync_words(blocked, 1234, now)
    assert words.startswith("not delivering: server refused the token (since ")
    assert words.endswith("), 1\u00a0234 waiting")
    assert sync_words(None, 5, now).startswith("not started: ")
    down = UplinkState("retrying", int(now * 1e9), None, "HTTP 503: maintenance")
    assert "server answers HTTP 503" in sync_words(down, 3, now)
    silent = UplinkState("retrying", int(now * 1e9), None,
                         "no acknowledgement (PUBACK) within 10 s (broker.example.org:8883)")
    assert "not delivering: server does not acknowledge (since" in sync_words(silent, 3, now)
    full = UplinkState("retrying", int(now * 1e9), None,
                       "this unit cannot write its HJ 212 archive: database or disk is full")
    assert "not delivering: this unit cannot write its HJ 212 archive (since" in sync_words(
        full, 3, now)
    lost = UplinkState("retrying", int(now * 1e9), None, "cannot connect to db:8086")
    assert "not delivering: server unreachable (since" in sync_words(lost, 3, now)


def test_sparkline_squeezes_and_scales() -> None:
    assert sparkline([0.0, 7.0], 2) == "▁█"
    assert sparkline([None, 1.0, 1.0, None], 4) == " ▄▄ "
    assert sparkline([0.0, 0.0, 7.0, 7.0], 2) == "▁█"  # two points a column
    assert sparkline([None] * 96, 10) == " " * 10
    assert len(sparkline([1.0] * 96, 500)) == 96  # never wider than the points


def test_clip_and_wrap_count_columns() -> None:
    assert cols("汉中 wetland") == 12
    assert cols(clip("汉中 wetland, east boardwalk", 10)) <= 10
    lines = wrap("sync     not delivering: server refused the token (since 10:32), 1 waiting",
                 40)
    assert len(lines) == 3 and all(x.startswith(" " * 9) for x in lines[1:])
    assert " ".join(" ".join(lines).split()).endswith("(since 10:32), 1 waiting")
    assert all(cols(x) <= 40 for x in wrap("x" * 100, 40))


@pytest.mark.parametrize("columns", [40, 80])
def test_status_fits_the_terminal(tmp_path: Path, columns: int) -> None:
    config, data = tmp_path / "station.toml", tmp_path / "d"
    config.write_text(STATION + WARM + '[uplink]\nurl = "https://tsdb.example.org/write"\n')
    # sample with no uplink, so nothing is delivered; status then sees the configured one
    plain = tmp_path / "plain.toml"
    plain.write_text(STATION + WARM)
    ran = envagent("run", "--simulate", "--config", str(plain), "--data-dir", str(data),
                   "--duration", "2.5", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    now = FakeClock(wall=__import__("time").time())
    crew = workers()
    crew[0].health.state, crew[0].health.last_error = State.FAILED, LONG_ERROR
    files = StatusFiles(data, now, latest=list, boot_id=read_boot_id())
    files.tick(crew)
    history = History()
    for i in range(POINTS):
        history.add(("air", "temperature", "°C"), bucket_of(now.time()) - POINTS + i, 15 + i % 9)
    (data / "history.json").write_text(json.dumps(history.to_json()))
    UplinkState("auth_blocked", int(now.time() * 1e9), None,
                "HTTP 401: unauthorized access, the token has expired").save(data / STATE_FILE)

    result = envagent("status", "--config", str(config), "--data-dir", str(data), cwd=tmp_path,
                      columns=columns)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(cols(line) <= columns for line in lines), "\n".join(lines)
    text = " ".join(" ".join(lines).split())  # as read, whatever the wrapping
    assert "not delivering: server refused the token" in text
    assert f"running (pid {os.getpid()})" in text
    assert "air (bme280): failed since" in text
    assert "EREMOTEIO" in text
    assert "probes (ads1115): ok" in text
    temperature = next(line for line in lines if line.startswith("  temperature"))
    assert any(bar in text for bar in "▁█") and "°C" in temperature
    assert lines[1].startswith("ALERT    air_warm since ")  # right under the unit
    assert ": air temperature above -40 °C; now " in text

    report = json.loads(envagent("status", "--config", str(config), "--data-dir", str(data),
                                 "--json", cwd=tmp_path).stdout)
    for key in ("backlog", "added", "latest", "uplink", "clock_synchronized", "recovered"):
        assert key in report
    assert report["sensors"]["running"] is True
    assert [s["state"] for s in report["sensors"]["states"]] == ["failed", "ok"]
    (alert,) = report["alerts"]
    assert {k: alert[k] for k in ("id", "sensor", "quantity", "above", "below", "clear",
                                  "for_s", "unit")} == {
        "id": "air_warm", "sensor": "air", "quantity": "temperature", "above": -40.0,
        "below": None, "clear": -45.0, "for_s": 0.0, "unit": "°C"}
    assert alert["since"] and alert["value"] > -40



def test_status_tells_the_clock_as_the_running_agent_sees_it(tmp_path: Path) -> None:
    """A rehearsal's clock is simulated (--sim-clock): status, in another process with another
    clock, says what the agent sees, not its own."""
    plain, data = tmp_path / "plain.toml", tmp_path / "d"
    plain.write_text(STATION)
    ran = envagent("run", "--simulate", "--config", str(plain), "--data-dir", str(data),
                   "--duration", "1.5", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr

    def status() -> dict[str, Any]:
        result = envagent("status", "--simulate", "--config", str(plain), "--data-dir",
                          str(data), "--json", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    assert status()["clock_synchronized"] is True  # the agent stopped: status's own clock
    agents_clock = FakeClock(start=60.0, wall=__import__("time").time(), synced=False)
    files = StatusFiles(data, agents_clock, latest=list, boot_id=read_boot_id(),
                        synced=agents_clock.synchronized)
    files.tick(workers())  # as a running agent (this process) whose clock is not synchronised
    assert status()["clock_synchronized"] is False
    human = envagent("status", "--simulate", "--config", str(plain), "--data-dir", str(data),
                     cwd=tmp_path)
    assert "NOT synchronised" in human.stdout, human.stdout

def test_the_daemons_own_workers_fit_the_writer(tmp_path: Path) -> None:
    """What agent/service.py hands over on each supervisor tick: Agent.workers, outbox.latest."""
    from agent.sampling.daemon import Agent, make_drivers
    from agent.store.outbox import Outbox
    from drivers.registry import DRIVERS
    from drivers.sim.environment import Environment
    from drivers.sim.world import build_world

    config = parse_config(tomllib.loads(STATION))
    clock = FakeClock()
    buses = build_world([(s.bus, s.address, s.driver, s.id) for s in config.sensors],
                        clock=clock, environment=Environment(),
                        options={s.id: s.options for s in config.sensors})
    with Outbox(tmp_path / "outbox.sqlite", max_bytes=2 * 1024**2) as outbox:
        agent = Agent(config, make_drivers(config, buses, clock, DRIVERS), outbox=outbox,
                      clock=clock, boot_id="boot-a")
        files = StatusFiles(tmp_path, clock, latest=outbox.latest, boot_id="boot-a")
        files.tick(agent.workers)
        files.close(agent.workers)
    written = SensorsFile.load(tmp_path / SENSORS_FILE)
    assert written is not None
    assert [(s.id, s.driver, s.state) for s in written.sensors] == [
        ("air", "bme280", "starting"), ("probes", "ads1115", "starting")]


STATS = OutboxStats(backlog=0, backlog_bytes=10_240, oldest_ns=None, newest_ns=None, added=5,
                    delivered=5, dropped=0, rejected=0, quarantined=0)


def alert_station(extra: str = "") -> Config:
    return parse_config(tomllib.loads(
        STATION + '[[alert]]\nid = "pm25"\nsensor = "air"\nquantity = "temperature"\n'
        'above = 75\nclear = 60\nfor = "10m"\n' + extra))


@pytest.mark.parametrize("columns", [40, 80])
def test_each_firing_alert_is_listed_with_its_rule_since_and_value(tmp_path: Path,
                                                                  columns: int) -> None:
    now = 1_800_000_000.0
    config = alert_station('[[alert]]\nid = "dry"\nsensor = "probes"\n'
                           'quantity = "soil_moisture"\nbelow = 10\n')
    latest = [value("air", "temperature", 80.14, now - 60),
              value("envagent", "alert_pm25", 1.0, now - 3600, "state"),
              value("envagent", "alert_dry", 0.0, now - 7200, "state"),  # fired, then cleared
              value("envagent", "alert_gone", 1.0, now - 60, "state")]  # no longer configured
    lines = render(config, tmp_path, STATS, latest, recovery=None, synced=True,
                   boot_id="b", now=now, width=columns)
    assert all(cols(line) <= columns for line in lines), "\n".join(lines)
    alerts = [x for x in lines if x.startswith("ALERT")]
    assert len(alerts) == 1  # pm25 only
    at = lines.index(alerts[0])
    text = " ".join(" ".join(lines[at:at + 3]).split())
    since = clock_time(int((now - 3600) * 1e9), now)
    assert text.startswith(f"ALERT pm25 since {since}: air temperature above 75 °C for 10 min; "
                           "now 80.14 °C")
    raw = "\n".join(lines[at:at + 3])
    assert "75\u00a0°C" in raw and "10\u00a0min" in raw  # a value and its unit, never split


def test_no_firing_alert_adds_nothing(tmp_path: Path) -> None:
    now = 1_800_000_000.0
    latest = [value("air", "temperature", 20.0, now - 60),
              value("envagent", "alert_pm25", 0.0, now - 60, "state")]
    args: dict[str, Any] = {"recovery": None, "synced": True, "boot_id": "b", "now": now,
                            "width": 40}
    plain = parse_config(tomllib.loads(STATION))
    assert render(alert_station(), tmp_path, STATS, latest, **args) == render(
        plain, tmp_path, STATS, latest[:1], **args)
    assert firing_alerts(alert_station(), latest) == []
