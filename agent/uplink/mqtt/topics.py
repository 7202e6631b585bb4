"""Topic names from the ``topic`` template: ``{site}``, ``{unit}`` and ``{sensor}`` filled with
values that can never create or escape a topic level.

The choice is to *escape*, not to refuse (MQTT 5 4.7: ``/`` separates levels, ``+`` and ``#`` are
wildcards, U+0000 is forbidden, a leading ``$`` is the broker's): a site is free text and may say
"A/B road, #2" -- refusing it would make a unit unusable over a street name. Each value is
percent-encoded as a URL path segment is (RFC 3986 2.1: ``%`` followed by two uppercase hex
digits of each UTF-8 byte) for exactly these characters: ``/ + # % $``, and every control
character (C0, DEL, C1). Everything else, non-ASCII text included, goes through as it is, so
``汉中 wetland`` stays readable. ``%`` itself is escaped, so the encoding is reversible
(``urllib.parse.unquote``) and two different values never give the same level. (No value is
empty: the config refuses empty ids and sites.)

The template itself is checked at config time (agent.config.mqtt.check_template).
"""

from __future__ import annotations

import re

from agent.core.reading import RESERVED_SENSOR_ID, agent_sensor

# What a value may not carry into a topic as it is: the level separator, the wildcards, the
# escape character itself, the broker's $ and every control character (NUL among them).
_SPECIAL = re.compile(r"[/+#%$\x00-\x1f\x7f-\x9f]")


def escape_level(value: str) -> str:
    """``value`` made safe inside one topic level (see the module docstring)."""
    return _SPECIAL.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode("utf-8")),
                        value)


class Topics:
    """The topic of each sensor's readings, rendered once per sensor id and kept.

    The agent's own readings (health, alerts: sensor ``envagent`` and ``envagent@<upstream>``)
    go to the topic of the sensor ``envagent``: the payload says which upstream one is about,
    as the line protocol's ``uplink`` tag does.
    """

    def __init__(self, template: str, *, site: str, unit: str) -> None:
        self._template = template
        self._site, self._unit = escape_level(site), escape_level(unit)
        self._cache: dict[str, str] = {}

    def __call__(self, sensor: str) -> str:
        topic = self._cache.get(sensor)
        if topic is None:
            own, _ = agent_sensor(sensor)
            shown = RESERVED_SENSOR_ID if own else sensor
            topic = self._template.format_map(_Values(site=self._site, unit=self._unit,
                                                      sensor=escape_level(shown)))
            if len(self._cache) < MAX_CACHED:
                self._cache[sensor] = topic
        return topic


MAX_CACHED = 4096  # sensor ids of one station: a few dozen


def status_topic(prefix: str, level: str, *, site: str, unit: str) -> str:
    """``<prefix>/<level>`` with ``{site}`` and ``{unit}`` in the prefix filled, escaped."""
    filled = prefix.format_map(_Values(site=escape_level(site), unit=escape_level(unit)))
    return f"{filled.rstrip('/')}/{level}"


class _Values(dict[str, str]):
    """The template's values; a placeholder not given here cannot occur (config checks it)."""

    def __init__(self, **values: str) -> None:
        super().__init__(values)

    def __missing__(self, key: str) -> str:
        raise KeyError(f"topic template placeholder {{{key}}} has no value")

