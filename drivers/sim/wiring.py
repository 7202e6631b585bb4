"""The simulated world as it is really wired, not as the config expects: ``--sim-wiring FILE``.

Built from the config, the simulated world can never show a wrong chip, a wrong address or a
missing device. A wiring file says what is actually connected, one ``[[device]]`` per chip::

    [[device]]
    chip = "bme280"     # a driver's name, or "tca9548a" for a multiplexer on its own
    address = 0x77
    bus = 1             # optional, default 1
    mux = 0x70          # optional: behind this TCA9548A's channel ...
    channel = 2         # ... 0 to 7

and the world holds exactly those devices, so ``scan``, ``read``, ``doctor`` and ``run`` meet
the mistake as they would on site. (agent.config validates the file, as it does the config.)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from drivers.sim.world import Placement


class Wired(Protocol):
    """One device of a wiring file (agent.config.WiredDevice)."""

    @property
    def chip(self) -> str: ...
    @property
    def address(self) -> int: ...
    @property
    def bus(self) -> int: ...
    @property
    def mux(self) -> int | None: ...
    @property
    def channel(self) -> int | None: ...


def wired_placements(
    devices: Iterable[Wired], expected: Iterable[Placement | tuple[int, int, str, str]]
) -> list[Placement]:
    """The placements of the wired ``devices``, for ``build_world``.

    A device where the config ``expected`` that very chip takes the configured sensor's id, so
    its simulated weather, and an ADS1115's probes, follow the config as they would on site;
    any other device is named by what and where it is.
    """
    configured = {(p.bus, p.mux, p.channel, p.address): p for p in map(_placement, expected)}
    placements = []
    for device in devices:
        place = (device.bus, device.mux, device.channel, device.address)
        wanted = configured.get(place)
        if wanted is not None and wanted.driver == device.chip:
            name = wanted.sensor_id
        else:
            via = "" if device.mux is None else f"0x{device.mux:02x}/{device.channel}:"
            name = f"wired {device.chip} at {device.bus}:{via}0x{device.address:02x}"
        placements.append(Placement(device.bus, device.address, device.chip, name,
                                    device.mux, device.channel))
    return placements


def _placement(placement: Placement | tuple[int, int, str, str]) -> Placement:
    return Placement(*placement)
