"""The writer's pace seen from upstream: commits go out together at most once per
``flush_interval``, alerts do not wait.

The writer's commit rides the scheduler and tells delivery after each one
(agent.sampling.daemon, ``Uplink.nudge``); delivery posts at most once per ``flush_interval``
unless the commit carries an alert, which also brings the commit forward. These run the real
``envagent run`` on the simulated bus against a recording server.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

from recording_server import Exchange, RecordingServer

ROOT = Path(__file__).resolve().parents[1]
PROCESS_TIMEOUT_S = 60


def station(path: Path, url: str, *, commit_interval: str, alert: bool = False,
            flush_interval: str = "1h") -> Path:
    text = ('[unit]\nid = "pace-001"\nsite = "pace"\n'
            f'[storage]\ncommit_interval = "{commit_interval}"\n'
            '[[sensor]]\nid = "air"\ndriver = "bme280"\naddress = 0x76\ninterval = "1s"\n'
            f'[uplink]\nurl = "{url}"\nallow_insecure_http = true\n'
            f'flush_interval = "{flush_interval}"\n')
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


def test_commits_are_sent_together_at_most_once_per_flush_interval(tmp_path: Path) -> None:
    with RecordingServer(lambda exchange: 204) as server:
        config = station(tmp_path / "pace.toml", server.url(), commit_interval="1s",
                         flush_interval="3s")
        ended = run(config, tmp_path / "data", 12)
        exchanges = server.snapshot()
    # A commit every second; a post every 3 s carries the three since the last one.
    during = [e for e in exchanges if e.received < ended - 1.5]
    assert len(during) >= 2, [round(e.received - ended, 1) for e in exchanges]
    assert all(e.status == 204 for e in exchanges)
    gaps = [b.received - a.received for a, b in itertools.pairwise(during)]
    assert min(gaps) >= 3.0 - 0.3 - 0.2, gaps  # the interval less its tenth of tolerance
    # after the first post: three commits of a 1 s sensor (and at most a health sample)
    assert all(2 <= len(lines(e)) <= 8 for e in during[1:]), [lines(e) for e in during]


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
