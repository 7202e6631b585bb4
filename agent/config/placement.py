"""Where a chip sits: its bus, its address (one its chip can have, from the driver's
``addresses``), and the TCA9548A multiplexer channel in front of it.

Shared by ``[[sensor]]`` and the wiring file's ``[[device]]`` tables: :class:`Seen` reports the
second user of an id or a place, naming the first by its label and line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from agent.config.checks import unquote_hint
from agent.config.fields import Bad, Problems
from agent.core.units import toml_hex, toml_key
from drivers import tca9548a
from drivers.bus import FIRST_ADDRESS, LAST_ADDRESS

DEFAULT_BUS = 1
BUS_RANGE = (0, 255)  # the N of /dev/i2c-N

SEVEN_BIT_MAX = 0x7F

MUX_RANGE = (tca9548a.ADDRESSES[0], tca9548a.ADDRESSES[-1])  # the TCA9548A's, by its A0-A2
CHANNEL_RANGE = (0, tca9548a.CHANNELS - 1)


def bus_number(value: object) -> int:
    low, high = BUS_RANGE
    expected = f"expected an integer from {low} to {high} (the N of /dev/i2c-N)"
    if isinstance(value, bool) or not isinstance(value, int):
        raise Bad(expected + unquote_hint(value))
    if not low <= value <= high:
        raise Bad(expected)
    return value


def i2c_address(value: object) -> int:
    expected = f"expected 0x{FIRST_ADDRESS:02x} to 0x{LAST_ADDRESS:02x}"
    if isinstance(value, bool) or not isinstance(value, int):
        hint = unquote_hint(value) or ", a number such as 0x76"
        raise Bad(
            f"expected an I2C address from 0x{FIRST_ADDRESS:02x} to 0x{LAST_ADDRESS:02x}{hint}"
        )
    if 0 <= value <= SEVEN_BIT_MAX and not FIRST_ADDRESS <= value <= LAST_ADDRESS:
        raise Bad(f"reserved I2C address (0x00-0x07 and 0x78-0x7F are reserved); {expected}")
    if not 0 <= value <= SEVEN_BIT_MAX:
        hint = ""
        if value <= 0xFF and FIRST_ADDRESS <= value >> 1 <= LAST_ADDRESS:
            hint = f" (an 8-bit address as some datasheets print it? Then write 0x{value >> 1:02x})"
        raise Bad(f"not a 7-bit I2C address{hint}; {expected}")
    return value


def check_chip_address(problems: Problems, path: str, chip: str, addresses: Sequence[int],
                       address: int) -> bool:
    """Whether ``address`` is one the chip can have (its datasheet's, declared by its driver)."""
    if address in addresses:
        return True
    listed = [f"0x{a:02x}" for a in addresses]
    either = listed[0] if len(listed) == 1 else f"{', '.join(listed[:-1])} or {listed[-1]}"
    written = problems.written(toml_key(path, "address"))
    hint = "" if written is not None and _HEX_VALUE.search(written) else \
        _decimal_hint(address, addresses)  # only for a number that may have been written decimal
    problems.add(toml_key(path, "address"), f"the {chip} answers only at {either}" + hint,
                 address, toml_hex)
    return False


_HEX_VALUE = re.compile(r"=\s*0[xX]")  # ``address = 0x4c`` as written: not a decimal slip


def _decimal_hint(value: int, addresses: Sequence[int]) -> str:
    """``address = 76`` for 0x76: the digits, read as hex, are an address that would fit."""
    try:
        as_hex = int(str(value), 16)
    except ValueError:
        return ""
    return f"; {value} is decimal: write 0x{as_hex:02x}" if as_hex in addresses else ""


def mux_address(value: object) -> int:
    low, high = MUX_RANGE
    expected = f"expected the multiplexer's address, 0x{low:02x} to 0x{high:02x} (a TCA9548A)"
    if isinstance(value, bool) or not isinstance(value, int):
        raise Bad(expected + unquote_hint(value))
    if value not in tca9548a.ADDRESSES:
        raise Bad(expected + _decimal_hint(value, tca9548a.ADDRESSES))
    return value


def check_mux_pair(problems: Problems, path: str, table: Mapping[str, Any]) -> bool:
    """``mux`` and ``channel`` come together."""
    if "channel" in table and "mux" not in table:
        message = "needs mux, the multiplexer's address; add mux = 0x70 (0x70 to 0x77)"
        problems.add(toml_key(path, "channel"), message, table["channel"])
        return False
    if "mux" in table and "channel" not in table:
        message = "needs channel, the multiplexer channel the sensor is wired to; add channel = 0"
        problems.add(toml_key(path, "mux"), message + " to 7", table["mux"], toml_hex)
        return False
    return True


Place = tuple[int, int | None, int | None, int]  # bus, mux, channel, address


class Seen:
    """Ids and places of the ``[[sensor]]`` (or ``[[device]]``) tables seen so far, to report
    the second user of each; ``finish`` then checks every place against the multiplexers,
    which a later table may declare."""

    def __init__(self, array: str) -> None:
        self.array = array
        self.ids: dict[str, int] = {}
        self.places: dict[Place, str] = {}
        self.named: list[tuple[Place, str]] = []
        self.muxes: set[tuple[int, int]] = set()  # (bus, address) of every multiplexer

    def check(self, problems: Problems, index: int, values: Mapping[str, Any],
              is_mux: bool = False) -> None:
        """One table's id and place; ``is_mux``: it is a multiplexer itself (wiring files)."""
        table_id = values.get("id")
        name, noun = f"{self.array}[{index}]", self.array
        labels = problems.labels[self.array]
        if table_id is not None:
            if table_id in self.ids:
                earlier = labels.line(self.ids[table_id])
                at = "" if earlier is None else f" (line {earlier})"
                problems.add(f"{name}.id", f"already used by an earlier [[{noun}]]{at}; give "
                             f"each {noun} its own id", table_id)
            self.ids.setdefault(table_id, index)
        if not {"bus", "address", "mux", "channel"} <= values.keys():
            return
        bus, address, mux, channel = (values[k] for k in ("bus", "address", "mux", "channel"))
        if (mux is None) != (channel is None):
            return  # reported by check_mux_pair
        place = (bus, mux, channel, address)
        if place in self.places:
            where, fix = f"bus {bus}", "address or bus"
            if mux is not None:
                where, fix = f"bus {bus} mux 0x{mux:02x} channel {channel}", "address or channel"
            problems.add(name, f"{where} address 0x{address:02x} is already used by "
                         f"{self.places[place]}; give each {noun} its own {fix}")
        self.places.setdefault(place, labels.label(index))
        if mux is not None:
            self.muxes.add((bus, mux))
        if is_mux:
            self.muxes.add((bus, address))
        else:
            self.named.append((place, name))

    def finish(self, problems: Problems) -> None:
        muxes = self.muxes
        for (bus, mux, channel, address), name in self.named:
            if (bus, address) in muxes:
                problems.add(name, (
                    f"address 0x{address:02x} is where the multiplexer mux = 0x{address:02x} "
                    f"answers on bus {bus}; give the sensor or the multiplexer (its A0-A2 pins) "
                    "another address"
                ))
            elif mux is not None and (bus, None, None, address) in self.places:
                problems.add(name, (
                    f"address 0x{address:02x} behind mux 0x{mux:02x} channel {channel} is also "
                    f"used on bus {bus} itself by {self.places[(bus, None, None, address)]}"
                    f"; both would answer whenever channel {channel} is selected, so move one"
                ))
