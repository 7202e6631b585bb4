"""A damaged file in the data directory never stops the agent: every file it reads is read with a
size bound, and invalid UTF-8, bad JSON or a file too large is logged once and survived.

The crash this pins: one stray byte in ``commission.json`` made ``run`` fail at its first commit
on a synchronised clock (the time keeper re-stamps commissioning records there), a crash loop
under ``Restart=always``. The clock is injected, synchronised, so this does not depend on the
machine's."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from recording_server import RecordingServer

from agent.config import load_config, parse_config
from agent.core.atomic import DamagedFileError, read_bounded, read_json
from agent.core.errors import ConfigError
from agent.core.reading import Reading
from agent.core.timebase import NS
from agent.runtime import statusfile
from agent.runtime.history import HISTORY_FILE
from agent.sampling.daemon import Agent, make_drivers
from agent.store import commission
from agent.store.commission import FILE
from agent.store.outbox import Outbox, Subscriber
from agent.uplink import metadata
from agent.uplink.worker import build_uplink
from drivers.registry import DRIVERS
from drivers.sim.bme280 import BME280Model
from drivers.sim.clock import FakeClock
from drivers.sim.simbus import SimBus

ONE = [Subscriber("default")]  # the one upstream of these tests


ROOT = Path(__file__).resolve().parents[1]
T0 = 1_767_225_600
STATION = ('[unit]\nid = "dmg-001"\nsite = "roof"\n'
           '[[sensor]]\nid = "air"\ndriver = "bme280"\naddress = 0x76\ninterval = "10s"\n')
# A record as a text editor saving in Latin-1 leaves it: "é" is the lone byte 0xe9.
STRAY_BYTE = (b'{"format": "envagent-commission/1", "unit": "dmg-001", "history": [{"id": "x", '
              b'"time_ns": 1, "note": "caf\xe9"}]}')


def envagent(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def too_large(limit: int) -> bytes:
    """A valid document just over ``limit`` bytes: only the bound can refuse it."""
    head = b'{"format": "envagent-commission/1", "unit": "dmg-001", "history": []}'
    return head + b" " * (limit + 1 - len(head))


DAMAGE = {"stray byte": lambda: STRAY_BYTE, "half a record": lambda: b"{ half a record",
          "too large": lambda: too_large(commission.MAX_BYTES)}


@pytest.fixture(params=sorted(DAMAGE))
def damaged(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    (data / FILE).write_bytes(DAMAGE[request.param]())
    return data


# --- run: the writer's first commit, on a synchronised clock ----------------------------------


def test_a_damaged_commission_file_never_stops_the_writer_on_a_synced_clock(
        damaged: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = parse_config(tomllib.loads(STATION), source="station.toml")
    clock = FakeClock(start=100.0, wall=T0 + 100.0, synced=True)
    bus = SimBus(1, clock=clock)
    bus.attach(0x76, BME280Model(clock=clock))
    drivers = make_drivers(config, {1: bus}, clock, DRIVERS)
    with Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 24, subscribers=ONE) as outbox, \
            caplog.at_level(logging.WARNING):
        agent = Agent(config, drivers, outbox=outbox, clock=clock, boot_id="boot-1",
                      commission_dir=damaged)
        reading = Reading("air", "temperature", 21.0, "°C", (T0 + 100) * NS, 100 * NS,
                          "boot-1", True)
        agent.submit([reading])
        agent.run(duration=5.0)  # its commits re-stamp what the synced clock allows
        agent.timekeeper.appended(any_unsynced=True)  # a second pass: logged only once
        agent.timekeeper.maintain(outbox)
        assert reading in [s.reading for s in outbox.take(1000, upstream="default")]
    assert caplog.text.count("cannot re-stamp the commissioning record(s)") == 1
    assert str(damaged / FILE) in caplog.text


# --- delivery, export, sync's uplink ------------------------------------------------------------


def test_a_damaged_commission_file_never_stops_delivery(damaged: Path, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    with RecordingServer() as server, \
            Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 24, subscribers=ONE) as outbox:
        config = parse_config(tomllib.loads(
            STATION + f'[uplink]\nurl = "{server.url()}"\nallow_insecure_http = true\n'))
        outbox.append([Reading("air", "temperature", 20.0 + i, "°C", (T0 + i) * NS, i * NS,
                               "boot-0", True) for i in range(3)])
        uplink = build_uplink(config, config.uplinks[0], outbox, FakeClock(), damaged, environ={})
        with caplog.at_level(logging.WARNING, "envagent.metadata"):
            first = uplink.flush()
            outbox.append([Reading("air", "temperature", 30.0, "°C", (T0 + 9) * NS, 9 * NS,
                                   "boot-0", True)])
            second = uplink.flush()
        assert first.ok and second.ok and first.delivered + second.delivered == 4
        assert len(server.snapshot()) == 2  # the readings; no commissioning point
    assert caplog.text.count("commissioning record") == 1  # once per change of the file
    assert (damaged / FILE).stat().st_size > 0  # never overwritten


def test_export_goes_on_past_a_damaged_commission_file(damaged: Path, tmp_path: Path) -> None:
    config = tmp_path / "station.toml"
    config.write_text(STATION, encoding="utf-8")
    with Outbox(damaged / "outbox.sqlite", max_bytes=1 << 24, subscribers=ONE) as outbox:
        outbox.append([Reading("air", "temperature", 21.0, "°C", T0 * NS, 5 * NS, "boot-0",
                               True)])
    result = envagent("export", "--config", config, "--data-dir", damaged, "--format", "jsonl",
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["value"] for line in result.stdout.splitlines()] == [21.0]
    assert result.stderr.count(str(damaged / FILE)) == 1 and "Traceback" not in result.stderr


def test_sync_goes_on_past_a_damaged_commission_file(damaged: Path, tmp_path: Path) -> None:
    with RecordingServer() as server:
        token = tmp_path / "token"
        token.write_text("not-checked\n")
        token.chmod(0o600)
        config = tmp_path / "online.toml"
        config.write_text(STATION + f'[uplink]\nurl = "{server.url()}"\n'
                          f'allow_insecure_http = true\ntoken_file = "{token}"\n',
                          encoding="utf-8")
        with Outbox(damaged / "outbox.sqlite", max_bytes=1 << 24, subscribers=ONE) as outbox:
            outbox.append([Reading("air", "temperature", 21.0, "°C", T0 * NS, 5 * NS, "boot-0",
                                   True)])
        result = envagent("sync", "--config", config, "--data-dir", damaged, "--json",
                          cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["delivered"] == 1 and len(server.snapshot()) == 1
    assert result.stderr.count(str(damaged / FILE)) == 1 and "Traceback" not in result.stderr


def test_commission_refuses_to_append_to_a_damaged_file_and_leaves_it(damaged: Path,
                                                                        tmp_path: Path) -> None:
    config = tmp_path / "station.toml"
    config.write_text(STATION, encoding="utf-8")
    before = (damaged / FILE).read_bytes()
    result = envagent("commission", "--simulate", "--config", config, "--data-dir", damaged,
                      cwd=tmp_path)
    assert result.returncode == 1 and "move it aside" in result.stderr
    assert "Traceback" not in result.stderr
    assert (damaged / FILE).read_bytes() == before


# --- the status files ---------------------------------------------------------------------------


@pytest.mark.parametrize("content", [
    b"\xff\xfe not UTF-8", b"[1, 2", b'{"pid": 1e999, "boot_id": "b", "written_ns": 1, '
    b'"sensors": []}', b'{"pid": 7, "boot_id": "b", "written_ns": 1, "sensors": [5]}',
    b'{"pid": 7, "boot_id": "b", "written_ns": 1, "sensors": [{"id": "air", "driver": "x", '
    b'"state": "ok", "since_ns": "soon", "errors": 0, "last_error": null}]}',
    b'{"pid": -1, "boot_id": "b", "written_ns": 1, "sensors": []}',
    b"[" * 100_000,
], ids=["utf-8", "json", "overflow", "not-a-sensor", "wrong-type", "no-such-pid", "nested"])
def test_a_damaged_sensors_file_is_no_file_and_is_logged(
        tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / statusfile.SENSORS_FILE
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING):
        assert statusfile.SensorsFile.load(path) is None
    assert str(path) in caplog.text
    assert statusfile.SensorsFile.load(tmp_path / "missing.json") is None  # quietly


@pytest.mark.parametrize("content", [
    b'{"version": 1, "resolution_s": 900, "series": 5}',
    b'{"version": 1, "resolution_s": 900, "series": [{"sensor": "a", "quantity": "t", '
    b'"unit": "C", "end": 1e999, "values": []}]}',
    b"\xe9", b"[" * 100_000,
], ids=["series-not-a-list", "overflow", "utf-8", "nested"])
def test_a_damaged_history_never_stops_the_status_writer(tmp_path: Path, content: bytes) -> None:
    (tmp_path / HISTORY_FILE).write_bytes(content)
    assert statusfile.load_history(tmp_path / HISTORY_FILE).series == {}


@pytest.mark.parametrize(("name", "limit"), [
    (statusfile.SENSORS_FILE, "MAX_SENSORS_BYTES"), (HISTORY_FILE, "MAX_HISTORY_BYTES")])
def test_the_status_files_are_read_with_a_bound(tmp_path: Path, name: str, limit: str,
                                                caplog: pytest.LogCaptureFixture) -> None:
    history = {"version": 1, "resolution_s": 900, "series": []}
    sensors = {"pid": 7, "boot_id": "b", "written_ns": 1, "sensors": []}
    document = json.dumps(history if name == HISTORY_FILE else sensors).encode()
    path = tmp_path / name
    path.write_bytes(document + b" " * getattr(statusfile, limit))
    with caplog.at_level(logging.WARNING):
        if name == HISTORY_FILE:
            assert statusfile.load_history(path).series == {}
        else:
            assert statusfile.SensorsFile.load(path) is None
    assert "larger than" in caplog.text


# --- the helper, and the config ---------------------------------------------------------------


def test_read_bounded_refuses_what_is_not_a_small_regular_file(tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.write_bytes(b"12345")
    assert read_bounded(small, 5) == b"12345"
    with pytest.raises(DamagedFileError, match="larger than 4 bytes"):
        read_bounded(small, 4)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # nobody writes: a plain open would wait forever
    with pytest.raises(DamagedFileError, match="not a regular file"):
        read_bounded(fifo, 100)
    zero = tmp_path / "zero"
    zero.symlink_to("/dev/zero")  # endless
    with pytest.raises(DamagedFileError, match="not a regular file"):
        read_bounded(zero, 100)
    with pytest.raises(FileNotFoundError):
        read_bounded(tmp_path / "missing", 100)
    assert isinstance(DamagedFileError("x"), ValueError)  # what every reader already survives


def test_read_json_turns_every_damage_into_one_value_error(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    for content in (b"\xe9", b"{", b"[" * 100_000, b"1" * 200):
        path.write_bytes(content)
        with pytest.raises(DamagedFileError, match=str(path)):
            read_json(path, 100)
    path.write_bytes('{"a": "é"}'.encode())
    assert read_json(path, 100) == {"a": "é"}
    assert stat.S_ISREG(path.stat().st_mode)


def test_the_config_is_read_with_a_bound(tmp_path: Path) -> None:
    from agent import config as config_module

    path = tmp_path / "big.toml"
    path.write_bytes(STATION.encode() + b"#" * config_module.MAX_CONFIG_BYTES)
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert "larger than" in str(refused.value) and str(path) in str(refused.value)
    result = envagent("config", "check", "--config", path, cwd=tmp_path)
    assert result.returncode == 2 and "larger than" in result.stderr
    assert "Traceback" not in result.stderr
    assert metadata.load(tmp_path / "nothing") == []


@pytest.mark.parametrize("content", [
    b'{"state": "ok", "last_success_ns": "x"}',  # a wrong type: status crashed in _iso
    b'{"state": null}', b"[1, 2]", b"\xe9\xe9", b'{"state": "ok", "last_error": "' +
    b"x" * (64 * 1024) + b'"}'])
def test_a_damaged_uplink_state_is_no_state_in_status(tmp_path: Path, content: bytes) -> None:
    config = tmp_path / "station.toml"
    config.write_text(STATION + '[uplink]\nurl = "http://127.0.0.1:9/write"\n'
                      'allow_insecure_http = true\n', encoding="utf-8")
    data = tmp_path / "data"
    with Outbox(data / "outbox.sqlite", max_bytes=1 << 24, subscribers=ONE) as outbox:
        outbox.append([Reading("air", "temperature", 21.0, "°C", T0 * NS, 5 * NS, "boot-0",
                               True)])
    (data / "uplink-state.json").write_bytes(content)
    result = envagent("status", "--config", config, "--data-dir", data, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["uplink"] is None
    assert "Traceback" not in result.stderr
