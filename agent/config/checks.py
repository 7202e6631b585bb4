"""Value checks shared by the sections: each returns the clean value or raises :class:`Bad`
with what is expected (the problem line adds the key and the value as written)."""

from __future__ import annotations

import math
from collections.abc import Callable

from agent.config.fields import ID_PATTERN, Bad
from agent.core.units import (
    format_duration,
    format_size,
    one_line,
    parse_duration,
    parse_size,
    toml_quote,
)


def identifier(value: object) -> str:
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise Bad(
            "expected 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return value


def bounded_number(low: float, high: float, unit: str) -> Callable[[object], float]:
    def check(value: object) -> float:
        expected = f"expected a number from {low:g} to {high:g} {unit}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Bad(expected + unquote_hint(value))
        if not low <= value <= high:  # NaN fails this too
            raise Bad(expected)
        return float(value)

    return check


def unquote_hint(value: object) -> str:
    """A number written in quotes is told to drop them."""
    if not isinstance(value, str) or len(value) > 40:
        return ""
    for parse in (lambda text: int(text, 0), float):
        try:
            parse(value)
        except ValueError:
            continue
        return f"; write {one_line(value.strip())} without quotes"
    return ""


def duration(low: float, high: float) -> Callable[[object], float]:
    def check(value: object) -> float:
        try:
            seconds = parse_duration(value)
        except ValueError as e:
            raise Bad(str(e)) from None
        if not low <= seconds <= high:
            raise Bad(
                f"expected a duration from {format_duration(low)} to {format_duration(high)}"
            )
        return seconds

    return check


def byte_size(low: int) -> Callable[[object], int]:
    def check(value: object) -> int:
        try:
            size = parse_size(value)
        except ValueError as e:
            raise Bad(str(e)) from None
        if size < low:
            raise Bad(f"expected at least {format_size(low)}")
        return size

    return check


def real(value: object) -> float:
    if not isinstance(value, int | float) or not is_kind(value, float):  # no bool, no huge int
        raise Bad("expected a number" + unquote_hint(value))
    if not math.isfinite(value):
        raise Bad("expected a finite number")
    return float(value)


def whole(low: int, high: int, what: str = "", *, noun: str = "an integer"
           ) -> Callable[[object], int]:
    def check(value: object) -> int:
        expected = f"expected {noun} from {low} to {high}{what}"
        if isinstance(value, bool) or not isinstance(value, int):
            raise Bad(expected + unquote_hint(value))
        if not low <= value <= high:
            raise Bad(expected)
        return value

    return check


def integer(low: int, high: int) -> Callable[[object], int]:
    return whole(low, high, noun="a whole number")


def choice(choices: tuple[str, ...]) -> Callable[[object], str]:
    def check(value: object) -> str:
        if value not in choices:
            raise Bad("expected one of " + ", ".join(toml_quote(c) for c in choices))
        return str(value)

    return check


def boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise Bad("expected true or false, without quotes")
    return value


def within(value: float, low: float | None, high: float | None) -> bool:
    return (low is None or value >= low) and (high is None or value <= high)


def is_kind(value: object, kind: type) -> bool:
    if isinstance(value, bool):
        return kind is bool
    if kind is float:  # an int is fine where a number is expected, unless too big for a float
        return isinstance(value, float) or (isinstance(value, int) and abs(value) < 2**1023)
    return isinstance(value, kind)
