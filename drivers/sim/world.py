"""Build the simulated hardware for a configuration: one SimBus per bus, one model per sensor.

``MODELS`` maps a driver name (as in the ``[[sensor]]`` tables of the config) to a model factory.
A factory is called as ``factory(clock=clock, source=source)`` and returns a
:class:`~drivers.sim.simbus.SimDevice`; registering a new chip is one line here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from drivers.clock import Clock
from drivers.sim.bme280 import BME280Model, BMP280Model
from drivers.sim.environment import Environment
from drivers.sim.simbus import SimBus, SimDevice

Placement = tuple[int, int, str, str]
"""(bus number, address, driver name, sensor id), one per configured sensor."""

MODELS: dict[str, Callable[..., SimDevice]] = {
    "bme280": BME280Model,
    "bmp280": BMP280Model,
}


def build_world(
    placements: Iterable[Placement], *, clock: Clock, environment: Environment
) -> dict[int, SimBus]:
    """Bus number -> SimBus with a model at every placement, each seeing ``environment`` through
    its own small per-sensor offsets (so two simulated sensors never read identically)."""
    buses: dict[int, SimBus] = {}
    for bus_number, address, driver, sensor_id in placements:
        factory = MODELS.get(driver)
        if factory is None:
            known = ", ".join(sorted(MODELS))
            raise KeyError(
                f"no simulated model for driver {driver!r} (sensor {sensor_id!r} at "
                f"{bus_number}:0x{address:02x}); simulated drivers: {known}"
            )
        bus = buses.get(bus_number)
        if bus is None:
            bus = buses[bus_number] = SimBus(bus_number, clock=clock)
        bus.attach(address, factory(clock=clock, source=environment.source_for(sensor_id)))
    return buses
