"""The keys of an ``[[uplink]]`` whose URL is ``mqtts://host[:port]`` (or ``mqtt://`` to this
machine): readings published to an MQTT broker (agent.uplink.mqtt).

The topic comes from a template with ``{site}``, ``{unit}`` and ``{sensor}``. The template is
checked here: no wildcard (``+``, ``#``), no NUL, no ``$`` at its start (the broker's own
``$SYS`` tree), only those three placeholders. The values put into it are *escaped*, never
refused (a site is free text, and may well say "A/B road"): agent.uplink.mqtt.topics
percent-encodes ``/``, ``+``, ``#``, ``%``, ``$`` and control characters in them, so no id can
create or escape a topic level.

The credentials are read like an upload token (agent.core.credentials): from
``credentials_file`` or the systemd credential ``upload-token-<name>``, one line ``user:password``,
or ``user`` alone (a ThingsBoard device's access token, which is its MQTT user name) -- never from
this file or the environment. A client certificate and key (``client_cert``, ``client_key``) are
files too; under systemd point them at ``/run/credentials/envagent.service/<name>`` given by
``LoadCredential=``.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

from agent.config.checks import byte_size, duration, whole
from agent.config.fields import Bad, Field

SCHEMES = ("mqtt", "mqtts")
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}  # IANA: mqtt 1883, secure-mqtt 8883
PAYLOADS = ("json", "lineprotocol", "thingsboard")
THINGSBOARD_TOPIC = "v1/devices/me/telemetry"  # ThingsBoard's device telemetry API
DEFAULT_TOPIC = "envagent/{site}/{unit}/{sensor}"
DEFAULT_STATUS_PREFIX = "envagent/{site}/{unit}"
STATUS_LEVEL = "status"  # the will and the online message go to <status_prefix>/status
TOPIC_MAX_CHARS = 1024  # the template; MQTT allows 65,535 bytes for the rendered topic
TOPIC_FIELDS = ("site", "unit", "sensor")
MIN_MESSAGE_BYTES = 1024
# MQTT 5 1.5.5: a packet's Remaining Length is at most 268,435,455; a Pi sends far less at once.
MAX_MESSAGE_BYTES = 16 * 1024**2
DEFAULT_MESSAGE_BYTES = 64 * 1024  # ThingsBoard's default netty.max_payload_size: 65,536
MAX_SESSION_EXPIRY_S = 0xFFFFFFFF - 1  # MQTT 5 3.1.2.11.2: 0xFFFFFFFF would mean "never"
MAX_KEEPALIVE_S = 65535  # MQTT 5 3.1.2.10: a two-byte integer of seconds
CREDENTIALS_KEY = "credentials_file"  # stored as UplinkConfig.token_file, read like a token
CLIENT_ID_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # used with fullmatch


@dataclass(frozen=True, slots=True)
class MqttConfig:
    """What an MQTT upstream adds to an ``[[uplink]]`` (agent.uplink.mqtt)."""

    topic: str = DEFAULT_TOPIC  # {site}, {unit}, {sensor}; ThingsBoard: its telemetry topic
    payload: str = "json"  # "json" | "lineprotocol" | "thingsboard"
    max_message_bytes: int = DEFAULT_MESSAGE_BYTES  # a message's payload at most
    max_inflight: int = 20  # messages published and not yet acknowledged (PUBACK), at most
    keepalive: int = 60  # seconds
    session_expiry: int = 86400  # seconds the broker keeps the session after a disconnect
    status_prefix: str | None = DEFAULT_STATUS_PREFIX  # None: no status topic (ThingsBoard)
    client_id: str | None = None  # None: envagent-<unit>-<upstream name>


def check_template(template: str, fields: tuple[str, ...]) -> str:
    """``template`` if it makes a topic name whatever its ``fields`` hold; Bad otherwise."""
    example = "such as " + ('"envagent/{site}/{unit}/{sensor}"' if "sensor" in fields
                            else '"envagent/{site}/{unit}"')
    if not template or len(template) > TOPIC_MAX_CHARS:
        raise Bad(f"expected a topic of 1 to {TOPIC_MAX_CHARS} characters, {example}")
    if "+" in template or "#" in template:
        raise Bad(f"contains a wildcard (+ or #), which a topic to publish to cannot have; "
                  f"{example}")
    if not template.isprintable():
        raise Bad(f"contains a control character; {example}")
    if template.startswith("$"):
        raise Bad(f"topics starting with $ belong to the broker ($SYS); {example}")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError:
        raise Bad(f"a {{ or }} does not pair up (write {{{{ or }}}} for a brace); "
                  f"{example}") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in fields or spec or conversion:
            known = ", ".join("{" + f + "}" for f in fields)
            raise Bad(f"{{{name}}} is not a placeholder here; expected {known}")
    return template


def _template(fields: tuple[str, ...]) -> Field:
    def check(value: object) -> str:
        if not isinstance(value, str):
            raise Bad("expected a quoted topic such as \"envagent/{site}/{unit}/{sensor}\"")
        return check_template(value, fields)

    return Field(check, None, "")


def _client_id(value: object) -> str:
    if not isinstance(value, str) or not CLIENT_ID_PATTERN.fullmatch(value):
        raise Bad("expected 1 to 64 letters, digits, '_', '.' or '-' (the broker keeps this "
                  "client's session under it: one per unit and upstream)")
    return value


def _payload(value: object) -> str:
    if value not in PAYLOADS:
        raise Bad("expected one of " + ", ".join(f'"{p}"' for p in PAYLOADS))
    return str(value)


_DEFAULTS = MqttConfig()
FIELDS: dict[str, Field] = {
    "topic": _template(TOPIC_FIELDS),
    "payload": Field(_payload, _DEFAULTS.payload, ""),
    "max_message_bytes": Field(byte_size(MIN_MESSAGE_BYTES), _DEFAULTS.max_message_bytes, ""),
    "max_inflight": Field(whole(1, 1000), _DEFAULTS.max_inflight, ""),
    "keepalive": Field(duration(5.0, MAX_KEEPALIVE_S), float(_DEFAULTS.keepalive), ""),
    "session_expiry": Field(duration(0.0, MAX_SESSION_EXPIRY_S),
                            float(_DEFAULTS.session_expiry), ""),
    "status_prefix": _template(("site", "unit")),
    "client_id": Field(_client_id, None, ""),
}
# The keys of an HTTP upstream that mean nothing here, and why.
NOT_HERE = {
    "format": "an MQTT upstream chooses its payload: payload = \"json\", \"lineprotocol\" or "
              "\"thingsboard\"",
    "token_file": "an MQTT upstream's user name and password are in credentials_file",
    "auth": "MQTT sends its user name and password in CONNECT (credentials_file)",
    "retry_after_max": "an MQTT broker never asks for a delay",
}
QOS_WORDS = "always 1 (at least once): a reading is delivered when the broker's PUBACK came back"


def parse_settings(values: dict[str, object]) -> tuple[MqttConfig, list[tuple[str, str]]]:
    """The MQTT settings out of a table's checked values (they are removed from it), and the
    problems between them as (key, message) pairs."""
    picked = {key: values.pop(key) for key in list(FIELDS) if key in values}
    problems: list[tuple[str, str]] = []
    size = picked.get("max_message_bytes")
    if isinstance(size, int) and size > MAX_MESSAGE_BYTES:
        problems.append(("max_message_bytes", f"is more than {MAX_MESSAGE_BYTES // 1024**2} MiB; "
                         "a unit never needs messages that large"))
    payload = picked.get("payload", _DEFAULTS.payload)
    topic, status = picked.pop("topic", None), picked.pop("status_prefix", None)
    if payload == "thingsboard":
        if topic is not None and topic != THINGSBOARD_TOPIC:
            problems.append(("topic", f"ThingsBoard takes telemetry on {THINGSBOARD_TOPIC} only; "
                             "leave topic out"))
        if status is not None:
            problems.append(("status_prefix", "ThingsBoard has no last will (it tracks device "
                             "activity itself); leave status_prefix out"))
        topic, status_prefix = THINGSBOARD_TOPIC, None
    else:
        status_prefix = status if status is not None else DEFAULT_STATUS_PREFIX
        topic = topic if topic is not None else DEFAULT_TOPIC
    keepalive = picked.pop("keepalive", _DEFAULTS.keepalive)
    expiry = picked.pop("session_expiry", _DEFAULTS.session_expiry)
    settings = MqttConfig(topic=str(topic),
                          status_prefix=None if status_prefix is None else str(status_prefix),
                          keepalive=round(float(keepalive)),  # type: ignore[arg-type]
                          session_expiry=round(float(expiry)),  # type: ignore[arg-type]
                          **picked)  # type: ignore[arg-type]
    return settings, problems
