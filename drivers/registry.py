"""Every driver by its config name, and the chip identifiers `envagent scan` uses."""

from __future__ import annotations

from drivers import ads1115, bh1750, bme280, bmp280, pmsa003i, scd4x, sht3x, sht4x
from drivers.base import Driver
from drivers.scan import Identifier

DRIVERS: dict[str, type[Driver]] = {cls.name: cls for cls in (bme280.BME280, bmp280.BMP280)}
DRIVERS |= {cls.name: cls for cls in (bh1750.BH1750, ads1115.ADS1115, pmsa003i.PMSA003I)}
DRIVERS |= {cls.name: cls for cls in (sht3x.SHT3x, sht4x.SHT4x, scd4x.SCD4x)}

IDENTIFIERS: list[Identifier] = [bme280.identify]
IDENTIFIERS += [bh1750.identify, ads1115.identify, pmsa003i.identify]
IDENTIFIERS += [sht4x.identify, sht3x.identify, scd4x.identify]
