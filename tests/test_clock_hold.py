"""Readings held for an unsynchronised clock are a state a technician can see (issue 12, point 1).

On a fresh boot whose clock is not synchronised (a cellular link that blocks NTP), the agent holds
this boot's readings back from delivery until the clock synchronises (then re-stamps them) or
until ``HOLD_UNSYNCED_S`` after boot (then sends them flagged). These run the real ``envagent``
on the simulated station against a recording server, with the clock's facts set by
``--sim-clock``: the log says when holding starts and ends, ``status`` (human and ``--json``)
shows the hold, the LED shows it, ``doctor`` says how to get the clock synchronised, and ``sync``
on a synchronised clock releases the readings, re-stamped.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from httpfaults import parse_line
from recording_server import RecordingServer

from agent.cli.statusview import clock_words, holding
from agent.config import UplinkConfig, parse_config
from agent.core.reading import Reading
from agent.core.timebase import HOLD_UNSYNCED_S, NS, UNSYNCED_REASON
from agent.runtime.indicator import PATTERNS, Condition, condition
from agent.sampling.timekeeping import TimeKeeper
from agent.store.outbox import Outbox, Subscriber
from agent.uplink.encoders import make_encoder
from agent.uplink.http import HttpSink
from agent.uplink.httpwire import make_session
from agent.uplink.worker import STATE_FILE, Outcome, Uplink, UplinkState
from drivers.base import Quality
from drivers.sim.clock import FakeClock

ONE = [Subscriber("default")]  # the one upstream of these tests


ROOT = Path(__file__).resolve().parents[1]
PROCESS_TIMEOUT_S = 120
WIDE = 300  # COLUMNS for the human status: every row on one line


def envagent(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    return subprocess.run([sys.executable, "-m", "agent", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S,
                          env={**env, "PYTHONPATH": str(ROOT), "COLUMNS": str(WIDE)})


def station(path: Path, url: str, *, led: bool = False) -> Path:
    """One BME280 sampled every second, delivering to ``url``; with ``led``, a status LED."""
    path.write_text(
        '[unit]\nid = "hold-001"\nsite = "hold"\n[storage]\ncommit_interval = "1s"\n'
        '[[sensor]]\nid = "air"\ndriver = "bme280"\naddress = 0x76\ninterval = "1s"\n'
        f'[uplink]\nurl = "{url}"\nallow_insecure_http = true\nflush_interval = "1s"\n'
        'backoff_min = "100ms"\nbackoff_max = "1s"\n'
        + ('[indicator]\nled_pin = 17\n' if led else ''), encoding="utf-8")
    return path


def run(clock: str, config: Path, data: Path, seconds: float,
        cwd: Path) -> subprocess.CompletedProcess[str]:
    """``envagent run`` on the simulated station, delivering (``--deliver``), for ``seconds``."""
    return envagent("run", "--simulate", "--deliver", "--sim-clock", clock, "--config", config,
                    "--data-dir", data, "--duration", str(seconds), cwd=cwd)


def sync(clock: str, config: Path, data: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return envagent("sync", "--simulate", "--deliver", "--sim-clock", clock, "--config", config,
                    "--data-dir", data, "--json", cwd=cwd)


def temperatures(server: RecordingServer) -> list[tuple[int, int]]:
    """(quality, time_ns) of every temperature the server received."""
    lines = [parse_line(line) for exchange in server.snapshot() if exchange.accepted
             for line in exchange.body.decode("utf-8").splitlines()]
    return [(int(fields.get("temperature_q", 0)), stamp)  # type: ignore[call-overload]
            for _, _, fields, stamp in lines if "temperature" in fields]


def status_json(config: Path, data: Path, clock: str, cwd: Path) -> dict[str, object]:
    result = envagent("status", "--simulate", "--sim-clock", clock, "--config", config,
                      "--data-dir", data, "--json", cwd=cwd)
    assert result.returncode == 0, result.stderr
    report: dict[str, object] = json.loads(result.stdout)
    return report


def clock_row(config: Path, data: Path, clock: str, cwd: Path) -> str:
    result = envagent("status", "--simulate", "--sim-clock", clock, "--config", config,
                      "--data-dir", data, cwd=cwd)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("clock ")]
    assert len(rows) == 1, result.stdout
    return rows[0]


def iso_seconds(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_a_held_run_logs_the_hold_and_status_led_and_sync_show_it(tmp_path: Path) -> None:
    booted = time.time() - 60  # a unit that booted a minute ago, NTP not reachable
    unsynced, synced = f"unsynced,booted={booted:.3f}", f"synced,booted={booted:.3f}"
    data = tmp_path / "d"
    with RecordingServer(lambda exchange: 204) as server:
        config = station(tmp_path / "c.toml", server.url(), led=True)
        # 8 s: the supervisor's first tick (5 s without a watchdog) updates the LED
        ran = run(unsynced, config, data, 8, tmp_path)
        assert ran.returncode == 0, ran.stderr
        assert temperatures(server) == []  # held, not sent with a wrong time
        started = [line for line in ran.stderr.splitlines() if "holding" in line]
        assert started, ran.stderr
        assert "clock is not synchronised" in started[0] and "at most" in started[0]
        assert "status LED: holding" in ran.stderr

        report = status_json(config, data, unsynced, tmp_path)
        assert report["uplink"] is not None  # the worker wrote its state, though it sent nothing
        clock = report["clock"]
        assert isinstance(clock, dict) and clock["synchronised"] is False
        holding = clock["holding"]
        assert isinstance(holding, dict), clock
        assert holding["count"] == report["backlog"] > 0
        recorded = UplinkState.load(data / STATE_FILE)  # the worker's own count, at its stop
        assert recorded is not None and recorded.hold_count == holding["count"]
        assert "not synchronised" in holding["reason"]
        assert abs(iso_seconds(holding["until"]) - (booted + HOLD_UNSYNCED_S)) < 2
        assert iso_seconds(holding["since"]) <= time.time()

        row = clock_row(config, data, unsynced, tmp_path)
        until = datetime.fromtimestamp(booted + HOLD_UNSYNCED_S).strftime("%H:%M")
        assert f"{holding['count']} readings held" in row, row
        assert "not synchronised" in row.lower() and until in row and "at most" in row
        assert "timedatectl" in row  # what to do

        # sync on the still unsynchronised clock sends nothing, and says so with exit 1
        still = sync(unsynced, config, data, tmp_path)
        assert still.returncode == 1, still.stderr
        answer = json.loads(still.stdout)
        assert answer["ok"] is False and answer["delivered"] == 0
        assert answer["held"] == holding["count"]
        assert "held" in answer["reason"] and "not synchronised" in answer["reason"]
        assert temperatures(server) == []

        # once the clock is synchronised, sync releases them, re-stamped
        released = sync(synced, config, data, tmp_path)
        assert released.returncode == 0, released.stderr
        assert json.loads(released.stdout)["ok"] is True
        sent = temperatures(server)
    assert sent
    assert all(q & Quality.CLOCK_RESTAMPED and not q & Quality.CLOCK_UNSYNCED for q, _ in sent)
    after = status_json(config, data, synced, tmp_path)
    assert after["backlog"] == 0
    assert after["clock"] == {"synchronised": True, "holding": None}


def test_the_log_says_when_the_hold_ends_with_the_sync(tmp_path: Path) -> None:
    booted = time.time() - 60
    with RecordingServer(lambda exchange: 204) as server:
        config = station(tmp_path / "c.toml", server.url())
        # synchronised 6 s after the start: the first commits (every second) are held before
        ran = run(f"unsynced@6,booted={booted:.3f}", config, tmp_path / "d", 10, tmp_path)
        assert ran.returncode == 0, ran.stderr
        sent = temperatures(server)
    lines = ran.stderr.splitlines()
    start = next(i for i, line in enumerate(lines) if "holding" in line)
    end = next(i for i, line in enumerate(lines) if "held reading(s)" in line and i > start)
    assert "synchronised" in lines[end] and "re-stamped" in lines[end], lines[end]
    assert any(q & Quality.CLOCK_RESTAMPED for q, _ in sent), ran.stderr
    assert not any(q & Quality.CLOCK_UNSYNCED for q, _ in sent)


def test_after_the_hold_status_does_not_say_readings_wait(tmp_path: Path) -> None:
    booted = time.time() - 7200  # up two hours, never synchronised: the hold is over
    unsynced = f"unsynced,booted={booted:.3f}"
    data = tmp_path / "d"
    with RecordingServer(lambda exchange: 204) as server:
        config = station(tmp_path / "c.toml", server.url())
        ran = run(unsynced, config, data, 3, tmp_path)
        assert ran.returncode == 0, ran.stderr
        assert temperatures(server), ran.stderr
    row = clock_row(config, data, unsynced, tmp_path)
    assert "wait" not in row, row
    assert "flagged" in row and "timedatectl" in row
    assert "holding" not in ran.stderr
    clock = status_json(config, data, unsynced, tmp_path)["clock"]
    assert clock == {"synchronised": False, "holding": None}


def doctor_clock(tmp_path: Path, clock: str) -> tuple[int, dict[str, Any]]:
    config = tmp_path / "one.toml"
    config.write_text('[unit]\nid = "doc-1"\nsite = "roof"\n'
                      '[[sensor]]\nid = "air"\ndriver = "bme280"\naddress = 0x76\n',
                      encoding="utf-8")
    result = envagent("doctor", "--simulate", "--sim-clock", clock, "--config", config,
                      "--data-dir", tmp_path / "d", "--samples", "1", "--json", cwd=tmp_path)
    checks = json.loads(result.stdout)["checks"]
    (check,) = [c for c in checks if c["name"] == "clock"]
    return result.returncode, check


def test_doctor_says_how_to_get_the_clock_synchronised(tmp_path: Path) -> None:
    code, check = doctor_clock(tmp_path, f"unsynced,booted={time.time() - 60:.3f}")
    assert check["status"] == "WARN" and code == 0
    assert "held" in check["detail"]
    hint = check["hint"]
    for words in ("timedatectl status", "sudo timedatectl set-ntp true", "UDP port 123",
                  "RTC", "DS3231"):
        assert words in hint, hint

    code, check = doctor_clock(tmp_path, f"unsynced,booted={time.time() - 7200:.3f}")
    assert check["status"] == "FAIL" and code == 1
    assert "flagged" in check["detail"] and "sudo timedatectl set-ntp true" in check["hint"]

    code, check = doctor_clock(tmp_path, "synced")
    assert check["status"] == "PASS"


# --- the pieces, in process ----------------------------------------------------------------------


def test_the_led_shows_holding_below_offline_and_above_a_failing_sensor() -> None:
    assert condition(["failed"], "ok", True, holding=True) is Condition.HOLDING
    assert condition(["ok"], "offline", True, holding=True) is Condition.OFFLINE
    assert condition(["ok"], "ok", True, alert=True, holding=True) is Condition.ALERT
    assert condition(["ok"], "ok", False, holding=True) is Condition.FATAL
    assert condition(["ok"], "disabled", True) is Condition.OK
    pattern = PATTERNS[Condition.HOLDING]
    assert pattern == (1.0, 0.3, 0.2, 1.5)  # README "Status LED": one long flash, one short
    others = [PATTERNS[c] for c in Condition if c is not Condition.HOLDING]
    assert pattern not in others and sum(pattern) <= 5.0  # its own rhythm; never looks steady


def test_a_hold_past_its_end_or_of_another_boot_is_not_shown(tmp_path: Path) -> None:
    now = 1_767_225_600.0
    state = UplinkState(hold_boot="boot-a", hold_count=12, hold_since_ns=int((now - 60) * 1e9),
                        hold_until_ns=int((now + 600) * 1e9), hold_reason=UNSYNCED_REASON)
    shown = holding(state, "boot-a", 15, now)
    assert shown is not None and shown.count == 15  # the backlog: current, where 12 was not
    assert holding(state, "boot-b", 15, now) is None  # rebooted: that boot's hold is over
    assert holding(state, "boot-a", 0, now) is None  # delivered meanwhile
    assert holding(state, "boot-a", 15, now + 601) is None  # the hold ran out
    config = parse_config({"unit": {"id": "u", "site": "s"},
                           "uplink": {"url": "https://db.example.org/write"}}, source="t.toml")
    words = clock_words(config, False, None, now + 601, hold_ends=now + 600)
    assert "wait" not in words and "held" not in words.split("(")[0]
    assert "flagged" in words and "timedatectl" in words
    assert "held for it until" in clock_words(config, False, None, now, hold_ends=now + 600)


def test_the_worker_writes_the_hold_at_most_once_a_minute_and_ends_it_re_stamped(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(start=100.0, wall=1_600_000_000.0, synced=False)  # stale, 100 s after boot
    keeper = TimeKeeper(clock, "boot-a")
    state_file = tmp_path / STATE_FILE

    def sample() -> None:
        now_ns, boot_ns = int(clock.time() * NS), int(clock.boottime() * NS)
        outbox.append([Reading("air", q, 20.0, "x", now_ns, boot_ns, "boot-a", False)
                       for q in ("temperature", "humidity", "pressure")])
        keeper.appended(any_unsynced=True)
        keeper.maintain(outbox)

    def written() -> int | None:
        saved = UplinkState.load(state_file)
        assert saved is not None
        return saved.hold_count

    caplog.set_level(logging.INFO, logger="envagent.uplink")
    with RecordingServer(lambda exchange: 204) as server, \
            Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 24, subscribers=ONE) as outbox:
        settings = UplinkConfig(url=server.url(), format="json", allow_insecure=True)
        sink = HttpSink(settings.url, make_encoder("json", unit="u", site="s", drivers={},
                                                   measurement=settings.measurement),
                        make_session(), auth=settings.auth, connect_timeout=1.0,
                        read_timeout=1.0, deadline=2.0)
        uplink = Uplink(outbox, sink, settings, clock=clock, token=lambda: None,
                        state_path=state_file, held_boot=keeper.held_boot, hold=keeper.holding)
        sample()
        assert uplink.step().outcome is Outcome.IDLE and uplink.holding
        assert written() == 3
        assert "holding 3 reading(s)" in caplog.text
        for _ in range(5):  # a commit every 10 s: counted, written once a minute at most
            clock.advance(10.0)
            sample()
            uplink.step()
        assert uplink.held == 18 and written() == 3
        clock.advance(10.0)
        sample()
        uplink.step()
        assert written() == 21  # a minute after the last write
        clock.set_wall(1_767_225_600.0, synced=True)  # NTP gets through
        keeper.maintain(outbox)
        step = uplink.step()
        assert step.outcome is Outcome.DELIVERED and step.delivered == 21
        assert not uplink.holding and written() is None
        assert "the 21 held reading(s) go upstream" in caplog.text
        assert "re-stamped" in caplog.text
        sent = json.loads(server.snapshot()[0].body)["readings"]
    assert all(r["time_ns"] > 1_767_225_000 * NS for r in sent)  # the true time, not 2020's
