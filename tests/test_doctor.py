"""``envagent doctor``: the simulated station passes, a wrong chip fails with a hint, the uplink
checks tell DNS, TCP, TLS and auth apart against loopback servers, storage and backlog checks
count, and the exit code and ``--json`` are what scripts expect."""

from __future__ import annotations

import contextlib
import errno
import grp
import json
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from httpfaults import FaultServer, status

from agent.config import Config, parse_config
from agent.core.reading import Reading
from agent.doctor.checkup import check_clock, check_device, running_agent
from agent.doctor.report import Check, DiskUsage, Status, worst
from agent.doctor.sensors import check_sensors, spreads
from agent.doctor.storage import (
    MAX_CMDLINE_BYTES,
    check_backlog,
    check_data_dir,
    check_database,
    check_free_space,
    check_lock,
    command_words,
)
from agent.doctor.uplink import check_upstream
from agent.sampling.processing import Processed
from agent.store import datadir
from agent.store.outbox import Outbox
from drivers.base import Quality
from drivers.bme280 import REG_STATUS
from drivers.sim.clock import FakeClock
from drivers.sim.environment import Environment
from drivers.sim.world import Placement, build_world

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "s3cret-T0KEN-never-shown"
UNIT = '[unit]\nid = "t-1"\nsite = "roof"\n'
FAST_UPLINK = 'connect_timeout = "2s"\nread_timeout = "2s"\ndeadline = "5s"\n'
NO_TOKEN_SOURCE = Path("/nonexistent/upload-token")


def check_uplink(config: Config, environ: Mapping[str, str], token_source: Path) -> list[Check]:
    """The doctor's checks of ``config``'s one upstream."""
    (settings,) = config.uplinks
    return check_upstream(config, settings, environ, token_source)


def envagent(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})


def config_of(text: str) -> Config:
    return parse_config(tomllib.loads(text))


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def sensor_toml(driver: str, address: int = 0x76, sensor_id: str = "air") -> str:
    return (f'[[sensor]]\nid = "{sensor_id}"\ndriver = "{driver}"\naddress = 0x{address:02x}\n'
            'interval = "10s"\n')


def world(*placements: Placement, clock: FakeClock | None = None) -> dict[int, Any]:
    return dict(build_world(placements, clock=clock or FakeClock(), environment=Environment()))


# --- the whole command -------------------------------------------------------------------------


def test_simulated_station_passes_every_sensor_check(tmp_path: Path) -> None:
    result = envagent("doctor", "--simulate", "--data-dir", str(tmp_path / "d"), "--json",
                      cwd=tmp_path)
    report = json.loads(result.stdout)
    checks = report["checks"]
    assert all(set(c) == {"name", "status", "detail", "hint"} for c in checks)
    sensors = [c for c in checks if c["name"].startswith(("sensor ", "samples ", "i2c"))]
    assert len(sensors) == 1 + 2 * 9  # the example station: one bus, nine sensors
    assert all(c["status"] == "PASS" for c in sensors), sensors
    assert report["worst"] in ("PASS", "WARN")  # the test machine's clock may be unsynced
    assert result.returncode == 0, result.stderr
    assert by_name([Check(c["name"], Status(c["status"]), c["detail"]) for c in checks])[
        "database"].detail.startswith("no outbox yet")


def test_human_output_names_each_check_and_what_to_do(tmp_path: Path) -> None:
    config = tmp_path / "one.toml"
    config.write_text(UNIT + '[storage]\nmax_bytes = 1000000000000000000\n'
                      + sensor_toml("bme280"))
    result = envagent("doctor", "--simulate", "--config", str(config), "--data-dir",
                      str(tmp_path / "d"), "--samples", "2", cwd=tmp_path)
    assert result.returncode == 1, result.stdout  # the free space cannot hold 1 EB
    out = result.stdout.splitlines()
    assert "PASS sensor air: bme280 identified at 1:0x76" in out
    assert any(line.startswith("PASS samples air: 2 of 2 ok: ") for line in out)
    fail = next(i for i, line in enumerate(out) if line.startswith("FAIL free space"))
    hint = next(line for line in out[fail:] if line.startswith("     -> "))
    assert hint.startswith("     -> set storage.max_bytes = ")
    assert out[-1].startswith("worst: FAIL (")


def test_a_bus_that_is_not_enabled_fails_and_skips_its_sensors(tmp_path: Path) -> None:
    config = tmp_path / "real.toml"
    config.write_text(UNIT + sensor_toml("bme280").replace("[[sensor]]\n",
                                                           "[[sensor]]\nbus = 42\n"))
    result = envagent("doctor", "--config", str(config), "--data-dir", str(tmp_path / "d"),
                      "--json", cwd=tmp_path)
    checks = by_name([Check(c["name"], Status(c["status"]), c["detail"], c["hint"])
                      for c in json.loads(result.stdout)["checks"]])
    assert result.returncode == 1
    assert checks["i2c bus 42"].status is Status.FAIL
    assert "/dev/i2c-42 does not exist" in checks["i2c bus 42"].detail
    assert "dtoverlay" in (checks["i2c bus 42"].hint or "")
    skipped = checks.get("sensor air") or checks["sensors"]  # or an agent on this machine
    assert skipped.status in (Status.SKIP, Status.WARN)


@pytest.mark.parametrize("args", [["--samples", "0"], ["--samples", "x"]])
def test_bad_samples_is_a_usage_error(tmp_path: Path, args: list[str]) -> None:
    assert envagent("doctor", "--simulate", *args, cwd=tmp_path).returncode == 2


# --- sensors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("fitted", "configured"), [("bmp280", "bme280"), ("bme280", "bmp280")])
def test_another_chip_fails_and_says_what_to_configure(fitted: str, configured: str) -> None:
    clock = FakeClock()
    buses = world(Placement(1, 0x76, fitted, "air"), clock=clock)
    checks = by_name(check_sensors(config_of(UNIT + sensor_toml(configured)), buses, clock, 3))
    identity = checks["sensor air"]
    assert identity.status is Status.FAIL
    assert f"a {fitted} answers at 1:0x76, not the configured {configured}" in identity.detail
    assert f'driver = "{fitted}"' in (identity.hint or "")
    assert checks["samples air"].status is Status.SKIP


def test_nothing_at_the_address_fails_with_the_wiring_hint() -> None:
    clock = FakeClock()
    buses = world(Placement(1, 0x76, "bme280", "air"), clock=clock)
    checks = by_name(check_sensors(config_of(UNIT + sensor_toml("bme280", 0x77)), buses, clock,
                                   3))
    assert checks["sensor air"].status is Status.FAIL
    assert checks["sensor air"].detail == "nothing answers at 1:0x77"
    assert "envagent scan" in (checks["sensor air"].hint or "")


def test_a_chip_that_cannot_be_identified_but_sets_up_is_a_warning() -> None:
    clock = FakeClock()
    buses = world(Placement(1, 0x48, "ads1115", "probes"), clock=clock)
    # A program left the comparator on: the identifier can no longer be sure it is an ADS1115.
    buses[1].write(0x48, bytes([0x01, 0x85, 0x80]))
    toml = (UNIT + sensor_toml("ads1115", 0x48, "probes") + 'channel0_quantity = "soil"\n')
    checks = by_name(check_sensors(config_of(toml), buses, clock, 2))
    assert checks["sensor probes"].status is Status.WARN
    assert "cannot be identified for sure" in checks["sensor probes"].detail
    assert checks["samples probes"].status is Status.PASS


class FlakyBus:
    """A SimBus whose first ``failures`` BME280 data bursts fail with ``error`` (EIO: a noisy
    cable)."""

    def __init__(self, bus: Any, failures: int, error: int = errno.EIO) -> None:
        self._bus, self.failures, self.error = bus, failures, error
        self.number, self.lock = bus.number, bus.lock

    def write(self, address: int, data: bytes) -> None:
        self._bus.write(address, data)

    def read(self, address: int, length: int) -> bytes:
        return bytes(self._bus.read(address, length))

    def write_read(self, address: int, data: bytes, length: int) -> bytes:
        if data[:1] == bytes([REG_STATUS]) and length > 1 and self.failures > 0:
            self.failures -= 1
            raise OSError(self.error, os.strerror(self.error))
        return bytes(self._bus.write_read(address, data, length))

    def close(self) -> None:
        self._bus.close()


@pytest.mark.parametrize(("failures", "expected"), [(1, Status.WARN), (3, Status.FAIL)])
def test_failed_samples_are_counted(failures: int, expected: Status) -> None:
    clock = FakeClock()
    buses = world(Placement(1, 0x76, "bme280", "air"), clock=clock)
    flaky = {1: FlakyBus(buses[1], failures)}
    checks = by_name(check_sensors(config_of(UNIT + sensor_toml("bme280")), flaky, clock, 3))
    assert checks["sensor air"].status is Status.PASS
    assert checks["samples air"].status is expected
    assert "I/O error talking to 1:0x76" in checks["samples air"].detail
    assert "EIO" not in checks["samples air"].detail


def test_a_sensor_that_stops_answering_is_described_in_words() -> None:
    clock = FakeClock()
    buses = world(Placement(1, 0x76, "bme280", "air"), clock=clock)
    flaky = {1: FlakyBus(buses[1], 3, errno.EREMOTEIO)}
    checks = by_name(check_sensors(config_of(UNIT + sensor_toml("bme280")), flaky, clock, 3))
    detail = checks["samples air"].detail
    assert "no answer at 1:0x76: check wiring, power and address" in detail, detail
    assert "EREMOTEIO" not in detail and "Remote I/O" not in detail


class NackAfterProbe(FlakyBus):
    """Acknowledges its address (the probe's empty write), then answers nothing more."""

    def write(self, address: int, data: bytes) -> None:
        if data:
            raise OSError(errno.EREMOTEIO, os.strerror(errno.EREMOTEIO))
        self._bus.write(address, data)

    def write_read(self, address: int, data: bytes, length: int) -> bytes:
        raise OSError(errno.EREMOTEIO, os.strerror(errno.EREMOTEIO))


def test_a_sensor_that_stops_answering_during_setup_is_described_in_words() -> None:
    clock = FakeClock()
    buses = world(Placement(1, 0x48, "ads1115", "probes"), clock=clock)
    toml = (UNIT + sensor_toml("ads1115", 0x48, "probes") + 'channel0_quantity = "soil"\n')
    checks = by_name(check_sensors(config_of(toml), {1: NackAfterProbe(buses[1], 0)}, clock, 2))
    detail = checks["sensor probes"].detail
    assert "no answer at 1:0x48" in detail and "Errno" not in detail, detail


CLIPPED_SOIL = ('[[sensor]]\nid = "soil"\ndriver = "ads1115"\naddress = 0x48\n'
                'interval = "10s"\nchannel0_quantity = "soil_moisture"\nchannel0_unit = "%"\n'
                'channel0_scale = [[0.0, 0.0], [0.2, 10.0]]\nchannel0_gain = 0.256\n')


def test_a_clipped_adc_input_points_at_its_gain_not_the_wiring() -> None:
    clock = FakeClock()
    buses = world(Placement(1, 0x48, "ads1115", "soil"), clock=clock)
    checks = by_name(check_sensors(config_of(UNIT + CLIPPED_SOIL), buses, clock, 2))
    samples = checks["samples soil"]
    assert samples.status is Status.WARN
    assert "soil_moisture clipped" in samples.detail, samples.detail
    hint = samples.hint or ""
    assert "channel0_gain" in hint and "0.256" in hint, hint
    assert "wire" not in hint


def test_an_implausible_spread_is_a_warning() -> None:
    sensor = config_of(UNIT + sensor_toml("bme280")).sensors[0]

    def sample(t: float) -> list[Processed]:
        return [Processed("temperature", t, "°C", Quality.GOOD, None),
                Processed("pressure", 1000.0, "hPa", Quality.GOOD, None)]

    summary, problems = spreads(sensor, [sample(20.0), sample(20.1)])
    assert not problems and "temperature 20.05 °C (spread 0.1)" in summary
    summary, problems = spreads(sensor, [sample(20.0), sample(23.0)])
    assert problems == ["temperature spread 3 °C is more than 0.5"]


def test_a_running_agent_keeps_doctor_off_the_real_bus() -> None:
    config = config_of(UNIT + sensor_toml("bme280"))
    checks = by_name(check_sensors(config, {}, FakeClock(), 3, busy=4242))
    assert checks["sensors"].status is Status.WARN
    assert "pid 4242" in checks["sensors"].detail
    assert "systemctl stop envagent" in (checks["sensors"].hint or "")


def test_a_running_agent_is_found_from_bounded_command_lines(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    for pid, argv in ((101, [b"/usr/bin/python3", b"-m", b"http.server", b"x" * 10**6]),
                      (102, [b"/usr/bin/envagent", b"run", b"--config", b"y" * 10**6])):
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "cmdline").write_bytes(b"\0".join(argv) + b"\0")
    assert running_agent(proc) == 102
    assert command_words(proc / "102" / "cmdline")[:3] == ["/usr/bin/envagent", "run",
                                                           "--config"]
    assert sum(map(len, command_words(proc / "101" / "cmdline"))) < MAX_CMDLINE_BYTES


def test_a_fifo_in_place_of_a_command_line_does_not_hang_doctor(tmp_path: Path) -> None:
    (tmp_path / "proc" / "103").mkdir(parents=True)
    os.mkfifo(tmp_path / "proc" / "103" / "cmdline")
    code = ("from pathlib import Path\nfrom agent.doctor.checkup import running_agent\n"
            f"print(running_agent(Path({str(tmp_path / 'proc')!r})))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=10, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.stdout.strip() == "None", result.stderr


# --- the unit itself -----------------------------------------------------------------------------


def test_device_file_checks(tmp_path: Path) -> None:
    missing = check_device(tmp_path / "i2c-1", 1)
    assert missing.status is Status.FAIL and missing.hint is not None
    assert "raspi-config nonint do_i2c 0" in missing.hint
    device = tmp_path / "i2c-3"
    device.write_bytes(b"")
    assert check_device(device, 3).status is Status.PASS
    if os.geteuid() != 0:  # root may open anything
        device.chmod(0)
        denied = check_device(device, 3)
        assert denied.status is Status.FAIL and "usermod -aG i2c envagent" in (denied.hint or "")


def test_clock() -> None:
    assert check_clock(FakeClock(synced=True)).status is Status.PASS
    unsynced = check_clock(FakeClock(synced=False))
    assert unsynced.status is Status.WARN and "timedatectl status" in (unsynced.hint or "")
    assert check_clock(FakeClock(synced=None)).status is Status.WARN


def no_sensors(tmp_path: Path) -> Path:
    config = tmp_path / "bare.toml"
    config.write_text(UNIT)
    return config


def data_dir_check(tmp_path: Path, data: Path, *extra: str) -> dict[str, Any]:
    result = envagent("doctor", "--config", str(no_sensors(tmp_path)), "--data-dir", str(data),
                      "--json", *extra, cwd=tmp_path)
    return {c["name"]: c for c in json.loads(result.stdout)["checks"]}


@contextlib.contextmanager
def unwritable(path: Path) -> Iterator[None]:
    """``path`` made unwritable for this user: immutable for root (who may write anything
    else), mode 0555 for anyone else."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield
        finally:
            path.chmod(0o755)
        return
    if shutil.which("chattr") is None or subprocess.run(
            ["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("cannot make a directory immutable on this filesystem")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_data_directory_this_user_cannot_write_fails(tmp_path: Path) -> None:
    """On a machine without the service's user (this one), doctor checks for whoever runs it
    and says so."""
    data = tmp_path / "d"
    data.mkdir()
    assert data_dir_check(tmp_path, data)["data directory"]["status"] == "PASS"
    with unwritable(data):
        check = data_dir_check(tmp_path, data)["data directory"]
    assert check["status"] == "FAIL", check
    assert str(data) in check["detail"] and "cannot write" in check["detail"]
    assert "no user envagent on this machine" in check["detail"]
    assert check["hint"]


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every user can reach (pytest's own are root's alone, 0700)."""
    path = Path(tempfile.mkdtemp(prefix="envagent-doctor-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can check as another user")
def test_root_checks_the_data_directory_as_the_service_user(shared_dir: Path) -> None:
    data = shared_dir / "data"
    data.mkdir(mode=0o755)
    nobody = pwd.getpwnam("nobody")
    group = grp.getgrgid(nobody.pw_gid).gr_name
    refused = check_data_dir(data, "nobody")  # root's directory: nobody may not write it
    assert refused.status is Status.FAIL, refused
    assert "user nobody cannot write" in refused.detail and str(data) in refused.detail
    assert refused.hint is not None and f"chown -R nobody:{group} {data}" in refused.hint
    os.chown(data, nobody.pw_uid, nobody.pw_gid)
    assert check_data_dir(data, "nobody").status is Status.PASS
    (data / "outbox.sqlite").write_bytes(b"")  # left by `sudo envagent run`: root's, 0644
    left = check_data_dir(data, "nobody")
    assert left.status is Status.FAIL and str(data / "outbox.sqlite") in left.detail, left


def test_a_data_directory_that_cannot_be_created_fails(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    assert check_data_dir(tmp_path / "new" / "data", None).status is Status.PASS
    blocked = check_data_dir(tmp_path / "file" / "data", None)
    assert blocked.status is Status.FAIL and str(tmp_path / "file") in blocked.detail, blocked


def test_the_lock_is_free_held_by_the_agent_or_by_something_else(tmp_path: Path) -> None:
    fresh = check_lock(tmp_path, lambda: None)
    assert fresh.status is Status.PASS
    assert not (tmp_path / datadir.LOCK_FILE).exists()  # doctor creates nothing
    with datadir.hold(tmp_path):  # this test process: another envagent, not the running one
        other = check_lock(tmp_path, lambda: None)
        agent = check_lock(tmp_path, os.getpid)
    assert other.status is Status.WARN and f"pid {os.getpid()}" in other.detail, other
    assert other.hint is not None
    assert agent.status is Status.PASS and f"pid {os.getpid()}" in agent.detail, agent
    assert check_lock(tmp_path, lambda: None).status is Status.PASS


def test_doctor_beside_a_running_agent_says_it_holds_the_data_directory(
        tmp_path: Path) -> None:
    data = tmp_path / "d"
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--simulate", "--config",
                             str(no_sensors(tmp_path)), "--data-dir", str(data)], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (data / "outbox.sqlite").exists():  # it holds the lock before it opens that
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        check = data_dir_check(tmp_path, data, "--simulate")["lock"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert check["status"] == "PASS", check
    assert f"envagent run (pid {proc.pid})" in check["detail"], check


@pytest.mark.parametrize(("free_mib", "expected"), [(50, Status.FAIL), (300, Status.WARN),
                                                    (10_000, Status.PASS)])
def test_free_space_against_the_bound(tmp_path: Path, free_mib: int, expected: Status) -> None:
    config = config_of(UNIT + '[storage]\nmax_bytes = "256MiB"\n')
    usage = DiskUsage(10**12, 0, free_mib * 1024**2)
    check = check_free_space(config, tmp_path / "not-yet", lambda _: usage)
    assert check.status is expected, check
    if expected is Status.FAIL:
        assert check.hint is not None and 'storage.max_bytes = "' in check.hint


def reading(time_s: float, value: float = 21.5) -> Reading:
    return Reading("air", "temperature", value, "°C", int(time_s * 1e9), 1, "boot-a", True, 0,
                   None)


def test_database_no_outbox_intact_and_damaged(tmp_path: Path) -> None:
    assert check_database(tmp_path).detail.startswith("no outbox yet")
    with Outbox(tmp_path / "outbox.sqlite", max_bytes=10 * 1024**2) as outbox:
        outbox.append([reading(1_700_000_000 + i, i) for i in range(20_000)])
    intact = check_database(tmp_path)
    assert intact.status is Status.PASS and "intact" in intact.detail
    data = bytearray((tmp_path / "outbox.sqlite").read_bytes())
    data[len(data) // 2:len(data) // 2 + 8192] = b"\xff" * 8192
    (tmp_path / "outbox.sqlite").write_bytes(bytes(data))
    damaged = check_database(tmp_path)
    assert damaged.status is Status.FAIL and "restart envagent" in (damaged.hint or "")


@pytest.mark.parametrize(("age_h", "uplink", "expected"), [
    (0.1, True, Status.PASS), (2, True, Status.WARN), (25, True, Status.FAIL),
    (25, False, Status.PASS)])
def test_backlog_age(tmp_path: Path, age_h: float, uplink: bool, expected: Status) -> None:
    clock = FakeClock()
    with Outbox(tmp_path / "outbox.sqlite", max_bytes=10 * 1024**2) as outbox:
        outbox.append([reading(clock.time() - age_h * 3600)])
    text = UNIT + ('[uplink]\nurl = "https://tsdb.example.org/write"\n' if uplink else "")
    (check,) = check_backlog(config_of(text), tmp_path, clock)
    assert check.status is expected, check
    assert "1 reading(s) waiting" in check.detail


# --- the uplink ----------------------------------------------------------------------------------


def uplink_config(url: str, token_file: Path | None = None, extra: str = "") -> Config:
    token = "" if token_file is None else f'token_file = "{token_file}"\n'
    insecure = "allow_insecure_http = true\n" if url.startswith("http:") else ""
    return config_of(f'{UNIT}[uplink]\nurl = "{url}"\n{insecure}{token}{FAST_UPLINK}{extra}')


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "upload-token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


def uplink_checks(config: Config) -> dict[str, Check]:
    return by_name(check_uplink(config, {}, NO_TOKEN_SOURCE))


def test_uplink_answering_204_passes_every_step(token_file: Path) -> None:
    with FaultServer() as server:
        checks = uplink_checks(uplink_config(server.url(), token_file))
        (request,) = server.requests
    assert {n: c.status for n, c in checks.items()} == {
        "uplink token": Status.PASS, "uplink dns": Status.PASS, "uplink tcp": Status.PASS,
        "uplink tls": Status.SKIP, "uplink auth": Status.PASS}
    assert request.body == b"" and request.headers["authorization"] == f"Token {TOKEN}"
    assert "nothing was stored" in checks["uplink auth"].detail


def test_influxdb2_empty_write_answer_is_a_pass(token_file: Path) -> None:
    answer = b'{"code":"invalid","message":"writing requires points"}'
    with FaultServer() as server:
        server.default = status(400, answer, {"Content-Type": "application/json"})
        checks = uplink_checks(uplink_config(server.url("/api/v2/write?org=o&bucket=b"),
                                             token_file))
    assert checks["uplink auth"].status is Status.PASS


@pytest.mark.parametrize(("code", "expected", "words"), [
    (401, Status.FAIL, "refused a write with the token"), (403, Status.FAIL, "refused"),
    (404, Status.FAIL, "no such write endpoint"), (503, Status.WARN, "in trouble"),
    (405, Status.WARN, "unexpected answer")])
def test_uplink_answers(token_file: Path, code: int, expected: Status, words: str) -> None:
    with FaultServer() as server:
        # a careless server echoes the credentials it refuses
        server.default = status(code, f"bad credentials: Token {TOKEN}".encode())
        checks = uplink_checks(uplink_config(server.url(), token_file))
    auth = checks["uplink auth"]
    assert auth.status is expected and words in auth.detail
    assert TOKEN not in auth.detail and TOKEN not in (auth.hint or "")


def test_refused_connection_fails_tcp_and_skips_the_rest() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    checks = uplink_checks(uplink_config(f"http://127.0.0.1:{port}/write"))
    assert checks["uplink tcp"].status is Status.FAIL
    assert "refused" in checks["uplink tcp"].detail.lower()
    assert checks["uplink tls"].status is checks["uplink auth"].status is Status.SKIP


def test_unresolvable_name_fails_dns() -> None:
    checks = uplink_checks(uplink_config("https://nonexistent.invalid/write"))
    assert checks["uplink dns"].status is Status.FAIL
    assert "nonexistent.invalid" in checks["uplink dns"].detail
    assert [checks[f"uplink {n}"].status for n in ("tcp", "tls", "auth")] == [Status.SKIP] * 3


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "server.pem", directory / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True)
    return cert, key


def test_tls_is_verified_and_an_expiring_certificate_warns(
        certificate: tuple[Path, Path], token_file: Path) -> None:
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    with FaultServer(tls=context) as server:
        untrusted = uplink_checks(uplink_config(server.url(), token_file))
        trusted = uplink_checks(uplink_config(server.url(), token_file, f'ca_file = "{cert}"\n'))
    assert untrusted["uplink tls"].status is Status.FAIL
    assert "ca_file" in (untrusted["uplink tls"].hint or "")
    assert untrusted["uplink auth"].status is Status.SKIP
    assert trusted["uplink tls"].status is Status.WARN  # valid for 2 days only
    assert "days left" in trusted["uplink tls"].detail
    assert trusted["uplink auth"].status is Status.PASS


def test_doctor_json_and_exit_code_against_a_refusing_server(tmp_path: Path,
                                                             token_file: Path) -> None:
    config = tmp_path / "up.toml"
    with FaultServer() as server:
        server.default = status(401, f"unauthorized {TOKEN}".encode())
        config.write_text(f'{UNIT}[uplink]\nurl = "{server.url()}"\nallow_insecure_http = true\n'
                          f'token_file = "{token_file}"\n{FAST_UPLINK}')
        result = envagent("doctor", "--config", str(config), "--data-dir", str(tmp_path / "d"),
                          "--json", cwd=tmp_path)
        human = envagent("doctor", "--config", str(config), "--data-dir", str(tmp_path / "d"),
                         cwd=tmp_path)
    report = json.loads(result.stdout)
    assert result.returncode == human.returncode == 1
    assert report["worst"] == "FAIL"
    auth = next(c for c in report["checks"] if c["name"] == "uplink auth")
    assert auth["status"] == "FAIL" and str(token_file) in auth["detail"]
    for output in (result.stdout, result.stderr, human.stdout, human.stderr):
        assert TOKEN not in output
    assert "FAIL uplink auth" in human.stdout


@pytest.mark.parametrize(("mode", "expected"), [(0o600, Status.PASS), (0o644, Status.WARN),
                                              (0o640, Status.WARN)])
def test_a_token_file_other_users_can_read_is_a_warning(token_file: Path, mode: int,
                                                        expected: Status) -> None:
    token_file.chmod(mode)
    with FaultServer() as server:
        checks = uplink_checks(uplink_config(server.url(), token_file))
    check = checks["uplink token"]
    assert check.status is expected, check
    assert str(token_file) in check.detail
    if expected is Status.WARN:
        assert f"mode {mode:04o}" in check.detail and "chmod 600" in (check.hint or "")
    assert checks["uplink auth"].status is Status.PASS


def test_worst() -> None:
    def c(s: Status) -> Check:
        return Check("x", s, "")

    assert worst([c(Status.PASS), c(Status.SKIP)]) is Status.PASS
    assert worst([c(Status.PASS), c(Status.WARN)]) is Status.WARN
    assert worst([c(Status.FAIL), c(Status.WARN)]) is Status.FAIL


def test_a_token_in_the_environment_fails_auth_without_showing_it(token_file: Path) -> None:
    with FaultServer() as server:
        checks = by_name(check_uplink(uplink_config(server.url(), token_file),
                                      {"INFLUX_TOKEN": TOKEN}, NO_TOKEN_SOURCE))
        assert not server.requests
    auth = checks["uplink auth"]
    assert auth.status is Status.FAIL and "INFLUX_TOKEN" in auth.detail
    assert TOKEN not in auth.detail


def test_the_service_credential_file_is_used_when_no_token_file_is_set(
        token_file: Path) -> None:
    with FaultServer() as server:
        checks = by_name(check_uplink(uplink_config(server.url()), {}, token_file))
        (request,) = server.requests
    assert request.headers["authorization"] == f"Token {TOKEN}"
    assert "LoadCredential" in checks["uplink auth"].detail


def test_a_token_pasted_in_place_of_the_token_file_is_never_shown(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / TOKEN).write_text("x\n")  # even where a file by that name exists, mode 0644
    with FaultServer() as server:
        checks = check_uplink(uplink_config(server.url(), Path(TOKEN)), {}, NO_TOKEN_SOURCE)
    for check in checks:
        assert TOKEN not in check.detail and TOKEN not in (check.hint or "")
    assert caplog.records and all(TOKEN not in r.getMessage() for r in caplog.records)
