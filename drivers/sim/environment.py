"""Plausible weather as a pure function of wall time, for the simulated sensors.

:class:`Environment` has no hidden state: ``conditions(t)`` depends only on the seed, the site and
``t``, so any order of queries (a test jumping days ahead, two sensors sampling at different
rates) gives the same answer. The numbers are a rough temperate climate, not climatology; they are
there so dashboards and quality checks see a diurnal cycle, weather fronts and nights near
saturation instead of constants.

Adding a quantity (illuminance, CO2, PM, soil moisture): give :class:`Conditions` and
:class:`Offsets` a field with a default, compute it in a ``_name(t)`` method and call it from
``conditions``. Draw its randomness from ``_Wander.seeded(self.seed, "name", ...)`` so that the
existing quantities keep their values for a given seed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field, replace

SECONDS_PER_HOUR = 3600.0
SECONDS_PER_DAY = 86_400.0
DAYS_PER_YEAR = 365.2422  # mean tropical year
_DEGREES_PER_HOUR = 15.0  # the Earth turns 360 degrees in 24 h: mean local solar time

# --- temperature (all in °C or K) ---------------------------------------------------------------
# Rough fit of annual mean and seasonal half-range to latitude, over land, at sea level.
_EQUATOR_MEAN_C = 28.0
_MEAN_DROP_PER_DEGREE_LATITUDE = 0.32
_SEASON_HALF_RANGE_PER_DEGREE_LATITUDE = 0.25
_DEFAULT_LATITUDE = 45.0  # a temperate site when none is given
_WARMEST_DAY_OF_YEAR = 200.0  # mid-July: the seasonal lag is about four weeks after the solstice
_SITE_MEAN_SPREAD_C = 2.0  # seeded: two seeds are two different sites
_DIURNAL_HALF_RANGE_C = 4.0
_WARMEST_SOLAR_HOUR = 15.0  # the daily maximum lags solar noon by about three hours
# ICAO standard atmosphere (ISO 2533): temperature falls 6.5 K per km in the troposphere.
_LAPSE_RATE_K_PER_M = 0.0065

# --- humidity -----------------------------------------------------------------------------------
# Dew point sits below the daily mean temperature and does not follow the diurnal cycle, so RH
# falls through the afternoon and nights come close to saturation.
_MEAN_DEW_POINT_DEPRESSION_C = 6.0
_MIN_DEW_POINT_DEPRESSION_C = 0.5
# Magnus formula over water, WMO-No. 8 (2008) Annex 4.B (Sonntag 1990): e_s = 6.112 hPa ·
# exp(17.62·t / (243.12 °C + t)).
_MAGNUS_E0_HPA = 6.112
_MAGNUS_B = 17.62
_MAGNUS_C_DEGC = 243.12

# --- pressure -----------------------------------------------------------------------------------
# ISO 2533 standard atmosphere: sea-level pressure and temperature, and the barometric exponent
# g·M/(R·L) = 9.80665 · 0.0289644 / (8.3144598 · 0.0065) for the troposphere.
_SEA_LEVEL_HPA = 1013.25
_SEA_LEVEL_K = 288.15
_BAROMETRIC_EXPONENT = 5.25588
# The solar semidiurnal atmospheric tide: about 0.5-1 hPa, maxima near 10:00 and 22:00 local time.
_TIDE_HALF_RANGE_HPA = 0.6
_TIDE_PEAK_SOLAR_HOUR = 10.0
_TIDE_PERIOD_HOURS = 12.0

# --- per-sensor offsets (about half a BME280's absolute accuracy, datasheet table 1-3) -----------
_OFFSET_TEMPERATURE_C = 0.3
_OFFSET_HUMIDITY_RH = 1.5
_OFFSET_PRESSURE_HPA = 0.3

_RH_MIN = 0.0
_RH_MAX = 100.0


@dataclass(frozen=True, slots=True)
class Conditions:
    """What the air is like at one instant, in the units the models take."""

    temperature: float  # °C
    humidity: float  # %RH, 0-100
    pressure: float  # hPa, station pressure (not reduced to sea level)


@dataclass(frozen=True, slots=True)
class Offsets:
    """A sensor's own small, constant deviation, so two simulated sensors never agree exactly."""

    temperature: float = 0.0
    humidity: float = 0.0
    pressure: float = 0.0

    def apply(self, conditions: Conditions) -> Conditions:
        return replace(
            conditions,
            temperature=conditions.temperature + self.temperature,
            humidity=_clamp(conditions.humidity + self.humidity, _RH_MIN, _RH_MAX),
            pressure=conditions.pressure + self.pressure,
        )


Source = Callable[[float], Conditions]
"""What a sensor model samples: wall time (seconds since the epoch) -> conditions."""


_PERIOD_JITTER = 0.2  # ±20 %: two seeds do not share their weather rhythm


@dataclass(frozen=True)
class _Wander:
    """A sum of sines with incommensurate periods: smooth and never visibly periodic."""

    terms: tuple[tuple[float, float, float], ...]  # (half-range, period in s, phase in rad)

    @classmethod
    def seeded(cls, seed: int, name: str, spec: tuple[tuple[float, float], ...]) -> _Wander:
        """``spec`` is (half-range, period in days) pairs; periods get a seeded jitter."""
        rng = random.Random(f"{seed}:{name}")
        terms = []
        for amplitude, days in spec:
            period = days * SECONDS_PER_DAY * rng.uniform(1 - _PERIOD_JITTER, 1 + _PERIOD_JITTER)
            terms.append((amplitude, period, rng.uniform(0, math.tau)))
        return cls(tuple(terms))

    def __call__(self, t: float) -> float:
        return sum(a * math.sin(math.tau * t / period + phase) for a, period, phase in self.terms)


# Weather systems pass every few days; a slower term moves whole weeks warmer or colder.
_WEATHER_TEMPERATURE = ((2.0, 4.3), (1.2, 9.7), (0.6, 1.3))
_WEATHER_DEW_DEPRESSION = ((1.5, 3.7), (1.0, 11.0))
_WEATHER_PRESSURE = ((5.0, 5.3), (2.5, 2.1), (1.0, 13.0))  # hPa at sea level


@dataclass(frozen=True)
class _SiteClimate:
    mean_c: float
    season_half_range_c: float
    season_phase_days: float


@dataclass(frozen=True)
class Environment:
    """Seeded weather at one site; ``conditions(t)`` is a pure function of wall time.

    Frozen, so nothing can change the weather behind a running model's back; two environments
    with the same arguments are equal and give the same conditions.
    """

    seed: int = 0
    _: KW_ONLY
    latitude: float | None = None
    longitude: float | None = None
    elevation_m: float = 0.0
    _climate: _SiteClimate = field(init=False, repr=False, compare=False)
    _weather_t: _Wander = field(init=False, repr=False, compare=False)
    _weather_dew: _Wander = field(init=False, repr=False, compare=False)
    _weather_p: _Wander = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.latitude is not None and not -90.0 <= self.latitude <= 90.0:
            raise ValueError(f"latitude {self.latitude} is outside -90..90 degrees")
        if self.longitude is not None and not -180.0 <= self.longitude <= 180.0:
            raise ValueError(f"longitude {self.longitude} is outside -180..180 degrees")
        derived = {
            "_climate": self._site_climate(),
            "_weather_t": _Wander.seeded(self.seed, "temperature", _WEATHER_TEMPERATURE),
            "_weather_dew": _Wander.seeded(self.seed, "dew_point", _WEATHER_DEW_DEPRESSION),
            "_weather_p": _Wander.seeded(self.seed, "pressure", _WEATHER_PRESSURE),
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)  # frozen: derived once, here

    def conditions(self, wall_time: float) -> Conditions:
        background = self._background_temperature(wall_time)
        temperature = background + self._diurnal(wall_time)
        dew_point = background - max(
            _MIN_DEW_POINT_DEPRESSION_C, _MEAN_DEW_POINT_DEPRESSION_C + self._weather_dew(wall_time)
        )
        return Conditions(
            temperature=temperature,
            humidity=relative_humidity(temperature, dew_point),
            pressure=self._pressure(wall_time),
        )

    def offset_for(self, key: str) -> Offsets:
        """Deterministic small offsets for the sensor called ``key`` (same seed, same offsets)."""
        rng = random.Random(f"{self.seed}:offset:{key}")
        return Offsets(
            temperature=rng.uniform(-_OFFSET_TEMPERATURE_C, _OFFSET_TEMPERATURE_C),
            humidity=rng.uniform(-_OFFSET_HUMIDITY_RH, _OFFSET_HUMIDITY_RH),
            pressure=rng.uniform(-_OFFSET_PRESSURE_HPA, _OFFSET_PRESSURE_HPA),
        )

    def source_for(self, key: str) -> Source:
        """The conditions the sensor called ``key`` sees: the site's, plus its own offsets."""
        return _SensorSource(self, self.offset_for(key))

    # --- components -----------------------------------------------------------------------------

    def _site_climate(self) -> _SiteClimate:
        latitude = _DEFAULT_LATITUDE if self.latitude is None else self.latitude
        rng = random.Random(f"{self.seed}:site")
        mean = (
            _EQUATOR_MEAN_C
            - _MEAN_DROP_PER_DEGREE_LATITUDE * abs(latitude)
            - _LAPSE_RATE_K_PER_M * self.elevation_m
            + rng.uniform(-_SITE_MEAN_SPREAD_C, _SITE_MEAN_SPREAD_C)
        )
        # The southern hemisphere has its summer half a year later.
        phase = _WARMEST_DAY_OF_YEAR + (DAYS_PER_YEAR / 2 if latitude < 0 else 0.0)
        return _SiteClimate(mean, _SEASON_HALF_RANGE_PER_DEGREE_LATITUDE * abs(latitude), phase)

    def _solar_hour(self, wall_time: float) -> float:
        """Mean local solar time in hours (0-24), from UTC and the longitude."""
        longitude = self.longitude or 0.0
        return (wall_time / SECONDS_PER_HOUR + longitude / _DEGREES_PER_HOUR) % 24.0

    def _background_temperature(self, wall_time: float) -> float:
        """Daily-mean temperature: site mean, season and passing weather, no diurnal cycle."""
        climate = self._climate
        day_of_year = (wall_time / SECONDS_PER_DAY) % DAYS_PER_YEAR
        season = climate.season_half_range_c * math.cos(
            math.tau * (day_of_year - climate.season_phase_days) / DAYS_PER_YEAR
        )
        return climate.mean_c + season + self._weather_t(wall_time)

    def _diurnal(self, wall_time: float) -> float:
        hour = self._solar_hour(wall_time)
        return _DIURNAL_HALF_RANGE_C * math.cos(math.tau * (hour - _WARMEST_SOLAR_HOUR) / 24.0)

    def _pressure(self, wall_time: float) -> float:
        station = station_pressure(self.elevation_m)
        scale = station / _SEA_LEVEL_HPA  # weather moves pressure in proportion at altitude
        hour = self._solar_hour(wall_time)
        tide = _TIDE_HALF_RANGE_HPA * math.cos(
            math.tau * (hour - _TIDE_PEAK_SOLAR_HOUR) / _TIDE_PERIOD_HOURS
        )
        return station + scale * (self._weather_p(wall_time) + tide)


@dataclass(frozen=True)
class _SensorSource:
    environment: Environment
    offsets: Offsets

    def __call__(self, wall_time: float) -> Conditions:
        return self.offsets.apply(self.environment.conditions(wall_time))


def station_pressure(elevation_m: float) -> float:
    """Standard-atmosphere pressure in hPa at ``elevation_m`` (ISO 2533 barometric formula)."""
    ratio = 1.0 - _LAPSE_RATE_K_PER_M * elevation_m / _SEA_LEVEL_K
    return _SEA_LEVEL_HPA * ratio**_BAROMETRIC_EXPONENT


def saturation_vapour_pressure(temperature: float) -> float:
    """hPa over water at ``temperature`` °C (Magnus formula, WMO-No. 8 Annex 4.B)."""
    return _MAGNUS_E0_HPA * math.exp(_MAGNUS_B * temperature / (_MAGNUS_C_DEGC + temperature))


def relative_humidity(temperature: float, dew_point: float) -> float:
    """%RH of air at ``temperature`` whose dew point is ``dew_point`` (both °C), clamped 0-100."""
    ratio = saturation_vapour_pressure(dew_point) / saturation_vapour_pressure(temperature)
    return _clamp(100.0 * ratio, _RH_MIN, _RH_MAX)


def _clamp(value: float, low: float, high: float) -> float:
    return min(high, max(low, value))
