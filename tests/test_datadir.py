"""One agent per data directory: ``run`` holds a lock on ``agent.lock`` for its life; a second
``run``, a ``sync`` or a ``commission`` beside it is refused (exit 1, naming the directory and
the pid); ``status`` and ``export``, which only read, keep working. Real subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.store import datadir

ROOT = Path(__file__).resolve().parents[1]
STATION = ('[unit]\nid = "lock-001"\nsite = "roof"\n[storage]\ncommit_interval = "1s"\n'
           '[[sensor]]\nid = "air"\ndriver = "bme280"\naddress = 0x76\ninterval = "1s"\n')


def envagent(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def configs(tmp_path: Path) -> tuple[Path, Path]:
    """The station, and the same station with an [uplink] (for ``sync``; nothing listens)."""
    plain = tmp_path / "station.toml"
    plain.write_text(STATION, encoding="utf-8")
    token = tmp_path / "token"
    token.write_text("not-used\n")
    token.chmod(0o600)
    online = tmp_path / "online.toml"
    online.write_text(STATION + '[uplink]\nurl = "http://127.0.0.1:9/write"\n'
                      f'allow_insecure_http = true\ntoken_file = "{token}"\n', encoding="utf-8")
    return plain, online


def started(tmp_path: Path, config: Path, data: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """A first ``envagent run``, once it samples (so it holds whatever it holds)."""
    log = tmp_path / "first.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--simulate", "--config",
                                 str(config), "--data-dir", str(data)], cwd=tmp_path,
                                env={**os.environ, "PYTHONPATH": str(ROOT)},
                                stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 60
    while b"sampling" not in log.read_bytes():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    return proc, log


def stopped(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_a_second_agent_on_the_same_data_directory_is_refused(tmp_path: Path) -> None:
    plain, online = configs(tmp_path)
    data = tmp_path / "data"
    first, _ = started(tmp_path, plain, data)
    try:
        second = envagent("run", "--simulate", "--config", plain, "--data-dir", data,
                          "--duration", "3", cwd=tmp_path)
        assert second.returncode == 1, second.stderr
        assert str(data) in second.stderr and f"pid {first.pid}" in second.stderr
        assert "Traceback" not in second.stderr
        assert "sampling" not in second.stderr  # refused before it touched anything

        commands: list[list[str | Path]] = [["sync", "--simulate", "--deliver", "--config",
                                             online],
                                            ["commission", "--simulate", "--config", plain]]
        for command in commands:
            refused = envagent(*command, "--data-dir", data, cwd=tmp_path)
            assert refused.returncode == 1, (command, refused.stderr)
            assert str(data) in refused.stderr and f"pid {first.pid}" in refused.stderr
            assert "Traceback" not in refused.stderr
        assert not (data / "commission.json").exists()

        # What only reads keeps working beside the daemon.
        status = envagent("status", "--config", plain, "--data-dir", data, "--json",
                          cwd=tmp_path)
        assert status.returncode == 0, status.stderr
        export = envagent("export", "--config", plain, "--data-dir", data, "--format", "jsonl",
                          cwd=tmp_path)
        assert export.returncode == 0, export.stderr
    finally:
        stopped(first)
    # Once it has stopped, the directory is free again (the lock file left behind is no lock).
    again = envagent("run", "--simulate", "--config", plain, "--data-dir", data, "--duration",
                     "1", cwd=tmp_path)
    assert again.returncode == 0, again.stderr


def test_another_data_directory_is_not_held(tmp_path: Path) -> None:
    plain, _ = configs(tmp_path)
    first, _ = started(tmp_path, plain, tmp_path / "one")
    try:
        other = envagent("run", "--simulate", "--config", plain, "--data-dir",
                         tmp_path / "two", "--duration", "1", cwd=tmp_path)
        assert other.returncode == 0, other.stderr
    finally:
        stopped(first)


# --- the lock itself ----------------------------------------------------------------------------


def test_the_lock_names_its_holder_and_is_released(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with datadir.hold(data):
        assert (data / datadir.LOCK_FILE).read_text().split() == [str(os.getpid())]
        with pytest.raises(datadir.DataDirBusy) as busy, datadir.hold(data):
            pass
        assert str(data) in str(busy.value) and f"pid {os.getpid()}" in str(busy.value)
        assert isinstance(busy.value, OSError)  # the CLI's exit 1, no traceback
    with datadir.hold(data):  # released
        pass


def test_a_symlink_at_the_lock_file_is_refused_and_not_followed(tmp_path: Path) -> None:
    data, victim = tmp_path / "data", tmp_path / "victim"
    data.mkdir()
    (data / datadir.LOCK_FILE).symlink_to(victim)
    with pytest.raises(datadir.DataDirError) as refused, datadir.hold(data):
        pass
    assert "symbolic link" in str(refused.value) and str(data) in str(refused.value)
    assert not victim.exists()
    victim.write_text("someone else's file\n")
    with pytest.raises(datadir.DataDirError), datadir.hold(data):
        pass
    assert victim.read_text() == "someone else's file\n"


def test_a_hard_link_at_the_lock_file_is_never_written(tmp_path: Path) -> None:
    data, victim = tmp_path / "data", tmp_path / "victim"
    data.mkdir()
    victim.write_text("someone else's file\n")
    os.link(victim, data / datadir.LOCK_FILE)
    with pytest.raises(datadir.DataDirError), datadir.hold(data):
        pass
    assert victim.read_text() == "someone else's file\n"


def test_a_garbage_lock_file_is_no_lock_and_a_stale_pid_is_not_named(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / datadir.LOCK_FILE).write_bytes(b"\xff" * 100_000)
    with datadir.hold(data):  # the content is history: only the kernel's lock counts
        assert (data / datadir.LOCK_FILE).read_text().split() == [str(os.getpid())]
    assert (data / datadir.LOCK_FILE).read_bytes() == b""  # a clean release clears it
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with datadir.hold(data):
        # A holder that could not write its pid (a lock file left by root) under a stale one:
        (data / datadir.LOCK_FILE).write_text(f"{dead}\n")
        with pytest.raises(datadir.DataDirBusy) as busy, datadir.hold(data):
            pass
        assert busy.value.pid is None and "pid unknown" in str(busy.value)
        (data / datadir.LOCK_FILE).write_bytes(b"7" * 10_000)  # garbage: read with a bound
        with pytest.raises(datadir.DataDirBusy) as busy, datadir.hold(data):
            pass
        assert busy.value.pid is None
