"""Watching a unit live: ``envagent status --watch`` redraws the status in place, ``envagent
status --follow`` prints one line per thing that happens (a commit, a delivery, readings held for
the clock, a sensor or the uplink changing state) -- both from what the running agent leaves in
the data directory, read-only, beside a real ``envagent run --simulate``.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from recording_server import RecordingServer

from agent.cli.watch import Look, Upstream, changes

ROOT = Path(__file__).resolve().parents[1]
UNIT_ID = "watch-007"
TIMEOUT_S = 90  # generous: a loaded 2-core machine starts a simulated run slowly
STAMP = r"\d\d:\d\d:\d\d"  # each follow line starts with the local time
COMMITTED = re.compile(rf"^{STAMP} committed (\d+) readings?$")
DELIVERED = re.compile(rf"^{STAMP} delivered (\d+) readings? to 127\.0\.0\.1:\d+$")
HOLDING = re.compile(rf"^{STAMP} holding (\d+): clock not synchronised")


def env() -> dict[str, str]:
    dropped = {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"}
    return {**{k: v for k, v in os.environ.items() if k not in dropped},
            "PYTHONPATH": str(ROOT), "COLUMNS": "80"}


def station(directory: Path, url: str | None = None) -> Path:
    text = (f'[unit]\nid = "{UNIT_ID}"\nsite = "pole 7"\n[storage]\ncommit_interval = "1s"\n'
            '[[sensor]]\nid = "air"\ndriver = "bme280"\naddress = 0x76\ninterval = "1s"\n')
    if url is not None:
        text += f'[uplink]\nurl = "{url}"\nallow_insecure_http = true\nflush_interval = "2s"\n'
    path = directory / "station.toml"
    path.write_text(text, encoding="utf-8")
    return path


def start(*args: str | Path, cwd: Path, **kwargs: object) -> subprocess.Popen[str]:
    options: dict[str, object] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE,
                                  "stdin": subprocess.DEVNULL, "text": True, **kwargs}
    return subprocess.Popen([sys.executable, "-m", "agent", *map(str, args)], cwd=cwd,
                            env=env(), **options)  # type: ignore[call-overload]


def envagent(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *map(str, args)], cwd=cwd, env=env(),
                          capture_output=True, text=True, timeout=TIMEOUT_S)


class Output:
    """What a process writes to a stream, gathered by a thread so a test can wait for it."""

    def __init__(self, read: Callable[[], str]) -> None:
        self.text = ""
        self._changed = threading.Condition()
        self._read = read
        threading.Thread(target=self._gather, daemon=True).start()

    @classmethod
    def of(cls, stream: IO[str]) -> Output:
        return cls(lambda: stream.readline())

    def _gather(self) -> None:
        while True:
            try:
                chunk = self._read()
            except OSError:  # a pty's master reads EIO once the child has closed it
                chunk = ""
            with self._changed:
                self.text += chunk
                self._changed.notify_all()
            if not chunk:
                return

    def wait_for(self, done: Callable[[str], bool], what: str) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: done(self.text), TIMEOUT_S):
                raise AssertionError(f"no {what} within {TIMEOUT_S} s; printed:\n{self.text}")


def stop(proc: subprocess.Popen[str], output: Output) -> str:
    """Ctrl-C, as a technician stops it: the process ends at once, exit 0, no traceback."""
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=TIMEOUT_S) == 0
    assert proc.stderr is not None
    stderr = proc.stderr.read()
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    output.wait_for(lambda text: True, "output")
    return output.text


def counts(pattern: re.Pattern[str], text: str) -> list[int]:
    return [int(m.group(1)) for line in text.splitlines() if (m := pattern.match(line))]


def final_report(config: Path, data: Path) -> dict[str, int]:
    done = envagent("status", "--config", config, "--data-dir", data, "--json", cwd=data.parent)
    assert done.returncode == 0, done.stderr
    report: dict[str, int] = json.loads(done.stdout)
    return report


def files(directory: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in directory.iterdir()}


# --- follow: one line per event, beside a running agent ----------------------------------------


def test_follow_prints_each_commit_and_delivery_as_it_happens(tmp_path: Path) -> None:
    with RecordingServer(lambda exchange: 204) as server:
        config, data = station(tmp_path, server.url()), tmp_path / "data"
        # started before the agent has made its outbox: it waits for one, and sees every commit
        follow = start("status", "--follow", "--config", config, "--data-dir", data,
                       cwd=tmp_path)
        assert follow.stdout is not None
        output = Output.of(follow.stdout)
        run: subprocess.Popen[str] | None = None
        try:
            output.wait_for(lambda text: "no outbox" in text and "waiting" in text, "the wait")
            run = start("run", "--simulate", "--deliver", "--config", config, "--data-dir",
                        data, "--duration", "15", cwd=tmp_path)
            output.wait_for(lambda text: len(counts(DELIVERED, text)) >= 2,
                            "two delivered lines")
            text = stop(follow, output)
        finally:
            follow.kill()
            if run is not None:
                run.terminate()  # SIGTERM: a clean stop, all committed, as systemd stops it
                run.communicate(timeout=TIMEOUT_S)
        assert run.returncode == 0
    committed, delivered = counts(COMMITTED, text), counts(DELIVERED, text)
    report = final_report(config, data)
    # each commit's own count, not a running total: together no more than the agent added
    assert committed and all(n > 0 for n in committed), text
    assert sum(committed) <= report["added"], (text, report["added"])
    assert all(n > 0 for n in delivered) and sum(delivered) <= report["delivered"], text
    lines = text.splitlines()
    first_commit = next(i for i, x in enumerate(lines) if COMMITTED.match(x))
    first_delivery = next(i for i, x in enumerate(lines) if DELIVERED.match(x))
    assert first_commit < first_delivery, text
    assert not counts(HOLDING, text), text  # the simulated clock is synchronised


def test_follow_says_readings_are_held_while_the_clock_is_not_synchronised(
        tmp_path: Path) -> None:
    clock = f"unsynced,booted={time.time() - 60:.0f}"  # a unit booted a minute ago, no NTP yet
    with RecordingServer(lambda exchange: 204) as server:
        config, data = station(tmp_path, server.url()), tmp_path / "data"
        run = start("run", "--simulate", "--deliver", "--sim-clock", clock, "--config",
                    config, "--data-dir", data, "--duration", "15", cwd=tmp_path)
        # as a technician types it: the hold is what the agent recorded, whatever this
        # process's own clock says (this machine's may well be synchronised)
        follow = start("status", "--follow", "--config", config, "--data-dir", data,
                       cwd=tmp_path)
        assert follow.stdout is not None
        output = Output.of(follow.stdout)
        try:
            output.wait_for(lambda text: len(counts(HOLDING, text)) >= 2, "two holding lines")
            text = stop(follow, output)
        finally:
            follow.kill()
            run.terminate()
            run.communicate(timeout=TIMEOUT_S)
    held = counts(HOLDING, text)
    assert held == sorted(held) and held[0] > 0, text  # more held at each commit
    assert counts(COMMITTED, text), text
    assert not counts(DELIVERED, text), text  # held: nothing goes upstream with a wrong time


def test_follow_says_when_upstream_stops_taking_readings(tmp_path: Path) -> None:
    with RecordingServer(lambda exchange: 503) as server:
        config, data = station(tmp_path, server.url()), tmp_path / "data"
        run = start("run", "--simulate", "--deliver", "--config", config, "--data-dir", data,
                    "--duration", "15", cwd=tmp_path)
        follow = start("status", "--follow", "--config", config, "--data-dir", data,
                       cwd=tmp_path)
        assert follow.stdout is not None
        output = Output.of(follow.stdout)
        try:
            output.wait_for(lambda text: " uplink retrying: HTTP 503" in text,
                            "the uplink's change of state")
            text = stop(follow, output)
        finally:
            follow.kill()
            run.terminate()
            run.communicate(timeout=TIMEOUT_S)
    assert counts(COMMITTED, text) and not counts(DELIVERED, text), text


def test_changes_name_what_happened_between_two_looks() -> None:
    before = Look(added=100, delivered=40, dropped=0, rejected=0, held=0, synced=True,
                  uplinks=(Upstream("default", "ok", None, 40),),
                  sensors=(("air", "ok", None),), agent=4242)
    after = Look(added=160, delivered=100, dropped=0, rejected=3, held=0, synced=True,
                 uplinks=(Upstream("default", "retrying", "HTTP 503 from upstream", 100),),
                 sensors=(("air", "warning", "read failed: no answer at 1:0x76"),), agent=4242)
    targets = {"default": "db.example:8086"}
    assert changes(before, after, targets=targets) == [
        "committed 60 readings",
        "delivered 60 readings to db.example:8086",
        "quarantined 3 readings: upstream refused them for good",
        "uplink retrying: HTTP 503 from upstream",
        "sensor air warning: read failed: no answer at 1:0x76",
    ]
    assert changes(after, before, targets=targets)[-2:] == ["uplink ok", "sensor air ok"]
    assert changes(after, after, targets=targets) == []


def test_changes_tell_several_upstreams_apart() -> None:
    """Each upstream's deliveries come from its own cursor: one down shows as not delivering,
    the other as delivering, each by name."""
    before = Look(added=100, delivered=40, dropped=0, rejected=0, held=0, synced=True,
                  uplinks=(Upstream("network", "ok", None, 90),
                           Upstream("bureau", "ok", None, 40)), sensors=(), agent=7)
    after = Look(added=130, delivered=40, dropped=0, rejected=0, held=0, synced=True,
                 uplinks=(Upstream("network", "ok", None, 120),
                          Upstream("bureau", "retrying", "connection refused", 40)),
                 sensors=(), agent=7)
    targets = {"network": "tsdb.example:8428", "bureau": "hj.example:8086"}
    assert changes(before, after, targets=targets) == [
        "committed 30 readings",
        "delivered 30 readings to network (tsdb.example:8428)",
        "uplink bureau retrying: connection refused",
    ]


def test_changes_never_count_backwards_when_the_outbox_is_replaced() -> None:
    before = Look(added=5000, delivered=4000, dropped=0, rejected=0, held=0, synced=True,
                  uplinks=(), sensors=(), agent=None)
    after = Look(added=20, delivered=0, dropped=0, rejected=0, held=0, synced=True,
                 uplinks=(), sensors=(), agent=None)
    said = changes(before, after, targets={})
    assert len(said) == 1 and "outbox" in said[0] and "-" not in said[0], said


def test_changes_say_when_the_hold_ends_and_why() -> None:
    holding = Look(added=100, delivered=0, dropped=0, rejected=0, held=100, synced=False,
                   uplinks=(), sensors=(), agent=1)
    synced = Look(added=100, delivered=0, dropped=0, rejected=0, held=0, synced=True,
                  uplinks=(), sensors=(), agent=1)
    assert changes(holding, synced, targets={}) == [
        "clock synchronised", "no longer holding: 100 readings re-stamped with their true time"]
    expired = Look(added=100, delivered=0, dropped=0, rejected=0, held=0, synced=False,
                   uplinks=(), sensors=(), agent=1, hold_expired=True)
    said = changes(holding, expired, targets={})
    assert said and "flagged" in said[-1] and "100" in said[-1], said


# --- watch: the status, redrawn --------------------------------------------------------------


def stored(tmp_path: Path) -> tuple[Path, Path]:
    """A data directory the agent has run with (and stopped): the status has something to say."""
    config, data = station(tmp_path), tmp_path / "data"
    done = envagent("run", "--simulate", "--config", config, "--data-dir", data,
                    "--duration", "3", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return config, data


def test_watch_redraws_the_status_in_place_on_a_terminal(tmp_path: Path) -> None:
    config, data = stored(tmp_path)
    before = files(data)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 80, 0, 0))
    watch = start("status", "--watch", "0.3", "--config", config, "--data-dir", data,
                  cwd=tmp_path, stdout=slave)
    os.close(slave)
    output = Output(lambda: os.read(master, 65536).decode("utf-8", "replace"))
    try:
        output.wait_for(lambda text: text.count(UNIT_ID) >= 3, "three frames")
        text = stop(watch, output)
    finally:
        watch.kill()
        os.close(master)
    frames = [f for f in text.split("\x1b[H") if UNIT_ID in f]
    assert len(frames) >= 3, repr(text)  # each frame drawn from the top-left corner
    assert all("outbox" in f and "Ctrl-C" in f for f in frames[:3]), repr(text)
    assert files(data) == before  # status only reads


def test_watch_without_a_terminal_prints_each_frame_apart(tmp_path: Path) -> None:
    config, data = stored(tmp_path)
    before = files(data)
    watch = start("status", "--watch", "0.3", "--config", config, "--data-dir", data,
                  cwd=tmp_path)
    assert watch.stdout is not None
    output = Output.of(watch.stdout)
    try:
        output.wait_for(lambda text: text.count(UNIT_ID) >= 2, "two frames")
        text = stop(watch, output)
    finally:
        watch.kill()
    assert "\x1b" not in text  # a log file or `ssh host envagent status --watch` gets plain text
    frames = [f for f in text.split("\n\n") if f.strip()]
    assert len(frames) >= 2 and all(UNIT_ID in f and "outbox" in f for f in frames[:2]), text
    assert all(f.rstrip().endswith("Ctrl-C to stop") for f in frames[:2]), text
    assert files(data) == before


def test_watch_and_follow_are_for_people_not_with_json(tmp_path: Path) -> None:
    config = station(tmp_path)
    for options in (["--watch", "--json"], ["--follow", "--json"], ["--watch", "--follow"]):
        done = envagent("status", *options, "--config", config, cwd=tmp_path)
        assert done.returncode == 2, (options, done.stderr)
        assert "Traceback" not in done.stderr and "--" in done.stderr
