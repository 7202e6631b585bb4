"""``[unit]``: who this station is and where it stands."""

from __future__ import annotations

from dataclasses import dataclass

from agent.config.checks import bounded_number, identifier
from agent.config.fields import REQUIRED, Bad, Field

SITE_MAX_CHARS = 200


@dataclass(frozen=True, slots=True)
class UnitConfig:
    """``[unit]``: who this station is and where it stands."""

    id: str
    site: str
    latitude: float | None = None
    longitude: float | None = None
    elevation_m: float | None = None


def _site(value: object) -> str:
    expected = f"expected a description of the place, 1 to {SITE_MAX_CHARS} characters on one line"
    if not isinstance(value, str) or not value.strip() or len(value) > SITE_MAX_CHARS:
        raise Bad(expected)
    if not value.isprintable():  # would break log lines and line protocol
        raise Bad(f"contains a line break or control character; {expected}")
    return value


UNIT_FIELDS = {
    "id": Field(identifier, REQUIRED, 'id = "demo-001"'),
    "site": Field(_site, REQUIRED, 'site = "Hanzhong wetland, east"'),
    "latitude": Field(bounded_number(-90, 90, "degrees"), None, ""),
    "longitude": Field(bounded_number(-180, 180, "degrees"), None, ""),
    "elevation_m": Field(bounded_number(-500, 9000, "metres"), None, ""),
}
