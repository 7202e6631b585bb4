"""A rehearsal (``--simulate``) never leaks into production (agent.store.rehearsal).

Through the real ``envagent`` in subprocesses, with a config whose ``storage.path`` is a temporary
directory and whose uplink is a recording server: a rehearsal keeps its outbox in ``simulated/``
under ``storage.path`` and touches nothing else there; it delivers only with ``--deliver``, and
then every line (readings and the commissioning point) carries ``simulated=true``; exports of
it are marked; a real run refuses a rehearsal's outbox and a rehearsal a real one.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import sqlite3
from pathlib import Path

import agent_process
import pytest
from httpfaults import parse_line
from recording_server import RecordingServer

from agent.cli.context import DEFAULT_CONFIG
from agent.core.reading import Reading
from agent.store.outbox import Outbox
from agent.uplink.encoders import JsonEncoder
from agent.uplink.lineprotocol import LineProtocolEncoder

PROCESS_TIMEOUT_S = 90
UNIT = "pole-017"
MAX_BYTES = 1024 * 1024


envagent = functools.partial(agent_process.envagent, timeout=PROCESS_TIMEOUT_S)


def station(tmp_path: Path, url: str, fmt: str = "influx") -> tuple[Path, Path]:
    """A technician's config (its own unit id) whose storage.path is a fresh directory."""
    storage = tmp_path / "storage"
    storage.mkdir()
    config = tmp_path / "envagent.toml"
    config.write_text(
        f'[unit]\nid = "{UNIT}"\nsite = "north pole"\n'
        f'[storage]\npath = "{storage}"\ncommit_interval = "1s"\n'
        '[[sensor]]\nid = "air"\ndriver = "bme280"\naddress = 0x76\ninterval = "1s"\n'
        f'[uplink]\nurl = "{url}"\nformat = "{fmt}"\nallow_insecure_http = true\n'
        'flush_interval = "1s"\nbackoff_min = "100ms"\nbackoff_max = "1s"\n', encoding="utf-8")
    return config, storage


def lines_received(server: RecordingServer) -> list[str]:
    return [line for exchange in server.snapshot()
            for line in exchange.body.decode("utf-8").splitlines()]


def files_under(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def a_reading(time_ns: int = 1_767_225_600_000_000_000) -> Reading:
    return Reading("air", "temperature", 21.5, "°C", time_ns, 5_000_000_000, "boot-1", True, 0,
                   None)


# --- apart: simulated/ under storage.path, nothing else ------------------------------------------


def test_a_rehearsal_writes_only_under_storage_path_simulated_and_delivers_nothing(
        tmp_path: Path) -> None:
    with RecordingServer(lambda exchange: 204) as server:
        config, storage = station(tmp_path, server.url())
        ran = envagent("run", "--simulate", "--config", config, "--duration", "3", cwd=tmp_path)
        assert ran.returncode == 0, ran.stderr
        assert server.snapshot() == []  # not even a connection's worth
    assert [p.name for p in storage.iterdir()] == ["simulated"]
    assert (storage / "simulated" / "outbox.sqlite").is_file()
    assert (f"rehearsal: readings are kept in {storage / 'simulated'} and not delivered; add "
            "--deliver to send them, marked simulated") in ran.stderr
    with Outbox.open_readonly(storage / "simulated" / "outbox.sqlite") as outbox:
        assert outbox.simulated() is True
        assert outbox.stats().added > 0


@pytest.mark.parametrize("command", [["commission"], ["doctor", "--json"]])
def test_every_command_with_simulate_works_in_the_rehearsal_directory(
        tmp_path: Path, command: list[str]) -> None:
    config, storage = station(tmp_path, "http://127.0.0.1:9/write")
    done = envagent(*command, "--simulate", "--config", config, cwd=tmp_path)
    # the doctor FAILs the uplink at port 9, which nobody serves: not the point here
    assert done.returncode == (0 if command[0] == "commission" else 1), done.stderr
    assert all(name == "simulated" or name.startswith("simulated/")
               for name in files_under(storage)), files_under(storage)
    if command[0] == "commission":
        assert (storage / "simulated" / "commission.json").is_file()
    else:
        checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
        assert str(storage / "simulated") in checks["database"]["detail"]


def test_status_simulate_shows_the_config_in_use_not_the_example(tmp_path: Path) -> None:
    config, _ = station(tmp_path, "http://127.0.0.1:9/write")
    assert envagent("run", "--simulate", "--config", config, "--duration", "2",
                    cwd=tmp_path).returncode == 0
    status = envagent("status", "--simulate", "--config", config, "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["unit"] == UNIT
    assert report["simulated"] is True
    human = envagent("status", "--simulate", "--config", config, cwd=tmp_path)
    assert human.stdout.startswith(f"REHEARSAL (simulated) · {UNIT} · north pole\n"), human.stdout


@pytest.mark.skipif(DEFAULT_CONFIG.exists(), reason=f"{DEFAULT_CONFIG} exists on this machine")
def test_the_quick_start_still_works_with_the_shipped_example(tmp_path: Path) -> None:
    ran = envagent("run", "--simulate", "--duration", "3", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert f"no {DEFAULT_CONFIG}: using the shipped example station" in ran.stderr
    assert (tmp_path / "envagent-data" / "outbox.sqlite").is_file()
    status = envagent("status", "--simulate", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith("REHEARSAL (simulated) · demo-001 · "), status.stdout


# --- kept unless asked: --deliver, and then marked ------------------------------------------------


def test_deliver_sends_every_line_marked_simulated_commissioning_too(tmp_path: Path) -> None:
    with RecordingServer(lambda exchange: 204) as server:
        config, storage = station(tmp_path, server.url())
        visit = envagent("commission", "--simulate", "--config", config, "--technician", "Ana",
                         cwd=tmp_path)
        assert visit.returncode == 0, visit.stderr
        ran = envagent("run", "--simulate", "--deliver", "--config", config, "--duration", "4",
                       cwd=tmp_path)
        assert ran.returncode == 0, ran.stderr
        lines = [parse_line(line) for line in lines_received(server)]
    measurements = {measurement for measurement, _, _, _ in lines}
    assert {"envagent", "envagent_commission"} <= measurements, ran.stderr
    assert all(tags.get("simulated") == "true" and tags["unit"] == UNIT
               for _, tags, _, _ in lines)
    assert "marked simulated" in ran.stderr


def test_json_batches_of_a_rehearsal_say_simulated(tmp_path: Path) -> None:
    with RecordingServer(lambda exchange: 204) as server:
        config, _ = station(tmp_path, server.url("/ingest"), fmt="json")
        ran = envagent("run", "--simulate", "--deliver", "--config", config, "--duration", "4",
                       cwd=tmp_path)
        assert ran.returncode == 0, ran.stderr
        documents = [json.loads(e.body) for e in server.snapshot()]
    assert documents, ran.stderr
    assert all(d["simulated"] is True and d["unit"] == UNIT for d in documents)


def test_sync_simulate_refuses_without_deliver_and_sends_marked_with_it(tmp_path: Path) -> None:
    with RecordingServer(lambda exchange: 204) as server:
        config, _ = station(tmp_path, server.url())
        assert envagent("run", "--simulate", "--config", config, "--duration", "2",
                        cwd=tmp_path).returncode == 0
        refused = envagent("sync", "--simulate", "--config", config, cwd=tmp_path)
        assert refused.returncode == 2
        assert "add --deliver" in refused.stderr and "Traceback" not in refused.stderr
        assert server.snapshot() == []
        synced = envagent("sync", "--simulate", "--deliver", "--config", config, "--json",
                          cwd=tmp_path)
        assert synced.returncode == 0, synced.stderr
        lines = [parse_line(line) for line in lines_received(server)]
    assert json.loads(synced.stdout)["delivered"] > 0
    assert lines and all(tags.get("simulated") == "true" for _, tags, _, _ in lines)


@pytest.mark.parametrize("command", ["run", "sync"])
def test_deliver_without_simulate_is_a_usage_error(tmp_path: Path, command: str) -> None:
    config, _ = station(tmp_path, "http://127.0.0.1:9/write")
    done = envagent(command, "--deliver", "--config", config, cwd=tmp_path)
    assert done.returncode == 2
    assert "--deliver is for a rehearsal, with --simulate" in done.stderr


# --- marked: the outbox, and the commands that write refuse to mix -----------------------------


def test_a_real_run_refuses_a_rehearsals_outbox(tmp_path: Path) -> None:
    with RecordingServer(lambda exchange: 204) as server:
        config, _ = station(tmp_path, server.url())
        data = tmp_path / "d"
        assert envagent("run", "--simulate", "--config", config, "--data-dir", data,
                        "--duration", "2", cwd=tmp_path).returncode == 0
        for command in (["run", "--duration", "2"], ["sync"]):
            refused = envagent(*command, "--config", config, "--data-dir", data, cwd=tmp_path)
            assert refused.returncode == 2, refused.stderr
            assert "holds a rehearsal's readings (made with --simulate)" in refused.stderr
        assert server.snapshot() == []


@pytest.mark.parametrize("mark", [False, None])
def test_a_rehearsal_refuses_a_real_outbox(tmp_path: Path, mark: bool | None) -> None:
    """A real agent's outbox: marked as such, or unmarked with readings (an older version's)."""
    config, _ = station(tmp_path, "http://127.0.0.1:9/write")
    data = tmp_path / "real"
    with Outbox(data / "outbox.sqlite", max_bytes=MAX_BYTES) as outbox:
        outbox.append([a_reading()])
        if mark is not None:
            outbox.mark_simulated(mark)
    for command in (["run", "--duration", "2"], ["sync", "--deliver"], ["commission"]):
        refused = envagent(*command, "--simulate", "--config", config, "--data-dir", data,
                           cwd=tmp_path)
        assert refused.returncode == 2, refused.stderr
        assert "a rehearsal (--simulate) never writes among them" in refused.stderr
    with Outbox.open_readonly(data / "outbox.sqlite") as outbox:
        assert outbox.stats().added == 1
    assert not (data / "commission.json").exists()


def test_an_empty_unmarked_outbox_becomes_the_rehearsals(tmp_path: Path) -> None:
    config, _ = station(tmp_path, "http://127.0.0.1:9/write")
    data = tmp_path / "d"
    Outbox(data / "outbox.sqlite", max_bytes=MAX_BYTES).close()
    ran = envagent("run", "--simulate", "--config", config, "--data-dir", data, "--duration",
                   "2", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    with Outbox.open_readonly(data / "outbox.sqlite") as outbox:
        assert outbox.simulated() is True


def test_an_outbox_that_lost_its_mark_goes_by_the_station_record(tmp_path: Path) -> None:
    """A salvage starts a fresh database without the mark (and a kill may come before it is
    set again): the station record beside it still says whose readings they are."""
    config, _ = station(tmp_path, "http://127.0.0.1:9/write")
    data = tmp_path / "d"
    assert envagent("run", "--simulate", "--config", config, "--data-dir", data, "--duration",
                    "2", cwd=tmp_path).returncode == 0
    with sqlite3.connect(data / "outbox.sqlite") as conn:  # as a salvaged database is
        conn.execute("DELETE FROM meta WHERE key = 'simulated'")
    refused = envagent("run", "--config", config, "--data-dir", data, "--duration", "2",
                       cwd=tmp_path)
    assert refused.returncode == 2
    assert "holds a rehearsal's readings (made with --simulate)" in refused.stderr
    again = envagent("run", "--simulate", "--config", config, "--data-dir", data,
                     "--duration", "2", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    with Outbox.open_readonly(data / "outbox.sqlite") as outbox:
        assert outbox.simulated() is True


# --- exports of a rehearsal are marked -------------------------------------------------------


def test_export_simulate_marks_every_row_in_every_format(tmp_path: Path) -> None:
    config, _ = station(tmp_path, "http://127.0.0.1:9/write")
    assert envagent("run", "--simulate", "--config", config, "--duration", "3",
                    cwd=tmp_path).returncode == 0
    out = {}
    for fmt in ("csv", "jsonl", "lp"):
        done = envagent("export", "--simulate", "--config", config, "--format", fmt,
                        cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        out[fmt] = done.stdout
    rows = list(csv.DictReader(io.StringIO(out["csv"])))
    assert rows and all(r["simulated"] == "true" and r["unit"] == UNIT for r in rows)
    items = [json.loads(line) for line in out["jsonl"].splitlines()]
    assert len(items) == len(rows) and all(item["simulated"] is True for item in items)
    lines = [parse_line(line) for line in out["lp"].splitlines()]
    assert lines and all(tags.get("simulated") == "true" for _, tags, _, _ in lines)


def test_export_of_a_real_outbox_says_not_simulated(tmp_path: Path) -> None:
    config, storage = station(tmp_path, "http://127.0.0.1:9/write")
    with Outbox(storage / "outbox.sqlite", max_bytes=MAX_BYTES) as outbox:
        outbox.append([a_reading()])
        outbox.mark_simulated(False)
    for fmt, check in (("jsonl", lambda text: json.loads(text)["simulated"] is False),
                       ("lp", lambda text: "simulated" not in parse_line(text.strip())[1])):
        done = envagent("export", "--config", config, "--format", fmt, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert check(done.stdout), done.stdout


# --- the encoders: the mark, and a real unit's bytes unchanged ------------------------------------


def test_the_line_protocol_mark_is_a_tag_on_every_line_and_only_in_a_rehearsal() -> None:
    readings = [a_reading(), a_reading(1_767_225_610_000_000_000)]
    real = LineProtocolEncoder(unit=UNIT, site="roof", drivers={"air": "bme280"})
    marked = LineProtocolEncoder(unit=UNIT, site="roof", drivers={"air": "bme280"},
                                 simulated=True)
    assert real.lines(readings) == [
        f"envagent,driver=bme280,sensor=air,site=roof,unit={UNIT} temperature=21.5 "
        "1767225600000000000",
        f"envagent,driver=bme280,sensor=air,site=roof,unit={UNIT} temperature=21.5 "
        "1767225610000000000"]
    assert marked.lines(readings) == [
        line.replace(",site=roof,", ",simulated=true,site=roof,")  # tags sorted by key
        for line in real.lines(readings)]


def test_the_json_mark_is_a_field_of_the_batch_and_only_in_a_rehearsal() -> None:
    real = JsonEncoder(unit=UNIT, site="roof", drivers={"air": "bme280"})
    marked = JsonEncoder(unit=UNIT, site="roof", drivers={"air": "bme280"}, simulated=True)
    assert "simulated" not in json.loads(real.encode([a_reading()]))
    document = json.loads(marked.encode([a_reading()]))
    assert document["simulated"] is True
    assert document["batch"] == json.loads(real.encode([a_reading()]))["batch"]
