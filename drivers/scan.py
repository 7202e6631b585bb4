"""Find the devices on a bus and name the chips that can be identified.

Probing follows i2c-tools' ``i2cdetect`` default: a one-byte read for 0x30-0x37 and 0x50-0x5F
(EEPROMs and chips a quick write could corrupt), an empty write everywhere else.
"""

from __future__ import annotations

from collections.abc import Callable

from drivers.bus import FIRST_ADDRESS, LAST_ADDRESS, Bus

Identifier = Callable[[Bus, int], "str | None"]


def _read_probe_range(address: int) -> bool:
    return 0x30 <= address <= 0x37 or 0x50 <= address <= 0x5F


def probe(bus: Bus, address: int) -> bool:
    """Whether a device acknowledges ``address``."""
    try:
        if _read_probe_range(address):
            bus.read(address, 1)
        else:
            bus.write(address, b"")
    except OSError:
        return False
    return True


def scan(bus: Bus, identifiers: list[Identifier]) -> list[tuple[int, str | None]]:
    """(address, chip or None) for every answering address, lowest first."""
    found = []
    for address in range(FIRST_ADDRESS, LAST_ADDRESS + 1):
        if not probe(bus, address):
            continue
        chip = None
        for identify in identifiers:
            try:
                chip = identify(bus, address)
            except OSError:
                chip = None
            if chip:
                break
        found.append((address, chip))
    return found
