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

import functools
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

# --- CO2 ----------------------------------------------------------------------------------------
# Background near the global mean of the mid-2020s (NOAA GML, ~420-425 ppm). Over vegetation,
# night-time respiration under a shallow, stable boundary layer adds tens of ppm that photosynthesis
# and daytime mixing remove: highest around dawn, lowest in the afternoon.
_CO2_BACKGROUND_PPM = 420.0
_CO2_DIURNAL_HALF_RANGE_PPM = 20.0
_CO2_PEAK_SOLAR_HOUR = 5.0
_WEATHER_CO2 = ((8.0, 3.3), (4.0, 11.0))  # ppm, days: air masses of different origin

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
    illuminance: float = 0.0  # lx, horizontal, outdoors
    pm1: float = 0.0  # µg/m³, particulate matter < 1 µm
    pm2_5: float = 0.0  # µg/m³, < 2.5 µm
    pm10: float = 0.0  # µg/m³, < 10 µm
    soil_moisture: float = 0.0  # % volumetric water content
    water_level: float = 0.0  # m above the gauge's zero
    co2: float = 420.0  # ppm, dry-air mole fraction


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


_RECENT_SECONDS = 16  # whole seconds of conditions kept; sensors sample within one or two
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
    _recent: dict[int, Conditions] = field(init=False, repr=False, compare=False)

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
            "_recent": {},
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)  # frozen: derived once, here

    def conditions(self, wall_time: float) -> Conditions:
        """The conditions in the whole second holding ``wall_time``: weather needs no finer
        resolution, and every sensor sampled in that second shares one computation."""
        second = math.floor(wall_time)
        found = self._recent.get(second)
        if found is None:
            if len(self._recent) >= _RECENT_SECONDS:
                self._recent.clear()
            found = self._recent[second] = self._compute(float(second))
        return found

    def _compute(self, wall_time: float) -> Conditions:
        background = self._background_temperature(wall_time)
        temperature = background + self._diurnal(wall_time)
        dew_point = background - max(
            _MIN_DEW_POINT_DEPRESSION_C, _MEAN_DEW_POINT_DEPRESSION_C + self._weather_dew(wall_time)
        )
        return Conditions(
            temperature=temperature,
            humidity=relative_humidity(temperature, dew_point),
            pressure=self._pressure(wall_time),
            illuminance=self._illuminance(wall_time),
            **self._particulates(wall_time),
            **self._hydrology(wall_time),
            co2=self._co2(wall_time),
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

    def _co2(self, wall_time: float) -> float:
        """ppm: background, a night-time high over vegetation, and passing weather."""
        hour = self._solar_hour(wall_time)
        diurnal = _CO2_DIURNAL_HALF_RANGE_PPM * math.cos(
            math.tau * (hour - _CO2_PEAK_SOLAR_HOUR) / 24.0
        )
        return _CO2_BACKGROUND_PPM + diurnal + _wander(self.seed, "co2", _WEATHER_CO2)(wall_time)

    def _pressure(self, wall_time: float) -> float:
        station = station_pressure(self.elevation_m)
        scale = station / _SEA_LEVEL_HPA  # weather moves pressure in proportion at altitude
        hour = self._solar_hour(wall_time)
        tide = _TIDE_HALF_RANGE_HPA * math.cos(
            math.tau * (hour - _TIDE_PEAK_SOLAR_HOUR) / _TIDE_PERIOD_HOURS
        )
        return station + scale * (self._weather_p(wall_time) + tide)

    def _illuminance(self, wall_time: float) -> float:
        """Clear-sky daylight from the sun's elevation, dimmed by seeded clouds; 0 at night."""
        latitude = math.radians(_DEFAULT_LATITUDE if self.latitude is None else self.latitude)
        day_of_year = (wall_time / SECONDS_PER_DAY) % DAYS_PER_YEAR
        declination = math.radians(_MAX_DECLINATION_DEG) * math.sin(
            math.tau * (_DECLINATION_DAY_OFFSET + day_of_year) / DAYS_PER_YEAR
        )
        hour_angle = math.radians(_DEGREES_PER_HOUR * (self._solar_hour(wall_time) - 12.0))
        sin_elevation = math.sin(latitude) * math.sin(declination) + math.cos(
            latitude
        ) * math.cos(declination) * math.cos(hour_angle)
        if sin_elevation <= 0.0:
            return 0.0
        clear = _SOLAR_LUX * sin_elevation * math.exp(-_EXTINCTION / sin_elevation)
        cloud = _clamp(0.5 + _wander(self.seed, "cloud", _WEATHER_CLOUD)(wall_time), 0.0, 1.0)
        return clear * (1.0 - _CLOUD_DIMMING * cloud**_CLOUD_EXPONENT)

    def _particulates(self, wall_time: float) -> dict[str, float]:
        """PM1 <= PM2.5 <= PM10 in µg/m³: a seeded site level, weather, rush-hour peaks."""
        rng = random.Random(f"{self.seed}:pm")
        level = rng.uniform(*_PM2_5_SITE_RANGE)
        weather = math.exp(_wander(self.seed, "pm", _WEATHER_PM)(wall_time))
        hour = self._solar_hour(wall_time)
        peaks = sum(
            height * math.exp(-0.5 * ((hour - peak) / width) ** 2)
            for peak, width, height in _PM_PEAKS
        )
        pm2_5 = level * weather * (1.0 + peaks)
        coarse = _PM10_RATIO + _wander(self.seed, "pm_coarse", _WEATHER_PM_COARSE)(wall_time)
        return {"pm1": pm2_5 * _PM1_RATIO, "pm2_5": pm2_5, "pm10": pm2_5 * max(1.0, coarse)}

    def _hydrology(self, wall_time: float) -> dict[str, float]:
        """Soil moisture and water level: seeded rain events, each decaying exponentially."""
        now_day = math.floor(wall_time / SECONDS_PER_DAY)
        wetting = rise = 0.0
        for day in range(now_day - _RAIN_MEMORY_DAYS, now_day + 1):
            for start, mm in _rain_events(self.seed, day):
                age = wall_time - start
                if age >= 0.0:
                    wetting += mm * math.exp(-age / _SOIL_DRYING_S)
                    rise += mm * math.exp(-age / _WATER_RECESSION_S)
        soil = _SOIL_DRY_PERCENT + _SOIL_PERCENT_PER_MM * wetting
        return {
            "soil_moisture": min(soil, _SOIL_SATURATED_PERCENT),
            "water_level": _WATER_BASE_M + _WATER_M_PER_MM * rise,
        }


class _SensorSource:
    """The site's conditions plus one sensor's offsets, applied once per second of weather."""

    def __init__(self, environment: Environment, offsets: Offsets) -> None:
        self.environment, self.offsets = environment, offsets
        self._last: tuple[Conditions, Conditions] | None = None  # (site's, this sensor's)

    def __call__(self, wall_time: float) -> Conditions:
        site = self.environment.conditions(wall_time)
        last = self._last
        if last is None or last[0] is not site:
            last = self._last = (site, self.offsets.apply(site))
        return last[1]


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


# --- light, particulates, soil and water (illuminance, pm*, soil_moisture, water_level) ---------
# Sun position: declination by Cooper (1969), δ = 23.44° · sin(360° · (284 + N) / 365).
_MAX_DECLINATION_DEG = 23.44
_DECLINATION_DAY_OFFSET = 284.0
# Clear-sky horizontal illuminance E = E0 · sin(h) · exp(-c / sin(h)): E0 is the extraterrestrial
# solar illuminance (~128 klx) and c a clear-atmosphere extinction chosen to give ~100 klx with the
# sun overhead -- a rough fit, not a radiative-transfer model.
_SOLAR_LUX = 128_000.0
_EXTINCTION = 0.21
# Cloud dimming after Kasten & Czeplak (1980): 1 - 0.75 · (cloud fraction)^3.4.
_CLOUD_DIMMING = 0.75
_CLOUD_EXPONENT = 3.4
_WEATHER_CLOUD = ((0.35, 2.9), (0.25, 0.7), (0.15, 0.17))  # cloud fraction around 0.5

# Urban-background PM2.5 of a few to a few tens of µg/m³, with morning and evening peaks
# (traffic, shallow night-time boundary layer); PM1 ~ 0.7 of PM2.5, PM10 ~ 1.6x.
_PM2_5_SITE_RANGE = (5.0, 15.0)
_WEATHER_PM = ((0.5, 3.1), (0.3, 8.3))  # log-scale: a factor of ~0.45 to 2.2
_PM_PEAKS = ((8.0, 1.5, 0.8), (20.0, 2.0, 0.6))  # (solar hour, width h, relative height)
_PM1_RATIO = 0.7
_PM10_RATIO = 1.6
_WEATHER_PM_COARSE = ((0.3, 2.3),)

# Rain: on a seeded 30 % of days, one shower of exponentially distributed depth (mean 8 mm).
# Soil (%VWC) dries from each wetting with a ~6-day time constant towards a dry floor; the water
# level recedes more slowly. Rain older than _RAIN_MEMORY_DAYS no longer matters (e^-10).
_RAIN_DAY_PROBABILITY = 0.3
_RAIN_MEAN_MM = 8.0
_RAIN_MEMORY_DAYS = 60
_SOIL_DRY_PERCENT = 12.0
_SOIL_SATURATED_PERCENT = 45.0
_SOIL_PERCENT_PER_MM = 0.8
_SOIL_DRYING_S = 6.0 * SECONDS_PER_DAY
_WATER_BASE_M = 0.5
_WATER_M_PER_MM = 0.01
_WATER_RECESSION_S = 6.0 * SECONDS_PER_DAY


@functools.lru_cache(maxsize=64)
def _wander(seed: int, name: str, spec: tuple[tuple[float, float], ...]) -> _Wander:
    """``_Wander.seeded``, built once per (seed, name): the Environment stays a pure function."""
    return _Wander.seeded(seed, name, spec)


@functools.lru_cache(maxsize=4096)
def _rain_events(seed: int, day: int) -> tuple[tuple[float, float], ...]:
    """(start wall time, mm) of the showers on ``day`` (days since the epoch), seeded per day."""
    rng = random.Random(f"{seed}:rain:{day}")
    if rng.random() >= _RAIN_DAY_PROBABILITY:
        return ()
    return ((day + rng.random()) * SECONDS_PER_DAY, rng.expovariate(1.0 / _RAIN_MEAN_MM)),
