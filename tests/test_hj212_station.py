"""A simulated station reports to the bureau's platform over HJ 212-2017, end to end: the real
``envagent run`` against the receiver written from the standard (tests/hj212_receiver.py),
which is down for a while in the middle (``ENVAGENT_HJ212_OUTAGE_S``, default 600 s: the
issue's ten minutes).

Afterwards: every packet passed the receiver's checks (framing, length, CRC, fields), every
sample the unit archived for the platform arrived as real-time data with its value, every
minute interval's Min/Avg/Max equals those of the archived samples of its local-time interval,
and nothing is left in the outbox.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from agent_process import ROOT, SYSTEMD_VARIABLES, envagent
from hj212_receiver import Hj212Receiver

from agent.store.outbox import Outbox

OUTAGE_S = float(os.environ.get("ENVAGENT_HJ212_OUTAGE_S", "600"))
PW = "Ab3456"
MN = "3301000000HJ01"
SHANGHAI = ZoneInfo("Asia/Shanghai")
NS = 1_000_000_000


def station(tmp_path: Path, url: str) -> Path:
    password = tmp_path / "hj212-pw"
    password.write_text(PW + "\n", encoding="utf-8")
    password.chmod(0o600)
    config = tmp_path / "station.toml"
    config.write_text(
        '[unit]\nid = "hj-1"\nsite = "wetland"\n[storage]\ncommit_interval = "1s"\n'
        '[[sensor]]\nid = "air"\ndriver = "bme280"\naddress = 0x76\ninterval = "5s"\n'
        '[[sensor]]\nid = "dust"\ndriver = "pmsa003i"\naddress = 0x12\ninterval = "5s"\n'
        f'[[uplink]]\nname = "bureau"\nurl = "{url}"\nmn = "{MN}"\nst = 22\n'
        f'password_file = "{password}"\nminute_interval = "1m"\nflush_interval = "2s"\n'
        'backoff_min = "0.5s"\nbackoff_max = "5s"\novertime = "2s"\nrecount = 1\n',
        encoding="utf-8")
    return config


def wait_for(what: str, test: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not test():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.5)


def test_a_station_reports_through_an_outage_and_nothing_is_lost(tmp_path: Path) -> None:
    receiver = Hj212Receiver(password=PW)
    port = receiver.port
    config, data = station(tmp_path, receiver.url), tmp_path / "data"
    duration = 30 + OUTAGE_S + 60
    env = {k: v for k, v in os.environ.items() if k not in SYSTEMD_VARIABLES}
    with (tmp_path / "agent.log").open("w") as log:
        agent = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--simulate", "--deliver", "--config",
             str(config), "--data-dir", str(data), "--duration", str(duration)],
            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
            env={**env, "PYTHONPATH": str(ROOT)})
    received = []
    try:
        wait_for("the platform receives real-time data", lambda: receiver.data_packets())
        # A technician's visit: maintenance mode on for a while, beside the running agent.
        for args, pause in ((("on", "--note", "filter change"), 12.0), (("off",), 6.0)):
            switched = envagent("maintenance", *args, "--simulate", "--config", config,
                                "--data-dir", data, cwd=tmp_path, timeout=60)
            assert switched.returncode == 0, switched.stderr
            time.sleep(pause)
        flags = [p.flags["a01001"] for p in receiver.data_packets() if "a01001" in p.flags]
        assert "M" in flags and flags[0] == "N" and flags[-1] == "N", flags
        receiver.close()  # the platform goes down
        received += receiver.received
        errors = list(receiver.errors)
        time.sleep(OUTAGE_S)
        receiver = Hj212Receiver(port=port, password=PW)
        wait_for("minute data after the outage", lambda: receiver.data_packets("2051"), 120)
        # The platform pulls the minute data of the outage: answered from what the unit holds.
        begin = min(p.data_time for p in receiver.data_packets("2051"))
        qn = receiver.request("2051", f"BeginTime={begin[:12]}00;EndTime=20991231000000",
                              qn="20260101120000777", mn=MN)
        wait_for("the history pull's answer", lambda: any(
            r.fields["QN"] == qn and r.cn == "9012" for r in receiver.received), 30)
        pulled = [r for r in receiver.received if r.fields["QN"] == qn]
        assert pulled[0].fields["CP"] == "QnRtn=1" and pulled[-1].fields["CP"] == "ExeRtn=1"
        assert {r.data_time for r in pulled if r.cn == "2051"} >= {begin}
        assert agent.wait(duration + 60) == 0, (tmp_path / "agent.log").read_text()[-3000:]
        synced = envagent("sync", "--simulate", "--deliver", "--config", config, "--data-dir",
                          data, cwd=tmp_path, timeout=120)
        assert synced.returncode == 0, synced.stdout + synced.stderr
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        receiver.close()
    received += receiver.received
    errors += receiver.errors
    assert errors == []
    with Outbox.open_readonly(data / "outbox.sqlite") as outbox:
        final = outbox.stats()
    assert (final.backlog, final.dropped) == (0, 0), final

    archive = sqlite3.connect(data / "hj212-bureau.sqlite")
    samples = archive.execute("SELECT code, t_ns, value FROM samples").fetchall()
    archive.close()
    rtd = {(p.data_time, code): value for p in received if p.cn == "2011"
           for code, value in p.values.items()}
    local = {t: datetime.fromtimestamp(t // NS, SHANGHAI) for _, t, _ in samples}
    missing = [(code, t) for code, t, _ in samples
               if (local[t].strftime("%Y%m%d%H%M%S"), code) not in rtd]
    assert missing == [], f"{len(missing)} of {len(samples)} samples never arrived"
    for code, t, value in samples:
        assert rtd[(local[t].strftime("%Y%m%d%H%M%S"), code)] == round(value, 4)
    assert len(samples) > 6 * OUTAGE_S / 5  # the outage's samples (6 codes) are there

    by_minute: dict[tuple[str, str], list[float]] = defaultdict(list)
    for code, t, value in samples:
        by_minute[(local[t].replace(second=0).strftime("%Y%m%d%H%M%S"), code)].append(value)
    first = min(by_minute)[0]  # a day's archive starts at local midnight: older are gone
    minutes = [p for p in received if p.cn == "2051" and p.data_time >= first]
    assert len({p.data_time for p in minutes}) >= OUTAGE_S / 60  # the outage's minutes too
    for packet in minutes:
        for code, stats in packet.stats.items():
            values = by_minute[(packet.data_time, code)]
            assert stats["Min"] == round(min(values), 4)
            assert stats["Max"] == round(max(values), 4)
            assert abs(stats["Avg"] - statistics.fmean(values)) <= 0.6e-4


def test_without_ntp_the_platforms_time_set_stamps_the_readings(tmp_path: Path) -> None:
    """The unit booted a minute ago and its clock never synchronises; the platform sets the
    time (CN 1012) a day ahead of it: the readings reach the platform stamped with the
    platform's time, not held for the clock and not flagged, and the unit's clock is left
    alone."""
    receiver = Hj212Receiver(password=PW)
    config, data = station(tmp_path, receiver.url), tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k not in SYSTEMD_VARIABLES}
    with (tmp_path / "agent.log").open("w") as log:
        agent = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--simulate", "--deliver", "--sim-clock",
             f"unsynced,booted={time.time() - 60:.0f}", "--config", str(config), "--data-dir",
             str(data), "--duration", "40"],
            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
            env={**env, "PYTHONPATH": str(ROOT)})
    try:
        wait_for("the agent connects", lambda: receiver._conns, 30)  # held: no data yet
        time.sleep(3)
        assert receiver.data_packets() == []
        ahead = time.time() + 86400
        set_at = datetime.fromtimestamp(ahead, SHANGHAI).strftime("%Y%m%d%H%M%S")
        qn = receiver.request("1012", f"SystemTime={set_at}", qn="20260101120000555", mn=MN)
        wait_for("readings stamped with the platform's time", lambda: receiver.data_packets())
        assert agent.wait(90) == 0, (tmp_path / "agent.log").read_text()[-3000:]
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        receiver.close()
    answer = [r for r in receiver.received if r.fields["QN"] == qn and r.cn == "9012"]
    assert answer and answer[0].fields["CP"] == "ExeRtn=1"
    assert receiver.errors == []
    stamped = [datetime.strptime(p.data_time, "%Y%m%d%H%M%S").replace(tzinfo=SHANGHAI)
               for p in receiver.data_packets()]
    assert all(abs(t.timestamp() - ahead) < 60 for t in stamped), stamped
    assert {p.flags.get("a01001", "N") for p in receiver.data_packets()} == {"N"}
    assert "stamped with it" in (tmp_path / "agent.log").read_text()
