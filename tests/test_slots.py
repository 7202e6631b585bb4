"""One scheduler thread: per slot, trigger all, wait once, collect all; a sensor that overruns
moves to a thread of its own and comes back once it behaves."""

from __future__ import annotations

import time
from pathlib import Path

from agent.config import parse_config
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
