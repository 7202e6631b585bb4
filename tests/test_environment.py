"""Environment: deterministic, plausible weather as a pure function of wall time."""

from __future__ import annotations

import dataclasses
import random
import statistics

import pytest

from drivers.sim import Conditions, Environment, Offsets
from drivers.sim.environment import (
    SECONDS_PER_DAY,
    SECONDS_PER_HOUR,
    relative_humidity,
    saturation_vapour_pressure,
    station_pressure,
)

JAN_1_2026 = 1_767_225_600.0  # 00:00 UTC
JUL_1_2026 = JAN_1_2026 + 181 * SECONDS_PER_DAY


def hourly(environment: Environment, start: float, days: float) -> list[Conditions]:
    hours = int(days * 24)
    return [environment.conditions(start + h * SECONDS_PER_HOUR) for h in range(hours)]


def test_same_seed_same_weather_in_any_query_order() -> None:
    times = [JAN_1_2026 + i * 7_919.0 for i in range(200)]
    shuffled = times[:]
    random.Random(3).shuffle(shuffled)
    forward = {t: Environment(seed=4).conditions(t) for t in times}
    environment = Environment(seed=4)
    assert {t: environment.conditions(t) for t in shuffled} == forward


def test_different_seeds_give_different_weather() -> None:
    a = Environment(seed=1).conditions(JUL_1_2026)
    b = Environment(seed=2).conditions(JUL_1_2026)
    assert a.temperature != b.temperature and a.pressure != b.pressure


def test_environment_and_conditions_are_immutable() -> None:
    environment = Environment(seed=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        environment.seed = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        environment.conditions(0.0).temperature = 0.0  # type: ignore[misc]
    assert environment == Environment(seed=1)


def test_values_stay_physical_for_a_year() -> None:
    environment = Environment(seed=9, latitude=52.0, longitude=13.4, elevation_m=35.0)
    year = hourly(environment, JAN_1_2026, 365)
    assert all(0.0 <= c.humidity <= 100.0 for c in year)
    assert -30.0 < min(c.temperature for c in year) < max(c.temperature for c in year) < 45.0
    assert 960.0 < min(c.pressure for c in year) < max(c.pressure for c in year) < 1050.0


def test_afternoons_are_warmest_in_local_solar_time() -> None:
    """The daily maximum is mid-afternoon local solar time, so 90°E peaks six hours earlier."""

    def warmest_utc_hours(longitude: float) -> list[int]:
        environment = Environment(seed=2, longitude=longitude)
        peaks = []
        for day in range(10):
            temps = hourly(environment, JUL_1_2026 + day * SECONDS_PER_DAY, 1)
            peaks.append(max(range(24), key=lambda h: temps[h].temperature))
        return peaks

    greenwich = warmest_utc_hours(0.0)
    assert statistics.median(greenwich) in range(12, 19)
    assert statistics.median(warmest_utc_hours(90.0)) == pytest.approx(
        statistics.median(greenwich) - 6, abs=2
    )


def test_humidity_falls_as_the_day_warms() -> None:
    environment = Environment(seed=6)
    for day in range(5):
        today = hourly(environment, JUL_1_2026 + day * SECONDS_PER_DAY, 1)
        warmest = max(today, key=lambda c: c.temperature)
        coolest = min(today, key=lambda c: c.temperature)
        assert warmest.humidity < coolest.humidity - 10.0


def test_summer_is_warmer_than_winter_in_each_hemisphere() -> None:
    def mean_temperature(latitude: float, start: float) -> float:
        environment = Environment(seed=1, latitude=latitude)
        return statistics.mean(c.temperature for c in hourly(environment, start, 30))

    assert mean_temperature(48.0, JUL_1_2026) > mean_temperature(48.0, JAN_1_2026) + 10.0
    assert mean_temperature(-35.0, JAN_1_2026) > mean_temperature(-35.0, JUL_1_2026) + 10.0


def test_altitude_lowers_pressure_and_temperature() -> None:
    low = hourly(Environment(seed=3, elevation_m=0.0), JUL_1_2026, 30)
    high = hourly(Environment(seed=3, elevation_m=1500.0), JUL_1_2026, 30)
    assert statistics.mean(c.pressure for c in low) == pytest.approx(1013.25, abs=6.0)
    assert statistics.mean(c.pressure for c in high) == pytest.approx(845.6, abs=5.0)
    assert statistics.mean(c.temperature for c in low) - statistics.mean(
        c.temperature for c in high
    ) == pytest.approx(0.0065 * 1500, abs=0.01)


def test_pressure_drifts_a_few_hectopascals_over_days() -> None:
    pressures = [c.pressure for c in hourly(Environment(seed=8), JAN_1_2026, 30)]
    assert 4.0 < max(pressures) - min(pressures) < 25.0
    hour_to_hour = max(abs(b - a) for a, b in zip(pressures, pressures[1:], strict=False))
    assert hour_to_hour < 1.0  # weather, not noise


def test_standard_atmosphere_and_magnus_reference_values() -> None:
    assert station_pressure(0.0) == pytest.approx(1013.25)
    assert station_pressure(1000.0) == pytest.approx(898.75, abs=0.05)  # ISO 2533 table
    assert saturation_vapour_pressure(0.0) == pytest.approx(6.112)
    assert saturation_vapour_pressure(20.0) == pytest.approx(23.37, abs=0.05)
    assert relative_humidity(15.0, 15.0) == pytest.approx(100.0)
    assert relative_humidity(20.0, 25.0) == 100.0  # supersaturation clamps
    assert relative_humidity(30.0, 10.0) == pytest.approx(28.9, abs=0.1)  # 12.28 / 42.46 hPa


def test_per_sensor_offsets_are_small_deterministic_and_distinct() -> None:
    environment = Environment(seed=12)
    offsets = [environment.offset_for(key) for key in ("air", "roof", "shed")]
    assert offsets == [Environment(seed=12).offset_for(k) for k in ("air", "roof", "shed")]
    assert len({o.temperature for o in offsets}) == 3
    for o in offsets:
        assert abs(o.temperature) <= 0.3 and abs(o.humidity) <= 1.5 and abs(o.pressure) <= 0.3
    assert Environment(seed=13).offset_for("air") != offsets[0]


def test_source_for_applies_the_offsets() -> None:
    environment = Environment(seed=12)
    base = environment.conditions(JUL_1_2026)
    seen = environment.source_for("air")(JUL_1_2026)
    offsets = environment.offset_for("air")
    assert seen.temperature == pytest.approx(base.temperature + offsets.temperature)
    assert seen.pressure == pytest.approx(base.pressure + offsets.pressure)
    assert Offsets(humidity=50.0).apply(Conditions(20.0, 80.0, 1000.0)).humidity == 100.0


@pytest.mark.parametrize("kwargs", [{"latitude": 91.0}, {"latitude": -90.5}, {"longitude": 181.0}])
def test_impossible_coordinates_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="outside"):
        Environment(**kwargs)  # type: ignore[arg-type]
