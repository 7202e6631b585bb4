"""From readings to HJ 212-2017's words: pollutant codes, the units they are sent in and the
data flags (appendix B and 6.6.4).

Codes and units (a quantity with no code is not sent; ``codes`` in the upstream's config adds
or overrides a code per quantity or per ``sensor.quantity``, and ``units`` picks the unit of a
code that can go in more than one):

===========  =======  ==================  ==========================================
quantity     code     sent in             from what we store
===========  =======  ==================  ==========================================
temperature  a01001   °C                  °C
humidity     a01002   %                   %RH
pressure     a01006   kPa (or hPa, Pa)    hPa
pm2_5        a34004   µg/m³               µg/m³
pm10         a34002   µg/m³               µg/m³
pm1          a34005   µg/m³               µg/m³
co2          a05001   mg/m³ (or ppm)      ppm; mg/m³ = ppm x 44.01 / Vm, Vm the molar
                                          volume at the sample's temperature and
                                          pressure (25 °C and 101.325 kPa where the
                                          sample time has none)
===========  =======  ==================  ==========================================

A code added by the config goes as stored. Values go with at most 4 decimals, trailing zeros
dropped.

Data flags (6.6.4, table 8: N normal, F stopped, M maintenance, S set manually, D fault,
C calibration, T over the upper measuring limit, B communication fault) from a reading's
quality bits (drivers.base.Quality), the first that applies:

=======================================================  ====  ==============================
quality                                                  flag  why
=======================================================  ====  ==============================
maintenance mode (``envagent maintenance on``)           M     a technician's work, not the
                                                               air
a non-finite value (no ``-Rtd`` is sent, only the flag)  D     the instrument gave no value
stuck; clock never synchronised; a bit this agent        D     not to be trusted: a frozen
does not know                                                  sensor, a time that is wrong
out of range; clipped                                    T     beyond the measuring range
warm-up                                                  F     not yet measuring normally
spike; re-stamped; good                                  N     a spike may be real pollution
                                                               (the platform judges it); a
                                                               re-stamped time is true
=======================================================  ====  ==============================

C (calibration) and S are not produced by this version. A sensor that failed gives no
readings; its codes go flagged D, without a value, at the times of its health reading that
says so (``sensor_state``, every ``[health] interval``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from agent.core.reading import Reading
from drivers.base import Quality

DECIMALS = 4
CO2_MOLAR_MASS = 44.01  # g/mol
GAS_CONSTANT = 8.314462618  # J/(mol K): Vm in L/mol = R T / P with P in kPa
REFERENCE_K = 298.15  # 25 °C
REFERENCE_KPA = 101.325
KELVIN = 273.15

# A conversion: (value as stored, the sample time's conditions) -> value as sent.
Convert = Callable[[float, "Conditions"], float]


@dataclass(frozen=True, slots=True)
class Conditions:
    """The air of one sample time, for conversions that depend on it (ppm -> mg/m³)."""

    kelvin: float = REFERENCE_K
    kpa: float = REFERENCE_KPA


def _scale(factor: float) -> Convert:
    return lambda value, _: value * factor


def _ppm_to_mg(value: float, air: Conditions) -> float:
    molar_volume = GAS_CONSTANT * air.kelvin / air.kpa  # L/mol
    return value * CO2_MOLAR_MASS / molar_volume


@dataclass(frozen=True, slots=True)
class Code:
    """A pollutant code, the unit it is sent in and how each stored unit converts to it."""

    code: str
    unit: str
    converts: Mapping[str, Convert]


# Per default code: the units it can be sent in, the first the default; per unit, the stored
# units it converts from.
UNITS: Mapping[str, Mapping[str, Mapping[str, Convert]]] = {
    "a01001": {"°C": {"°C": _scale(1.0)}},
    "a01002": {"%": {"%RH": _scale(1.0), "%": _scale(1.0)}},
    "a01006": {"kPa": {"hPa": _scale(0.1), "kPa": _scale(1.0)},
               "hPa": {"hPa": _scale(1.0), "kPa": _scale(10.0)},
               "Pa": {"hPa": _scale(100.0), "kPa": _scale(1000.0)}},
    "a34004": {"µg/m³": {"µg/m³": _scale(1.0)}},
    "a34002": {"µg/m³": {"µg/m³": _scale(1.0)}},
    "a34005": {"µg/m³": {"µg/m³": _scale(1.0)}},
    "a05001": {"mg/m³": {"ppm": _ppm_to_mg}, "ppm": {"ppm": _scale(1.0)}},
}
DEFAULT_CODES: Mapping[str, str] = {
    "temperature": "a01001", "humidity": "a01002", "pressure": "a01006", "pm2_5": "a34004",
    "pm10": "a34002", "pm1": "a34005", "co2": "a05001",
}
AS_STORED = "as stored"

_TRUSTED = int(Quality.SPIKE | Quality.CLOCK_RESTAMPED)
_FAULT = int(Quality.STUCK | Quality.CLOCK_UNSYNCED)
_OVER = int(Quality.OUT_OF_RANGE | Quality.CLIPPED)
_KNOWN = _TRUSTED | _FAULT | _OVER | int(Quality.WARMUP) | int(Quality.MAINTENANCE)


def unit_choices(code: str) -> tuple[str, ...]:
    """The units ``code`` can be sent in; empty for a code this table does not know."""
    return tuple(UNITS.get(code, {}))


class CodeTable:
    """Which code a reading goes under, and its value as sent."""

    def __init__(self, codes: Sequence[tuple[str, str]] = (),
                 units: Sequence[tuple[str, str]] = ()) -> None:
        chosen = dict(units)
        entries = [*DEFAULT_CODES.items(), *codes]
        # Every code it can give, each once, the defaults first: a code keeps its place while
        # the config's codes keep their order (one added goes last), since real-time QNs are
        # numbered by it (agent.uplink.hj212.realtime).
        self.codes: tuple[str, ...] = tuple(dict.fromkeys(code for _, code in entries))
        self._by_quantity: dict[str, Code] = {}
        self._by_series: dict[tuple[str, str], Code] = {}
        for quantity, code in entries:
            entry = self._code(code, chosen.get(code))
            sensor, dot, name = quantity.rpartition(".")
            if dot:
                self._by_series[(sensor, name)] = entry
            else:
                self._by_quantity[name] = entry

    @staticmethod
    def _code(code: str, unit: str | None) -> Code:
        known = UNITS.get(code)
        if known is None:
            return Code(code, AS_STORED, {})
        unit = unit or next(iter(known))
        return Code(code, unit, known[unit])

    def lookup(self, reading: Reading) -> Code | None:
        return (self._by_series.get((reading.sensor, reading.quantity))
                or self._by_quantity.get(reading.quantity))

    def value(self, code: Code, reading: Reading, air: Conditions) -> float | None:
        """``reading``'s value in ``code``'s unit; None when its unit cannot be converted."""
        if not code.converts:
            return reading.value
        convert = code.converts.get(reading.unit)
        return None if convert is None else convert(reading.value, air)


def conditions(readings: Sequence[Reading]) -> Conditions:
    """The temperature and pressure of a sample time's readings, where it has them."""
    kelvin, kpa = REFERENCE_K, REFERENCE_KPA
    for r in readings:
        if not math.isfinite(r.value):
            continue
        if r.quantity == "temperature" and r.unit == "°C":
            kelvin = r.value + KELVIN
        elif r.quantity == "pressure" and r.unit in ("hPa", "kPa"):
            kpa = r.value / 10 if r.unit == "hPa" else r.value
    return Conditions(kelvin, kpa)


def data_flag(quality: int, value: float) -> str:
    """The standard's data flag of a reading (the table in the module docstring)."""
    if quality & Quality.MAINTENANCE:
        return "M"
    if not math.isfinite(value):
        return "D"
    if quality & _FAULT or quality & ~_KNOWN:  # a bit of a newer agent: not trusted
        return "D"
    if quality & _OVER:
        return "T"
    if quality & Quality.WARMUP:
        return "F"
    return "N"


def number(value: float) -> str:
    """``value`` with at most DECIMALS decimals, no exponent, no trailing zeros."""
    text = f"{round(value, DECIMALS):.{DECIMALS}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text
