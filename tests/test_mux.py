"""TCA9548A: the simulated switch, MuxChannel as a Bus, scan, config, and the agent behind it."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest

from agent.config import Config, parse_config
from agent.core.errors import ConfigError
from agent.core.reading import Reading
from agent.sampling.daemon import make_drivers
from agent.sampling.sampler import SensorWorker
from agent.sampling.scheduler import Slots
from drivers.registry import DRIVERS, IDENTIFIERS
from drivers.scan import Found, scan
from drivers.sim import BME280Model, BusIOError, Environment, FakeClock, Nack, SimBus, build_world
from drivers.sim.tca9548a import TCA9548AModel
from drivers.sim.world import Placement
from drivers.tca9548a import TCA9548A, MuxChannel, identify

ROOT = Path(__file__).resolve().parents[1]
MUX = 0x70
DEVICE = 0x50


class RegisterFile:
    """A 256-byte register chip with an auto-incrementing pointer, like the kernel's i2c-stub."""

    def __init__(self, fill: int = 0) -> None:
        self.registers = bytearray([fill]) * 256
        self.pointer = 0

    def write(self, data: bytes) -> None:
        self.pointer = data[0]
        for offset, value in enumerate(data[1:]):
            self.registers[(self.pointer + offset) % 256] = value

    def read(self, length: int) -> bytes:
        out = bytes(self.registers[(self.pointer + i) % 256] for i in range(length))
        self.pointer = (self.pointer + length) % 256
        return out


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def muxed_bus(clock: FakeClock, **channels: RegisterFile) -> tuple[SimBus, TCA9548AModel]:
    """A bus with a mux at 0x70 and a RegisterFile at DEVICE on each named channel ("c2")."""
    bus = SimBus(1, clock=clock)
    mux = TCA9548AModel()
    bus.attach_mux(MUX, mux)
    for name, device in channels.items():
        mux.attach(int(name[1:]), DEVICE, device)
    return bus, mux


def mux_writes(bus: SimBus) -> list[bytes]:
    return [t.wrote for t in bus.transactions(MUX) if t.kind == "write"]


# --- the simulated switch --------------------------------------------------------------------


def test_control_register_reads_back_and_keeps_the_last_byte_written(clock: FakeClock) -> None:
    bus, mux = muxed_bus(clock)
    assert bus.read(MUX, 1) == b"\x00"  # power-on: no channel
    bus.write(MUX, b"\x04")
    assert bus.read(MUX, 2) == b"\x04\x04" and mux.control == 0x04
    bus.write(MUX, b"\x01\x80")
    assert bus.read(MUX, 1) == b"\x80"
    mux.reset()
    assert bus.read(MUX, 1) == b"\x00"


def test_a_downstream_device_answers_only_while_its_channel_is_selected(clock: FakeClock) -> None:
    bus, _ = muxed_bus(clock, c3=RegisterFile(0x33))
    with pytest.raises(OSError) as caught:
        bus.read(DEVICE, 1)
    assert caught.value.errno == errno.EREMOTEIO
    bus.write(MUX, bytes([1 << 3]))
    assert bus.write_read(DEVICE, b"\x10", 1) == b"\x33"
    bus.write(MUX, bytes([1 << 4]))
    with pytest.raises(OSError):
        bus.read(DEVICE, 1)
    assert [t.address for t in bus.transactions(DEVICE)] == [DEVICE] * 3  # logged as the parent


def test_two_selected_channels_with_one_address_contend(clock: FakeClock) -> None:
    a, b = RegisterFile(0b1100_1100), RegisterFile(0b1010_1010)
    bus, _ = muxed_bus(clock, c1=a, c6=b)
    bus.write(MUX, bytes([1 << 1 | 1 << 6]))
    bus.write(DEVICE, b"\x20\x0f")  # both see the write
    assert a.registers[0x20] == b.registers[0x20] == 0x0F
    assert bus.write_read(DEVICE, b"\x00", 1) == bytes([0b1000_1000])  # open drain: wired-AND


def test_a_channel_and_the_bus_itself_contend_too(clock: FakeClock) -> None:
    bus, _ = muxed_bus(clock, c0=RegisterFile(0x0F))
    bus.attach(DEVICE, RegisterFile(0xF0))
    assert bus.read(DEVICE, 1) == b"\xf0"
    bus.write(MUX, b"\x01")
    assert bus.read(DEVICE, 1) == b"\x00"


def test_wiring_errors() -> None:
    mux = TCA9548AModel()
    mux.attach(0, DEVICE, RegisterFile())
    with pytest.raises(ValueError, match="channel 0 already has a device at 0x50"):
        mux.attach(0, DEVICE, RegisterFile())
    with pytest.raises(ValueError, match="channels 0-7, not 8"):
        mux.attach(8, DEVICE, RegisterFile())
    assert isinstance(mux.detach(0, DEVICE), RegisterFile) and dict(mux.devices(0)) == {}


# --- MuxChannel --------------------------------------------------------------------------------


def test_the_channel_is_selected_once_and_again_only_when_another_was(clock: FakeClock) -> None:
    bus, _ = muxed_bus(clock, c2=RegisterFile(0x22), c5=RegisterFile(0x55))
    two, five = MuxChannel(bus, MUX, 2), MuxChannel(bus, MUX, 5)
    assert two.lock is bus.lock and two.number == 1
    assert [two.read(DEVICE, 1), two.read(DEVICE, 1)] == [b"\x22", b"\x22"]
    assert mux_writes(bus) == [b"\x04"]
    assert five.write_read(DEVICE, b"\x00", 1) == b"\x55"
    assert two.read(DEVICE, 1) == b"\x22"
    assert mux_writes(bus) == [b"\x04", b"\x20", b"\x04"]


def test_any_error_makes_the_next_transfer_select_again(clock: FakeClock) -> None:
    bus, mux = muxed_bus(clock, c2=RegisterFile(0x22))
    channel = MuxChannel(bus, MUX, 2)
    channel.read(DEVICE, 1)
    bus.inject(DEVICE, Nack())
    with pytest.raises(OSError):
        channel.read(DEVICE, 1)
    assert channel.read(DEVICE, 1) == b"\x22"
    assert mux_writes(bus) == [b"\x04", b"\x04"]

    mux.reset()  # unseen (a power glitch on the mux): costs one failed transfer, not more
    with pytest.raises(OSError):
        channel.read(DEVICE, 1)
    assert channel.read(DEVICE, 1) == b"\x22"

    TCA9548A(bus, MUX).invalidate()
    bus.inject(MUX, BusIOError())  # the selection itself fails
    with pytest.raises(OSError) as caught:
        channel.read(DEVICE, 1)
    assert caught.value.errno == errno.EIO
    assert channel.read(DEVICE, 1) == b"\x22"
    assert [t.errno for t in bus.transactions(MUX)][-2:] == [errno.EIO, None]


def test_the_mux_address_is_not_downstream(clock: FakeClock) -> None:
    bus, _ = muxed_bus(clock)
    with pytest.raises(OSError) as caught:
        MuxChannel(bus, MUX, 0).read(MUX, 1)
    assert caught.value.errno == errno.EINVAL
    with pytest.raises(ValueError, match="0x70-0x77"):
        MuxChannel(bus, 0x60, 0)
    with pytest.raises(ValueError, match="channels 0-7"):
        MuxChannel(bus, MUX, 8)


def test_selecting_on_one_mux_switches_the_other_off(clock: FakeClock) -> None:
    bus, first = muxed_bus(clock, c0=RegisterFile(0xAA))
    second = TCA9548AModel()
    bus.attach_mux(0x71, second)
    second.attach(0, DEVICE, RegisterFile(0xBB))
    a, b = MuxChannel(bus, MUX, 0), MuxChannel(bus, 0x71, 0)
    for _ in range(3):
        assert (a.read(DEVICE, 1), b.read(DEVICE, 1)) == (b"\xaa", b"\xbb")
    assert first.control == 0 and second.control == 1


def test_identify_reads_back_and_leaves_every_channel_off(clock: FakeClock) -> None:
    bus, mux = muxed_bus(clock)
    mux.control = 0x10
    bus.attach(0x76, BME280Model(clock=clock))
    assert identify(bus, MUX) == "tca9548a" and mux.control == 0
    assert identify(bus, 0x76) is None
    assert identify(bus, DEVICE) is None
    assert TCA9548A(bus, MUX).control() == 0


# --- composition: world, make_drivers, scan ----------------------------------------------------

HEAD = '[unit]\nid = "u"\nsite = "roof"\n[storage]\ncommit_interval = "1s"\n'
TWINS = (
    HEAD
    + '[[sensor]]\nid = "left"\ndriver = "bme280"\naddress = 0x76\nmux = 0x70\nchannel = 2\n'
    'interval = "1s"\n'
    + '[[sensor]]\nid = "right"\ndriver = "bme280"\naddress = 0x76\nmux = 0x70\nchannel = 5\n'
    'interval = "1s"\n'
)


def config_of(text: str) -> Config:
    return parse_config(tomllib.loads(text), drivers=DRIVERS)


def twin_world(clock: FakeClock) -> tuple[Config, SimBus, dict[str, BME280Model]]:
    config = config_of(TWINS + '[[sensor]]\nid = "own"\ndriver = "bmp280"\naddress = 0x77\n')
    placements = [Placement(s.bus, s.address, s.driver, s.id, s.mux, s.channel)
                  for s in config.sensors]
    buses = build_world(placements, clock=clock, environment=Environment(seed=3))
    bus = buses[1]
    mux = bus.devices[MUX]
    assert isinstance(mux, TCA9548AModel)
    models = {}
    for name, channel, celsius in (("left", 2, 12.0), ("right", 5, 31.0)):
        model = mux.devices(channel)[0x76]
        assert isinstance(model, BME280Model)
        model.source, model.temperature = None, celsius
        models[name] = model
    return config, bus, models


def test_build_world_puts_placements_behind_the_mux_and_plain_tuples_still_work(
    clock: FakeClock,
) -> None:
    _, bus, _ = twin_world(clock)
    assert sorted(bus.devices) == [MUX, 0x77]
    plain = build_world([(1, 0x76, "bme280", "air")], clock=clock, environment=Environment())
    assert list(plain[1].devices) == [0x76]


def test_make_drivers_shares_one_mux_channel_per_channel(clock: FakeClock) -> None:
    config = config_of(
        TWINS + '[[sensor]]\nid = "near"\ndriver = "bmp280"\naddress = 0x77\nmux = 0x70\n'
        "channel = 2\n"
    )
    bus = SimBus(1, clock=clock)
    left, right, near = make_drivers(config, {1: bus}, clock, DRIVERS)
    assert isinstance(left.bus, MuxChannel) and isinstance(right.bus, MuxChannel)
    assert left.bus is near.bus and left.bus is not right.bus
    assert (left.bus.channel, right.bus.channel) == (2, 5)


def test_two_identical_bme280s_on_two_channels_sample_concurrently(clock: FakeClock) -> None:
    config, bus, _ = twin_world(clock)
    readings: list[Reading] = []
    collected = threading.Lock()
    enough = threading.Event()
    stop = threading.Event()

    def deliver(batch: list[Reading]) -> None:
        with collected:
            readings.extend(batch)
            counts = {s: sum(r.sensor == s for r in readings) for s in ("left", "right")}
            if min(counts.values()) >= 3 * 20:
                enough.set()

    drivers = make_drivers(config, {1: bus}, clock, DRIVERS)
    workers = [
        SensorWorker(s, d, clock=clock, deliver=deliver, boot_id="b", stop=stop)
        for s, d in zip(config.sensors[:2], drivers[:2], strict=True)
    ]
    # each on a thread of its own, as every sensor starts (no runner takes them back)
    slots = Slots(workers, clock, stop, own=lambda sensor: None)
    threads = [threading.Thread(target=w.run_own, args=(slots,), daemon=True) for w in workers]
    for thread in threads:
        thread.start()
    assert enough.wait(30), [w.health for w in workers]
    stop.set()
    for thread in threads:
        thread.join(5)
    assert all(w.health.errors == 0 for w in workers), [w.health for w in workers]
    with collected:
        temperatures = {
            s: {round(r.value, 1) for r in readings if (r.sensor, r.quantity) == (s, "temperature")}
            for s in ("left", "right")
        }
    assert temperatures == {"left": {12.0}, "right": {31.0}}


def test_scan_lists_the_mux_and_each_channel_and_switches_everything_off(
    clock: FakeClock,
) -> None:
    _, bus, _ = twin_world(clock)
    mux = bus.devices[MUX]
    assert isinstance(mux, TCA9548AModel)
    mux.attach(2, 0x77, RegisterFile())  # hidden behind the bmp280 on the bus itself
    mux.attach(7, 0x40, RegisterFile())
    mux.control = 0xFF  # left on by someone else
    assert scan(bus, IDENTIFIERS) == [
        Found(MUX, "tca9548a"),
        Found(0x77, "bmp280"),
        Found(0x76, "bme280", MUX, 2),
        Found(0x76, "bme280", MUX, 5),
        Found(0x40, None, MUX, 7),
    ]
    assert mux.control == 0


def envagent(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=cwd, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_cli_scan_and_read_behind_a_mux(tmp_path: Path) -> None:
    config = tmp_path / "mux.toml"
    config.write_text(TWINS + '[[sensor]]\nid = "own"\ndriver = "bmp280"\naddress = 0x77\n')
    result = envagent("scan", "--simulate", "--config", str(config), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        {"bus": 1, "address": MUX, "chip": "tca9548a"},
        {"bus": 1, "address": 0x77, "chip": "bmp280"},
        {"bus": 1, "address": 0x76, "chip": "bme280", "mux": MUX, "channel": 2},
        {"bus": 1, "address": 0x76, "chip": "bme280", "mux": MUX, "channel": 5},
    ]
    text = envagent("scan", "--simulate", "--config", str(config), cwd=tmp_path)
    assert "1:0x76  bme280  (mux 0x70 channel 5)" in text.stdout.splitlines()
    read = envagent("read", "--simulate", "--config", str(config), "--json", cwd=tmp_path)
    assert read.returncode == 0, read.stderr
    assert {(r["sensor"], r["quantity"]) for r in json.loads(read.stdout)} >= {
        ("left", "humidity"), ("right", "humidity"), ("own", "pressure"),
    }


# --- config ----------------------------------------------------------------------------------

SENSOR = '[[sensor]]\nid = "{id}"\ndriver = "bme280"\naddress = {address}\n'


def sensor(sensor_id: str, address: int = 0x76, extra: str = "") -> str:
    return SENSOR.format(id=sensor_id, address=hex(address)) + extra


def test_muxed_sensors_are_placed_and_named_with_their_channel() -> None:
    config = config_of(TWINS + sensor("main", 0x77))
    left, right, main = config.sensors
    assert (left.mux, left.channel, right.channel) == (MUX, 2, 5)
    assert (main.mux, main.channel) == (None, None)
    assert left.where == "1:0x76 (mux 0x70 channel 2)" and main.where == "1:0x77"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (
            sensor("a", extra="channel = 2\n"),
            "sensor 'a': channel = 2: needs mux, the multiplexer's address; add mux = 0x70 "
            "(0x70 to 0x77)",
        ),
        (
            sensor("a", extra="mux = 0x71\n"),
            "sensor 'a': mux = 0x71: needs channel, the multiplexer channel the sensor is wired "
            "to; "
            "add channel = 0 to 7",
        ),
        (
            sensor("a", extra="mux = 0x60\nchannel = 1\n"),
            "sensor 'a': mux = 0x60: expected the multiplexer's address, 0x70 to 0x77 (a "
            "TCA9548A)",
        ),
        (
            sensor("a", extra="mux = 0x70\nchannel = 8\n"),
            "sensor 'a': channel = 8: expected an integer from 0 to 7 (the multiplexer channel)",
        ),
        (
            sensor("a", extra='mux = 0x70\nchannel = "2"\n'),
            'sensor \'a\': channel = "2": expected an integer from 0 to 7 (the multiplexer '
            "channel); write 2 without quotes",
        ),
        (
            sensor("a", extra="mux = 0x70\nchannel = 3\n")
            + sensor("b", extra="mux = 0x70\nchannel = 3\n"),
            "sensor 'b': bus 1 mux 0x70 channel 3 address 0x76 is already used by sensor "
            "'a'; give each sensor its own address or channel",
        ),
        (
            sensor("a", 0x76) + sensor("b", 0x77, extra="mux = 0x76\nchannel = 3\n"),
            "sensor 'a': address 0x76 is where the multiplexer mux = 0x76 answers on bus 1; "
            "give the sensor or the multiplexer (its A0-A2 pins) another address",
        ),
        (
            sensor("b", 0x77, extra="mux = 0x77\nchannel = 3\n"),
            "sensor 'b': address 0x77 is where the multiplexer mux = 0x77 answers on bus 1; "
            "give the sensor or the multiplexer (its A0-A2 pins) another address",
        ),
        (
            sensor("a") + sensor("b", extra="mux = 0x70\nchannel = 3\n"),
            "sensor 'b': address 0x76 behind mux 0x70 channel 3 is also used on bus 1 itself "
            "by sensor 'a'; both would answer whenever channel 3 is selected, so move one",
        ),
    ],
)
def test_mux_config_errors_are_one_line_each(text: str, line: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_of(HEAD + text)
    assert caught.value.problems == [f"config: {line}"]


def test_same_address_on_other_channels_muxes_and_buses_is_fine() -> None:
    config = config_of(
        HEAD
        + sensor("a", extra="mux = 0x70\nchannel = 0\n")
        + sensor("b", extra="mux = 0x70\nchannel = 1\n")
        + sensor("c", extra="mux = 0x71\nchannel = 0\n")
        + sensor("d", extra="bus = 0\n")
    )
    assert len(config.sensors) == 4
