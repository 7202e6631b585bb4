"""The wiring file of ``--simulate --sim-wiring``: what is really on the bus, checked as a
config is (one problem line each, the same per-chip addresses)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config.checks import whole
from agent.config.document import read_toml
from agent.config.fields import REQUIRED, Bad, Field, Problems, Registry, read_table, registry
from agent.config.placement import (
    CHANNEL_RANGE,
    DEFAULT_BUS,
    Seen,
    bus_number,
    check_chip_address,
    check_mux_pair,
    i2c_address,
    mux_address,
)
from agent.core.errors import ConfigError
from agent.core.units import one_line, toml_hex, toml_key, toml_quote
from drivers import tca9548a

MUX_CHIP = "tca9548a"  # a wiring file may list a multiplexer on its own, with nothing behind it


@dataclass(frozen=True, slots=True)
class WiredDevice:
    """One ``[[device]]`` of a wiring file: a chip as a technician says it is actually wired,
    which the simulated world then holds instead of what the config expects (drivers.sim.wiring).
    """

    chip: str
    address: int
    bus: int = DEFAULT_BUS
    mux: int | None = None  # the TCA9548A it sits behind, with ``channel``
    channel: int | None = None


def load_wiring(path: Path | str, *, drivers: Registry | None = None) -> tuple[WiredDevice, ...]:
    """Read and validate a wiring file; raise :class:`ConfigError` listing every problem."""
    source = one_line(str(path))
    data, text = read_toml(Path(path), source, "wiring file")
    return parse_wiring(data, source=source, drivers=drivers, text=text)


def parse_wiring(
    data: Mapping[str, Any],
    *,
    source: str = "wiring",
    drivers: Registry | None = None,
    text: str | None = None,
) -> tuple[WiredDevice, ...]:
    """Validate a parsed wiring file as a config is validated: every problem, one line each.

    A chip can only be wired at an address it can have, so the same per-chip addresses apply;
    no ``[[device]]`` at all is a bus where nothing is connected.
    """
    problems = Problems(one_line(source), registry(drivers), text)
    for key in data:
        if key != "device":
            problems.add(toml_key("", key), "unknown key; a wiring file holds [[device]] tables")
    value = data.get("device", [])
    if not isinstance(value, list):
        problems.add("device", "expected [[device]] tables, with double brackets, one per "
                     "device", value)
        value = []
    problems.name("device", value, id_key=None)
    fields = _wiring_fields(problems.drivers)
    seen = Seen("device")
    devices: list[WiredDevice] = []
    for index, item in enumerate(value):
        path = f"device[{index}]"
        if not isinstance(item, Mapping):
            problems.add(path, "expected a [[device]] table", item)
            continue
        values, ok = read_table(problems, path, item, fields)
        chip = values.get("chip")
        if chip is not None and "address" in values:
            addresses = (tca9548a.ADDRESSES if chip == MUX_CHIP
                         else problems.drivers[chip].addresses)
            ok = check_chip_address(problems, path, chip, addresses, values["address"]) and ok
        ok = check_mux_pair(problems, path, item) and ok
        if chip == MUX_CHIP and "mux" in item:
            problems.add(toml_key(path, "mux"), "a multiplexer behind a multiplexer is not "
                         "simulated; wire it to the bus itself", item["mux"], toml_hex)
            ok = False
        seen.check(problems, index, values, is_mux=chip == MUX_CHIP)
        if ok:
            devices.append(WiredDevice(**values))
    seen.finish(problems)
    if problems.lines:
        raise ConfigError(problems.lines)
    return tuple(devices)


def _wiring_fields(drivers: Registry) -> dict[str, Field]:
    chips = sorted([*drivers, MUX_CHIP])

    def chip(value: object) -> str:
        if not isinstance(value, str) or value not in chips:
            raise Bad("unknown chip; expected one of " + ", ".join(map(toml_quote, chips)))
        return value

    return {
        "chip": Field(chip, REQUIRED, 'chip = "bme280"'),
        "address": Field(i2c_address, REQUIRED, "address = 0x76", toml_hex),
        "bus": Field(bus_number, DEFAULT_BUS, ""),
        "mux": Field(mux_address, None, "", toml_hex),
        "channel": Field(whole(*CHANNEL_RANGE, " (the multiplexer channel)"), None, ""),
    }
