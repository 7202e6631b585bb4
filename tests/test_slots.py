"""One scheduler thread: per slot, trigger all, wait once, collect all; a sensor that overruns
moves to a thread of its own and comes back once it behaves."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

from agent.config import parse_config
from agent.core.reading import Reading
from agent.sampling.daemon import Agent, make_drivers
from agent.store.outbox import Outbox
from drivers.clock import SystemClock
from drivers.registry import DRIVERS
from drivers.sim.environment import Environment
from drivers.sim.simbus import SimBus, Timeout
from drivers.sim.world import build_world

NS = 1_000_000_000


def station(tmp_path: Path) -> tuple[Agent, dict[int, SimBus], Outbox]:
    config = parse_config({
        "unit": {"id": "slots-1", "site": "roof"},
        "storage": {"commit_interval": "1s"},
        "sensor": [
            {"id": "air", "driver": "bme280", "address": 0x76, "interval": "1s"},
            {"id": "humid", "driver": "sht4x", "address": 0x44, "interval": "1s"},
            {"id": "dust", "driver": "pmsa003i", "bus": 2, "address": 0x12, "interval": "1s"},
            {"id": "probe", "driver": "ads1115", "address": 0x48, "interval": "1s",
             "average": 4, "channel0_quantity": "a0", "channel1_quantity": "a1"},
        ],
    }, source="slots.toml")
    clock = SystemClock()
    world = build_world([(s.bus, s.address, s.driver, s.id) for s in config.sensors],
                        clock=clock, environment=Environment())
    outbox = Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 24)
    agent = Agent(config, make_drivers(config, world, clock, DRIVERS), outbox=outbox,
                  clock=clock, boot_id="slots")
    return agent, world, outbox


def test_one_wake_per_slot_and_one_wait_for_every_conversion(tmp_path: Path) -> None:
    agent, _, outbox = station(tmp_path)
    agent.start()
    agent.wait_for_setup(10.0)
    with outbox:
        agent.run(duration=5.5)
        stored = [s.reading for s in outbox.take(10_000)]
    assert all(w.attached for w in agent.workers), [w.label for w in agent.workers
                                                     if not w.attached]
    slots = {r.time_ns // NS for r in stored if r.sensor == "air"}
    assert len(slots) >= 4
    # every sensor of a slot is stamped in the same wake-up, on the slot
    for sid in ("air", "humid", "dust", "probe"):
        late = [r.time_ns % NS for r in stored if r.sensor == sid]
        assert late and max(late) < NS // 10, (sid, late)
    # a slot: its wake-up, one wait for the BME280, SHT4x and the ADS1115's AIN0 (32 SPS, the
    # chip averaging 4), one more for AIN1 -- never one per conversion
    assert agent.slots.wakeups <= 3 * (len(slots) + 1), (agent.slots.wakeups, len(slots))


def test_an_overrunning_sensor_is_sampled_apart_and_comes_back(tmp_path: Path) -> None:
    agent, world, outbox = station(tmp_path)
    agent.start()
    agent.wait_for_setup(10.0)
    bus = world[2]  # a transfer that hangs holds its bus: the others are on bus 1

    end = time.monotonic() + 5.0
    while not all(w.attached for w in agent.workers):  # the scheduler takes them all
        assert time.monotonic() < end, [w.label for w in agent.workers if not w.attached]
        time.sleep(0.1)
    bus.inject(0x12, Timeout(count=1, duration=0.4))  # dust: one transfer hangs 0.4 s
    with outbox:
        agent.run(duration=5.0)
        stored = [s.reading for s in outbox.take(10_000)]
    for sid in ("air", "humid", "probe"):  # nobody else was held up
        late = [r.time_ns % NS for r in stored if r.sensor == sid]
        assert len(late) >= 5 and max(late) < NS // 10, (sid, late)
    dust = agent.workers[2]
    assert dust.attached, "back with the scheduler after a good sample on its own thread"
    assert len({r.time_ns for r in stored if r.sensor == "dust"}) >= 3


def test_periodic_work_rides_the_slots(tmp_path: Path) -> None:
    """The commit, the watchdog's tick, the health sample: no timer threads of their own."""
    agent, _, outbox = station(tmp_path)
    riding: list[str] = []
    agent.start()
    agent.wait_for_setup(10.0)
    end = time.monotonic() + 5.0
    while not all(w.attached for w in agent.workers):  # the scheduler takes them all
        assert time.monotonic() < end, [w.label for w in agent.workers if not w.attached]
        time.sleep(0.1)
    # due half a slot after each run, and a slot always comes within its slack: one per slot
    agent.slots.every("riding", 0.5, lambda: riding.append(threading.current_thread().name),
                      slack=0.6)
    with outbox:
        agent.run(duration=5.5)
        stored = [s.reading for s in outbox.take(10_000)]
    slots = {r.time_ns // NS for r in stored if r.sensor == "air"}
    # (a slot skipped as late on a loaded machine still has its wake-up)
    assert len(slots) - 1 <= len(riding) <= len(slots) + 2, (len(riding), len(slots))
    assert set(riding) == {"scheduler"}  # served by the runners
    assert agent.commit_job.runs >= len(slots) - 1  # the writer's commit rides them too
    # the slots' wake-ups and conversion waits, nothing more
    assert agent.slots.wakeups <= 3 * (len(slots) + 1), (agent.slots.wakeups, len(slots))


def test_periodic_work_with_no_slot_in_reach_wakes_a_runner_for_itself(tmp_path: Path) -> None:
    config = parse_config({"unit": {"id": "slots-3", "site": "roof"},
                           "storage": {"commit_interval": "5m"}}, source="alone.toml")
    alone: list[float] = []
    with Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 24) as outbox:
        agent = Agent(config, [], outbox=outbox, clock=SystemClock(), boot_id="alone")
        agent.slots.every("alone", 0.3, lambda: alone.append(time.monotonic()), slack=0.0)
        agent.run(duration=3.0)
    assert 8 <= len(alone) <= 11, len(alone)
    assert max(b - a for a, b in itertools.pairwise(alone)) < 0.5
    assert agent.slots.wakeups <= len(alone) + 1


def test_an_urgent_commit_wakes_a_runner_at_once(tmp_path: Path) -> None:
    """An alert's commit does not wait for the commit interval (here 5 min)."""
    config = parse_config({"unit": {"id": "slots-2", "site": "roof"},
                           "storage": {"commit_interval": "5m"}}, source="urgent.toml")
    clock = SystemClock()
    committed: list[tuple[bool, float]] = []
    with Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 24) as outbox:
        agent = Agent(config, [], outbox=outbox, clock=clock, boot_id="urgent")
        agent.on_commit = lambda urgent: committed.append((urgent, time.monotonic()))
        agent.start()
        asked = time.monotonic()
        agent.submit([Reading("alerts", "alert_x", 1.0, "state", 1, 1, "urgent", True)],
                     urgent=True)
        deadline = asked + 5.0
        while not committed:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        agent.request_stop()
        agent.run(duration=0)
        assert outbox.stats().backlog == 1
    assert committed[0][0] is True and committed[0][1] - asked < 1.0


def test_the_service_runs_no_timer_threads_of_its_own(tmp_path: Path) -> None:
    from agent.runtime.notify import Notifier
    from agent.runtime.service import Service

    agent, _, outbox = station(tmp_path)
    names: set[str] = set()

    def look() -> None:
        names.update(t.name for t in threading.enumerate())

    with outbox:
        service = Service(agent.config.with_storage_path(tmp_path), agent, outbox, (),
                          clock=agent.clock, notifier=Notifier({}))
        agent.slots.every("look", 0.5, look, slack=1.0)
        service.run(duration=3.0)
    assert "scheduler" in names
    assert not names & {"watchdog", "health"}, names


def test_a_sample_longer_than_its_interval_is_not_triggered_again_mid_sample(
    tmp_path: Path,
) -> None:
    """An ADS1115 at 8 SPS averaging 4 reads of two inputs needs 1 s of conversions per sample:
    the other runner's next slot must not start a new sample over the one converting."""
    config = parse_config({
        "unit": {"id": "slots-4", "site": "roof"},
        "storage": {"commit_interval": "1s"},
        "sensor": [{"id": "probe", "driver": "ads1115", "address": 0x48, "interval": "1s",
                    "data_rate": 8, "average": 4, "channel0_quantity": "a0",
                    "channel1_quantity": "a1"}],
    }, source="slow.toml")
    clock = SystemClock()
    world = build_world([(s.bus, s.address, s.driver, s.id) for s in config.sensors],
                        clock=clock, environment=Environment())
    with Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 24) as outbox:
        agent = Agent(config, make_drivers(config, world, clock, DRIVERS), outbox=outbox,
                      clock=clock, boot_id="slow")
        agent.start()
        agent.wait_for_setup(10.0)
        agent.run(duration=6.0)
        stored = [s.reading for s in outbox.take(10_000)]
    (probe,) = agent.workers
    assert probe.health.errors == 0, probe.health.last_error
    samples = {r.time_ns for r in stored if r.quantity == "a0"}
    assert len(samples) >= 2
    # each sample whole: both inputs, stamped once, on a slot
    assert samples == {r.time_ns for r in stored if r.quantity == "a1"}
    assert max(t % NS for t in samples) < NS // 10
