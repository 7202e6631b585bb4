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

from agent.config.checks import bounded_number, duration, whole
from agent.config.fields import REQUIRED, Bad, Field
from agent.core.units import parse_duration

SCHEME = "hj212"
MAX_MN = 24  # HJ 212-2017 6.3.2, table 4: MN is 27 characters with "MN="
MN_PATTERN = re.compile(r"[0-9A-Za-z]+")  # used with fullmatch
# Appendix B's codes of HJ 212-2017: the medium's letter (a air, w water, ...) and 5 digits.
CODE_PATTERN = re.compile(r"[a-z][0-9]{5}")  # used with fullmatch
# A quantity, or sensor.quantity for one sensor's (ids as agent.config.sensor allows them).
QUANTITY_PATTERN = re.compile(r"(?:[A-Za-z0-9_-]{1,64}\.)?[a-z][a-z0-9_]{0,63}")
# The units a default code can be sent in (agent.uplink.hj212.codes; the first is the default).
UNIT_CHOICES = {"a01006": ("kPa", "hPa", "Pa"), "a05001": ("mg/m³", "ppm")}
DATA_KINDS = ("realtime", "minute", "hour", "day")  # CN 2011, 2051, 2061, 2031
RTD_RANGE = (30, 3600)  # HJ 212-2017 appendix C, CN 1062: RtdInterval 30 to 3600 s
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
    units: tuple[tuple[str, str], ...] = ()  # code -> the unit it is sent in
    send: tuple[str, ...] = DATA_KINDS  # which data go: real-time, minute, hourly, daily
    realtime_interval: int = 0  # seconds between real-time packets; 0: every sample time
    minute_interval: int = 10  # minutes of one minute-data interval, dividing an hour
    heartbeat: float = 0.0  # seconds of a quiet line before a heartbeat packet; 0: none
    heartbeat_cn: str = ""  # the heartbeat packet's CN, as the platform expects
    max_packets_per_s: float = 20.0  # the pace of a backlog after an outage
    keep_days: int = 7  # minute, hourly and daily data kept for the platform's history pulls


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
            raise Bad(f"{quantity!r} is not a quantity or sensor.quantity; such as {example}")
        if not isinstance(code, str) or not CODE_PATTERN.fullmatch(code):
            shown = code if isinstance(code, str) else type(code).__name__
            raise Bad(f"{quantity} = {shown!r} is not a pollutant code of HJ 212-2017 "
                      "(a lowercase letter and 5 digits, such as \"a34004\")")
        pairs.append((quantity, code))
    return tuple(pairs)


def _units(value: object) -> tuple[tuple[str, str], ...]:
    example = '{ a01006 = "kPa", a05001 = "ppm" }'
    if not isinstance(value, Mapping) or not value:
        raise Bad(f"expected a table of pollutant code = unit, such as {example}")
    pairs = []
    for code, unit in value.items():
        choices = UNIT_CHOICES.get(code)
        if choices is None:
            known = ", ".join(UNIT_CHOICES)
            raise Bad(f"{code!r}: only {known} can be sent in more than one unit; a code "
                      "added with codes goes as stored")
        if unit not in choices:
            raise Bad(f"{code} = {unit!r}: expected one of {', '.join(choices)}")
        pairs.append((code, unit))
    return tuple(pairs)


def _send(value: object) -> tuple[str, ...]:
    if (not isinstance(value, list) or not value
            or any(v not in DATA_KINDS for v in value)):
        raise Bad(f"expected a list of {', '.join(map(repr, DATA_KINDS))}")
    return tuple(dict.fromkeys(value))


def _minutes(value: object) -> int:
    expected = 'expected a number of minutes dividing an hour, such as "10m" (1m to 60m)'
    try:
        seconds = parse_duration(value)
    except ValueError:
        raise Bad(expected) from None
    if seconds % 60 or not 60 <= seconds <= 3600 or 3600 % seconds:
        raise Bad(f"{value!r} does not divide an hour; {expected}")
    return int(seconds // 60)


def _rtd(value: object) -> int:
    expected = (f"expected 0 (every sample time) or {RTD_RANGE[0]}s to {RTD_RANGE[1]}s "
                "(HJ 212-2017 RtdInterval)")
    try:
        seconds = parse_duration(value)
    except ValueError:
        raise Bad(expected) from None
    if seconds != int(seconds) or (seconds and not RTD_RANGE[0] <= seconds <= RTD_RANGE[1]):
        raise Bad(expected)
    return int(seconds)


def _cn(value: object) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9]{4}", value):
        raise Bad('expected the 4 digits of a CN, such as "9015", as the platform asks')
    return value


_DEFAULTS = Hj212Config(mn="")
FIELDS: Mapping[str, Field] = {
    "mn": Field(_mn, REQUIRED, 'mn = "010000A8900016F000169DC0"'),
    "st": Field(whole(10, 99, " (HJ 212-2017 table 6: 22 air quality, 21 surface water)"),
                _DEFAULTS.st, ""),
    "timezone": Field(_timezone, _DEFAULTS.timezone, ""),
    "overtime": Field(duration(1.0, 600.0), _DEFAULTS.overtime, ""),
    "recount": Field(whole(0, 10), _DEFAULTS.recount, ""),
    "codes": Field(_codes, (), ""),
    "units": Field(_units, (), ""),
    "send": Field(_send, _DEFAULTS.send, ""),
    "realtime_interval": Field(_rtd, 0, ""),
    "minute_interval": Field(_minutes, _DEFAULTS.minute_interval, ""),
    "heartbeat": Field(duration(0.0, 3600.0), 0.0, ""),
    "heartbeat_cn": Field(_cn, "", ""),
    "max_packets_per_s": Field(bounded_number(0.1, 1000.0, "packets a second"),
                               _DEFAULTS.max_packets_per_s, ""),
    "keep_days": Field(whole(1, 366), _DEFAULTS.keep_days, ""),
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
