"""Find the devices on a bus and name the chips that can be identified.

Probing follows i2c-tools' ``i2cdetect`` default: a one-byte read for 0x30-0x37 and 0x50-0x5F
(EEPROMs and chips a quick write could corrupt), an empty write everywhere else.

TCA9548A multiplexers are looked for first (which also switches all their channels off, so the
bus itself is seen alone), then every channel of each is scanned in turn. An address that answers
on the bus itself is not listed again under a channel: both would answer, and nothing on the wire
tells them apart (``envagent config check`` refuses such a layout).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import NamedTuple

from drivers import tca9548a
from drivers.bus import FIRST_ADDRESS, LAST_ADDRESS, Bus

Identifier = Callable[[Bus, int], "str | None"]


class Found(NamedTuple):
    """One answering device; ``mux`` and ``channel`` are None for a device on the bus itself."""

    address: int
    chip: str | None
    mux: int | None = None
    channel: int | None = None


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


def scan(bus: Bus, identifiers: list[Identifier]) -> list[Found]:
    """Every answering device, lowest address first: the bus's own, then each mux channel's."""
    with bus.lock:
        muxes = [a for a in tca9548a.ADDRESSES if probe(bus, a) and _is_mux(bus, a)]
        found = [
            Found(a, "tca9548a" if a in muxes else identify(bus, a, identifiers))
            for a in range(FIRST_ADDRESS, LAST_ADDRESS + 1)
            if probe(bus, a)
        ]
        on_bus = {f.address for f in found}
        for mux in muxes:
            try:
                for channel in range(tca9548a.CHANNELS):
                    downstream = tca9548a.MuxChannel(bus, mux, channel)
                    found += [
                        Found(a, identify(downstream, a, identifiers), mux, channel)
                        for a in range(FIRST_ADDRESS, LAST_ADDRESS + 1)
                        if a not in on_bus and probe(downstream, a)
                    ]
            finally:
                with contextlib.suppress(OSError):  # leave every channel off
                    tca9548a.TCA9548A(bus, mux).select(tca9548a.ALL_OFF)
    return found


def _is_mux(bus: Bus, address: int) -> bool:
    try:
        return tca9548a.identify(bus, address) is not None
    except OSError:
        return False


def identify(bus: Bus, address: int, identifiers: list[Identifier]) -> str | None:
    """The first chip name an identifier gives for ``address``; None when none can tell."""
    for identify in identifiers:
        try:
            chip = identify(bus, address)
        except OSError:
            chip = None
        if chip:
            return chip
    return None
