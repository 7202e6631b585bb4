"""The scheduler on an injected clock: aligned slots, no drift, missed slots skipped."""

from __future__ import annotations

import pytest

from agent.sampling.scheduler import LATE_FRACTION, Schedule
from drivers.sim.clock import FakeClock


def wall_of(clock: FakeClock, mono: float) -> float:
    return mono + (clock.time() - clock.monotonic())


def claim(schedule: Schedule, clock: FakeClock) -> float:
    """The next slot, claimed as the scheduler claims it (Slots, SensorWorker.run_own)."""
    return schedule.claim(clock.monotonic(), LATE_FRACTION * schedule.interval)


def test_first_slot_is_the_next_wall_clock_multiple() -> None:
    clock = FakeClock(start=50.0, wall=1_700_000_003.25)
    schedule = Schedule(10.0, clock)
    assert wall_of(clock, schedule.next_due) == pytest.approx(1_700_000_010.0)
    assert schedule.next_due - clock.monotonic() == pytest.approx(6.75)


def test_slots_do_not_drift_when_reads_take_time() -> None:
    clock = FakeClock(start=0.0, wall=1_700_000_000.0)
    schedule = Schedule(5.0, clock)
    walls = []
    for _ in range(1000):
        slot = claim(schedule, clock)
        clock.advance(slot - clock.monotonic())
        walls.append(wall_of(clock, slot))
        clock.advance(0.37)  # the read itself takes time
    assert walls[0] == pytest.approx(1_700_000_005.0)
    assert walls[-1] == pytest.approx(1_700_000_005.0 + 999 * 5.0)
    assert all(w % 5.0 == pytest.approx(0.0, abs=1e-6) for w in walls)
    assert schedule.missed == 0


def test_missed_slots_are_skipped_and_counted_not_bursted() -> None:
    clock = FakeClock(start=0.0, wall=1_700_000_000.0)
    schedule = Schedule(10.0, clock)
    clock.advance(claim(schedule, clock) - clock.monotonic())
    clock.advance(35.0)  # a read hung for 35 s
    slot = claim(schedule, clock)
    assert schedule.missed == 3
    assert 0 < slot - clock.monotonic() <= 10.0
    assert wall_of(clock, slot) % 10.0 == pytest.approx(0.0, abs=1e-6)


def test_realign_follows_a_wall_clock_step() -> None:
    clock = FakeClock(start=0.0, wall=1_700_000_001.0)
    schedule = Schedule(60.0, clock)
    clock.set_wall(1_800_000_017.0)
    schedule.realign()
    assert wall_of(clock, schedule.next_due) == pytest.approx(1_800_000_060.0)


def test_non_positive_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        Schedule(0.0, FakeClock())
