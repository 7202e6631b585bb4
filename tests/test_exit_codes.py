"""Exit codes say what happened (issue 12, point 2), through the real ``envagent`` on the
simulated station.

``sync`` exits 1, with the reason in words, whenever readings are left: held for the clock,
refused by the server, or the server unreachable ("exit 1 unless all of it went"); ``--json``
then says ``"ok": false`` and a ``reason``. ``run`` exits 1 when readings were lost because the
outbox could not store them.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

from recording_server import RecordingServer

ROOT = Path(__file__).resolve().parents[1]
PROCESS_TIMEOUT_S = 120


def envagent(*args: str | Path, cwd: Path,
             limit_file_size: bool = False) -> subprocess.CompletedProcess[str]:
    """``limit_file_size``: RLIMIT_FSIZE 0, so every write to a file fails (EFBIG) -- as on a
    card that refuses writes; root obeys it too, unlike directory permissions."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}

    def no_file_writes() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))

    return subprocess.run([sys.executable, "-B", "-m", "agent", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S,
                          env={**env, "PYTHONPATH": str(ROOT)},
                          preexec_fn=no_file_writes if limit_file_size else None)


def station(path: Path, url: str) -> Path:
    path.write_text(
        '[unit]\nid = "exit-001"\nsite = "exit"\n[storage]\ncommit_interval = "1s"\n'
        '[[sensor]]\nid = "air"\ndriver = "bme280"\naddress = 0x76\ninterval = "1s"\n'
        f'[uplink]\nurl = "{url}"\nallow_insecure_http = true\nflush_interval = "1s"\n'
        'backoff_min = "100ms"\nbackoff_max = "1s"\n', encoding="utf-8")
    return path


def dead_url() -> str:
    """A loopback port nobody listens on: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/write"


def filled(tmp_path: Path, url: str, clock: str = "synced") -> tuple[Path, Path]:
    """A data directory with a few seconds of readings that ``url`` never took."""
    config, data = station(tmp_path / "c.toml", url), tmp_path / "d"
    ran = envagent("run", "--simulate", "--deliver", "--sim-clock", clock, "--config", config,
                   "--data-dir", data, "--duration", "3", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    return config, data


def sync(config: Path, data: Path, clock: str, cwd: Path,
         *extra: str) -> subprocess.CompletedProcess[str]:
    return envagent("sync", "--simulate", "--deliver", "--sim-clock", clock, "--config", config,
                    "--data-dir", data, *extra, cwd=cwd)


def test_sync_exits_1_when_the_server_is_unreachable(tmp_path: Path) -> None:
    url = dead_url()
    config, data = filled(tmp_path, url)
    human = sync(config, data, "synced", tmp_path)
    assert human.returncode == 1
    assert "cannot reach" in human.stderr and "Traceback" not in human.stderr
    machine = sync(config, data, "synced", tmp_path, "--json")
    assert machine.returncode == 1
    report = json.loads(machine.stdout)
    assert report["ok"] is False and report["backlog"] > 0
    assert "cannot reach" in report["reason"]


def test_sync_exits_1_when_readings_are_held_even_against_a_dead_port(tmp_path: Path) -> None:
    clock = f"unsynced,booted={time.time() - 60:.3f}"
    config, data = filled(tmp_path, dead_url(), clock)
    human = sync(config, data, clock, tmp_path)
    assert human.returncode == 1, human.stderr
    assert "held" in human.stderr and "not synchronised" in human.stderr
    assert "sudo timedatectl set-ntp true" in human.stderr  # what to do
    report = json.loads(sync(config, data, clock, tmp_path, "--json").stdout)
    assert report["ok"] is False and report["held"] == report["backlog"] > 0
    assert "held" in report["reason"]


def test_sync_exits_1_when_the_server_refuses_readings(tmp_path: Path) -> None:
    with RecordingServer(lambda exchange: 503) as down:  # keeps the readings for sync
        config, data = filled(tmp_path, down.url())
    with RecordingServer(lambda exchange: 400) as refusing:
        station(config, refusing.url())
        result = sync(config, data, "synced", tmp_path, "--json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["quarantined"] > 0 and report["backlog"] == 0
    assert "refused" in report["reason"] and "quarantine" in report["reason"]
    human = sync(config, data, "synced", tmp_path)  # nothing left now: all of it went
    assert human.returncode == 0, human.stderr


def test_sync_exits_0_when_all_of_it_went(tmp_path: Path) -> None:
    with RecordingServer(lambda exchange: 503) as down:
        config, data = filled(tmp_path, down.url())
    with RecordingServer(lambda exchange: 204) as server:
        station(config, server.url())
        result = sync(config, data, "synced", tmp_path, "--json")
        assert server.snapshot()
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["reason"] is None and report["backlog"] == 0
    assert report["delivered"] > 0


def test_run_exits_1_when_readings_are_lost(tmp_path: Path) -> None:
    config = station(tmp_path / "c.toml", dead_url())
    data = tmp_path / "d"
    data.mkdir()
    result = envagent("run", "--simulate", "--config", config, "--data-dir", data,
                      "--duration", "3", cwd=tmp_path, limit_file_size=True)
    assert "held reading(s) are lost" in result.stderr  # the failure path under test
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "lost" in last and "outbox" in last, last  # the last word says why the exit is 1
