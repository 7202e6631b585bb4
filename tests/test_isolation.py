"""One hung or slow sensor never delays the others: their samples stay on their slots."""

from __future__ import annotations

from pathlib import Path

from agent.config import parse_config
from agent.sampling.daemon import Agent, make_drivers
from agent.sampling.sampler import State
from agent.store.outbox import Outbox
from drivers.clock import SystemClock
from drivers.registry import DRIVERS
from drivers.sim.environment import Environment
from drivers.sim.simbus import Timeout
from drivers.sim.world import build_world

INTERVAL_NS = 1_000_000_000


def sensor(sid: str, driver: str, bus: int, address: int) -> dict[str, object]:
    return {"id": sid, "driver": driver, "bus": bus, "address": address, "interval": "1s"}


def test_hung_and_slow_sensors_do_not_move_the_others(tmp_path: Path) -> None:
    config = parse_config({
        "unit": {"id": "iso-1", "site": "roof"},
        "storage": {"commit_interval": "1s"},
        "sensor": [
            sensor("hung", "bme280", 2, 0x76),  # its bus hangs in every transfer
            sensor("slow", "bme280", 1, 0x77),  # measuring bit stuck: waits out its deadline
            sensor("air", "bme280", 1, 0x76),
            sensor("humid", "sht4x", 1, 0x44),
        ],
    }, source="iso.toml")
    clock = SystemClock()
    world = build_world([(s.bus, s.address, s.driver, s.id) for s in config.sensors],
                        clock=clock, environment=Environment())
    world[2].inject(0x76, Timeout(count=None, duration=3600.0))
    world[1].devices[0x77].stuck_measuring = True  # type: ignore[attr-defined]
    with Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 24) as outbox:
        agent = Agent(config, make_drivers(config, world, clock, DRIVERS), outbox=outbox,
                      clock=clock, boot_id="iso")
        agent.run(duration=6.5)
        stored = [s.reading for s in outbox.take(10_000)]
    by_sensor = {w.sensor.id: w for w in agent.workers}
    assert by_sensor["hung"].busy_since is not None  # still stuck in its setup
    assert by_sensor["slow"].health.state in (State.WARNING, State.FAILED)
    for sid in ("air", "humid"):
        times = sorted({r.time_ns for r in stored if r.sensor == sid})
        assert len(times) >= 4, (sid, len(times))
        late = [t % INTERVAL_NS for t in times]
        assert max(late) < INTERVAL_NS // 10, (sid, late)  # within 10 % of the interval
    assert not [r for r in stored if r.sensor in ("hung", "slow")]
