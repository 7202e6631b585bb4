"""The configuration file: TOML in, typed frozen dataclasses out, every problem found up front.

Validation never stops at the first mistake: a field technician with twenty minutes per site
wants the whole list at once, one line per problem, each naming the file, the key, the bad value
and what to write instead. Bad input only ever raises :class:`~agent.core.errors.ConfigError`.

One module per section (unit, storage, sensor, uplink, indicator, health, alert, and the wiring
file), over the shared machinery of agent.config.fields and agent.config.checks. Adding a
section means a module with its dataclass and parser, a field on :class:`Config`, and one entry
in ``_SECTIONS``: ``table_section`` over a dict of ``Field``s for a plain table.

A problem inside a ``[[sensor]]`` (or ``[[uplink]]``) names the table by its id (name) and, when
the file's text is at hand, the line of the key (agent.config.tomllines): ``sensor 'air' (line
14): intervall: unknown key``.

This module re-exports what the other packages import, so they import from ``agent.config``
only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from agent.config.alert import AlertConfig, parse_alerts
from agent.config.document import MAX_CONFIG_BYTES, read_toml
from agent.config.fields import REQUIRED, Problems, Registry, registry, table_section, valid_keys
from agent.config.health import (
    AGENT_HEALTH_QUANTITIES,
    HEALTH_FIELDS,
    SENSOR_HEALTH_QUANTITIES,
    HealthConfig,
)
from agent.config.indicator import IndicatorConfig, parse_indicator
from agent.config.sensor import SensorConfig, parse_sensors, quantity_name_problem
from agent.config.storage import DEFAULT_STORAGE_PATH, STORAGE_FIELDS, StorageConfig
from agent.config.unit import UNIT_FIELDS, UnitConfig
from agent.config.uplink import SECRET_PARAMS, UplinkConfig, parse_uplinks
from agent.config.wiring import WiredDevice, load_wiring, parse_wiring
from agent.core.errors import ConfigError
from agent.core.units import one_line, parse_duration, parse_size, toml_key

__all__ = [
    "AGENT_HEALTH_QUANTITIES",
    "DEFAULT_STORAGE_PATH",
    "MAX_CONFIG_BYTES",
    "SECRET_PARAMS",
    "SENSOR_HEALTH_QUANTITIES",
    "AlertConfig",
    "Config",
    "ConfigError",
    "HealthConfig",
    "IndicatorConfig",
    "SensorConfig",
    "StorageConfig",
    "UnitConfig",
    "UplinkConfig",
    "WiredDevice",
    "load_config",
    "load_wiring",
    "parse_config",
    "parse_duration",
    "parse_size",
    "parse_wiring",
    "quantity_name_problem",
]


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration; ``source`` names the file it came from."""

    unit: UnitConfig
    storage: StorageConfig = StorageConfig()
    sensors: tuple[SensorConfig, ...] = ()
    uplinks: tuple[UplinkConfig, ...] = ()  # none: sample and store only
    indicator: IndicatorConfig | None = None
    health: HealthConfig = HealthConfig()
    alerts: tuple[AlertConfig, ...] = ()
    source: str = "config"

    def with_storage_path(self, path: Path | str) -> Config:
        """A copy with another state directory (the CLI's ``--data-dir``)."""
        storage = dataclasses.replace(self.storage, path=Path(path))
        return dataclasses.replace(self, storage=storage)


def load_config(path: Path | str, *, drivers: Registry | None = None) -> Config:
    """Read, parse and validate the file at ``path``; raise :class:`ConfigError` if unusable."""
    source = one_line(str(path))
    data, text = read_toml(Path(path), source, "configuration file")
    return parse_config(data, source=source, drivers=drivers, text=text)


def parse_config(
    data: Mapping[str, Any],
    *,
    source: str = "config",
    drivers: Registry | None = None,
    text: str | None = None,
) -> Config:
    """Validate already-parsed TOML ``data``; raise :class:`ConfigError` listing every problem.

    ``text``, the file ``data`` was parsed from, lets problems give the line of a sensor's key.
    """
    problems = Problems(one_line(source), registry(drivers), text)
    if not isinstance(data, Mapping):
        problems.add("(document)", "expected a TOML document (a table of sections)")
        raise ConfigError(problems.lines)
    values = _read_sections(problems, data)
    if problems.lines:
        raise ConfigError(problems.lines)
    return Config(**values, source=source)


class _Section(NamedTuple):
    """A top-level key: the Config field it fills, its parser, and its value when absent.

    A ``late`` section is parsed after the others (whose names it checks), wherever it is
    listed; ``_SECTIONS``'s order is the order of the valid keys named for an unknown one.
    """

    field: str
    parse: Callable[[Problems, object], Any]
    absent: object  # parsed when the key is missing; REQUIRED if it must be present
    example: str = ""
    late: bool = False


_SECTIONS: dict[str, _Section] = {
    "unit": _Section(
        "unit",
        table_section("unit", UNIT_FIELDS, UnitConfig),
        REQUIRED,
        "a [unit] table with at least id and site",
    ),
    "storage": _Section("storage", table_section("storage", STORAGE_FIELDS, StorageConfig), {}),
    "sensor": _Section("sensors", parse_sensors, []),
    "uplink": _Section("uplinks", parse_uplinks, None, late=True),  # names sensors, alerts
    "indicator": _Section("indicator", parse_indicator, None),
    "health": _Section("health", table_section("health", HEALTH_FIELDS, HealthConfig), {}),
    "alert": _Section("alerts", parse_alerts, []),  # after "sensor": it checks against them
}


def _read_sections(problems: Problems, data: Mapping[str, Any]) -> dict[str, Any]:
    for key in data:
        if key not in _SECTIONS:
            problems.add(toml_key("", key), f"unknown key; {valid_keys(_SECTIONS)}")
    values = {}
    for key, section in sorted(_SECTIONS.items(), key=lambda item: item[1].late):
        if key in data:
            values[section.field] = section.parse(problems, data[key])
        elif section.absent is REQUIRED:
            problems.add(key, f"missing; add {section.example}")
        else:
            values[section.field] = section.parse(problems, section.absent)
    return values
