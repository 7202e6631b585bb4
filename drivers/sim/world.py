"""Build the simulated hardware for a configuration: one SimBus per bus, one model per sensor.

``MODELS`` maps a driver name (as in the ``[[sensor]]`` tables of the config) to a model factory.
A factory is called as ``factory(clock=clock, source=source)`` and returns a
:class:`~drivers.sim.simbus.SimDevice`; registering a new chip is one line here.

A placement with a ``mux`` address and a ``channel`` puts its model behind that channel of a
simulated TCA9548A, created at the mux address on first use; a placement of the ``tca9548a``
itself puts a multiplexer there even with nothing behind it (a wiring file, drivers.sim.wiring).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from drivers.clock import Clock
from drivers.sim.ads1115 import world_model as ads1115_world_model
from drivers.sim.bh1750 import BH1750Model
from drivers.sim.bme280 import BME280Model, BMP280Model
from drivers.sim.environment import Environment
from drivers.sim.pmsa003i import PMSA003IModel
from drivers.sim.scd4x import SCD4xModel
from drivers.sim.sht import SHT3xModel, SHT4xModel
from drivers.sim.simbus import LOG_LENGTH, SimBus, SimDevice
from drivers.sim.tca9548a import TCA9548AModel


class Placement(NamedTuple):
    """Where one configured sensor sits; a plain (bus, address, driver, sensor id) tuple works
    too, for a sensor on the bus itself."""

    bus: int
    address: int
    driver: str
    sensor_id: str
    mux: int | None = None  # the TCA9548A's address, with ``channel``
    channel: int | None = None


MODELS: dict[str, Callable[..., SimDevice]] = {
    "bme280": BME280Model,
    "bmp280": BMP280Model,
    "bh1750": BH1750Model,
    "ads1115": ads1115_world_model,
    "pmsa003i": PMSA003IModel.running,
    "sht3x": SHT3xModel, "sht4x": SHT4xModel, "scd4x": SCD4xModel,
}
MUX = "tca9548a"  # the multiplexer's name in placements: it has no driver of its own


def build_world(
    placements: Iterable[Placement | tuple[int, int, str, str]],
    *,
    clock: Clock,
    environment: Environment,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    log_length: int = LOG_LENGTH,
    buses: Iterable[int] = (),
) -> dict[int, SimBus]:
    """Bus number -> SimBus with a model at every placement, each seeing ``environment`` through
    its own small per-sensor offsets (so two simulated sensors never read identically).

    ``options`` (sensor id -> driver options) reaches the factories that take an ``options``
    argument: the ADS1115's wiring depends on which probe each channel carries. ``log_length``:
    how many transactions each bus keeps for ``SimBus.transactions`` (0: none, for a daemon).
    ``buses``: bus numbers that exist even with nothing on them, as /dev/i2c-1 does."""
    world = {number: SimBus(number, clock=clock, log_length=log_length) for number in buses}
    muxes: dict[tuple[int, int], TCA9548AModel] = {}

    def mux_at(bus: SimBus, address: int) -> TCA9548AModel:
        mux = muxes.get((bus.number, address))
        if mux is None:
            mux = muxes[(bus.number, address)] = TCA9548AModel()
            bus.attach_mux(address, mux)
        return mux

    for placement in placements:
        bus_number, address, driver, sensor_id, mux_address, channel = Placement(*placement)
        bus = world.get(bus_number)
        if bus is None:
            bus = world[bus_number] = SimBus(bus_number, clock=clock, log_length=log_length)
        if driver == MUX:
            mux_at(bus, address)
            continue
        factory = MODELS.get(driver)
        if factory is None:
            known = ", ".join(sorted(MODELS))
            raise KeyError(
                f"no simulated model for driver {driver!r} (sensor {sensor_id!r} at "
                f"{bus_number}:0x{address:02x}); simulated drivers: {known}"
            )
        extra = {}
        if options is not None and sensor_id in options and _takes_options(factory):
            extra = {"options": options[sensor_id]}
        model = factory(clock=clock, source=environment.source_for(sensor_id), **extra)
        if mux_address is None or channel is None:
            bus.attach(address, model)
        else:
            mux_at(bus, mux_address).attach(channel, address, model)
    return world


def _takes_options(factory: Callable[..., SimDevice]) -> bool:
    try:
        return "options" in inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin or C callable without a signature
        return False
