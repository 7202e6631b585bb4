"""The envagent command as a technician runs it: real subprocesses, real exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def envagent(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_version(tmp_path: Path) -> None:
    result = envagent("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith("envagent ")


def test_read_simulate_json_gives_plausible_weather(tmp_path: Path) -> None:
    result = envagent("read", "--simulate", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    values = {(r["sensor"], r["quantity"]): (r["value"], r["unit"]) for r in rows}
    temperature, unit = values[("air", "temperature")]
    assert unit == "°C" and -40 < temperature < 50
    humidity, unit = values[("air", "humidity")]
    assert unit == "%RH" and 0 < humidity < 100
    pressure, unit = values[("air", "pressure")]
    assert unit == "hPa" and 850 < pressure < 1085


def test_run_then_status_reports_what_was_stored(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = envagent("run", "--simulate", "--data-dir", str(data), "--duration", "3",
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    status = envagent("status", "--simulate", "--data-dir", str(data), "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    # The example samples every 10 s aligned to the wall clock, so a 3 s run may fall between
    # slots; what was sampled must all be there (tests/test_station.py checks the values).
    assert report["backlog"] == report["added"]


def test_simulated_run_defaults_to_a_data_dir_beside_the_user(tmp_path: Path) -> None:
    config = tmp_path / "fast.toml"
    config.write_text(
        '[unit]\nid = "t-1"\nsite = "汉中 wetland, east"\n'
        '[storage]\ncommit_interval = "1s"\n'
        '[[sensor]]\nid = "air"\ndriver = "bme280"\naddress = 0x76\ninterval = "1s"\n'
    )
    data = tmp_path / "d"
    result = envagent("run", "--simulate", "--config", str(config), "--data-dir", str(data),
                      "--duration", "3.5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    status = envagent("status", "--config", str(config), "--data-dir", str(data), "--json",
                      cwd=tmp_path)
    report = json.loads(status.stdout)
    assert report["backlog"] >= 6  # at least two samples of three quantities
    assert {x["quantity"] for x in report["latest"]} == {"temperature", "humidity", "pressure"}


def test_sigterm_stops_cleanly_with_everything_committed(tmp_path: Path) -> None:
    config = tmp_path / "fast.toml"
    config.write_text(
        '[unit]\nid = "t-1"\nsite = "roof"\n'
        '[storage]\ncommit_interval = "5m"\n'  # nothing would be committed before the signal
        '[[sensor]]\nid = "air"\ndriver = "bme280"\naddress = 0x76\ninterval = "1s"\n'
    )
    data = tmp_path / "d"
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--simulate", "--config", str(config),
         "--data-dir", str(data)],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 60  # started (signals handled) once it writes its status
    while not (data / "sensors-state.json").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(2.5)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr
    assert "SIGTERM received" in stderr
    status = envagent("status", "--config", str(config), "--data-dir", str(data), "--json",
                      cwd=tmp_path)
    assert json.loads(status.stdout)["backlog"] >= 6


def test_bad_config_gives_one_line_per_problem_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        '[unit]\nid = "t-1"\nsite = "roof"\ncolour = "red"\n'
        '[[sensor]]\nid = "air"\ndriver = "bme280"\naddress = 0x76\ninterval = 10\n'
        'bus = "one"\n'
    )
    result = envagent("config", "check", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, result.stderr
    assert any("unit.colour" in line for line in lines)
    assert any("sensor 'air' (line 10): bus" in line and '"one"' in line for line in lines)
    assert "Traceback" not in result.stderr


def test_missing_config_is_a_usage_error(tmp_path: Path) -> None:
    result = envagent("read", "--config", str(tmp_path / "nope.toml"), cwd=tmp_path)
    assert result.returncode == 2
    assert "nope.toml" in result.stderr and "Traceback" not in result.stderr


def test_scan_simulate_names_the_chip(tmp_path: Path) -> None:
    result = envagent("scan", "--simulate", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # The whole station is tests/test_station.py's; here the first sensor of the example.
    assert {"bus": 1, "address": 0x76, "chip": "bme280"} in json.loads(result.stdout)


def test_status_without_an_outbox_says_so(tmp_path: Path) -> None:
    result = envagent("status", "--simulate", "--data-dir", str(tmp_path / "none"),
                      cwd=tmp_path)
    assert result.returncode == 1
    assert "no outbox" in result.stderr


@pytest.mark.parametrize("args", [
    ["frobnicate"], ["run", "--duration", "-1"], ["run", "--duration", "nan"], [],
    ["scan", "--simulate", "--bus", "-1"], ["scan", "--simulate", "--bus", "256"],
])
def test_bad_usage_exits_2(tmp_path: Path, args: list[str]) -> None:
    assert envagent(*args, cwd=tmp_path).returncode == 2



def test_a_duration_may_be_written_as_in_the_config(tmp_path: Path) -> None:
    result = envagent("run", "--simulate", "--data-dir", str(tmp_path / "d"), "--duration",
                      "1500ms", cwd=tmp_path)
    assert result.returncode == 0, result.stderr

def test_damaged_outbox_is_moved_aside_and_status_says_so(tmp_path: Path) -> None:
    data = tmp_path / "d"
    data.mkdir()
    (data / "outbox.sqlite").write_bytes(b"this is not a database" * 300)
    result = envagent("run", "--simulate", "--data-dir", str(data), "--duration", "1",
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "moved aside" in result.stderr or "damaged" in result.stderr
    report = json.loads(envagent("status", "--simulate", "--data-dir", str(data), "--json",
                                 cwd=tmp_path).stdout)
    assert report["recovered"]["moved_to"].startswith(str(data / "outbox.sqlite.damaged-"))
    assert Path(report["recovered"]["moved_to"]).read_bytes().startswith(b"this is not")
    assert "clock_synchronized" in report
