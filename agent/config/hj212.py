"""The keys of an ``[[uplink]]`` whose URL is ``hj212://host:port``: HJ 212-2017 over TCP to an
ecological-environment bureau's platform (agent.uplink.hj212).

HJ 212 has no TLS and sends its password (PW) in clear: plain ``hj212://`` is allowed to any
host, for this transport only; networks protect the link with a private APN or a VPN. The PW
is read like the upload token (``password_file``, or under systemd the credential
``upload-token-<name>``; agent.core.credentials), never from this file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agent.config.checks import duration, whole
from agent.config.fields import REQUIRED, Bad, Field

SCHEME = "hj212"
MAX_MN = 24  # HJ 212-2017 6.3.2, table 4: MN is 27 characters with "MN="
MN_PATTERN = re.compile(r"[0-9A-Za-z]+")  # used with fullmatch
# Appendix B's codes of HJ 212-2017: the medium's letter (a air, w water, ...) and 5 digits.
CODE_PATTERN = re.compile(r"[a-z][0-9]{5}")  # used with fullmatch
QUANTITY_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,63}")  # used with fullmatch
DEFAULT_ZONE = "Asia/Shanghai"  # the platforms' local time: China Standard Time
DEFAULT_ST = 22  # 6.6.1, table 6: 22 air quality monitoring
MAX_CODES = 200


@dataclass(frozen=True, slots=True)
class Hj212Config:
    """What an HJ 212 upstream adds to an ``[[uplink]]`` (agent.uplink.hj212)."""

    mn: str  # the unit's code on the platform, up to 24 letters and digits
    st: int = DEFAULT_ST  # system code: 22 air quality, 21 surface water, ...
    timezone: str = DEFAULT_ZONE  # DataTime and QN are the platform's local time
    overtime: float = 10.0  # seconds to wait for the data acknowledgement (CN 9014)
    recount: int = 3  # resends of an unacknowledged packet, byte-identical
    codes: tuple[tuple[str, str], ...] = ()  # quantity -> pollutant code, over the defaults


def _mn(value: object) -> str:
    if not isinstance(value, str) or not MN_PATTERN.fullmatch(value):
        raise Bad(f"expected the unit's MN on the platform: 1 to {MAX_MN} letters and digits")
    if len(value) > MAX_MN:
        raise Bad(f"is {len(value)} characters; HJ 212-2017 allows {MAX_MN} at most")
    return value


def _timezone(value: object) -> str:
    expected = f'expected a time zone name such as "{DEFAULT_ZONE}"'
    if not isinstance(value, str) or not value.isprintable() or not value:
        raise Bad(expected)
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise Bad(f"unknown time zone; {expected}") from None
    return value


def _codes(value: object) -> tuple[tuple[str, str], ...]:
    example = '{ pm2_5 = "a34004", co2 = "a05001" }'
    if not isinstance(value, Mapping) or not value or len(value) > MAX_CODES:
        raise Bad(f"expected a table of quantity = pollutant code, such as {example}")
    pairs = []
    for quantity, code in value.items():
        if not QUANTITY_PATTERN.fullmatch(quantity):
            raise Bad(f"{quantity!r} is not a quantity name; such as {example}")
        if not isinstance(code, str) or not CODE_PATTERN.fullmatch(code):
            shown = code if isinstance(code, str) else type(code).__name__
            raise Bad(f"{quantity} = {shown!r} is not a pollutant code of HJ 212-2017 "
                      "(a lowercase letter and 5 digits, such as \"a34004\")")
        pairs.append((quantity, code))
    return tuple(pairs)


_DEFAULTS = Hj212Config(mn="")
FIELDS: Mapping[str, Field] = {
    "mn": Field(_mn, REQUIRED, 'mn = "010000A8900016F000169DC0"'),
    "st": Field(whole(10, 99, " (HJ 212-2017 table 6: 22 air quality, 21 surface water)"),
                _DEFAULTS.st, ""),
    "timezone": Field(_timezone, _DEFAULTS.timezone, ""),
    "overtime": Field(duration(1.0, 600.0), _DEFAULTS.overtime, ""),
    "recount": Field(whole(0, 10), _DEFAULTS.recount, ""),
    "codes": Field(_codes, (), ""),
}
# The keys of an HTTP upstream that mean nothing here, and why.
NOT_HERE = {
    "format": "HJ 212 has its own format (real-time data, CN 2011)",
    "token_file": "HJ 212 has a password (PW), not a token: name its file with password_file",
    "auth": "HJ 212 sends its password (PW) in every packet",
    "allow_insecure": "HJ 212 has no TLS: plain hj212:// is allowed to any host",
    "ca_file": "HJ 212 has no TLS",
    "client_cert": "HJ 212 has no TLS",
    "client_key": "HJ 212 has no TLS",
    "measurement": "HJ 212 names data by pollutant codes (codes)",
    "read_timeout": "HJ 212 waits overtime for each acknowledgement",
    "retry_after_max": "an HJ 212 platform never asks for a delay",
}
PASSWORD_KEY = "password_file"  # stored as UplinkConfig.token_file, read like a token


def parse_settings(values: dict[str, object]) -> Hj212Config:
    """The HJ 212 settings out of a table's checked values (they are removed from it)."""
    picked = {key: values.pop(key) for key in list(FIELDS) if key in values}
    return Hj212Config(**picked)  # type: ignore[arg-type]
