"""``[[uplink]]``: the upstreams, each named, its URL's scheme picking the transport; the single
``[uplink]`` table of earlier versions is still read, as the one upstream ``default``.

Secrets never go in the file (keys, URL user info and credential parameters are refused and
never shown). Plain http:// is allowed only to this machine, with ``allow_insecure``
(``allow_insecure_http``, its old name, is read as the same setting). An upstream's ``sensors``
and ``quantities`` are checked against the station's sensors and alerts, so this section is
parsed after them; :meth:`UplinkConfig.takes` answers which readings it takes.

An ``hj212://host:port`` upstream (HJ 212-2017 over TCP, agent.config.hj212) has keys of its own
and is allowed in plain text to any host: HJ 212 has no TLS. An ``mqtts://host[:port]`` upstream
(agent.config.mqtt) has keys of its own too; plain ``mqtt://`` is treated as plain http://: only
to this machine, with ``allow_insecure``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from agent.config import hj212, mqtt
from agent.config.checks import boolean, choice, duration, integer
from agent.config.fields import REQUIRED, Bad, Field, Problems, read_table, valid_keys
from agent.config.health import AGENT_HEALTH_QUANTITIES, SENSOR_HEALTH_QUANTITIES
from agent.config.hj212 import Hj212Config
from agent.config.mqtt import MqttConfig
from agent.core.credentials import AUTH_SCHEMES
from agent.core.reading import ALERT_PREFIX, DEFAULT_UPSTREAM, RESERVED_SENSOR_ID, agent_sensor
from agent.core.units import format_duration, toml_key, toml_quote, toml_value

UPLINK_FORMATS = ("influx", "json")
UPLINK_STARTS = ("oldest", "now")  # every reading still stored, or only those from now on
# An upstream's name goes into logs, status, the health readings' ``uplink`` tag, state file
# names and doctor: nothing in it may need quoting or escaping anywhere.
UPLINK_NAME_PATTERN = re.compile(r"[a-z0-9_-]{1,32}")  # used with fullmatch
# The transports of this version (agent.uplink.transports), and those DESIGN.md plans.
SCHEMES = ("https", "http", hj212.SCHEME, *mqtt.SCHEMES)
FUTURE_SCHEMES: dict[str, str] = {}  # scheme -> its name, for a transport not built yet
INSECURE_SCHEMES = ("http", "mqtt")  # plain text: to this machine only, with allow_insecure
MEASUREMENT_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,63}")  # used with fullmatch
INFLUX_V2_PATH = "/api/v2/write"
# Keys and URL parts that would put a secret in this file (readable by every technician, kept in
# backups and support tickets): refused, with the way to do it instead.
SECRET_KEYS = ("token", "password", "api_key", "apikey", "secret", "auth_token", "upload_token")
# Query parameters that carry a credential (compared lowercased): refused in a config's URL,
# masked where the config shows it (config check) and left out of the station record. u and p:
# InfluxDB 1.x query authentication; sig, signature: signed URLs (Azure SAS, presigned); key,
# api-key, x-api-key, access_key: API keys as HTTP APIs take them in the query.
SECRET_PARAMS = frozenset({"u", "p", "password", "token", "access_token", "api_key", "apikey",
                           "api-key", "x-api-key", "auth_token", "access_key", "key", "secret",
                           "sig", "signature"})
TOKEN_HOWTO = ("put the token in a file readable only by the agent's user and name it with "
               "uplink.token_file, or use LoadCredential=upload-token:/etc/envagent/upload-token "
               "in the systemd unit")
URL_EXAMPLE = 'url = "https://influx.example.org:8086/api/v2/write?org=eco&bucket=field"'
SUPPORTED = ("an https:// URL, http:// to this machine with allow_insecure = true, "
             "hj212://host:port (HJ 212-2017) or mqtts://host[:port] (MQTT)")
HJ212_EXAMPLE = 'url = "hj212://platform.example.gov.cn:6000"'
MQTT_EXAMPLE = 'url = "mqtts://broker.example.org:8883"'
MQTT_CREDENTIALS_HOWTO = ("put the MQTT user name and password (user:password on one line; a "
                          "ThingsBoard device's access token alone) in a file readable only by "
                          "the agent's user and name it with credentials_file, or use the "
                          "systemd credential upload-token-<name>")
HJ212_PW_HOWTO = ("put the HJ 212 password (PW) in a file readable only by the agent's user and "
                  "name it with password_file, or use the systemd credential "
                  "upload-token-<name>")
OLD_INSECURE_KEY = "allow_insecure_http"  # the name of allow_insecure before several upstreams


@dataclass(frozen=True, slots=True)
class UplinkConfig:
    """One ``[[uplink]]`` (or the single ``[uplink]``): where readings are delivered, which of
    them, and how patiently (seconds); see agent.uplink.worker."""

    url: str  # its scheme picks the transport
    name: str = DEFAULT_UPSTREAM  # [a-z0-9_-]: logs, status, health tags, state files, doctor
    format: str = "influx"
    allow_insecure: bool = False  # plain http://, to a loopback address only
    token_file: Path | None = None
    auth: str = "token"
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    measurement: str = "envagent"
    batch_size: int = 5000
    flush_interval: float = 60.0  # one post per interval at most, unless urgent (uplink.worker)
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    deadline: float = 60.0
    backoff_min: float = 1.0
    backoff_max: float = 300.0
    retry_after_max: float = 1800.0
    auth_retry: float = 600.0
    sensors: tuple[str, ...] | None = None  # which readings it takes; None: all
    quantities: tuple[str, ...] | None = None
    agent_readings: bool = True  # the agent's own health and alert readings, whatever selects
    start: str = "oldest"  # where an upstream new to the config starts: "oldest" | "now"
    hj212: Hj212Config | None = None  # an hj212:// upstream's own settings
    mqtt: MqttConfig | None = None  # an mqtt(s):// upstream's own settings

    @property
    def secret_key(self) -> str:
        """The key naming the file of this upstream's secret: an HJ 212 password, MQTT
        credentials or a token."""
        if self.hj212 is not None:
            return hj212.PASSWORD_KEY
        return mqtt.CREDENTIALS_KEY if self.mqtt is not None else "token_file"

    @property
    def secret_name(self) -> str:
        """What this upstream's secret is called in messages."""
        if self.hj212 is not None:
            return "HJ 212 password (PW)"
        return "MQTT credentials" if self.mqtt is not None else "upload token"

    def takes(self, sensor: str, quantity: str) -> bool:
        """Whether this upstream takes the readings of ``quantity`` from ``sensor``.

        The store asks it of every reading for every upstream, so it is a lookup or two. The
        agent's own readings (health and alerts, under ``envagent`` and ``envagent@<upstream>``)
        come with ``agent_readings`` whatever selects, else they are the sensor ``envagent``
        to ``sensors``. A sensor's health readings (``sensor_state``) are that sensor's. With
        both ``sensors`` and ``quantities``, a reading must match both.
        """
        if self.sensors is None and self.quantities is None:
            return True  # the usual upstream: everything
        if sensor.startswith(RESERVED_SENSOR_ID):
            own, _ = agent_sensor(sensor)
            if own:
                if self.agent_readings:
                    return True
                sensor = RESERVED_SENSOR_ID
        return ((self.sensors is None or sensor in self.sensors)
                and (self.quantities is None or quantity in self.quantities))


def _url(value: object) -> str:
    expected = f"expected the full write URL, such as {URL_EXAMPLE[6:]}"
    if not isinstance(value, str) or not value.isprintable() or not value.strip():
        raise Bad(expected)
    if any(char.isspace() for char in value):
        raise Bad(f"contains a space (write %20); {expected}")
    parts = urlsplit(value)
    if parts.username is not None or parts.password is not None:
        raise Bad(f"has a user name or password in it; credentials never go in the config "
                  f"file: {TOKEN_HOWTO}")
    params = {key.lower() for key, _ in parse_qsl(parts.query, keep_blank_values=True)}
    if params & SECRET_PARAMS:
        names = ", ".join(sorted(params & SECRET_PARAMS))
        raise Bad(f"carries credentials ({names}=); they never go in the config file: "
                  f"{TOKEN_HOWTO}")
    scheme = parts.scheme.lower() if "://" in value else ""
    if scheme in FUTURE_SCHEMES:
        raise Bad(f"this version of envagent cannot send over {scheme}:// "
                  f"({FUTURE_SCHEMES[scheme]}) yet; it sends to {SUPPORTED}")
    if scheme not in SCHEMES:
        if scheme:
            raise Bad(f"expected {SUPPORTED}; {scheme}:// is not a transport envagent knows")
        raise Bad(f"expected {SUPPORTED}, such as {URL_EXAMPLE[6:]}")
    try:
        port = parts.port
    except ValueError:
        raise Bad(f"the port is not a number from 1 to 65535; {expected}") from None
    if scheme == hj212.SCHEME:
        return _hj212_url(value, port)
    if scheme in mqtt.SCHEMES:
        return _mqtt_url(value)
    if not parts.hostname:
        raise Bad(f"no host name; {expected}")
    if parts.fragment:
        raise Bad(f"remove the #fragment; {expected}")
    return value


def _hj212_url(value: str, port: int | None) -> str:
    """``hj212://host:port``: the platform's address and nothing else."""
    parts = urlsplit(value)
    expected = f"expected hj212://host:port, such as {HJ212_EXAMPLE[6:]}"
    if not parts.hostname:
        raise Bad(f"no host name; {expected}")
    if port is None:
        raise Bad(f"no port (HJ 212 has no default port: ask the platform); {expected}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise Bad(f"HJ 212 takes no path, query or #fragment; {expected}")
    return value


def _mqtt_url(value: str) -> str:
    """``mqtts://host[:port]``: the broker's address; the topics come from ``topic``."""
    parts = urlsplit(value)
    expected = f"expected mqtts://host[:port], such as {MQTT_EXAMPLE[6:]}"
    if not parts.hostname:
        raise Bad(f"no host name; {expected}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise Bad(f"an MQTT URL takes no path, query or #fragment (the topic is set by topic); "
                  f"{expected}")
    return value


def _show_url(value: object) -> str:
    """The URL as written, with any user name, password or credential parameter masked."""
    if not isinstance(value, str):
        return toml_value(value)
    try:
        parts = urlsplit(value)
        netloc = parts.netloc
        if "@" in netloc:
            netloc = "***@" + netloc.rsplit("@", 1)[1]
        query = "&".join(
            f"{key}=***" if key.lower() in SECRET_PARAMS else f"{key}={item}"
            for key, item in parse_qsl(parts.query, keep_blank_values=True))
        shown = urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return '"(an unusable URL)"'
    return toml_value(shown)


def _file_path(value: object) -> Path:
    if not isinstance(value, str) or not value.strip() or not value.isprintable():
        raise Bad('expected a file path such as "/etc/envagent/upload-token"')
    return Path(value)


def _measurement(value: object) -> str:
    if not isinstance(value, str) or not MEASUREMENT_PATTERN.fullmatch(value):
        raise Bad("expected 1 to 64 letters, digits, '.', '_' or '-', starting with a letter")
    return value


def _uplink_name(value: object) -> str:
    if not isinstance(value, str) or not UPLINK_NAME_PATTERN.fullmatch(value):
        raise Bad("expected 1 to 32 lowercase letters, digits, '_' or '-' (it names the "
                  "upstream in logs, status, health readings and state files)")
    return value


def _names(example: str) -> Callable[[object], tuple[str, ...]]:
    """A list of names; whether each exists is checked against the station (_check_selection)."""

    def check(value: object) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise Bad(f"expected a list of quoted names such as {example}")
        if not value:
            raise Bad("an empty list takes nothing; leave the key out to take them all")
        return tuple(value)

    return check


_UPLINK_DEFAULTS = {f.name: f.default for f in dataclasses.fields(UplinkConfig)}
_UPLINK_FIELDS = {
    "url": Field(_url, REQUIRED, URL_EXAMPLE, _show_url),
    "format": Field(choice(UPLINK_FORMATS), _UPLINK_DEFAULTS["format"], ""),
    "allow_insecure": Field(boolean, _UPLINK_DEFAULTS["allow_insecure"], ""),
    "token_file": Field(_file_path, None, ""),
    "auth": Field(choice(AUTH_SCHEMES), _UPLINK_DEFAULTS["auth"], ""),
    "ca_file": Field(_file_path, None, ""),
    "client_cert": Field(_file_path, None, ""),
    "client_key": Field(_file_path, None, ""),
    "measurement": Field(_measurement, _UPLINK_DEFAULTS["measurement"], ""),
    "batch_size": Field(integer(1000, 100_000), _UPLINK_DEFAULTS["batch_size"], ""),
    "flush_interval": Field(duration(1.0, 3600.0), _UPLINK_DEFAULTS["flush_interval"], ""),
    "connect_timeout": Field(duration(1.0, 300.0), _UPLINK_DEFAULTS["connect_timeout"], ""),
    "read_timeout": Field(duration(1.0, 600.0), _UPLINK_DEFAULTS["read_timeout"], ""),
    "deadline": Field(duration(1.0, 1800.0), _UPLINK_DEFAULTS["deadline"], ""),
    "backoff_min": Field(duration(0.1, 3600.0), _UPLINK_DEFAULTS["backoff_min"], ""),
    "backoff_max": Field(duration(1.0, 86400.0), _UPLINK_DEFAULTS["backoff_max"], ""),
    "retry_after_max": Field(duration(1.0, 86400.0), _UPLINK_DEFAULTS["retry_after_max"], ""),
    "auth_retry": Field(duration(10.0, 86400.0), _UPLINK_DEFAULTS["auth_retry"], ""),
    "name": Field(_uplink_name, _UPLINK_DEFAULTS["name"], 'name = "network"'),
    "sensors": Field(_names('["air", "dust"]'), None, ""),
    "quantities": Field(_names('["pm2_5", "pm10"]'), None, ""),
    "agent_readings": Field(boolean, _UPLINK_DEFAULTS["agent_readings"], ""),
    "start": Field(choice(UPLINK_STARTS), _UPLINK_DEFAULTS["start"], ""),
}
# In [[uplink]] every upstream is named; the old name of allow_insecure is read, not advertised.
_NAMED_UPLINK_FIELDS = _UPLINK_FIELDS | {"name": _UPLINK_FIELDS["name"]._replace(default=REQUIRED)}
_UPLINK_VALID = valid_keys(_UPLINK_FIELDS)
_HJ212_ONLY = {**hj212.FIELDS, hj212.PASSWORD_KEY: Field(_file_path, None, "")}
_MQTT_ONLY = {**mqtt.FIELDS, mqtt.CREDENTIALS_KEY: Field(_file_path, None, "")}


def _hj212_fields(fields: Mapping[str, Field]) -> dict[str, Field]:
    """An hj212:// upstream's keys: the common ones and its own."""
    return {**{k: v for k, v in fields.items() if k not in hj212.NOT_HERE}, **_HJ212_ONLY}


def _mqtt_fields(fields: Mapping[str, Field]) -> dict[str, Field]:
    """An mqtt(s):// upstream's keys: the common ones and its own."""
    return {**{k: v for k, v in fields.items() if k not in mqtt.NOT_HERE}, **_MQTT_ONLY}


def _is_hj212(table: Mapping[str, Any]) -> bool:
    url = table.get("url")
    return isinstance(url, str) and url.lower().startswith(hj212.SCHEME + "://")


def _is_mqtt(table: Mapping[str, Any]) -> bool:
    url = table.get("url")
    return isinstance(url, str) and url.lower().startswith(tuple(f"{s}://"
                                                                 for s in mqtt.SCHEMES))
_OLD_UPLINK_FIELDS = {OLD_INSECURE_KEY: Field(boolean, None, "")}


def parse_uplinks(problems: Problems, value: object) -> tuple[UplinkConfig, ...] | None:
    """``[[uplink]]`` tables, or the one ``[uplink]`` table of earlier versions (then named
    ``default`` unless it says otherwise); absent means sample and store only."""
    if value is None:
        return ()
    if isinstance(value, Mapping):
        uplink = _read_uplink(problems, "uplink", value, _UPLINK_FIELDS)
        return None if uplink is None else (uplink,)
    if not isinstance(value, list):
        problems.add("uplink", "expected [[uplink]] tables, one per upstream (or a single "
                     "table [uplink])", value)
        return None
    problems.name("uplink", value, id_key="name", pattern=UPLINK_NAME_PATTERN)
    labels = problems.labels["uplink"]
    uplinks: list[UplinkConfig] = []
    names: dict[str, int] = {}
    for index, item in enumerate(value):
        path = f"uplink[{index}]"
        if not isinstance(item, Mapping):
            problems.add(path, "expected an [[uplink]] table", item)
            continue
        uplink = _read_uplink(problems, path, item, _NAMED_UPLINK_FIELDS)
        name = item.get("name")
        if isinstance(name, str) and name in names:
            earlier = labels.line(names[name])
            at = "" if earlier is None else f" (line {earlier})"
            problems.add(toml_key(path, "name"), f"already used by an earlier [[uplink]]{at}; "
                         "give each upstream its own name", name)
        elif isinstance(name, str):
            names[name] = index
        if uplink is not None:
            uplinks.append(uplink)
    return tuple(uplinks)


def _read_uplink(problems: Problems, path: str, table: Mapping[str, Any],
                 fields: Mapping[str, Field]) -> UplinkConfig | None:
    """One upstream, or None when it has a problem."""
    before = len(problems.lines)
    table = dict(table)
    is_hj212, is_mqtt = _is_hj212(table), _is_mqtt(table)
    for key in list(table):
        if isinstance(key, str) and (key.lower() in SECRET_KEYS
                                     or (is_hj212 and key.lower() == "pw")
                                     or (is_mqtt and key.lower() in ("username", "user"))):
            del table[key]  # and never shown: the problem line names the key only
            howto = (HJ212_PW_HOWTO if is_hj212 else MQTT_CREDENTIALS_HOWTO if is_mqtt
                     else TOKEN_HOWTO)
            problems.add(toml_key(path, key), "a secret never goes in the config file; " + howto)
        elif is_hj212 and key in hj212.NOT_HERE:
            del table[key]
            problems.add(toml_key(path, key), f"does not apply to an hj212:// upstream: "
                         f"{hj212.NOT_HERE[key]}")
        elif is_mqtt and key in mqtt.NOT_HERE:
            del table[key]
            problems.add(toml_key(path, key), f"does not apply to an MQTT upstream: "
                         f"{mqtt.NOT_HERE[key]}")
        elif is_mqtt and key == "qos":
            del table[key]
            problems.add(toml_key(path, key), f"cannot be set: the QoS is {mqtt.QOS_WORDS}")
        elif not is_hj212 and key in _HJ212_ONLY:
            del table[key]
            problems.add(toml_key(path, key), "applies to hj212:// upstreams only (HJ 212-2017)")
        elif not is_mqtt and key in _MQTT_ONLY:
            del table[key]
            problems.add(toml_key(path, key), "applies to mqtt:// and mqtts:// upstreams only")
    if is_hj212:
        fields = _hj212_fields(fields)
    elif is_mqtt:
        fields = _mqtt_fields(fields)
    values, _ = read_table(problems, path, table, {**fields, **_OLD_UPLINK_FIELDS},
                           valid_keys(fields) if is_hj212 or is_mqtt else _UPLINK_VALID)
    if is_hj212:
        _hj212_values(problems, path, values)
    elif is_mqtt:
        _mqtt_values(problems, path, values)
    old = values.pop(OLD_INSECURE_KEY, None)
    if OLD_INSECURE_KEY in table and "allow_insecure" not in table and old is not None:
        values["allow_insecure"] = old  # the same setting under its old name
    elif old is not None and "allow_insecure" in values and old != values["allow_insecure"]:
        problems.add(toml_key(path, OLD_INSECURE_KEY), "is the old name of allow_insecure, "
                     f"which says {toml_value(values['allow_insecure'])}; keep only "
                     "allow_insecure", old)
    _check_uplink(problems, path, values)
    _check_selection(problems, path, values)
    return UplinkConfig(**values) if len(problems.lines) == before else None


def _hj212_values(problems: Problems, path: str, values: dict[str, Any]) -> None:
    """An hj212:// upstream's own keys into :class:`Hj212Config`; its password file is read
    as a token is (``token_file``), and its codes name quantities this station reports."""
    values["token_file"] = values.pop(hj212.PASSWORD_KEY, None)
    values["format"] = hj212.SCHEME
    codes = values.get("codes") or ()
    if codes:
        reports = _station_reports(problems)
        if all(q is not None for q in reports.values()):
            health = (*SENSOR_HEALTH_QUANTITIES, *AGENT_HEALTH_QUANTITIES)
            known = list(dict.fromkeys(q for qs in reports.values() for q in qs or ()
                                       if q not in health and not q.startswith(ALERT_PREFIX)))
            unknown = [quantity for quantity, _ in codes if not _reported(quantity, known,
                                                                         reports)]
            if unknown:
                problems.add(toml_key(path, "codes"), "no sensor of this station reports "
                             f"{', '.join(map(toml_quote, unknown))}; expected quantities "
                             f"such as {', '.join(known[:8])}")
    if "mn" in values:
        values["hj212"] = hj212.parse_settings(values)
    else:
        for key in hj212.FIELDS:
            values.pop(key, None)


def _reported(quantity: str, known: list[str],
              reports: Mapping[str, Sequence[str] | None]) -> bool:
    """Whether some sensor reports ``quantity`` (or, as ``sensor.quantity``, that one)."""
    sensor, dot, name = quantity.rpartition(".")
    return name in (reports.get(sensor) or ()) if dot else name in known


def _mqtt_values(problems: Problems, path: str, values: dict[str, Any]) -> None:
    """An mqtt(s):// upstream's own keys into :class:`MqttConfig`; its credentials file is
    read as a token is (``token_file``)."""
    values["token_file"] = values.pop(mqtt.CREDENTIALS_KEY, None)
    settings, bad = mqtt.parse_settings(values)
    for key, message in bad:
        problems.add(toml_key(path, key), message)
    values["mqtt"] = settings
    values["format"] = settings.payload


def _check_uplink(problems: Problems, path: str, values: Mapping[str, Any]) -> None:
    """The rules between keys: plain http, InfluxDB URL parameters, pairs of settings."""
    url = values.get("url")
    at = toml_key(path, "url")
    if url is not None:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        secure = "mqtts" if scheme == "mqtt" else "https"
        what = "a broker" if scheme == "mqtt" else "a collector"
        secret = "credentials" if scheme == "mqtt" else "token"
        if scheme in INSECURE_SCHEMES and not values.get("allow_insecure"):
            problems.add(at, f"plain {scheme} sends readings and the {secret} unencrypted; "
                         f"use {secure}://, or for {what} on this machine set allow_insecure "
                         "= true and a loopback host", url, _show_url)
        elif scheme in INSECURE_SCHEMES and not _loopback(parts.hostname or ""):
            problems.add(at, f"allow_insecure allows plain {scheme} only to this machine "
                         f"(127.0.0.1, ::1 or localhost); use {secure}:// for any other host",
                         url, _show_url)
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        if values.get("format") == "influx" and params.get("precision", "ns") != "ns":
            problems.add(at, "the agent sends nanosecond timestamps; remove precision= "
                         "(precision=ns is added)", url, _show_url)
        if parts.path.rstrip("/").endswith(INFLUX_V2_PATH) and "bucket" not in params:
            problems.add(at, "InfluxDB 2 needs the bucket and organisation: add "
                         "?org=...&bucket=... to the URL", url, _show_url)
    if values.get("client_key") is not None and values.get("client_cert") is None:
        problems.add(toml_key(path, "client_key"), "set client_cert too (the certificate of "
                     "this key)")
    low, high = values.get("backoff_min"), values.get("backoff_max")
    if low is not None and high is not None and low > high:
        problems.add(toml_key(path, "backoff_min"), f"is longer than backoff_max "
                     f"({format_duration(high)}); make it shorter", low, format_duration)
    connect, deadline = values.get("connect_timeout"), values.get("deadline")
    if connect is not None and deadline is not None and deadline < connect:
        problems.add(toml_key(path, "deadline"), f"is shorter than connect_timeout "
                     f"({format_duration(connect)}); make it longer", deadline, format_duration)


def _check_selection(problems: Problems, path: str, values: Mapping[str, Any]) -> None:
    """``sensors`` name sensors of this station (or the agent), ``quantities`` quantities that
    the sensors it takes report: a typo would otherwise starve an upstream without a word."""
    sensors, quantities = values.get("sensors"), values.get("quantities")
    reports = _station_reports(problems)
    if sensors is not None:
        unknown = [s for s in sensors if s not in reports]
        if unknown:
            known = [toml_quote(s) for s in reports if s != RESERVED_SENSOR_ID] or ["none"]
            agent = toml_quote(RESERVED_SENSOR_ID)
            problems.add(toml_key(path, "sensors"), f"no [[sensor]] has the id "
                         f"{', '.join(map(toml_quote, unknown))}; expected ids of this "
                         f"station's sensors ({', '.join(known)}) or {agent} (the agent's own "
                         "health and alert readings)", sensors)
    if quantities is None:
        return
    taken = [s for s in reports if sensors is None or s in sensors]
    if any(reports[s] is None for s in taken):
        return  # a sensor with bad options: its quantities are unknown (and it is reported)
    known_quantities = list(dict.fromkeys(q for s in taken for q in reports[s] or ()))
    unknown = [q for q in quantities if q not in known_quantities]
    if unknown:
        scope = "of this station" if sensors is None else "it takes"
        problems.add(toml_key(path, "quantities"), f"no sensor {scope} reports "
                     f"{', '.join(map(toml_quote, unknown))}; expected one of "
                     f"{', '.join(known_quantities)}", quantities)


def _station_reports(problems: Problems) -> dict[str, tuple[str, ...] | None]:
    """What each sensor of the station (and the agent itself) reports; None: cannot tell."""
    reports: dict[str, tuple[str, ...] | None] = {
        sensor: None if quantities is None else (*quantities, *SENSOR_HEALTH_QUANTITIES)
        for sensor, (_, quantities) in problems.sensors.items()
    }
    alerts = tuple(ALERT_PREFIX + alert for alert in problems.alerts)
    reports[RESERVED_SENSOR_ID] = AGENT_HEALTH_QUANTITIES + alerts
    return reports


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False
