"""The simulated unit's clock facts come from the simulated world, never from the host.

A freshly booted machine whose clock is not synchronised (a CI runner, a laptop without NTP)
must not change what a simulated run does: ``--simulate`` is synchronised unless
``--sim-clock`` says otherwise, and ``--sim-clock`` sets both facts the agent's time keeping
depends on -- synchronised or not, and how long ago the unit booted. These run the real
``envagent`` on the simulated bus against a recording server.
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

import agent_process
import pytest
from httpfaults import parse_line
from recording_server import RecordingServer

from agent.cli.context import SimClock
from drivers.base import Quality

PROCESS_TIMEOUT_S = 60


envagent = functools.partial(agent_process.envagent, timeout=PROCESS_TIMEOUT_S)


def station(path: Path, url: str) -> Path:
    path.write_text(
        '[unit]\nid = "clock-001"\nsite = "clock"\n[storage]\ncommit_interval = "1s"\n'
        '[[sensor]]\nid = "air"\ndriver = "bme280"\naddress = 0x76\ninterval = "1s"\n'
        f'[uplink]\nurl = "{url}"\nallow_insecure_http = true\nflush_interval = "1s"\n'
        'backoff_min = "100ms"\nbackoff_max = "1s"\n', encoding="utf-8")
    return path


def qualities(server: RecordingServer) -> list[int]:
    """The quality of every temperature the server received (no ``_q`` field: 0, good)."""
    lines = [parse_line(line) for exchange in server.snapshot()
             for line in exchange.body.decode("utf-8").splitlines()]
    return [int(fields.get("temperature_q", 0))  # type: ignore[call-overload]
            for _, _, fields, _ in lines if "temperature" in fields]


def test_simulate_is_synchronised_whatever_the_host_clock_says(tmp_path: Path) -> None:
    with RecordingServer(lambda exchange: 204) as server:
        config = station(tmp_path / "c.toml", server.url())
        ran = envagent("run", "--simulate", "--deliver", "--config", config, "--data-dir",
                       tmp_path / "d", "--duration", "4", cwd=tmp_path)
        assert ran.returncode == 0, ran.stderr
        sent = qualities(server)
    assert sent, ran.stderr
    assert all(q & Quality.CLOCK_UNSYNCED == 0 for q in sent)


def test_an_unsynchronised_fresh_boot_holds_until_the_clock_syncs(tmp_path: Path) -> None:
    booted = f"{time.time() - 60:.3f}"  # a unit that booted a minute ago
    with RecordingServer(lambda exchange: 204) as server:
        config = station(tmp_path / "c.toml", server.url())
        ran = envagent("run", "--simulate", "--deliver", "--sim-clock", f"unsynced,booted={booted}",
                       "--config", config, "--data-dir", tmp_path / "d", "--duration", "4",
                       cwd=tmp_path)
        assert ran.returncode == 0, ran.stderr
        assert qualities(server) == []  # held for the clock, not sent with a wrong time
        synced = envagent("sync", "--simulate", "--deliver", "--sim-clock",
                          f"synced,booted={booted}", "--config", config, "--data-dir",
                          tmp_path / "d", cwd=tmp_path)
        assert synced.returncode == 0, synced.stderr
        sent = qualities(server)
    assert sent
    assert all(q & Quality.CLOCK_RESTAMPED and not q & Quality.CLOCK_UNSYNCED for q in sent)


def test_an_unsynchronised_old_boot_is_sent_flagged(tmp_path: Path) -> None:
    booted = f"{time.time() - 7200:.3f}"  # up for two hours: past the hold, never synchronised
    with RecordingServer(lambda exchange: 204) as server:
        config = station(tmp_path / "c.toml", server.url())
        ran = envagent("run", "--simulate", "--deliver", "--sim-clock", f"unsynced,booted={booted}",
                       "--config", config, "--data-dir", tmp_path / "d", "--duration", "4",
                       cwd=tmp_path)
        assert ran.returncode == 0, ran.stderr
        sent = qualities(server)
    assert sent, ran.stderr
    assert all(q & Quality.CLOCK_UNSYNCED for q in sent)


def test_sim_clock_parses_what_help_says() -> None:
    assert SimClock.parse("synced") == SimClock(True, None, None)
    assert SimClock.parse("unsynced@30") == SimClock(False, 30.0, None)
    assert SimClock.parse("unsynced,booted=1765000000") == SimClock(False, None, 1765000000.0)
    for bad in ("sync", "synced@5", "unsynced@-1", "unsynced@x", "unsynced,boot=1",
                "unsynced,booted=", "unsynced,booted=nan", "unsynced@inf"):
        with pytest.raises(argparse.ArgumentTypeError):
            SimClock.parse(bad)


def test_an_unsynchronised_clock_synchronises_when_told() -> None:
    clock = SimClock.parse("unsynced@0.2").clock()
    assert clock.synchronized() is False
    time.sleep(0.3)
    assert clock.synchronized() is True
