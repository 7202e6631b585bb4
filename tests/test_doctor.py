"""``envagent doctor``: the simulated station passes, a wrong chip fails with a hint, the uplink
checks tell DNS, TCP, TLS and auth apart against loopback servers, storage and backlog checks
count, and the exit code and ``--json`` are what scripts expect."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from httpfaults import FaultServer, status

from agent.config import Config, parse_config
from agent.doctor import Check, DiskUsage, Status, check_clock, check_device, worst
from agent.doctor_sensors import check_sensors, spreads
from agent.doctor_storage import check_backlog, check_database, check_free_space
from agent.doctor_uplink import check_uplink
from agent.outbox import Outbox
from agent.processing import Processed
from agent.reading import Reading
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
    """A SimBus whose first ``failures`` BME280 data bursts fail with EIO (a noisy cable)."""

    def __init__(self, bus: Any, failures: int) -> None:
        self._bus, self.failures = bus, failures
        self.number, self.lock = bus.number, bus.lock

    def write(self, address: int, data: bytes) -> None:
        self._bus.write(address, data)

    def read(self, address: int, length: int) -> bytes:
        return bytes(self._bus.read(address, length))

    def write_read(self, address: int, data: bytes, length: int) -> bytes:
        if data[:1] == bytes([REG_STATUS]) and length > 1 and self.failures > 0:
            self.failures -= 1
            raise OSError(errno.EIO, os.strerror(errno.EIO))
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
    assert "EIO" in checks["samples air"].detail


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
    check = check_backlog(config_of(text), tmp_path, clock)
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
    assert [c.status for c in checks.values()] == [Status.PASS, Status.PASS, Status.SKIP,
                                                  Status.PASS]
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
