"""Values as people write them in the config, both ways.

In: durations and sizes (``"1h30m"``, ``"256MiB"``), parsed exactly (integer arithmetic on the
digits, rounded once at the end) so ``"0.1s"`` and ``"1.5GiB"`` mean what they say. Errors are
``ValueError`` whose message is the tail of a config problem line: what is wrong, then what a good
value looks like.

Out: any parsed TOML value shown back as TOML on one printable line, for problem lines.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Mapping

DURATION_EXAMPLES = 'expected a duration such as "10s", "5m" or "1h"'
SIZE_EXAMPLES = 'expected a size such as "256MiB", "500MB" or a whole number of bytes'

# Milliseconds per unit. Largest unit first: a compound duration must list its parts in this
# order ("1h30m", not "30m1h").
DURATION_UNITS_MS: dict[str, int] = {
    "d": 86_400_000,
    "h": 3_600_000,
    "m": 60_000,
    "s": 1000,
    "ms": 1,
}
# Python refuses to read integers of more than 4300 digits (sys.get_int_max_str_digits); a
# duration is infinite long before that (a float ends near 1.8e308).
_MAX_DURATION_DIGITS = 1000
_DURATION_PART = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-zµ]*)\s*")

# SI multiples are powers of 1000, IEC multiples powers of 1024 (IEC 80000-13). "KB" and "kb"
# are left out on purpose: people mean either 1000 or 1024 by them.
SIZE_UNITS: dict[str, int] = {
    "B": 1,
    "kB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "TiB": 1024**4,
}
_SIZE = re.compile(r"\s*([0-9]{1,40}(?:\.[0-9]{1,40})?)\s*([A-Za-z]*)\s*")


def parse_duration(value: object) -> float:
    """Seconds in ``value``: a number of seconds, or a string like ``"10s"``, ``"1h30m"``."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(DURATION_EXAMPLES)
    if isinstance(value, str):
        return _duration_text(value)
    seconds = _finite(value, DURATION_EXAMPLES)
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative; {DURATION_EXAMPLES}")
    return seconds


def _duration_text(text: str) -> float:
    if not text.strip():
        raise ValueError(f"empty duration; {DURATION_EXAMPLES}")
    if text.strip().startswith("-"):
        raise ValueError(f"a duration cannot be negative; {DURATION_EXAMPLES}")
    # The exact sum is total / scale milliseconds; scale is a power of ten.
    total, scale, pos, order = 0, 1, 0, list(DURATION_UNITS_MS)
    last = -1
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None or match.end() == pos:
            raise ValueError(DURATION_EXAMPLES)
        number, unit = match.groups()
        if not unit:
            raise ValueError(f"a unit is missing; {DURATION_EXAMPLES}")
        if unit not in DURATION_UNITS_MS:
            raise ValueError(
                f"unknown unit {toml_quote(unit)} (use ms, s, m, h or d); {DURATION_EXAMPLES}"
            )
        if order.index(unit) <= last:
            raise ValueError(
                f'write the largest unit first, each once, as in "1h30m"; {DURATION_EXAMPLES}'
            )
        last = order.index(unit)
        if len(number) > _MAX_DURATION_DIGITS:
            raise ValueError(f"more than {_MAX_DURATION_DIGITS} digits; {DURATION_EXAMPLES}")
        digits, places = _decimal_digits(number)
        common = max(scale, places)  # powers of ten: the larger is a multiple of the smaller
        total = total * (common // scale) + digits * DURATION_UNITS_MS[unit] * (common // places)
        scale = common
        pos = match.end()
    return _finite_ratio(total, scale * 1000, DURATION_EXAMPLES)


def parse_size(value: object) -> int:
    """Bytes in ``value``: a whole number of bytes, or a string like ``"256MiB"``, ``"500 MB"``."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(SIZE_EXAMPLES)
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative; {SIZE_EXAMPLES}")
        return value
    if value.strip().startswith("-"):
        raise ValueError(f"a size cannot be negative; {SIZE_EXAMPLES}")
    match = _SIZE.fullmatch(value)
    if match is None:
        raise ValueError(SIZE_EXAMPLES)
    number, unit = match.groups()
    if not unit:
        raise ValueError(
            f"a unit is missing (write a plain number of bytes without quotes, "
            f"or add B, kB, MB, GB, KiB, MiB or GiB); {SIZE_EXAMPLES}"
        )
    if unit not in SIZE_UNITS:
        raise ValueError(
            f"unknown unit {toml_quote(unit)} (use B, kB, MB, GB, KiB, MiB or GiB; the case of "
            f"each letter matters); {SIZE_EXAMPLES}"
        )
    digits, places = _decimal_digits(number)
    size, rest = divmod(digits * SIZE_UNITS[unit], places)
    if rest:
        raise ValueError(f"not a whole number of bytes; {SIZE_EXAMPLES}")
    return size


def format_duration(seconds: float) -> str:
    """The shortest compound form, for messages: 90 -> "1m30s", 0.5 -> "500ms"."""
    ms = round(seconds * 1000)
    parts = []
    for unit, scale in DURATION_UNITS_MS.items():
        count, ms = divmod(ms, scale)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def format_size(size: int) -> str:
    """The largest unit that divides ``size`` evenly, IEC first: 1048576 -> "1MiB"."""
    for unit in ("TiB", "GiB", "MiB", "KiB", "TB", "GB", "MB", "kB"):
        if size and size % SIZE_UNITS[unit] == 0:
            return f"{size // SIZE_UNITS[unit]}{unit}"
    return f"{size}B"


def _decimal_digits(number: str) -> tuple[int, int]:
    """``"1.25"`` as (125, 100): the number is exactly the first divided by the second."""
    whole, _, fraction = number.partition(".")
    return int(whole + fraction), 10 ** len(fraction)


def _finite_ratio(numerator: int, denominator: int, expected: str) -> float:
    """``numerator / denominator`` rounded once, to the nearest float."""
    try:
        result = numerator / denominator
    except OverflowError:  # too large for a float
        result = math.inf
    return _finite(result, expected)


def _finite(number: float | int, expected: str) -> float:
    try:
        result = float(number)
    except OverflowError:  # an int too large for a float
        result = math.inf
    if not math.isfinite(result):
        raise ValueError(f"not a finite number; {expected}")
    return result


_ESCAPES = {
    "\\": "\\\\",
    '"': '\\"',
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def toml_quote(text: str) -> str:
    """``text`` as a TOML basic string that is always one printable line.

    Anything :meth:`str.isprintable` rejects (control characters, U+2028, ...) is escaped, so a
    config value can never split a problem line or a log line in two.
    """
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif char.isprintable():
            out.append(char)
        elif ord(char) <= 0xFFFF:
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(f"\\U{ord(char):08X}")
    return '"' + "".join(out) + '"'


def toml_value(value: object) -> str:
    """``value`` as it would look in the TOML file, on one line of at most about 80 characters."""
    shown = _toml_value(value, 0)
    return shown if len(shown) <= 80 else shown[:76] + " …"


def toml_hex(value: object) -> str:
    """Addresses show in hex (``0x76``) as on datasheets; anything else as :func:`toml_value`."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 1 << 64:
        return ("-" if value < 0 else "") + f"0x{abs(value):02x}"
    return toml_value(value)


def toml_key(parent: str, key: object) -> str:
    """``parent.key``, quoting a key that TOML could not write bare."""
    text = key if isinstance(key, str) else str(key)
    if not _BARE_KEY.fullmatch(text):
        text = toml_quote(text)
    return f"{parent}.{text}" if parent else text


def one_line(text: str) -> str:
    """``text`` unchanged if printable, else with the offending characters escaped."""
    return text if text.isprintable() else toml_quote(text)[1:-1]


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_MAX_ITEMS = 5  # items of an array or inline table shown before "…"
_MAX_DEPTH = 2
_MAX_INT_DIGITS = 30


def _toml_value(value: object, depth: int) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return toml_quote(value[:100])
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)  # nan, inf, -inf as in TOML
    if isinstance(value, int):
        return str(value) if abs(value) < 10**_MAX_INT_DIGITS else "(a huge integer)"
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if depth >= _MAX_DEPTH:
        return "…"
    if isinstance(value, Mapping):
        pairs = list(value.items())[:_MAX_ITEMS]
        items = [f"{toml_key('', k)} = {_toml_value(v, depth + 1)}" for k, v in pairs]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v, depth + 1) for v in value[:_MAX_ITEMS]) + "]"
    return one_line(repr(value)[:100])
