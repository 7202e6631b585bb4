"""The simulated I2C world: used by the test suite and by ``envagent --simulate``.

A :class:`SimBus` stands in for ``/dev/i2c-N``; chip models (:class:`BME280Model`, ...) sit at its
addresses and follow their data sheets, a :class:`TCA9548AModel` multiplexer lends the bus the
models on its channels; an :class:`Environment` supplies plausible weather; and
:func:`build_world` wires all of it from the configured sensor placements.
"""

from drivers.sim.ads1115 import ADS1115Model
from drivers.sim.bh1750 import BH1750Model
from drivers.sim.bme280 import BME280Model, BMP280Model, Calibration
from drivers.sim.clock import FakeClock
from drivers.sim.environment import Conditions, Environment, Offsets, Source
from drivers.sim.pmsa003i import PMSA003IModel
from drivers.sim.scd4x import SCD4xModel
from drivers.sim.sht import SHT3xModel, SHT4xModel
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
from drivers.sim.tca9548a import TCA9548AModel
from drivers.sim.world import MODELS, Placement, build_world

__all__ = [
    "MODELS",
    "ADS1115Model",
    "BH1750Model",
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
    "PMSA003IModel",
    "Placement",
    "SCD4xModel",
    "SHT3xModel",
    "SHT4xModel",
    "SimBus",
    "SimDevice",
    "Source",
    "Stuck",
    "TCA9548AModel",
    "Timeout",
    "Transaction",
    "build_world",
]
