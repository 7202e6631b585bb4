"""Messages for people, never raw ones: a unit without I2C, a sensor that does not answer, an
upstream that cannot be reached each get one sentence saying what happened, where and what to
do; ``read`` names a reading's quality flags in words; output into a closed pipe ends quietly.
Through the real CLI where a technician would see it."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from httpfaults import FaultServer, hang, reset_mid_response

from agent.core import quality
from agent.core.errors import describe
from agent.core.reading import Reading
from agent.store.outbox import Outbox, Subscriber
from agent.uplink.encoders import JsonEncoder
from agent.uplink.http import HttpSink
from agent.uplink.httpwire import Reply, make_session
from drivers.base import Quality
from drivers.bus import describe_error

ONE = [Subscriber("default")]  # the one upstream of these tests


ROOT = Path(__file__).resolve().parents[1]
UNIT = '[unit]\nid = "t-1"\nsite = "roof"\n'
AIR = '[[sensor]]\nid = "air"\ndriver = "bme280"\naddress = 0x76\ninterval = "10s"\n'
# An ADS1115 input at its smallest range (0.256 V), its probe giving 0.2 V at 10 %: the simulated
# soil is wetter than 12.8 %, so AIN0 is past full scale and every conversion is the ADC's
# largest code (12.8 %, beyond the calibration points).
CLIPPED_SOIL = ('[[sensor]]\nid = "soil"\ndriver = "ads1115"\naddress = 0x48\ninterval = "10s"\n'
                'channel0_quantity = "soil_moisture"\nchannel0_unit = "%"\n'
                'channel0_scale = [[0.0, 0.0], [0.2, 10.0]]\nchannel0_gain = 0.256\n')
RAW = ("Errno", "Traceback", "EREMOTEIO", "HTTPConnectionPool", "Max retries",
       "NewConnectionError", "NameResolutionError")
ENABLE_I2C = "no I2C bus /dev/i2c-1: enable I2C (sudo raspi-config nonint do_i2c 0) and reboot"


def envagent(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})


def assert_not_raw(text: str) -> None:
    for raw in RAW:
        assert raw not in text, text


# --- the bus -------------------------------------------------------------------------------------


@pytest.mark.skipif(Path("/dev/i2c-1").exists(), reason="this machine has I2C bus 1")
@pytest.mark.parametrize("command", [["read"], ["scan"], ["run", "--duration", "5"],
                                     ["commission"]])
def test_a_unit_without_i2c_is_told_how_to_enable_it(tmp_path: Path,
                                                      command: list[str]) -> None:
    config = tmp_path / "real.toml"
    config.write_text(UNIT + AIR, encoding="utf-8")
    where = [] if command == ["scan"] else ["--config", str(config)]
    data = ["--data-dir", str(tmp_path / "d")] if command[0] in ("run", "commission") else []
    result = envagent(*command, *where, *data, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert ENABLE_I2C in result.stderr
    assert_not_raw(result.stderr)


@pytest.mark.parametrize(("error", "where", "expected"), [
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/dev/i2c-1"), None,
     ENABLE_I2C),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/dev/i2c-3"), None,
     "no I2C bus /dev/i2c-3: enable its adapter (a dtoverlay= line in "
     "/boot/firmware/config.txt) and reboot"),
    (PermissionError(errno.EACCES, "Permission denied", "/dev/i2c-1"), None,
     "permission denied on /dev/i2c-1: add the user to the i2c group"),
    (OSError(errno.EREMOTEIO, "Remote I/O error"), "1:0x76",
     "no answer at 1:0x76: check wiring, power and address"),
    (OSError(errno.ENXIO, "No such device or address"), "1:0x70/2:0x44",
     "no answer at 1:0x70/2:0x44: check wiring, power and address"),
    (OSError(errno.ETIMEDOUT, "Connection timed out"), "1:0x62",
     "the bus timed out talking to 1:0x62"),
    (OSError(errno.EIO, "Input/output error"), "1:0x76", "I/O error talking to 1:0x76"),
])
def test_bus_errors_are_sentences(error: OSError, where: str | None, expected: str) -> None:
    said = describe_error(error, where)
    assert said.startswith(expected), said
    assert_not_raw(said)
    assert "\n" not in said


def test_other_errors_keep_their_message_on_one_line() -> None:
    assert describe_error(RuntimeError("bad CRC\n  from 0x44"), "1:0x44") == "bad CRC from 0x44"
    assert describe_error(TimeoutError(), None) == "TimeoutError"


# --- read: quality in words ----------------------------------------------------------------------


def test_read_names_the_quality_flags_of_a_clipped_input(tmp_path: Path) -> None:
    config = tmp_path / "soil.toml"
    config.write_text(UNIT + CLIPPED_SOIL, encoding="utf-8")
    human = envagent("read", "--simulate", "--config", str(config), cwd=tmp_path)
    machine = envagent("read", "--simulate", "--config", str(config), "--json", cwd=tmp_path)
    assert human.returncode == 0 == machine.returncode, human.stderr + machine.stderr
    (line,) = human.stdout.splitlines()
    assert line.split()[:3] == ["soil", "soil_moisture", "12.80"], line
    assert line.endswith("%  out of range, clipped"), line
    (row,) = json.loads(machine.stdout)
    assert row["quality"] == 66 and row["flags"] == ["out_of_range", "clipped"]


def test_read_of_good_values_shows_no_flags(tmp_path: Path) -> None:
    config = tmp_path / "air.toml"
    config.write_text(UNIT + AIR, encoding="utf-8")
    human = envagent("read", "--simulate", "--config", str(config), cwd=tmp_path)
    machine = envagent("read", "--simulate", "--config", str(config), "--json", cwd=tmp_path)
    assert [line.split()[-1] for line in human.stdout.splitlines()] == ["°C", "%RH", "hPa"]
    assert all(row["flags"] == [] and row["quality"] == 0 for row in json.loads(machine.stdout))


# --- a closed pipe -------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["scan", "--simulate", "--json"], ["read", "--simulate"],
                                     ["completion", "bash"]])
def test_output_into_a_closed_pipe_ends_quietly(tmp_path: Path, command: list[str]) -> None:
    """As ``envagent scan --simulate --json | head -c 10`` when head has gone: no traceback, the
    exit status of a program stopped by SIGPIPE (128 + 13)."""
    if "--simulate" in command:
        config = tmp_path / "air.toml"
        config.write_text(UNIT + AIR, encoding="utf-8")
        command = [*command, "--config", str(config)]
    reader, writer = os.pipe()
    os.close(reader)  # the reader has gone before the first byte
    try:
        result = subprocess.run([sys.executable, "-m", "agent", *command], cwd=tmp_path,
                                stdout=writer, stderr=subprocess.PIPE, text=True, timeout=120,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
    finally:
        os.close(writer)
    assert result.stderr == ""
    assert result.returncode == 141


# --- the uplink ----------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def post(url: str) -> Reply:
    sink = HttpSink(url, JsonEncoder(unit="t-1", site="roof", drivers={}), make_session(),
                    connect_timeout=1.0, read_timeout=1.0, deadline=5.0)
    try:
        return sink.post(b"{}", None)
    finally:
        sink.close()


def test_sync_to_a_closed_port_says_the_connection_was_refused(tmp_path: Path) -> None:
    port = closed_port()
    config = tmp_path / "online.toml"
    config.write_text(UNIT + AIR + f'[uplink]\nurl = "http://127.0.0.1:{port}/write"\n'
                      'allow_insecure_http = true\nconnect_timeout = "1s"\n', encoding="utf-8")
    with Outbox(tmp_path / "d" / "outbox.sqlite", max_bytes=1024**2, subscribers=ONE) as outbox:
        outbox.append([Reading("air", "temperature", 21.5, "°C", 1_700_000_000 * 10**9, 1,
                               "boot-a", True, 0, None)])
    result = envagent("sync", "--config", str(config), "--data-dir", str(tmp_path / "d"),
                      cwd=tmp_path)
    assert result.returncode == 1
    assert f"cannot connect to 127.0.0.1:{port}: connection refused" in result.stderr
    assert_not_raw(result.stderr)


@pytest.mark.parametrize(("server", "expected"), [
    (None, "cannot connect to nonexistent.invalid:443: name not resolved"),
    (lambda: FaultServer(accepting=False),
     "cannot connect to 127.0.0.1:{port}: timed out after 1 s"),
    (lambda: FaultServer().then(hang(3)), "no answer from 127.0.0.1:{port} within 1 s"),
    (lambda: FaultServer().then(reset_mid_response()),
     "the connection to 127.0.0.1:{port} broke: reset by the server"),
])
def test_network_failures_are_sentences(server: Callable[[], FaultServer] | None,
                                        expected: str) -> None:
    if server is None:
        reply = post("https://nonexistent.invalid/write")
    else:
        with server() as running:
            reply = post(running.url())
            expected = expected.format(port=running.port)
    said = reply.describe()
    assert reply.status is None and expected in said, said
    assert_not_raw(said)


def test_every_quality_flag_has_a_word_and_a_name() -> None:
    everything = 0
    for flag in Quality:
        everything |= flag
        if flag:
            assert quality.words(flag) and quality.names(flag) == [str(flag.name).lower()]
    assert quality.words(Quality.GOOD) == "" and quality.names(Quality.GOOD) == []
    assert quality.words(Quality.WARMUP | Quality.SPIKE) == "warm-up, spike"
    assert quality.words(everything | 1 << 12).endswith(", clipped, maintenance, bit 12")
    assert quality.names(1 << 12) == ["bit_12"]


def test_other_system_errors_name_the_file_and_what_happened() -> None:
    assert describe(FileNotFoundError(errno.ENOENT, "No such file or directory", "/x/y")) == \
        "/x/y: No such file or directory"
    assert describe(OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, "/b")) == \
        "/a -> /b: Invalid cross-device link"
    assert describe(PermissionError(errno.EACCES, "Permission denied", "/dev/i2c-1")) \
        .startswith("permission denied on /dev/i2c-1: add the user to the i2c group")
    assert describe(ValueError("one\ntwo")) == "one two"
