"""A unit runs for months: the daemon's memory must level off, not grow with time.

The real ``envagent run --simulate`` runs the shipped example station at ten times its pace
(every sensor each second, a commit every 5 s), with one sensor NACKing for good and an upstream
that refuses one POST in five, so the error and retry paths run too. Its resident memory is
read from /proc after the warm-up (start-up, the first commits, the first sparkline bucket) and
again two minutes later. Before the simulated world stopped logging every bus transfer this grew
by ~12 KiB a second (1.4 MiB in that window); a daemon that levels off grows by ~100 KiB.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from recording_server import Exchange, RecordingServer

from agent.cli.context import example_config_path

ROOT = Path(__file__).resolve().parents[1]
WARM_UP_S = 90.0
WINDOW_S = 120.0
MAX_GROWTH_KIB = 512  # over the window: five times what a levelled-off daemon shows


def resident_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert match, status
    return int(match.group(1))


def test_a_station_at_ten_times_its_pace_levels_off(tmp_path: Path) -> None:
    refusals = itertools.cycle([503, 204, 204, 204, 204])

    def respond(exchange: Exchange) -> int:
        return next(refusals)

    with RecordingServer(respond) as server:
        text = example_config_path().read_text(encoding="utf-8")
        text = text.replace('interval = "10s"', 'interval = "1s"')
        text = text.replace('commit_interval = "30s"', 'commit_interval = "5s"')
        config = tmp_path / "fast.toml"
        config.write_text(text + f'\n[uplink]\nurl = "{server.url()}"\n'
                          'allow_insecure_http = true\nbackoff_min = "1s"\nbackoff_max = "5s"\n'
                          'flush_interval = "5s"\n',  # ten times the pace: a post per commit
                          encoding="utf-8")
        env = {k: v for k, v in os.environ.items()
               if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        seconds = WARM_UP_S + WINDOW_S + 10
        daemon = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--simulate", "--deliver", "--config",
             str(config), "--data-dir", str(tmp_path / "data"), "--duration", str(seconds),
             "--sim-fault", "screen=nack@10"],
            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**env, "PYTHONPATH": str(ROOT)})
        try:
            time.sleep(WARM_UP_S)
            assert daemon.poll() is None, daemon.communicate()[1]
            before = resident_kib(daemon.pid)
            time.sleep(WINDOW_S)
            assert daemon.poll() is None, daemon.communicate()[1]
            after = resident_kib(daemon.pid)
            _, stderr = daemon.communicate(timeout=seconds)
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
        posts = len(server.snapshot())
    assert daemon.returncode == 0, stderr
    assert posts > WINDOW_S / 5  # it delivered all along (a commit every 5 s)
    assert "'screen'" in stderr and "failed" in stderr  # the NACKing sensor's path ran
    assert after - before <= MAX_GROWTH_KIB, (before, after)
