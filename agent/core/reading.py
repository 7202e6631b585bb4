"""The unit of data: one quantity of one sample, with everything needed to trust its time."""

from __future__ import annotations

from typing import NamedTuple

RESERVED_SENSOR_ID = "envagent"  # the agent's own readings: health (agent.runtime.health), alerts
# the quantity of an alert reading is alert_<rule id> (agent.sampling.alerts)
# The agent's readings about one upstream: sensor id "envagent@<upstream name>", sent as the tags
# sensor=envagent and uplink=<name> (agent.uplink encoders), so one query groups them by upstream.
UPSTREAM_SEPARATOR = "@"
DEFAULT_UPSTREAM = "default"  # the name of the single [uplink] table's upstream
ALERT_PREFIX = "alert_"


def is_alert(sensor: str, quantity: str) -> bool:
    """Whether a reading of ``sensor`` and ``quantity`` is an alert: sent ahead of any backlog,
    so newer than readings still waiting."""
    return sensor == RESERVED_SENSOR_ID and quantity.startswith(ALERT_PREFIX)


def upstream_sensor(name: str) -> str:
    """The sensor id of the agent's readings about upstream ``name``."""
    return RESERVED_SENSOR_ID + UPSTREAM_SEPARATOR + name


def agent_sensor(sensor: str) -> tuple[bool, str | None]:
    """Whether ``sensor`` is one of the agent's own, and which upstream it is about, if any."""
    if sensor == RESERVED_SENSOR_ID:
        return True, None
    head, separator, name = sensor.partition(UPSTREAM_SEPARATOR)
    if separator and head == RESERVED_SENSOR_ID and name:
        return True, name
    return False, None


class Reading(NamedTuple):
    """A reading as sampled; immutable so a replay sends exactly what was stored.

    A named tuple rather than a frozen dataclass: a backlog drain builds ~100,000 a second,
    and a frozen dataclass's ``__init__`` (one ``object.__setattr__`` per field) cost 2 µs of
    a 5 µs budget per delivered reading; a tuple costs a fifth of that (bench/bench_drain.py).

    ``time_ns`` is the wall clock (ns since the epoch) at the sample; ``boot_ns`` is
    CLOCK_BOOTTIME at the same instant and ``boot_id`` the kernel's boot id, so a reading taken
    before the clock synchronised can be re-stamped later from a boot-time anchor. ``synced`` is
    whether the wall clock was synchronised at that moment (None: could not tell). ``quality`` is
    a :class:`drivers.base.Quality` bit set; ``calibration`` names the calibration applied.
    """

    sensor: str
    quantity: str
    value: float
    unit: str
    time_ns: int
    boot_ns: int
    boot_id: str
    synced: bool | None
    quality: int = 0
    calibration: str | None = None


class StoredReading(NamedTuple):
    """A reading as it sits in the outbox, with the outbox row id used to acknowledge it."""

    id: int
    reading: Reading
