"""``status``, ``export`` and ``doctor`` with ``--data-dir`` alone (agent.store.station).

The running agent leaves a station record in its data directory; with no config file, these
read-only commands use it, and say so in one line on stderr. Through the real ``envagent`` in
subprocesses; the ones that need "no config file" skip where this machine has one.
"""

from __future__ import annotations

import functools
import json
import tomllib
from pathlib import Path

import agent_process
import pytest

from agent.cli.context import DEFAULT_CONFIG
from agent.config import parse_config
from agent.store import station

PROCESS_TIMEOUT_S = 90
UNIT = "wet-042"
SITE = "汉中 wetland, east"
no_config_file = pytest.mark.skipif(DEFAULT_CONFIG.exists(),
                                    reason=f"{DEFAULT_CONFIG} exists on this machine")


envagent = functools.partial(agent_process.envagent, timeout=PROCESS_TIMEOUT_S)


CONFIG = (
    f'[unit]\nid = "{UNIT}"\nsite = "{SITE}"\nlatitude = 33.07\nlongitude = 107.02\n'
    '[storage]\ncommit_interval = "1s"\nmax_bytes = "2MiB"\n'
    '[[sensor]]\nid = "air"\ndriver = "bme280"\naddress = 0x76\ninterval = "1s"\n'
    '[[sensor]]\nid = "soil"\ndriver = "sht4x"\nmux = 0x70\nchannel = 3\naddress = 0x44\n'
    'interval = "1s"\n'
    '[[alert]]\nid = "warm"\nsensor = "air"\nquantity = "temperature"\nabove = -40\n'
    '[uplink]\nurl = "https://vm.example.net:8428/write?db=field"\nmeasurement = "env"\n'
)


def ran_station(tmp_path: Path, text: str = CONFIG) -> Path:
    """A data directory where the agent ran (simulated, delivering nothing)."""
    config = tmp_path / "envagent.toml"
    config.write_text(text, encoding="utf-8")
    data = tmp_path / "data"
    ran = envagent("run", "--simulate", "--config", config, "--data-dir", data, "--duration", "3",
                   cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    return data


@no_config_file
def test_status_json_with_data_dir_alone_comes_from_the_record(tmp_path: Path) -> None:
    data = ran_station(tmp_path)
    done = envagent("status", "--data-dir", data, "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["unit"] == UNIT
    assert report["backlog"] == report["added"] > 0
    assert [s["id"] for s in report["sensors"]["states"]] == ["air", "soil"]
    assert report["alerts"][0]["id"] == "warm"  # the rules came with the record
    assert done.stderr.strip().splitlines() == [
        f"envagent: no {DEFAULT_CONFIG}: using the station record {data / station.FILE} "
        f"(unit {UNIT}), written by the agent that ran there"]


@no_config_file
def test_human_status_with_data_dir_alone_shows_the_station(tmp_path: Path) -> None:
    data = ran_station(tmp_path)
    done = envagent("status", "--data-dir", data, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"{UNIT} · {SITE}" in done.stdout
    assert "air (bme280)" in done.stdout and "soil (sht4x)" in done.stdout
    assert "not started: the agent has not run with this uplink" in done.stdout  # it has one


@no_config_file
def test_export_with_data_dir_alone_names_the_station(tmp_path: Path) -> None:
    data = ran_station(tmp_path)
    done = envagent("export", "--data-dir", data, "--format", "jsonl", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    items = [json.loads(line) for line in done.stdout.splitlines()]
    assert items
    assert {(i["unit"], i["site"]) for i in items} == {(UNIT, SITE)}
    assert {i["sensor"]: i["driver"] for i in items if i["sensor"] != "envagent"} == {
        "air": "bme280", "soil": "sht4x"}  # "envagent": the agent's own health readings
    lp = envagent("export", "--data-dir", data, "--format", "lp", cwd=tmp_path)
    assert lp.stdout.startswith("env,")  # uplink.measurement, from the record


@no_config_file
def test_doctor_with_data_dir_alone_runs_what_needs_no_config(tmp_path: Path) -> None:
    data = ran_station(tmp_path)
    # the clock's facts are the simulated unit's: this machine's own are not the point
    done = envagent("doctor", "--simulate", "--sim-clock", "synced", "--data-dir", data,
                    "--json", cwd=tmp_path)
    checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
    assert done.returncode == 0, done.stdout
    assert {"clock", "free space", "database", "backlog"} <= set(checks)
    assert checks["database"]["status"] == "PASS"
    assert checks["i2c and sensors"]["status"] == "SKIP"
    assert checks["uplink"]["status"] == "SKIP"
    assert "station record" in checks["i2c and sensors"]["detail"]
    assert "--config" in checks["uplink"]["detail"]
    assert "2.0 MiB" in checks["free space"]["detail"]  # storage.max_bytes, from the record


@no_config_file
@pytest.mark.parametrize("command", ["status", "export", "doctor"])
def test_neither_config_nor_record_names_both_ways_on(tmp_path: Path, command: str) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    done = envagent(command, "--data-dir", empty, cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert f"{DEFAULT_CONFIG}: no such file; pass --config PATH" in done.stderr
    assert f"{empty} has no station record ({station.FILE})" in done.stderr


@no_config_file
def test_a_damaged_record_is_one_line_and_exit_2(tmp_path: Path) -> None:
    data = ran_station(tmp_path)
    record = json.loads((data / station.FILE).read_text())
    del record["unit"]["site"]
    (data / station.FILE).write_text(json.dumps(record))
    done = envagent("status", "--data-dir", data, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"{data / station.FILE} is damaged (no 'site'); the agent writes it again when it next "
        "starts; pass --config PATH"]


def test_the_record_is_written_once_and_again_only_when_the_config_changed(
        tmp_path: Path) -> None:
    data = ran_station(tmp_path)
    first = (data / station.FILE).stat()
    ran_station_again = envagent("run", "--simulate", "--config", tmp_path / "envagent.toml",
                                 "--data-dir", data, "--duration", "2", cwd=tmp_path)
    assert ran_station_again.returncode == 0, ran_station_again.stderr
    assert (data / station.FILE).stat().st_ino == first.st_ino  # not rewritten: SD-card wear
    (tmp_path / "envagent.toml").write_text(CONFIG.replace(SITE, "moved"), encoding="utf-8")
    moved = envagent("run", "--simulate", "--config", tmp_path / "envagent.toml",
                     "--data-dir", data, "--duration", "2", cwd=tmp_path)
    assert moved.returncode == 0, moved.stderr
    assert json.loads((data / station.FILE).read_text())["unit"]["site"] == "moved"


def test_the_record_holds_what_the_readers_use_and_no_credentials(tmp_path: Path) -> None:
    data = ran_station(tmp_path)
    record = json.loads((data / station.FILE).read_text(encoding="utf-8"))
    assert record["simulated"] is True
    assert record["unit"] == {"id": UNIT, "site": SITE, "latitude": 33.07, "longitude": 107.02,
                              "elevation_m": None}
    assert record["sensors"][1] == {
        "id": "soil", "driver": "sht4x", "bus": 1, "address": 0x44, "mux": 0x70, "channel": 3,
        "interval_s": 1.0, "quantities": {"temperature": "°C", "humidity": "%RH"}}
    assert record["uplinks"] == [{"name": "default", "url": "https://vm.example.net:8428/write"
                                  "?db=field", "format": "influx", "measurement": "env"}]
    rebuilt = station.as_config(record, data)
    config = parse_config(tomllib.loads(CONFIG), source="c")
    assert rebuilt.unit == config.unit
    assert [(s.id, s.driver, s.bus, s.address, s.mux, s.channel) for s in rebuilt.sensors] == [
        (s.id, s.driver, s.bus, s.address, s.mux, s.channel) for s in config.sensors]
    assert rebuilt.alerts == config.alerts
    assert rebuilt.storage.max_bytes == config.storage.max_bytes


def test_a_url_in_the_record_never_carries_credentials() -> None:
    assert station.public_url("https://ana:secret@vm.example.net/write?db=f&p=secret&u=ana"
                              "&token=t#x") == "https://vm.example.net/write?db=f"
