"""Sensor workers: readings carry true time, failures change health, never end the thread.

Here a worker samples on a thread of its own (``run_own``, as at start and while it misbehaves;
no runner takes it back), or one ``sample`` at a time; in steps on the scheduler's runners:
tests/test_slots.py."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import pytest

from agent.config import parse_config
from agent.core.reading import Reading
from agent.sampling.sampler import FAILURES_BEFORE_FAILED, SensorWorker, State
from agent.sampling.scheduler import Slots
from drivers.bme280 import BME280
from drivers.sim.bme280 import BME280Model
from drivers.sim.clock import FakeClock
from drivers.sim.simbus import Nack, SimBus

ADDRESS = 0x76
CONFIG = parse_config(
    {"unit": {"id": "u1", "site": "roof"},
     "sensor": [{"id": "air", "driver": "bme280", "address": ADDRESS, "interval": "10s"}]},
    source="test.toml",
)


def make_worker(
    deliver: Callable[[list[Reading]], None],
) -> tuple[SensorWorker, SimBus, FakeClock]:
    clock = FakeClock(start=100.0, wall=1_767_225_603.0)
    bus = SimBus(1, clock=clock)
    bus.attach(ADDRESS, BME280Model(clock=clock, temperature=12.5))
    sensor = CONFIG.sensors[0]
    worker = SensorWorker(
        sensor, BME280(bus, ADDRESS, clock=clock), clock=clock, deliver=deliver,
        boot_id="b00t", stop=threading.Event(),
    )
    return worker, bus, clock


def run_until(worker: SensorWorker, done: Callable[[], bool]) -> None:
    """Run the worker on its own thread's loop (``run_own``, as every sensor starts) on its
    (fake, instantly advancing) clock until ``done``. The scheduler's runners are not started,
    so none takes the sensor back: it sets itself up, re-probes and samples its slots itself."""
    slots = Slots([worker], worker.clock, worker.stop, own=lambda sensor: None)

    def watch() -> None:
        while not worker.stop.is_set():
            if done():
                worker.stop.set()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    worker.run_own(slots)
    watcher.join(5)


def test_readings_are_stamped_on_aligned_slots_with_boot_time() -> None:
    batches: list[list[Reading]] = []
    worker, _, clock = make_worker(batches.append)
    run_until(worker, lambda: len(batches) >= 5)
    times = [b[0].time_ns for b in batches[:5]]
    assert all(t % 10_000_000_000 < 200_000_000 for t in times)  # :00, :10, ... within the read
    assert [b - a for a, b in zip(times, times[1:], strict=False)] == [10_000_000_000] * 4
    first = batches[0]
    assert {r.quantity for r in first} == {"temperature", "humidity", "pressure"}
    assert all(r.boot_id == "b00t" and r.synced is True for r in first)
    assert all(r.boot_ns == pytest.approx(r.time_ns - (clock.time() - clock.boottime()) * 1e9,
                                          abs=1e6) for r in first)
    temperature = next(r for r in first if r.quantity == "temperature")
    assert temperature.value == pytest.approx(12.5, abs=0.01)


def test_a_failed_read_is_a_warning_and_the_next_good_read_clears_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    batches: list[list[Reading]] = []
    worker, bus, _ = make_worker(batches.append)
    assert worker._try_setup()
    bus.inject(ADDRESS, Nack(count=1))
    with caplog.at_level(logging.INFO, logger="envagent.sensor"):
        worker.sample()
        assert worker.health.state is State.WARNING
        worker.sample()
    assert worker.health.state is State.OK
    assert worker.health.errors == 1
    assert len(batches) == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any("bme280 'air' at 1:0x76: warning (read failed, retrying: no answer: check "
               "wiring, power and address)" in m for m in messages)
    assert not any("EREMOTEIO" in m or "Errno" in m for m in messages)
    assert any("ok (recovered)" in m for m in messages)


def test_repeated_failures_fail_the_sensor_then_it_is_reprobed_and_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    batches: list[list[Reading]] = []
    worker, bus, clock = make_worker(batches.append)
    bus.vanish(ADDRESS)
    back_at = clock.monotonic() + 60.0  # re-probes at +5, +15, +35 s fail first
    with caplog.at_level(logging.INFO, logger="envagent.sensor"):
        failed = threading.Event()

        def vanished_long_enough() -> bool:
            if clock.monotonic() > back_at and not failed.is_set():
                failed.set()
                bus.reappear(ADDRESS)
            return failed.is_set() and len(batches) >= 2

        run_until(worker, vanished_long_enough)
    assert worker.health.state is State.OK
    setups = [t for t in bus.transactions(ADDRESS) if t.wrote == bytes([0xD0])]
    assert sum(t.errno is not None for t in setups) >= 3
    messages = [r.getMessage() for r in caplog.records]
    failures = [m for m in messages if ": failed (" in m]
    assert len(failures) == 1, messages  # logged on the transition, not on every re-probe


def test_consecutive_read_failures_reinitialise_the_chip() -> None:
    worker, bus, _ = make_worker(lambda readings: None)
    assert worker._try_setup()
    bus.inject(ADDRESS, Nack(count=None))
    for _ in range(FAILURES_BEFORE_FAILED):
        worker.sample()
    assert worker.health.state is State.FAILED
    assert "3 reads failed in a row" in (worker.health.last_error or "")
    bus.clear_faults(ADDRESS)
    assert worker._try_setup()
    assert worker.health.state is State.FAILED  # set up again, but no good reading yet
    worker.sample()
    assert worker.health.state is State.OK


def test_a_chip_that_sets_up_but_cannot_read_stays_failed_without_flapping(
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker, bus, _ = make_worker(lambda readings: None)
    assert worker._try_setup()
    bus.devices[ADDRESS].stuck_measuring = True  # type: ignore[attr-defined]
    with caplog.at_level(logging.INFO, logger="envagent.sensor"):
        for _ in range(4):
            for _ in range(FAILURES_BEFORE_FAILED):
                worker.sample()
            assert worker._try_setup()  # the id register still answers
            assert worker.health.state is State.FAILED
    states = [r.getMessage().split(": ")[1].split(" ")[0] for r in caplog.records
              if r.getMessage().count(": ") >= 1 and "set up again" not in r.getMessage()]
    assert states == ["warning", "failed"], states
