"""A sensor's processing settings as values: each quantity's calibration and plausible limits,
and the built-in physical ranges. The config builds them; agent.sampling.processing applies them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

AVERAGE_RANGE = (1, 100)
POLYNOMIAL_TERMS = (2, 6)  # c0 .. c5; c0 alone would replace every value by a constant
STUCK_AFTER_MIN = 2  # one value alone is never "the same value in a row"

PHYSICAL_RANGES: Mapping[str, tuple[float, float]] = MappingProxyType({
    "temperature": (-40.0, 85.0),  # °C, the operating range of common air sensors (BME280, SHT4x)
    "humidity": (0.0, 100.0),  # %RH
    "pressure": (300.0, 1100.0),  # hPa, BME280/BMP280 operating range (datasheet 1.1)
    "co2": (0.0, 40_000.0),  # ppm, SCD4x output range
    "illuminance": (0.0, 150_000.0),  # lx, above full summer sunlight (~120 klx)
    "pm1": (0.0, 1000.0),  # µg/m³, the measuring range of PMS5003 / SPS30
    "pm2_5": (0.0, 1000.0),
    "pm4": (0.0, 1000.0),
    "pm10": (0.0, 1000.0),
    "voc_index": (1.0, 500.0),  # Sensirion SGP4x index scale
    "nox_index": (1.0, 500.0),
    "soil_moisture": (0.0, 100.0),  # % volumetric water content
})


@dataclass(frozen=True, slots=True)
class Calibration:
    """``value = raw · scale + offset``, or ``value = c0 + c1·raw + c2·raw² + ...``.

    ``id`` names the calibration record and travels with every reading it was applied to.
    """

    id: str
    offset: float = 0.0
    scale: float = 1.0
    polynomial: tuple[float, ...] | None = None

    def apply(self, raw: float) -> float:
        if self.polynomial is None:
            return raw * self.scale + self.offset
        value = 0.0
        for coefficient in reversed(self.polynomial):  # Horner
            value = value * raw + coefficient
        return value

    def invert(self, value: float) -> float:
        """The raw value of a linear calibration; a polynomial needs upstream's root search."""
        if self.polynomial is not None:
            raise ValueError(f"calibration {self.id!r} is a polynomial; solve it for the root")
        return (value - self.offset) / self.scale


@dataclass(frozen=True, slots=True)
class Plausible:
    """Limits for one quantity; None means the built-in range (min/max) or no check."""

    min: float | None = None
    max: float | None = None
    spike: float | None = None  # largest plausible change between consecutive readings
    stuck_after: int | None = None  # this many identical readings in a row are STUCK

    def resolved(self, quantity: str) -> Plausible:
        """These limits with the built-in range filled in where none was given."""
        low, high = PHYSICAL_RANGES.get(quantity, (None, None))
        return Plausible(
            low if self.min is None else self.min,
            high if self.max is None else self.max,
            self.spike,
            self.stuck_after,
        )
