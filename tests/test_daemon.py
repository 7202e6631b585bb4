"""The writer's pace seen from upstream: what is committed goes out at once, alerts do not wait.

The writer sleeps from one commit to the next and tells delivery after each one
(agent.sampling.daemon,
``Uplink.nudge``); an alert brings the commit forward. These run the real ``envagent run`` on
the simulated bus against a recording server, with a ``flush_interval`` of an hour: anything
that reaches the server during the run got there because of a commit, not a poll.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from recording_server import Exchange, RecordingServer

ROOT = Path(__file__).resolve().parents[1]
PROCESS_TIMEOUT_S = 60


def station(path: Path, url: str, *, commit_interval: str, alert: bool = False) -> Path:
    text = ('[unit]\nid = "pace-001"\nsite = "pace"\n'
            f'[storage]\ncommit_interval = "{commit_interval}"\n'
            '[[sensor]]\nid = "air"\ndriver = "bme280"\naddress = 0x76\ninterval = "1s"\n'
            f'[uplink]\nurl = "{url}"\nallow_insecure_http = true\nflush_interval = "1h"\n')
    if alert:  # always beyond its threshold: fires at the first sample
        text += ('[[alert]]\nid = "any_air"\nsensor = "air"\nquantity = "temperature"\n'
                 'above = -100\nfor = "0s"\n')
    path.write_text(text, encoding="utf-8")
    return path


def run(config: Path, data: Path, seconds: float) -> float:
    """``envagent run --simulate --deliver`` for ``seconds``; returns the monotonic time it
    ended (its start-up takes longer on a loaded machine, its stop does not)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    done = subprocess.run(
        [sys.executable, "-m", "agent", "run", "--simulate", "--deliver", "--config",
         str(config), "--data-dir", str(data), "--duration", str(seconds)],
        cwd=config.parent, capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S,
        env={**env, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    return time.monotonic()


def lines(exchange: Exchange) -> list[str]:
    return exchange.body.decode("utf-8").splitlines()


def test_each_commit_is_sent_right_after_it_not_at_the_next_look(tmp_path: Path) -> None:
    with RecordingServer(lambda exchange: 204) as server:
        config = station(tmp_path / "pace.toml", server.url(), commit_interval="2s")
        ended = run(config, tmp_path / "data", 12)
        exchanges = server.snapshot()
    # A commit every 2 s from the writer's start; each one's readings reach the server in a
    # request of their own at once -- not only the last commit, at the stop.
    during = [e for e in exchanges if e.received < ended - 1.5]
    assert len(during) >= 3, [round(e.received - ended, 1) for e in exchanges]
    assert all(e.status == 204 for e in exchanges)
    # 2 s of one 1 s sensor and at most one health sample (the unit's line, the sensor's and
    # the upstream's), not a backlog
    assert all(0 < len(lines(e)) <= 5 for e in during), [lines(e) for e in during]


def test_an_alert_is_stored_and_sent_at_once_not_at_the_next_commit(tmp_path: Path) -> None:
    with RecordingServer(lambda exchange: 204) as server:
        config = station(tmp_path / "alert.toml", server.url(), commit_interval="5m",
                         alert=True)
        ended = run(config, tmp_path / "data", 10)
        exchanges = server.snapshot()
    alerts = [e for e in exchanges if any("alert_any_air=1" in line for line in lines(e))]
    assert alerts, [lines(e) for e in exchanges]
    # It fires at the first sample, a second or two after the set-up; the commit interval is
    # 5 min and the next look an hour away, so only the alert's own commit sends it before
    # the stop (whose final commit would carry it otherwise).
    assert alerts[0].received < ended - 2, alerts[0].received - ended
