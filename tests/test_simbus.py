"""SimBus: kernel-like errors, the transaction log, fault injection, threads, and build_world."""

from __future__ import annotations

import errno
import os
import threading

import pytest
from adafruit_bme280.basic import Adafruit_BME280_I2C

from agent.cli.context import example_config_path
from agent.cli.hardware import open_buses
from agent.config import load_config
from drivers.busio_adapter import BusioI2C
from drivers.clock import SystemClock
from drivers.scan import probe
from drivers.sim import (
    MODELS,
    BME280Model,
    BMP280Model,
    BusIOError,
    Environment,
    FakeClock,
    Garbage,
    Nack,
    SimBus,
    Stuck,
    Timeout,
    build_world,
)
from drivers.sim.bh1750 import BH1750Model
from drivers.sim.simbus import HISTORY_LENGTH, LOG_LENGTH

ADDRESS = 0x50
OTHER = 0x51


class RegisterFile:
    """A 256-byte register chip with an auto-incrementing pointer, like the kernel's i2c-stub."""

    def __init__(self) -> None:
        self.registers = bytearray(range(256))
        self.pointer = 0
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.pointer = data[0]
        for offset, value in enumerate(data[1:]):
            self.registers[(self.pointer + offset) % 256] = value

    def read(self, length: int) -> bytes:
        out = bytes(self.registers[(self.pointer + i) % 256] for i in range(length))
        self.pointer = (self.pointer + length) % 256
        return out


class BusyChip(RegisterFile):
    """Answers reads with a NACK while ``busy``, as Sensirion chips do during a measurement."""

    busy = True

    def read(self, length: int) -> bytes:
        if self.busy:
            raise OSError(errno.EREMOTEIO, os.strerror(errno.EREMOTEIO))
        return super().read(length)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def bus(clock: FakeClock) -> SimBus:
    bus = SimBus(1, clock=clock)
    bus.attach(ADDRESS, RegisterFile())
    return bus


def _errno_of(call: object) -> int | None:
    assert callable(call)
    with pytest.raises(OSError) as caught:
        call()
    return caught.value.errno


# --- kernel-like behaviour ----------------------------------------------------------------------


def test_absent_address_nacks_like_the_kernel(bus: SimBus) -> None:
    with pytest.raises(OSError) as caught:
        bus.read(OTHER, 1)
    assert caught.value.errno == errno.EREMOTEIO == 121
    assert caught.value.strerror == os.strerror(errno.EREMOTEIO)
    assert _errno_of(lambda: bus.write(OTHER, b"\x00")) == errno.EREMOTEIO
    assert _errno_of(lambda: bus.write_read(OTHER, b"\x00", 2)) == errno.EREMOTEIO


def test_reserved_address_is_rejected(bus: SimBus) -> None:
    assert _errno_of(lambda: bus.read(0x03, 1)) == errno.EINVAL
    assert _errno_of(lambda: bus.attach(0x78, RegisterFile())) == errno.EINVAL


def test_quick_write_probe_is_acked_without_reaching_the_model(bus: SimBus) -> None:
    chip = bus.devices[ADDRESS]
    assert isinstance(chip, RegisterFile)
    bus.write(ADDRESS, b"")
    assert chip.writes == 0
    assert probe(bus, ADDRESS) and not probe(bus, OTHER)
    assert BusioI2C(bus).scan() == [ADDRESS]


def test_register_round_trip_with_repeated_start(bus: SimBus) -> None:
    bus.write(ADDRESS, bytes([0x10, 0xAA, 0xBB]))
    assert bus.write_read(ADDRESS, b"\x10", 3) == bytes([0xAA, 0xBB, 0x12])
    assert bus.read(ADDRESS, 1) == bytes([0x13])  # the pointer kept incrementing


def test_model_nack_propagates_and_is_logged(bus: SimBus) -> None:
    chip = BusyChip()
    bus.attach(OTHER, chip)
    assert _errno_of(lambda: bus.read(OTHER, 3)) == errno.EREMOTEIO
    chip.busy = False
    assert len(bus.read(OTHER, 3)) == 3
    assert [t.errno for t in bus.transactions(OTHER)] == [errno.EREMOTEIO, None]


def test_attach_detach_and_duplicates(bus: SimBus) -> None:
    with pytest.raises(ValueError, match="already has a device at 0x50"):
        bus.attach(ADDRESS, RegisterFile())
    chip = bus.detach(ADDRESS)
    assert isinstance(chip, RegisterFile)
    assert dict(bus.devices) == {}
    assert not probe(bus, ADDRESS)


def test_model_returning_the_wrong_length_is_a_model_bug(bus: SimBus) -> None:
    class Short(RegisterFile):
        def read(self, length: int) -> bytes:
            return b"\x00"

    bus.attach(OTHER, Short())
    with pytest.raises(RuntimeError, match="returned 1 bytes for a 4-byte read"):
        bus.read(OTHER, 4)


def test_closed_bus_refuses_transfers(bus: SimBus) -> None:
    bus.close()
    assert _errno_of(lambda: bus.read(ADDRESS, 1)) == errno.EBADF


# --- transaction log ----------------------------------------------------------------------------


def test_log_records_every_transfer_with_time_and_errno(bus: SimBus, clock: FakeClock) -> None:
    start = clock.monotonic()
    bus.write(ADDRESS, b"\x20\x01")
    clock.advance(0.5)
    bus.write_read(ADDRESS, b"\x20", 2)
    clock.advance(0.5)
    with pytest.raises(OSError):
        bus.read(OTHER, 4)

    log = bus.transactions()
    assert [(t.kind, t.address) for t in log] == [
        ("write", ADDRESS),
        ("write_read", ADDRESS),
        ("read", OTHER),
    ]
    assert [t.time - start for t in log] == [0.0, 0.5, 1.0]
    assert log[1].wrote == b"\x20" and log[1].read == b"\x01\x21" and log[1].errno is None
    assert log[2].read == b"" and log[2].errno == errno.EREMOTEIO
    assert bus.transactions(OTHER) == [log[2]]
    bus.clear_log()
    assert bus.transactions() == []


def test_log_is_bounded(bus: SimBus) -> None:
    for _ in range(LOG_LENGTH + 10):
        bus.write(ADDRESS, b"")
    assert len(bus.transactions()) == LOG_LENGTH


def test_a_model_remembers_only_its_newest_commands(clock: FakeClock) -> None:
    # A --simulate daemon runs for days: what a model keeps for tests must stay bounded.
    model = BH1750Model(clock=clock)
    for _ in range(3 * HISTORY_LENGTH):
        model.write(bytes([0x01, 0x00]))  # power on, power down
    assert HISTORY_LENGTH // 2 <= len(model.opcodes) <= HISTORY_LENGTH
    assert model.opcodes[-2:] == [0x01, 0x00]


def test_the_cli_simulated_world_keeps_no_log(clock: FakeClock) -> None:
    # `envagent run --simulate` runs for as long as a demo lasts: a full log per bus would be
    # ~25 MB of its memory, kept for nobody (the log is for tests).
    config = load_config(example_config_path())
    with open_buses(config, clock, simulate=True) as buses:
        for bus in buses.values():
            assert probe(bus, config.sensors[0].address)
            assert bus.transactions() == []


# --- faults -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "code", "number"),
    [
        (Nack(count=2), errno.EREMOTEIO, 121),
        (BusIOError(count=2), errno.EIO, 5),
        (Timeout(count=2), errno.ETIMEDOUT, 110),
    ],
)
def test_errno_faults_apply_per_transaction_then_expire(
    bus: SimBus, fault: Nack | BusIOError | Timeout, code: int, number: int
) -> None:
    bus.inject(ADDRESS, fault)
    assert code == number
    assert _errno_of(lambda: bus.write(ADDRESS, b"")) == code  # probes are transactions too
    assert _errno_of(lambda: bus.write_read(ADDRESS, b"\x00", 1)) == code
    assert bus.write_read(ADDRESS, b"\x07", 1) == b"\x07"
    assert [t.errno for t in bus.transactions()] == [code, code, None]


def test_failed_write_does_not_reach_the_model(bus: SimBus) -> None:
    bus.inject(ADDRESS, BusIOError())
    with pytest.raises(OSError):
        bus.write(ADDRESS, b"\x00\x99")
    assert bus.write_read(ADDRESS, b"\x00", 1) == b"\x00"


def test_timeout_holds_the_bus_for_its_duration(bus: SimBus, clock: FakeClock) -> None:
    bus.inject(ADDRESS, Timeout(duration=0.25))
    start = clock.monotonic()
    assert _errno_of(lambda: bus.read(ADDRESS, 1)) == errno.ETIMEDOUT
    assert clock.monotonic() - start == pytest.approx(0.25)


def test_forever_fault_lasts_until_cleared(bus: SimBus) -> None:
    bus.inject(ADDRESS, Nack(count=None))
    for _ in range(50):
        assert not probe(bus, ADDRESS)
    bus.clear_faults(ADDRESS)
    assert probe(bus, ADDRESS)


def test_queued_faults_apply_in_order(bus: SimBus) -> None:
    bus.inject(ADDRESS, Nack())
    bus.inject(ADDRESS, BusIOError())
    assert _errno_of(lambda: bus.read(ADDRESS, 1)) == errno.EREMOTEIO
    assert _errno_of(lambda: bus.read(ADDRESS, 1)) == errno.EIO
    assert len(bus.read(ADDRESS, 1)) == 1


def test_faults_are_per_address(bus: SimBus) -> None:
    bus.attach(OTHER, RegisterFile())
    bus.inject(ADDRESS, Nack(count=None))
    assert probe(bus, OTHER) and not probe(bus, ADDRESS)


def test_fault_count_must_be_positive(bus: SimBus) -> None:
    with pytest.raises(ValueError, match="count must be >= 1"):
        bus.inject(ADDRESS, Nack(count=0))


def test_garbage_is_seeded_and_sized_and_leaves_writes_alone(clock: FakeClock) -> None:
    def garbled(seed: int) -> list[bytes]:
        bus = SimBus(clock=clock)
        bus.attach(ADDRESS, RegisterFile())
        bus.inject(ADDRESS, Garbage(count=2, seed=seed))
        bus.write(ADDRESS, b"\x40\x11")  # a plain write passes and does not use up the fault
        return [bus.write_read(ADDRESS, b"\x40", 6), bus.read(ADDRESS, 3), bus.read(ADDRESS, 2)]

    first, second, clean = garbled(seed=7)
    assert len(first) == 6 and len(second) == 3
    assert first != bytes([0x11, 0x41, 0x42, 0x43, 0x44, 0x45])
    assert clean == bytes([0x49, 0x4A])  # the device still saw the garbled reads
    assert garbled(seed=7)[:2] == [first, second]
    assert garbled(seed=8)[:2] != [first, second]


def test_stuck_repeats_the_last_good_read_of_that_length(bus: SimBus) -> None:
    bus.inject(ADDRESS, Stuck(count=3))
    assert bus.write_read(ADDRESS, b"\x00", 2) == b"\xff\xff"  # nothing read before
    bus.clear_faults(ADDRESS)
    assert bus.write_read(ADDRESS, b"\x30", 2) == b"\x30\x31"
    bus.inject(ADDRESS, Stuck(count=2))
    assert bus.write_read(ADDRESS, b"\x60", 2) == b"\x30\x31"
    assert bus.write_read(ADDRESS, b"\x70", 2) == b"\x30\x31"
    assert bus.write_read(ADDRESS, b"\x70", 2) == b"\x70\x71"


def test_vanished_device_keeps_its_state(bus: SimBus) -> None:
    bus.write(ADDRESS, b"\x05\xee")
    bus.vanish(ADDRESS)
    assert _errno_of(lambda: bus.write(ADDRESS, b"\x05\x00")) == errno.EREMOTEIO
    assert not probe(bus, ADDRESS)
    bus.reappear(ADDRESS)
    assert bus.write_read(ADDRESS, b"\x05", 1) == b"\xee"


def test_adafruit_driver_sees_a_missing_chip_through_a_nack() -> None:
    bus = SimBus()
    bus.attach(0x76, BME280Model(clock=bus.clock))
    bus.inject(0x76, Nack(count=None))
    with pytest.raises(ValueError, match="No I2C device at address: 0x76"):
        Adafruit_BME280_I2C(BusioI2C(bus), address=0x76)


# --- threads ------------------------------------------------------------------------------------


def test_write_read_is_atomic_across_threads(bus: SimBus) -> None:
    """Two samplers hammer one chip; a repeated start never lets the other's pointer in."""
    errors: list[str] = []

    def sampler(register: int) -> None:
        for _ in range(2000):
            answer = bus.write_read(ADDRESS, bytes([register]), 2)
            if answer != bytes([register, register + 1]):
                errors.append(answer.hex())

    threads = [threading.Thread(target=sampler, args=(r,)) for r in (0x10, 0x80, 0xC0)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(bus.transactions()) == 6000


# --- build_world --------------------------------------------------------------------------------


def test_build_world_places_one_model_per_sensor(clock: FakeClock) -> None:
    placements = [(1, 0x76, "bme280", "air"), (1, 0x77, "bmp280", "roof"), (3, 0x76, "bme280", "x")]
    world = build_world(placements, clock=clock, environment=Environment(seed=1))
    assert sorted(world) == [1, 3]
    assert world[1].number == 1 and world[3].number == 3
    assert world[1].clock is clock
    assert isinstance(world[1].devices[0x76], BME280Model)
    assert isinstance(world[1].devices[0x77], BMP280Model)
    assert sorted(world[3].devices) == [0x76]


def test_build_world_rejects_unknown_drivers(clock: FakeClock) -> None:
    with pytest.raises(KeyError, match="no simulated model for driver 'sht99'.*1:0x44"):
        build_world([(1, 0x44, "sht99", "air")], clock=clock, environment=Environment())
    assert {"bme280", "bmp280"} <= set(MODELS)


def test_world_sensors_follow_the_environment_with_their_own_offsets() -> None:
    """Two BME280s in one simulated world, read with the unmodified Adafruit driver."""
    environment = Environment(seed=5)
    clock = SystemClock()
    world = build_world(
        [(1, 0x76, "bme280", "inside"), (1, 0x77, "bme280", "outside")],
        clock=clock,
        environment=environment,
    )
    i2c = BusioI2C(world[1])
    temperatures = {}
    for address, sensor_id in ((0x76, "inside"), (0x77, "outside")):
        sensor = Adafruit_BME280_I2C(i2c, address=address)
        expected = environment.source_for(sensor_id)(clock.time())
        temperatures[sensor_id] = sensor.temperature
        assert temperatures[sensor_id] == pytest.approx(expected.temperature, abs=0.01)
        assert sensor.humidity == pytest.approx(expected.humidity, abs=0.05)
        assert sensor.pressure == pytest.approx(expected.pressure, abs=0.01)
    assert temperatures["inside"] != temperatures["outside"]
