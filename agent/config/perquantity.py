"""A sensor's per-quantity tables: ``[sensor.calibration.<quantity>]`` and
``[sensor.plausible.<quantity>]``, turned into agent.config.processing's values."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from agent.config.checks import identifier, is_kind, real, whole
from agent.config.fields import REQUIRED, Bad, Field, Problems, read_table
from agent.config.processing import POLYNOMIAL_TERMS, STUCK_AFTER_MIN, Calibration, Plausible
from agent.core.units import toml_key, toml_value

STUCK_AFTER_MAX = 1_000_000


def _nonzero(value: object) -> float:
    number = real(value)
    if number == 0:
        raise Bad("expected a number other than 0 (a scale of 0 would erase every reading)")
    return number


def _positive(value: object) -> float:
    number = real(value)
    if number <= 0:
        raise Bad("expected a number above 0")
    return number


def _polynomial(value: object) -> tuple[float, ...]:
    low, high = POLYNOMIAL_TERMS
    expected = f"expected {low} to {high} numbers [c0, c1, ...] for value = c0 + c1·x + c2·x² ..."
    if isinstance(value, list) and len(value) == 1 and is_kind(value[0], float) and (
        math.isfinite(value[0])
    ):
        raise Bad(f"a single number would replace every value by that constant; to add it, "
                  f"write offset = {toml_value(value[0])} instead, or give {expected[9:]}")
    if not isinstance(value, list) or not low <= len(value) <= high:
        raise Bad(expected)
    try:
        return tuple(real(c) for c in value)
    except Bad:
        raise Bad(expected) from None


def _make_calibration(quantity: str, v: Mapping[str, Any]) -> Calibration:
    if v["polynomial"] is not None and (v["offset"] is not None or v["scale"] is not None):
        raise Bad("polynomial replaces offset and scale; write them as its c0 and c1")
    if v["polynomial"] is None and v["offset"] is None and v["scale"] is None:
        raise Bad("expected offset, scale or polynomial (offset = 0.0 records no correction)")
    scale = 1.0 if v["scale"] is None else v["scale"]
    return Calibration(v["id"], v["offset"] or 0.0, scale, v["polynomial"])


def _make_plausible(quantity: str, v: Mapping[str, Any]) -> Plausible:
    given = Plausible(**v)
    limits = given.resolved(quantity)
    if limits.min is not None and limits.max is not None and limits.min >= limits.max:
        low = f"{limits.min:g}" + (" (built in)" if given.min is None else "")
        high = f"{limits.max:g}" + (" (built in)" if given.max is None else "")
        raise Bad(f"min {low} must be below max {high}")
    return given


_CALIBRATION_FIELDS = {
    "id": Field(identifier, REQUIRED, 'id = "air-T-2026-03"'),
    "offset": Field(real, None, ""),
    "scale": Field(_nonzero, None, ""),
    "polynomial": Field(_polynomial, None, ""),
}

_PLAUSIBLE_FIELDS = {
    "min": Field(real, None, ""),
    "max": Field(real, None, ""),
    "spike": Field(_positive, None, ""),
    "stuck_after": Field(whole(STUCK_AFTER_MIN, STUCK_AFTER_MAX), None, ""),
}

PerQuantity = Callable[
    [Problems, str, object, str, Mapping[str, str] | None], tuple[Mapping[str, Any], bool]
]


def _per_quantity(
    kind: str, fields: Mapping[str, Field], make: Callable[[str, Mapping[str, Any]], Any]
) -> PerQuantity:
    """The parser of ``[sensor.<kind>.<quantity>]`` tables, one per quantity of the driver."""

    def parse(
        problems: Problems,
        path: str,
        value: object,
        driver: str,
        quantities: Mapping[str, str] | None,
    ) -> tuple[Mapping[str, Any], bool]:
        before = len(problems.lines)
        found: dict[str, Any] = {}
        if not isinstance(value, Mapping):
            problems.add(path, f"expected tables such as [sensor.{kind}.temperature]", value)
        else:
            for quantity, table in value.items():
                at = toml_key(path, quantity)
                if quantities is not None and quantity not in quantities:
                    names = ", ".join(quantities) or "(none)"
                    problems.add(at, f"unknown quantity for driver {driver}; expected {names}")
                elif not isinstance(table, Mapping):
                    heading = toml_key(f"sensor.{kind}", quantity)
                    problems.add(at, f"expected a table [{heading}]", table)
                else:
                    values, ok = read_table(problems, at, table, fields)
                    try:
                        if ok:
                            found[quantity] = make(quantity, values)
                    except Bad as e:
                        problems.add(at, str(e))
        return MappingProxyType(found), len(problems.lines) == before

    return parse


PER_QUANTITY: dict[str, PerQuantity] = {
    "calibration": _per_quantity("calibration", _CALIBRATION_FIELDS, _make_calibration),
    "plausible": _per_quantity("plausible", _PLAUSIBLE_FIELDS, _make_plausible),
}
