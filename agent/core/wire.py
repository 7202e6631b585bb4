"""The names a reading travels under, whatever the format: the tag keys of every line, the
fields derived from a quantity, the keys a backend keeps for time. The config refuses a sensor or
quantity that would collide with one of them; the encoders (agent.uplink) write them."""

from __future__ import annotations

QUALITY_SUFFIX = "_q"
NONFINITE_SUFFIX = "_nonfinite"
# The fields a quantity q is sent as besides q itself: q + suffix -> what that field carries. The
# config refuses a quantity ending in one (agent.config), which would take another's field, or
# give one field key two types in the measurement (InfluxDB refuses the second).
DERIVED_FIELDS = {QUALITY_SUFFIX: "the quality flags",
                  NONFINITE_SUFFIX: "the NaN or infinite values"}
TAG_KEYS = ("driver", "sensor", "site", "unit")  # of every line, besides its epoch's
EPOCH_TAG_KEYS = ("mounting_height", "shield")  # agent.store.commission.reading_tags
# on the agent's readings about one upstream (sensor id envagent@<name>, agent.core.reading)
UPSTREAM_TAG = "uplink"
SIMULATED_TAG = ("simulated", "true")  # on every line of a rehearsal (agent.store.rehearsal)
# Field keys a backend keeps for the time of a point: InfluxDB refuses a field called time (since
# 1.2.4); a QuestDB table made from line protocol has its designated "timestamp" column.
TIME_KEYS = ("time", "timestamp")
