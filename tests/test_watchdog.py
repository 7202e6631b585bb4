"""The real `envagent run` under a real notify socket: READY, watchdog pace, STOPPING, and the
pings stopping for a hung sensor but not for a dead upstream."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.core.reading import Reading
from agent.store.outbox import Outbox

ROOT = Path(__file__).resolve().parents[1]
FAST = (
    '[unit]\nid = "wd-1"\nsite = "roof"\n'
    '[storage]\ncommit_interval = "1s"\n'
    '[[sensor]]\nid = "air"\ndriver = "bme280"\naddress = 0x76\ninterval = "1s"\n'
)


class NotifySocket:
    """systemd's side: an AF_UNIX datagram socket collecting (time, message) pairs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []

    def collect(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))

    def wait_for(self, prefix: str, timeout: float) -> None:
        """Collect until a message starting with ``prefix`` has come (or ``timeout`` passed)."""
        end = time.monotonic() + timeout
        while not any(m.startswith(prefix) for _, m in self.messages):
            if time.monotonic() >= end:
                raise AssertionError(f"no {prefix!r} in {timeout:g} s: {self.messages}")
            self.collect(0.1)

    def times(self, message: str) -> list[float]:
        return [t for t, m in self.messages if m == message]

    def close(self) -> None:
        self.sock.close()


def start(tmp_path: Path, config_text: str, *extra: str) -> tuple[subprocess.Popen[str],
                                                                  NotifySocket]:
    config = tmp_path / "agent.toml"
    config.write_text(config_text)
    notify = NotifySocket(tmp_path / "notify.sock")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NOTIFY_SOCKET": str(notify.path),
           "WATCHDOG_USEC": "2000000"}
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--simulate", "--config", str(config),
         "--data-dir", str(tmp_path / "data"), *extra],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    return proc, notify


def stop(proc: subprocess.Popen[str], notify: NotifySocket) -> str:
    proc.send_signal(signal.SIGTERM)
    notify.wait_for("STOPPING=1", 60.0)
    _, stderr = proc.communicate(timeout=60)
    notify.close()
    return stderr


def largest_gap(times: list[float]) -> float:
    return max(b - a for a, b in zip(times, times[1:], strict=False))


def test_ready_pings_status_and_stopping(tmp_path: Path) -> None:
    proc, notify = start(tmp_path, FAST)
    notify.wait_for("READY=1", 60.0)
    notify.collect(5.0)
    stderr = stop(proc, notify)
    assert proc.returncode == 0, stderr
    messages = [m for _, m in notify.messages]
    assert messages.count("READY=1") == 1
    pings = notify.times("WATCHDOG=1")
    assert messages.index("READY=1") < messages.index("WATCHDOG=1")
    assert len(pings) >= 4 and largest_gap(pings) <= 1.0
    assert any(m.startswith("STATUS=1/1 sensors ok; backlog") for m in messages)
    assert messages[-1] == "STOPPING=1"


def test_a_hung_sensor_read_stops_the_pings(tmp_path: Path) -> None:
    proc, notify = start(tmp_path, FAST, "--sim-fault", "air=hang@1")
    notify.wait_for("STATUS=STUCK", 60.0)  # the hang starts at 1 s; a read stuck 10 s is hung
    notify.collect(4.0)
    stop(proc, notify)
    pings = notify.times("WATCHDOG=1")
    hung_since = pings[0] + 1.0
    assert pings and pings[-1] < hung_since + 11.0
    assert notify.messages[-1][0] - pings[-1] > 3.0  # silent for the last seconds
    assert any(m.startswith("STATUS=STUCK: bme280 'air'") for _, m in notify.messages)


def test_a_dead_upstream_does_not_stop_the_pings(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    token = tmp_path / "token"
    token.write_text("secret-token\n")
    token.chmod(0o600)
    config = FAST + (
        f'[uplink]\nurl = "http://127.0.0.1:{port}/write"\nallow_insecure_http = true\n'
        f'token_file = "{token}"\nflush_interval = "1s"\n'
    )
    proc, notify = start(tmp_path, config, "--deliver")  # a rehearsal delivers if asked
    notify.wait_for("READY=1", 60.0)
    notify.collect(6.0)
    stderr = stop(proc, notify)
    assert proc.returncode == 0, stderr
    pings = notify.times("WATCHDOG=1")
    assert len(pings) >= 6 and largest_gap(pings) <= 1.0
    assert any("uplink retrying" in m for _, m in notify.messages)


@pytest.mark.parametrize("spec", ["air", "air=melt", "air=hang@-1", "=hang"])
def test_bad_sim_fault_is_a_usage_error(tmp_path: Path, spec: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agent", "run", "--simulate", "--sim-fault", spec],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=tmp_path, capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert "SENSOR=KIND" in result.stderr


def test_the_status_line_is_built_only_for_systemd(tmp_path: Path) -> None:
    """STATUS= costs outbox queries every tick; without a notify socket nobody reads it."""
    from agent.runtime.notify import Notifier
    from agent.runtime.supervisor import Supervisor
    from drivers.sim.clock import FakeClock

    clock, built = FakeClock(), []

    def status() -> str:
        built.append(clock.monotonic())
        return "9/9 sensors ok"

    def supervisor(notifier: Notifier) -> Supervisor:
        return Supervisor(notifier, clock, [], writer_beat=clock.monotonic, writer_timeout=15.0,
                          status=status)

    supervisor(Notifier({})).tick()
    assert built == []
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(tmp_path / "notify"))
    receiver.settimeout(2)
    with receiver:
        supervisor(Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify")})).tick()
        assert receiver.recv(4096) == b"STATUS=9/9 sensors ok"
    assert len(built) == 1


def test_nothing_follows_stopping_not_even_a_tick_under_way(tmp_path: Path) -> None:
    """systemd takes STOPPING=1 as the last word; a status line sent after it would say the
    unit is sampling while it shuts down."""
    from agent.runtime.notify import Notifier
    from agent.runtime.supervisor import Supervisor
    from drivers.sim.clock import FakeClock

    in_tick, release, calls = threading.Event(), threading.Event(), []

    def status() -> str:
        calls.append(len(calls))
        if len(calls) == 2:  # the ticker thread's first tick: still running when stop comes
            in_tick.set()
            release.wait(10)
        return f"tick {len(calls)}"

    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(tmp_path / "notify"))
    receiver.settimeout(2)
    with receiver:
        clock = FakeClock()
        supervisor = Supervisor(Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify")}), clock, [],
                                writer_beat=clock.monotonic, writer_timeout=15.0, status=status)
        supervisor.start()
        assert in_tick.wait(10)
        stopper = threading.Thread(target=supervisor.stop)
        stopper.start()
        time.sleep(0.2)  # stop() has begun while the tick is under way
        release.set()
        stopper.join(10)
        messages = []
        with contextlib.suppress(TimeoutError):
            while True:
                messages.append(receiver.recv(4096).decode())
    assert messages == ["READY=1", "STATUS=tick 1", "STATUS=tick 2", "STOPPING=1"]


def test_a_start_salvaging_a_damaged_outbox_asks_systemd_for_time_before_ready(
        tmp_path: Path) -> None:
    # The salvage runs before READY=1, so TimeoutStartSec (90 s by default) bounds it unless the
    # agent asks for more: minutes for a full outbox on a Pi Zero, killed and redone forever.
    outbox = tmp_path / "data" / "outbox.sqlite"
    with Outbox(outbox, max_bytes=256 * 1024**2) as box:
        box.append([Reading("air", "temperature", 20.0, "°C", 1_700_000_000 * 10**9 + i, i,
                            "boot-0", True, 0, None) for i in range(3000)])
    os.truncate(outbox, outbox.stat().st_size // 2 // 1024 * 1024)
    proc, notify = start(tmp_path, FAST)
    notify.wait_for("READY=1", 30.0)
    stderr = stop(proc, notify)
    messages = [m for _, m in notify.messages]
    assert "salvaged " in stderr, stderr
    assert messages.index("EXTEND_TIMEOUT_USEC=60000000") < messages.index("READY=1")


def test_the_status_line_says_readings_are_held_for_the_clock(tmp_path: Path) -> None:
    # issue 12: the hold is visible everywhere a technician looks, systemctl status included
    booted = f"{time.time() - 60:.3f}"  # a unit that booted a minute ago, NTP unreachable
    config = FAST + ('[uplink]\nurl = "http://127.0.0.1:9/write"\nallow_insecure_http = true\n'
                     'flush_interval = "1s"\n')
    proc, notify = start(tmp_path, config, "--deliver", "--sim-clock", f"unsynced,booted={booted}")
    notify.wait_for("READY=1", 60.0)
    end = time.monotonic() + 60.0
    while not any("held for the clock" in m for _, m in notify.messages):
        assert time.monotonic() < end, notify.messages
        notify.collect(0.2)
    stderr = stop(proc, notify)
    assert proc.returncode == 0, stderr
    held = [m for _, m in notify.messages if "held for the clock" in m]
    assert held[-1].startswith("STATUS=1/1 sensors ok; backlog "), held


def test_the_sensor_stuck_longest_is_named_the_others_wait_behind_it() -> None:
    from dataclasses import dataclass

    from agent.runtime.notify import Notifier
    from agent.runtime.supervisor import HUNG_READ_S, Supervisor
    from drivers.sim.clock import FakeClock

    @dataclass(eq=False)
    class Worker:
        label: str
        busy_since: float | None = None

    clock = FakeClock(start=1000.0)
    hung, waiting, idle = Worker("bme280 'air' at 1:0x76"), Worker("bmp280 'box' at 1:0x77"), \
        Worker("sht4x 'soil' at 2:0x44")
    supervisor = Supervisor(Notifier({}), clock, [waiting, hung, idle],
                            writer_beat=clock.monotonic, writer_timeout=1e9, status=str)
    hung.busy_since = clock.monotonic()
    clock.advance(0.5)
    waiting.busy_since = clock.monotonic()  # its read waits for the bus lock the hung one holds
    clock.advance(HUNG_READ_S + 1)
    assert supervisor.stuck() == {hung: 1000.0, waiting: 1000.5}
    assert supervisor.problem() == ("bme280 'air' at 1:0x76 has been stuck in one read for "
                                    "32 s (1 more wait behind it)")
