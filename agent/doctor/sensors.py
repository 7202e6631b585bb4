"""Doctor's sensor checks: does each configured sensor answer, is it the configured chip, and do a
few samples taken back to back agree with each other.

Identification uses the same identifiers as ``envagent scan`` (drivers.registry.IDENTIFIERS);
where none names the chip (a BH1750 left saturated, an ADS1115 whose threshold registers were
changed) the driver's own ``setup`` is the last word, and the check WARNs that the chip could not
be identified for sure. Sensors are checked in parallel, one thread each, as the daemon samples
them, so the slowest sensor (an SCD4x: 5 s per measurement) sets the time.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from agent.config import Config, SensorConfig
from agent.doctor.report import Check, Status
from agent.sampling.daemon import make_drivers
from agent.sampling.processing import Processed, Processor
from drivers.ads1115 import GAINS, parse_channels
from drivers.base import Driver, Quality
from drivers.bus import Bus, describe_error
from drivers.clock import Clock
from drivers.errors import WrongChipError
from drivers.registry import DRIVERS, IDENTIFIERS
from drivers.scan import identify, probe

# Largest believable spread (max - min) of samples taken back to back, per quantity, when the
# sensor's config gives no [sensor.plausible.<quantity>] spike: well above each chip's noise
# (BME280 ~0.01 °C / 0.2 Pa, SHT4x ~0.01 °C / 0.1 %RH, SCD4x ~10 ppm), far below a fault.
SPREAD_LIMITS: Mapping[str, float] = {
    "temperature": 0.5,  # °C
    "humidity": 3.0,  # %RH
    "pressure": 0.5,  # hPa
    "co2": 100.0,  # ppm
    "soil_moisture": 5.0,  # %
}
# Quantities whose readings swing by nature (light through clouds, dust in gusts): relative.
RELATIVE_SPREAD: Mapping[str, tuple[float, float]] = {  # quantity -> (fraction, floor)
    "illuminance": (0.25, 5.0),  # lx
    "pm1": (0.5, 10.0), "pm2_5": (0.5, 10.0), "pm10": (0.5, 10.0),  # µg/m³
}
WIRING = ("check its wiring (SDA, SCL, 3.3 V, GND) and address; `envagent scan` lists what "
          "answers")


def check_sensors(config: Config, buses: Mapping[int, Bus], clock: Clock, samples: int,
                  busy: int | None = None) -> list[Check]:
    """Two checks per sensor: ``sensor ID`` (identity) and ``samples ID``."""
    if busy is not None:
        return [Check("sensors", Status.WARN, f"envagent run is running (pid {busy}): sensor "
                      "checks skipped, they would disturb its readings",
                      "sudo systemctl stop envagent; envagent doctor; "
                      "sudo systemctl start envagent")]
    ready = tuple(s for s in config.sensors if s.bus in buses)
    drivers = dict(zip(ready, make_drivers(replace(config, sensors=ready), buses, clock, DRIVERS),
                       strict=True))
    checks: list[Check] = []
    with ThreadPoolExecutor(max_workers=max(1, len(ready)),
                            thread_name_prefix="doctor") as pool:
        futures = {s: pool.submit(_check_one, s, drivers[s], samples) for s in ready}
        for sensor in config.sensors:
            future = futures.get(sensor)
            if future is None:
                why = f"not tried: bus {sensor.bus} is not available (see i2c bus {sensor.bus})"
                checks += [Check(f"sensor {sensor.id}", Status.SKIP, why),
                           Check(f"samples {sensor.id}", Status.SKIP, why)]
            else:
                checks += future.result()
    return checks


def _check_one(sensor: SensorConfig, driver: Driver, samples: int) -> list[Check]:
    try:
        identity, set_up = _identity(sensor, driver)
        if identity.status is Status.FAIL:
            why = "not tried: the sensor check failed"
            return [identity, Check(f"samples {sensor.id}", Status.SKIP, why)]
        return [identity, _samples(sensor, driver, samples, set_up)]
    except Exception as exc:  # noqa: BLE001 - one sensor's bug must not end the doctor
        return [Check(f"sensor {sensor.id}", Status.FAIL,
                      f"check failed: {describe_error(exc, driver.where)}")]
    finally:
        with contextlib.suppress(Exception):  # the chip may already be gone
            driver.close()


def _identity(sensor: SensorConfig, driver: Driver) -> tuple[Check, bool]:
    """The identity check, and whether ``setup`` already ran (successfully)."""
    name, where, wanted = f"sensor {sensor.id}", driver.where, sensor.driver
    if not probe(driver.bus, sensor.address):
        return Check(name, Status.FAIL, f"nothing answers at {where}", WIRING), False
    chip = identify(driver.bus, sensor.address, IDENTIFIERS)
    if chip == wanted:
        return Check(name, Status.PASS, f"{wanted} identified at {where}"), False
    if chip is not None:
        return Check(name, Status.FAIL, f"a {chip} answers at {where}, not the configured "
                     f"{wanted}", _wrong_chip_hint(sensor, chip)), False
    try:
        driver.setup()
    except WrongChipError as exc:
        return Check(name, Status.FAIL, str(exc),
                     f"fit a {wanted}, or set driver = to the chip fitted"), False
    except Exception as exc:  # noqa: BLE001 - any bus or chip error is the finding
        return Check(name, Status.FAIL, f"answers at {where}, but setup failed: "
                     f"{describe_error(exc, where)}", WIRING), False
    return Check(name, Status.WARN, f"answers at {where} and sets up as a {wanted}, but the "
                 "chip cannot be identified for sure",
                 "if its values look wrong, read the part number printed on the chip"), True


def _wrong_chip_hint(sensor: SensorConfig, chip: str) -> str:
    if chip in DRIVERS:
        return (f'if a {chip} is what is fitted, set driver = "{chip}" in the [[sensor]] '
                f"block of {sensor.id!r}; otherwise fit a {sensor.driver}")
    return f"envagent has no {chip} driver: fit a {sensor.driver} at this address"


def _samples(sensor: SensorConfig, driver: Driver, count: int, set_up: bool) -> Check:
    name = f"samples {sensor.id}"
    try:
        if not set_up:
            driver.setup()
    except Exception as exc:  # noqa: BLE001
        return Check(name, Status.FAIL, f"setup failed: {describe_error(exc, driver.where)}",
                     WIRING)
    processor = Processor.for_sensor(sensor)
    taken: list[list[Processed]] = []
    errors: list[str] = []
    for _ in range(count):
        try:
            taken.append(processor.sample(driver.read))
        except Exception as exc:  # noqa: BLE001 - a failed sample is what this check counts
            errors.append(describe_error(exc, driver.where))
    if not taken:
        return Check(name, Status.FAIL, f"0 of {count} samples: {errors[0]}",
                     "a sensor that sets up but cannot be read is often underpowered or on "
                     "wires too long; " + WIRING)
    summary, problems = spreads(sensor, taken)
    detail = f"{len(taken)} of {count} ok: {summary}"
    if errors:
        problems.insert(0, f"{len(errors)} failed ({errors[0]})")
    if problems:
        clipped = [p.quantity for sample in taken for p in sample if p.quality & Quality.CLIPPED]
        hint = clipped_hint(sensor, clipped[0]) if clipped else (
            "noisy or failing reads: check for a loose wire, a heat source or moisture near "
            "the sensor")
        return Check(name, Status.WARN, f"{detail}; {'; '.join(problems)}", hint)
    return Check(name, Status.PASS, detail)


def clipped_hint(sensor: SensorConfig, quantity: str) -> str:
    """What to change when a chip reads the end of its scale: a setting, not the wiring."""
    if sensor.driver == "ads1115":
        channels, _ = parse_channels(sensor.options)
        channel = next((c for c in channels if c.quantity == quantity), None)
        if channel is not None:
            key = f"channel{channel.number}_gain"
            larger = [f"{g:g}" for g in sorted(GAINS) if g > channel.gain]
            choose = (f"set {key} to a larger range ({', '.join(larger)} V: the smallest above "
                      "the probe's highest voltage)" if larger else
                      "divide the probe's voltage down: this is the ADS1115's largest range")
            return (f"AIN{channel.number} is beyond its full-scale range, {key} = "
                    f"{channel.gain:g} V: {choose}")
    if sensor.driver == "bh1750":
        fix = ('set resolution = "high" (high2 saturates at half the light), or lower mtreg'
               if sensor.options.get("resolution") == "high2" else
               "lower mtreg (31 reaches full sunshine, ~120 klx)")
        return f"the light is beyond what the BH1750 measures with these settings: {fix}"
    return (f"{quantity} is at the end of the {sensor.driver}'s scale: check that the sensor "
            "is not wet, covered or next to a heat source")


def spreads(sensor: SensorConfig, taken: Sequence[Sequence[Processed]]) -> tuple[str, list[str]]:
    """``quantity mean unit (spread x)`` per quantity, and what looks wrong."""
    parts: list[str] = []
    problems: list[str] = []
    warming = False
    for quantity in dict.fromkeys(p.quantity for sample in taken for p in sample):
        got = [p for sample in taken for p in sample if p.quantity == quantity]
        values = [p.value for p in got if math.isfinite(p.value)]
        unit = got[0].unit
        warming |= any(p.quality & Quality.WARMUP for p in got)
        if any(p.quality & Quality.CLIPPED for p in got):
            problems.append(f"{quantity} clipped at the end of the chip's scale")
        elif any(p.quality & Quality.OUT_OF_RANGE for p in got):
            problems.append(f"{quantity} out of range")
        if not values:
            parts.append(f"{quantity} not a number")
            continue
        mean, spread = sum(values) / len(values), max(values) - min(values)
        parts.append(f"{quantity} {_number(mean)} {unit} (spread {spread:.2g})")
        limit = spread_limit(sensor, quantity, mean)
        if limit is not None and spread > limit:
            problems.append(f"{quantity} spread {spread:.2g} {unit} is more than {limit:.2g}")
    return ", ".join(parts) + (" (warming up)" if warming else ""), problems


def spread_limit(sensor: SensorConfig, quantity: str, mean: float) -> float | None:
    """The configured spike for the quantity, else the built-in limit; None when unknown."""
    plausible = sensor.plausible.get(quantity)
    if plausible is not None and plausible.spike is not None:
        return plausible.spike
    if quantity in RELATIVE_SPREAD:
        fraction, floor = RELATIVE_SPREAD[quantity]
        return max(floor, fraction * abs(mean))
    return SPREAD_LIMITS.get(quantity)


def _number(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"

