"""The simulated I2C world: used by the test suite and by ``envagent --simulate``.

A :class:`SimBus` stands in for ``/dev/i2c-N``; chip models (:class:`BME280Model`, ...) sit at its
addresses and follow their data sheets; an :class:`Environment` supplies plausible weather; and
:func:`build_world` wires all of it from the configured sensor placements.
"""

from drivers.sim.bme280 import BME280Model, BMP280Model, Calibration
from drivers.sim.clock import FakeClock
from drivers.sim.environment import Conditions, Environment, Offsets, Source
from drivers.sim.simbus import (
    BusIOError,
    Fault,
    Garbage,
    Nack,
    SimBus,
    SimDevice,
    Stuck,
    Timeout,
    Transaction,
)
from drivers.sim.world import MODELS, Placement, build_world

__all__ = [
    "MODELS",
    "BME280Model",
    "BMP280Model",
    "BusIOError",
    "Calibration",
    "Conditions",
    "Environment",
    "FakeClock",
    "Fault",
    "Garbage",
    "Nack",
    "Offsets",
    "Placement",
    "SimBus",
    "SimDevice",
    "Source",
    "Stuck",
    "Timeout",
    "Transaction",
    "build_world",
]
