"""``envagent commission``: the real command on simulated chips, and the record it keeps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from agent.cli.records import describe
from agent.config import parse_config
from agent.core.timebase import NS
from agent.sampling.daemon import make_drivers
from agent.store import commission, datadir
from agent.store.commission import (
    FILE,
    FORMAT,
    Facts,
    history,
    make_record,
    mark_sent,
    metadata_document,
    probe_sensors,
    reading_tags,
    unsent,
)
from agent.uplink import metadata
from drivers.bme280 import BME280
from drivers.clock import SystemClock
from drivers.registry import DRIVERS
from drivers.scd4x import SCD4x
from drivers.sht4x import SHT4x
from drivers.sim.scd4x import SCD4xModel
from drivers.sim.sht import SHT4xModel
from drivers.sim.simbus import SimBus

ROOT = Path(__file__).resolve().parents[1]
SITE = "汉中 wetland, east"
CONFIG = f"""[unit]
id = "com-001"
site = "{SITE}"
latitude = 33.0675
longitude = 107.0238
elevation_m = 510
[[sensor]]
id = "soil"
driver = "sht4x"
address = 0x44
interval = "10s"
[[sensor]]
id = "co2"
driver = "scd4x"
address = 0x62
interval = "10s"
[[sensor]]
id = "air"
driver = "bme280"
address = 0x76
interval = "10s"
"""
FLAGS = ("--technician", "Ana Ruiz", "--mounting-height", "2.5", "--radiation-shield",
         "Stevenson screen, white", "--note", "pole B,\n north side")


def envagent(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "station.toml"
    path.write_text(CONFIG, encoding="utf-8")
    return path


def commissioned(tmp_path: Path, config: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    result = envagent("commission", "--simulate", "--config", config, "--data-dir",
                      tmp_path / "data", *flags, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return result


def document(tmp_path: Path) -> dict[str, Any]:
    data = json.loads((tmp_path / "data" / FILE).read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_the_record_holds_the_chips_serials_the_config_and_the_flags(tmp_path: Path,
                                                                      config: Path) -> None:
    before = time.time_ns()
    result = commissioned(tmp_path, config, *FLAGS)
    doc = document(tmp_path)
    assert (doc["format"], doc["unit"], len(doc["history"])) == (FORMAT, "com-001", 1)
    record = doc["history"][0]
    sensors = {s["id"]: s for s in record["sensors"]}
    assert sensors["soil"]["serial"] == f"0x{SHT4xModel().serial:08x}"
    assert sensors["co2"]["serial"] == f"0x{SCD4xModel().serial:012x}"
    assert "serial" not in sensors["air"] and "error" not in sensors["air"]  # a BME280 has none
    assert sensors["co2"] | {"serial": None} == {"id": "co2", "driver": "scd4x", "bus": 1,
                                                 "address": 0x62, "serial": None}
    assert (record["unit"], record["site"]) == ("com-001", SITE)
    assert (record["latitude"], record["longitude"], record["elevation_m"]) == (
        33.0675, 107.0238, 510)
    assert record["technician"] == "Ana Ruiz"
    assert record["mounting_height_m"] == 2.5
    assert record["radiation_shield"] == "Stevenson screen, white"
    assert record["note"] == "pole B, north side"  # one line
    assert record["sent"] is False
    assert before <= record["time_ns"] <= time.time_ns()
    assert record["time"].startswith(time.strftime("%Y-%m-%d", time.gmtime(before / 1e9)))
    assert record["time"].endswith("Z") and record["boot_id"] and record["boot_ns"] > 0
    assert record["clock_synced"] in (True, False, None)
    assert record["config"] == str(config)
    # The person's view names the serials and where the record went.
    assert sensors["soil"]["serial"] in result.stdout
    assert sensors["co2"]["serial"] in result.stdout
    assert str(tmp_path / "data" / FILE) in result.stdout


def test_missing_facts_are_absent_not_null(tmp_path: Path, config: Path) -> None:
    commissioned(tmp_path, config)
    record = document(tmp_path)["history"][0]
    for key in ("technician", "mounting_height_m", "radiation_shield", "note"):
        assert key not in record
    assert reading_tags(record) == {}


def test_a_second_commissioning_is_appended_never_overwriting(tmp_path: Path,
                                                              config: Path) -> None:
    commissioned(tmp_path, config, *FLAGS)
    first = document(tmp_path)["history"][0]
    commissioned(tmp_path, config, "--technician", "Li Wei", "--mounting-height", "3")
    records = document(tmp_path)["history"]
    assert len(records) == 2
    assert records[0] == first
    assert records[1]["technician"] == "Li Wei" and records[1]["id"] != first["id"]
    assert reading_tags(records[1]) == {"mounting_height": "3"}  # that visit's facts only


def test_json_output_is_the_record_written(tmp_path: Path, config: Path) -> None:
    result = commissioned(tmp_path, config, "--json", *FLAGS)
    assert json.loads(result.stdout) == document(tmp_path)["history"][-1]


def test_an_unwritable_data_directory_fails_clearly(tmp_path: Path, config: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = envagent("commission", "--simulate", "--config", config, "--data-dir",
                      blocker / "data", *FLAGS, cwd=tmp_path)
    assert result.returncode == 1
    assert f"cannot write the commissioning record in {blocker / 'data'}" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_a_damaged_record_is_never_overwritten(tmp_path: Path, config: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / FILE).write_text("{ half a record")
    result = envagent("commission", "--simulate", "--config", config, "--data-dir",
                      tmp_path / "data", cwd=tmp_path)
    assert result.returncode == 1 and "move it aside" in result.stderr
    assert (tmp_path / "data" / FILE).read_text() == "{ half a record"
    assert metadata.load(tmp_path / "data") is None  # the agent is not stopped by it


@pytest.mark.parametrize("flags", [("--mounting-height", "-1"), ("--mounting-height", "tall"),
                                   ("--mounting-height", "nan"), ("--technician", "  ")])
def test_bad_facts_are_usage_errors(tmp_path: Path, config: Path, flags: tuple[str, str]) -> None:
    result = envagent("commission", "--simulate", "--config", config, "--data-dir",
                      tmp_path / "data", *flags, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()


# --- upstream: metadata once, tags ------------------------------------------------------------


def test_unsent_until_marked_sent(tmp_path: Path, config: Path) -> None:
    data = tmp_path / "data"
    commissioned(tmp_path, config, *FLAGS)
    commissioned(tmp_path, config, "--note", "second visit")
    pending = unsent(history(data))
    assert [r["sent"] for r in pending] == [False, False]
    body = metadata_document("com-001", pending)
    assert (body["format"], body["unit"], body["count"]) == (FORMAT, "com-001", 2)
    assert all("sent" not in r for r in body["records"])
    assert [r["id"] for r in body["records"]] == [r["id"] for r in history(data)]
    json.dumps(body, allow_nan=False)  # plain JSON

    assert mark_sent(data, [pending[0]["id"]]) == 1
    assert [r["id"] for r in unsent(history(data))] == [pending[1]["id"]]
    assert mark_sent(data, [pending[0]["id"]]) == 0  # already sent: nothing changes
    assert mark_sent(data, [r["id"] for r in pending]) == 1
    assert unsent(history(data)) == []
    assert [r["sent"] for r in history(data)] == [True, True]
    assert mark_sent(tmp_path / "never-commissioned", ["x"]) == 0


def test_each_upstream_gets_every_record_once(tmp_path: Path, config: Path) -> None:
    """Sent to one upstream is not sent to another: each has its own mark, and a record the
    release before several upstreams marked ``sent`` counts as sent to "default" only."""
    data = tmp_path / "data"
    commissioned(tmp_path, config, *FLAGS)
    (record,) = history(data)
    assert mark_sent(data, [record["id"]], "network") == 1
    assert unsent(history(data), "network") == [] and len(unsent(history(data), "bureau")) == 1
    assert len(unsent(history(data))) == 1  # the default upstream has not had it either
    assert mark_sent(data, [record["id"]], "bureau") == 1
    assert history(data)[0]["sent_to"] == ["network", "bureau"]
    old = {k: v for k, v in record.items() if k != "sent_to"} | {"sent": True}
    assert unsent([old]) == [] and unsent([old], "network") == [old]
    assert all("sent_to" not in r for r in metadata_document("com-001", history(data))["records"])


def test_tags_are_the_mounting_height_and_the_shield(tmp_path: Path, config: Path) -> None:
    commissioned(tmp_path, config, *FLAGS)
    (record,) = history(tmp_path / "data")
    assert reading_tags(record) == {"mounting_height": "2.5",
                                    "shield": "Stevenson screen, white"}
    assert metadata.epochs([record]) == [(record["time_ns"], reading_tags(record))]
    assert metadata.load(tmp_path / "nothing-here") == []


# --- the pieces ---------------------------------------------------------------------------------


def test_serial_numbers_need_setup_and_only_some_chips_have_one() -> None:
    clock = SystemClock()
    bus = SimBus(1, clock=clock)
    bus.attach(0x44, SHT4xModel(clock=clock, serial=0x01020304))
    bus.attach(0x62, SCD4xModel(clock=clock, serial=0x0000_8000_0001))
    sht, scd = SHT4x(bus, 0x44, clock=clock), SCD4x(bus, 0x62, clock=clock)
    assert sht.serial() is None and scd.serial() is None  # not set up yet
    sht.setup()
    scd.setup()
    assert (sht.serial(), scd.serial()) == ("0x01020304", "0x000080000001")  # fixed width
    scd.close()
    assert BME280(bus, 0x76, clock=clock).serial() is None  # the Driver default


def test_a_sensor_that_does_not_answer_is_recorded_with_its_error(tmp_path: Path) -> None:
    config = parse_config(tomllib.loads(CONFIG), source="station.toml")
    clock = SystemClock()
    bus = SimBus(1, clock=clock)
    bus.attach(0x44, SHT4xModel(clock=clock))  # the SCD4x and the BME280 are missing
    sensors = probe_sensors(config, make_drivers(config, {1: bus}, clock, DRIVERS))
    by_id = {s["id"]: s for s in sensors}
    assert "serial" in by_id["soil"] and "error" not in by_id["soil"]
    assert "serial" not in by_id["co2"] and by_id["co2"]["error"]
    assert by_id["air"]["error"]
    record = make_record(config, Facts(), sensors, time_ns=1_795_240_800_000_000_000,
                         clock_synced=None, boot_id=None, boot_ns=5)
    assert record["clock_synced"] is None and "boot_id" not in record  # unknown, said so
    lines = describe(record, 1, tmp_path / FILE)
    assert any("co2" in line and "FAILED" in line for line in lines)
    assert any("synchronised is unknown: that date may be wrong" in line for line in lines)


STALE_NS = 1_600_000_000 * NS  # what fake-hwclock restores: a date long past
TRUE_NS = 1_767_225_600 * NS  # the true time at boot


@pytest.mark.parametrize(("synced", "boot_id", "boot_s", "corrected"), [
    (False, "boot-1", 120, True),  # minutes after boot: the agent re-stamps it at the sync
    (False, "boot-1", 3600, False),  # the hold is over: it goes as recorded, flagged
    (False, None, 120, False),  # no boot id to match an anchor with
    (None, "boot-1", 120, False),  # the kernel does not say: never re-stamped
    (True, "boot-1", 120, None),  # nothing to say
])
def test_the_date_warning_promises_a_correction_only_where_the_agent_makes_one(
        tmp_path: Path, synced: bool | None, boot_id: str | None, boot_s: int,
        corrected: bool | None) -> None:
    config = parse_config(tomllib.loads(CONFIG), source="station.toml")
    record = make_record(config, Facts(), [], time_ns=STALE_NS + boot_s * NS,
                         clock_synced=synced, boot_id=boot_id, boot_ns=boot_s * NS)
    warnings = [line for line in describe(record, 1, tmp_path / FILE)
                if "date may be wrong" in line]
    if corrected is None:
        assert warnings == []
        return
    (warning,) = warnings
    assert ("the agent corrects it" in warning) is corrected
    assert ("goes upstream as recorded" in warning) is not corrected


def test_restamp_gives_only_this_boots_unsynced_unsent_records_their_true_time(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = parse_config(tomllib.loads(CONFIG), source="station.toml")

    def visit(boot_id: str, synced: bool | None, boot_s: int) -> dict[str, Any]:
        record = make_record(config, Facts(note=f"{boot_id} at {boot_s} s"), [],
                             time_ns=STALE_NS + boot_s * NS, clock_synced=synced,
                             boot_id=boot_id, boot_ns=boot_s * NS)
        commission.append(data, record)
        return record

    sent, due, other_boot, synced, unknown = (visit("b1", False, 10), visit("b1", False, 20),
                                              visit("b0", False, 30), visit("b1", True, 40),
                                              visit("b1", None, 50))
    mark_sent(data, [sent["id"]])  # what went upstream stays what the file says
    # The anchor: at boot time 100 s the synchronised clock reads the truth.
    assert commission.restamp(data, "b1", TRUE_NS + 100 * NS, 100 * NS) == 1
    records = history(data)
    assert records[1] == due | {"time": "2026-01-01T00:00:20.000000000Z",
                                "time_ns": TRUE_NS + 20 * NS, "clock_synced": True,
                                "clock_restamped": True, "unsynced_time": due["time"],
                                "unsynced_time_ns": due["time_ns"]}
    assert records[:1] + records[2:] == [sent | {"sent": True, "sent_to": ["default"]},
                                        other_boot, synced, unknown]

    seen = os.stat(data / FILE)
    assert commission.restamp(data, "b1", TRUE_NS + 200 * NS, 200 * NS) == 0  # done already
    after = os.stat(data / FILE)
    assert (after.st_ino, after.st_mtime_ns) == (seen.st_ino, seen.st_mtime_ns)  # not rewritten
    assert commission.restamp(tmp_path / "never", "b1", TRUE_NS, 0) == 0
    assert not (tmp_path / "never").exists()  # a unit never commissioned: nothing created


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to leave files owned by root")
def test_files_left_by_a_root_commission_do_not_stop_the_agent(config: Path) -> None:
    """`sudo envagent commission` leaves commission.json and the data directory's lock file
    owned by root; the service's user can still take the lock (read-only: flock needs no more)
    and mark records sent (it owns the directory, as systemd's StateDirectory= makes it at
    every start)."""
    import shutil
    import tempfile

    shared = Path(tempfile.mkdtemp(prefix="envagent-test-"))
    try:
        shared.chmod(0o755)
        commissioned(shared, config, *FLAGS)
        data = shared / "data"
        os.chown(data, 65534, 65534)  # nobody, standing in for the envagent user
        assert (data / datadir.LOCK_FILE).stat().st_uid == 0
        assert (data / FILE).stat().st_uid == 0
        [record] = history(data)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: the service's user
            try:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                with datadir.hold(data):  # as `envagent run` and `sync` do
                    outcome = str(mark_sent(data, [record["id"]]))
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                outcome = repr(exc)
            os.write(write, outcome.encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            outcome = pipe.read()
        os.waitpid(pid, 0)
        assert outcome == "1"
        assert [r["sent"] for r in history(data)] == [True]
    finally:
        shutil.rmtree(shared)
