"""True time without a clock battery: stale boot, sync, steps, reboots -- on an injected clock.

The oracle: a reading sampled at boot time ``b`` truly happened at ``TRUE_EPOCH + b``. Whatever
the wall clock said, every reading offered for upload must carry that true time, or be flagged
CLOCK_UNSYNCED.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.config import parse_config
from agent.core.reading import Reading
from agent.core.timebase import HOLD_UNSYNCED_S, NS, ExternalTime
from agent.sampling.sampler import SensorWorker
from agent.sampling.timekeeping import TimeKeeper
from agent.store.outbox import Outbox
from agent.uplink.lineprotocol import LineProtocolEncoder, quality_of
from drivers.base import Quality
from drivers.bme280 import BME280
from drivers.sim.bme280 import BME280Model
from drivers.sim.clock import FakeClock
from drivers.sim.simbus import SimBus

TRUE_EPOCH = 1_767_225_600.0  # true wall time at boot (2026-01-01)
STALE_EPOCH = 1_600_000_000.0  # what the clock believes at boot (last shutdown, 2020)
CONFIG = parse_config(
    {"unit": {"id": "u1", "site": "marsh"},
     "sensor": [{"id": "air", "driver": "bme280", "address": 0x76, "interval": "10s"}]},
    source="test.toml",
)


class Unit:
    """One unit: a BME280 on a simulated bus, an outbox and the time keeper, on a FakeClock."""

    def __init__(self, tmp_path: Path, *, boot_id: str = "boot-a", clock: FakeClock | None = None,
                 outbox: Outbox | None = None) -> None:
        self.clock = clock or FakeClock(start=20.0, wall=STALE_EPOCH + 20.0, synced=False)
        self.outbox = outbox or Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 24)
        bus = SimBus(1, clock=self.clock)
        bus.attach(0x76, BME280Model(clock=self.clock))
        self.pending: list[Reading] = []
        self.worker = SensorWorker(
            CONFIG.sensors[0], BME280(bus, 0x76, clock=self.clock), clock=self.clock,
            deliver=self.pending.extend, boot_id=boot_id, stop=threading.Event(),
        )
        assert self.worker._try_setup()
        self.timekeeper = TimeKeeper(self.clock, boot_id)

    def sample(self, count: int) -> None:
        for _ in range(count):
            self.clock.advance(10.0)
            self.worker.sample()

    def commit(self) -> None:
        """What the daemon's writer does each commit interval."""
        self.outbox.append(self.pending)
        self.timekeeper.appended(any(r.synced is False for r in self.pending))
        self.pending.clear()
        self.timekeeper.maintain(self.outbox)

    def sync(self) -> None:
        """NTP steps the clock to the truth and reports it synchronised."""
        self.clock.set_wall(TRUE_EPOCH + self.clock.boottime(), synced=True)

    def uploadable(self) -> list[Reading]:
        taken = self.outbox.take(10_000, hold_boot=self.timekeeper.held_boot())
        return [s.reading for s in taken]


def assert_true_or_flagged(readings: list[Reading]) -> None:
    assert readings
    for r in readings:
        if quality_of(r) & Quality.CLOCK_UNSYNCED:
            continue
        true_ns = (TRUE_EPOCH + r.boot_ns / NS) * NS
        assert abs(r.time_ns - true_ns) < 1_000, r


def test_readings_before_sync_are_held_then_restamped_to_true_time(tmp_path: Path) -> None:
    unit = Unit(tmp_path)
    unit.sample(5)
    unit.commit()
    assert unit.uploadable() == []  # held while the clock is wrong
    stored = unit.outbox.take(100)
    assert all(s.reading.time_ns < int((STALE_EPOCH + 1000) * NS) for s in stored)

    unit.sync()
    unit.commit()
    readings = unit.uploadable()
    assert len(readings) == 15
    assert all(r.synced is True and r.quality & Quality.CLOCK_RESTAMPED for r in readings)
    assert_true_or_flagged(readings)


def test_readings_committed_just_after_the_sync_are_restamped_at_the_next_commit(
    tmp_path: Path,
) -> None:
    unit = Unit(tmp_path)
    unit.sample(2)
    unit.sync()  # synchronised while the readings still waited in memory
    unit.commit()
    unit.sample(2)
    unit.commit()
    readings = unit.uploadable()
    assert len(readings) == 12
    assert_true_or_flagged(readings)
    restamped = [r for r in readings if r.quality & Quality.CLOCK_RESTAMPED]
    assert len(restamped) == 6  # the two samples from before the sync


def test_a_step_back_while_unsynced_is_detected_and_restamping_stays_exact(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    unit = Unit(tmp_path)
    unit.sync()
    unit.commit()
    unit.sample(2)
    # Someone sets the date an hour back by hand: the kernel marks the clock unsynchronised.
    unit.clock.set_wall(unit.clock.time() - 3600.0, synced=False)
    with caplog.at_level(logging.WARNING, logger="envagent.time"):
        unit.sample(3)
        unit.commit()
    assert any("stepped by -3600.0 s" in r.getMessage() for r in caplog.records)
    assert len(unit.uploadable()) == 6  # the 3 samples after the step wait
    unit.sync()
    unit.commit()
    readings = unit.uploadable()
    assert len(readings) == 15
    assert_true_or_flagged(readings)


def test_a_forward_step_on_sync_restamps_exactly(tmp_path: Path) -> None:
    unit = Unit(tmp_path, clock=FakeClock(start=20.0, wall=TRUE_EPOCH - 86_400 * 400,
                                          synced=False))
    unit.sample(4)
    unit.commit()
    unit.sync()  # a jump forward of 400 days
    unit.commit()
    assert_true_or_flagged(unit.uploadable())


def test_readings_of_a_boot_that_never_synced_go_upstream_flagged(tmp_path: Path) -> None:
    first = Unit(tmp_path, boot_id="boot-a")
    first.sample(3)
    first.commit()
    # Power cut; the next boot synchronises, but boot-a's readings can never be re-stamped.
    clock = FakeClock(start=15.0, wall=TRUE_EPOCH + 15.0, synced=True)
    second = Unit(tmp_path, boot_id="boot-b", clock=clock, outbox=first.outbox)
    second.sample(2)
    second.commit()
    readings = second.uploadable()
    assert len(readings) == 15
    old = [r for r in readings if r.boot_id == "boot-a"]
    assert len(old) == 9 and all(quality_of(r) & Quality.CLOCK_UNSYNCED for r in old)
    assert all(r.synced is True for r in readings if r.boot_id == "boot-b")
    assert_true_or_flagged(readings)
    encoder = LineProtocolEncoder(unit="u1", site="marsh", drivers={"air": "bme280"})
    lines = encoder.encode(old).decode().splitlines()
    assert all(f"temperature_q={int(Quality.CLOCK_UNSYNCED)}i" in line for line in lines)


def test_after_the_hold_an_unsynced_boot_delivers_flagged(tmp_path: Path) -> None:
    unit = Unit(tmp_path)
    unit.sample(3)
    unit.commit()
    assert unit.uploadable() == []
    unit.clock.advance(HOLD_UNSYNCED_S)
    readings = unit.uploadable()
    assert len(readings) == 9
    assert all(quality_of(r) & Quality.CLOCK_UNSYNCED for r in readings)


def test_a_clock_that_cannot_tell_is_not_held(tmp_path: Path) -> None:
    unit = Unit(tmp_path, clock=FakeClock(start=20.0, wall=TRUE_EPOCH + 20.0, synced=None))
    unit.sample(2)
    unit.commit()
    assert len(unit.uploadable()) == 6


# --- an upstream's time where NTP is absent (agent.core.timebase.ExternalTime) ----------------


def platform_unit(tmp_path: Path) -> tuple[Unit, ExternalTime]:
    unit = Unit(tmp_path)
    external = ExternalTime(unit.clock.synchronized, unit.clock.boottime)
    unit.timekeeper = TimeKeeper(unit.clock, "boot-a", external=external)
    return unit, external


def test_the_platforms_time_restamps_readings_while_ntp_is_absent(tmp_path: Path) -> None:
    unit, external = platform_unit(tmp_path)
    unit.sample(3)
    unit.commit()
    assert unit.uploadable() == []  # held: no true time yet
    # The HJ 212 platform sets the time (CN 1012): the truth, as the platform knows it.
    assert external.offer(TRUE_EPOCH + unit.clock.boottime(), "the platform")
    unit.commit()
    first = unit.uploadable()
    assert len(first) == 9 and all(r.quality & Quality.CLOCK_RESTAMPED for r in first)
    assert_true_or_flagged(first)
    unit.sample(2)  # taken after the platform's time: still the unsynchronised wall clock
    unit.commit()
    later = unit.uploadable()
    assert len(later) == 15 and all(r.synced for r in later)
    assert_true_or_flagged(later)
    assert unit.clock.time() < STALE_EPOCH + 10_000  # the wall clock itself was never set


def test_with_the_platforms_time_readings_are_held_past_the_hold_not_sent_flagged(
        tmp_path: Path) -> None:
    unit, external = platform_unit(tmp_path)
    external.offer(TRUE_EPOCH + unit.clock.boottime(), "the platform")
    unit.clock.advance(HOLD_UNSYNCED_S)  # long past the hold for the clock
    unit.sample(2)
    assert unit.timekeeper.held_boot() == "boot-a"  # until the next commit re-stamps them
    assert unit.timekeeper.holding() is None  # nothing waits for the clock: it has a time
    unit.commit()
    readings = unit.uploadable()
    assert len(readings) == 6 and not any(r.quality & Quality.CLOCK_UNSYNCED for r in readings)
    assert_true_or_flagged(readings)



@pytest.mark.parametrize("year", [1970, 2000, 2100, 9999])
def test_an_implausible_time_from_upstream_is_refused_and_changes_nothing(
        tmp_path: Path, year: int) -> None:
    unit, external = platform_unit(tmp_path)
    unit.sample(2)
    said = datetime(year, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
    with pytest.raises(ValueError, match="not a plausible time"):
        external.offer(said, "the platform")
    assert external.anchor() is None
    unit.clock.advance(HOLD_UNSYNCED_S)  # the hold for the clock ends as it would have
    unit.commit()
    readings = unit.uploadable()
    assert len(readings) == 6 and all(r.synced is False for r in readings)  # sent flagged

def test_ntp_keeps_the_clock_and_the_platforms_time_is_refused(tmp_path: Path) -> None:
    unit, external = platform_unit(tmp_path)
    unit.sync()
    assert external.offer(TRUE_EPOCH + 3600.0, "the platform") is False
    unit.sample(2)
    unit.commit()
    assert_true_or_flagged(unit.uploadable())


def test_a_re_stamp_that_fails_unexpectedly_costs_no_commit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from agent.sampling.daemon import Agent
    from agent.store.outbox import Subscriber

    config = parse_config({"unit": {"id": "u", "site": "s"}}, drivers={})
    with Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 20,
                subscribers=[Subscriber("default")]) as outbox:
        agent = Agent(config, [], outbox=outbox, clock=FakeClock(), boot_id="boot-a")

        def broken(outbox: Outbox) -> None:
            raise OverflowError("Python int too large to convert to SQLite INTEGER")

        monkeypatch.setattr(agent.timekeeper, "maintain", broken)
        agent.submit([Reading("air", "temperature", 21.0, "°C", 5 * NS, 5 * NS, "boot-a", True)])
        with caplog.at_level(logging.WARNING):
            agent.run(duration=0)  # its final commit, then the re-stamp that fails
        assert outbox.stats().backlog == 1
    assert caplog.text.count("re-stamping readings failed") == 1
    assert "OverflowError" in caplog.text
