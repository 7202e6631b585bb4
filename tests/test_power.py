"""A latched-up sensor is power-cycled through its load switch and comes back."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from gpiozero.pins.mock import MockFactory, MockPin

from agent.config import parse_config
from agent.core.reading import Reading
from agent.sampling.power import PowerSwitch
from agent.sampling.sampler import SensorWorker, State
from agent.sampling.scheduler import Slots
from drivers.bme280 import BME280
from drivers.sim.bme280 import BME280Model
from drivers.sim.clock import FakeClock
from drivers.sim.simbus import SimBus

ADDRESS = 0x76
PIN = 17
CONFIG = parse_config(
    {"unit": {"id": "u1", "site": "roof"},
     "sensor": [{"id": "air", "driver": "bme280", "address": ADDRESS, "interval": "10s"}]},
    source="test.toml",
)


class LoadSwitchPin(MockPin):
    """A GPIO driving a sensor's load switch: a falling edge cuts the sensor's supply."""

    on_power_off: Callable[[], None] = staticmethod(lambda: None)

    def _change_state(self, value: bool) -> bool:
        changed: bool = super()._change_state(value)
        if changed and not value:
            self.on_power_off()
        return changed


def test_a_failed_sensor_is_power_cycled_and_recovers() -> None:
    clock = FakeClock()
    bus = SimBus(1, clock=clock)
    model = BME280Model(clock=clock, temperature=7.5)
    bus.attach(ADDRESS, model)
    factory = MockFactory()
    pin = factory.pin(PIN, pin_class=LoadSwitchPin)

    def power_cut() -> None:  # the latch-up clears at power-on reset
        bus.reappear(ADDRESS)
        model.power_on_reset()

    pin.on_power_off = power_cut  # type: ignore[attr-defined]
    switch = PowerSwitch(PIN, clock=clock, pin_factory=factory)
    batches: list[list[Reading]] = []
    stop = threading.Event()

    def deliver(readings: list[Reading]) -> None:
        batches.append(readings)
        stop.set()

    worker = SensorWorker(CONFIG.sensors[0], BME280(bus, ADDRESS, clock=clock), clock=clock,
                          deliver=deliver, boot_id="b", stop=stop, power=switch)
    bus.vanish(ADDRESS)  # latched up: answers nothing until its supply is removed
    # its own thread's loop, where a failed sensor is re-probed (no runner takes it back)
    slots = Slots([worker], clock, stop, own=lambda sensor: None)
    give_up = threading.Timer(10.0, stop.set)  # a regression fails instead of hanging
    give_up.start()
    worker.run_own(slots)
    give_up.cancel()
    assert switch.cycles == 1
    assert [s.state for s in pin.states] == [False, True, False, True]  # init, on, off, on
    assert worker.health.state is State.OK
    temperature = next(r for r in batches[0] if r.quantity == "temperature")
    assert abs(temperature.value - 7.5) < 0.01
    switch.close()


def test_run_with_a_power_pin_starts_and_stops_cleanly(tmp_path: Path) -> None:
    config = tmp_path / "power.toml"
    config.write_text(
        '[unit]\nid = "p-1"\nsite = "roof"\n[storage]\ncommit_interval = "1s"\n'
        '[[sensor]]\nid = "air"\ndriver = "bme280"\naddress = 0x76\ninterval = "1s"\n'
        "power_pin = 17\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "agent", "run", "--simulate", "--config", str(config),
         "--data-dir", str(tmp_path / "d"), "--duration", "2.5"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert result.returncode == 0, result.stderr
    assert "(power_pin) unavailable" not in result.stderr  # the GPIO was claimed
