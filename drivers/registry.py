"""Every driver by its config name, and the chip identifiers `envagent scan` uses."""

from __future__ import annotations

from drivers import bme280
from drivers.base import Driver
from drivers.scan import Identifier

DRIVERS: dict[str, type[Driver]] = {cls.name: cls for cls in (bme280.BME280,)}

IDENTIFIERS: list[Identifier] = [bme280.identify]
