"""``[health]``: how often the agent reports its own health upstream, and the names of those
readings (agent.runtime.health), which sensors' quantities and upstreams' selections meet."""

from __future__ import annotations

from dataclasses import dataclass

from agent.config.checks import duration
from agent.config.fields import Field

# agent.runtime.health's readings of each sensor, under the sensor's own id: on its series upstream.
SENSOR_HEALTH_QUANTITIES = ("sensor_state", "sensor_errors")
# agent.runtime.health's readings of the unit (under the agent's id) and of each upstream (under
# envagent@<name>): what an [[uplink]]'s quantities may name besides the sensors' and alerts'.
AGENT_HEALTH_QUANTITIES = (
    "uptime", "backlog", "backlog_bytes", "backlog_age", "dropped", "quarantined",
    "clock_synced", "storage_failing", "disk_written", "cpu_temperature", "uplink_state",
)

DEFAULT_HEALTH_INTERVAL = 5 * 60.0
HEALTH_INTERVAL_RANGE = (30.0, 3600.0)


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """``[health]``: how often the agent reports its own health upstream; see
    agent.runtime.health."""

    interval: float = DEFAULT_HEALTH_INTERVAL


HEALTH_FIELDS = {
    "interval": Field(duration(*HEALTH_INTERVAL_RANGE), DEFAULT_HEALTH_INTERVAL, ""),
}
