"""Early warning: threshold rules (``[[alert]]``) on the readings as they are sampled.

A rule watches one quantity of one sensor. Its state machine runs on the reading's own time
(``boot_ns``, CLOCK_BOOTTIME, which a clock sync never moves), so ``for`` means sampled time:

    inactive --value beyond the threshold--> pending (since that reading)
    pending  --still beyond, held >= for---> firing      (emits alert_<id> = 1, WARNING)
    pending  --back within the threshold---> inactive    (nothing was said)
    firing   --value back past clear-------> inactive    (emits alert_<id> = 0, INFO)

``clear`` is the hysteresis: a firing PM2.5 alert above 75 with clear = 60 stays firing while
the value wanders between 60 and 75, so an alert does not flap on a noisy signal. A reading
flagged WARMUP, OUT_OF_RANGE, STUCK, SPIKE or MAINTENANCE (a technician at work:
agent.store.maintenance), or not finite, is not evidence either way: it neither raises, holds
off nor clears an alert, and it does not restart a pending one.

A restart resumes each rule from its last alert reading in the outbox (``Alerts.resume``): one
that was firing there is firing upstream and in ``envagent status`` until a 0 is stored, so it
starts firing -- its ``for`` was held before -- and the first fit reading back past ``clear``
clears it. A pending wait is not resumed: it starts again, as after a reboot.

Why an alert is a reading: under the reserved sensor ``envagent`` (quantity ``alert_<id>``,
unit ``state``) it is stored in the outbox like everything else, so it survives an outage and
a power cut, and upstream it is the metric ``envagent_alert_<id>``. The outbox and the uplink
send pending alert readings ahead of any backlog (``Outbox.take_alerts``).

The engine runs on each sensor's thread, one of the steps its readings go through after they
are queued for the commit (agent.sampling.daemon, ``Steps``): per reading it costs a dictionary
lookup, and a rule belongs to one sensor, so no rule is touched by two threads.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Callable, Iterable, Sequence

from agent.config import AlertConfig
from agent.core.reading import ALERT_PREFIX, RESERVED_SENSOR_ID, Reading
from agent.core.timebase import NS
from agent.store.outbox import LatestValue
from drivers.base import Quality

log = logging.getLogger("envagent.alerts")

ALERT_SENSOR = RESERVED_SENSOR_ID
ALERT_UNIT = "state"  # 1 firing, 0 cleared
FIRING, CLEARED = 1.0, 0.0
# A reading flagged with any of these says nothing reliable about the threshold.
UNFIT = (Quality.WARMUP | Quality.OUT_OF_RANGE | Quality.STUCK | Quality.SPIKE
         | Quality.MAINTENANCE)

Emit = Callable[[list[Reading]], None]


class Phase(enum.StrEnum):
    INACTIVE = "inactive"
    PENDING = "pending"
    FIRING = "firing"


def alert_quantity(rule_id: str) -> str:
    return ALERT_PREFIX + rule_id


class Rule:
    """One ``[[alert]]`` and its state."""

    def __init__(self, config: AlertConfig) -> None:
        self.config = config
        self.quantity = alert_quantity(config.id)
        self.phase = Phase.INACTIVE
        self.since_ns = 0  # boot_ns of the first reading beyond the threshold (pending)
        self.since_boot = ""

    def beyond(self, value: float) -> bool:
        c = self.config
        return value > c.above if c.above is not None else value < c.threshold

    def cleared(self, value: float) -> bool:
        c = self.config
        return value <= c.clear if c.above is not None else value >= c.clear

    def observe(self, r: Reading) -> float | None:
        """Advance on one fit reading; the alert value to emit on a transition, else None."""
        if self.phase is Phase.FIRING:
            if self.cleared(r.value):
                self.phase = Phase.INACTIVE
                return CLEARED
            return None
        if not self.beyond(r.value):
            self.phase = Phase.INACTIVE
            return None
        if self.phase is Phase.INACTIVE or r.boot_id != self.since_boot:  # a reboot restarts
            self.phase, self.since_ns, self.since_boot = Phase.PENDING, r.boot_ns, r.boot_id
        if r.boot_ns - self.since_ns >= self.config.hold * NS:
            self.phase = Phase.FIRING
            return FIRING
        return None

    def describe(self) -> str:
        c = self.config
        side = f"above {c.above:g}" if c.above is not None else f"below {c.below:g}"
        held = f" for {c.hold:g}s" if c.hold else ""
        return f"alert {c.id!r} ({c.sensor} {c.quantity} {side}{held}, clear at {c.clear:g})"


class Alerts:
    """Every rule of the station; ``emit`` takes the alert readings (``Agent.submit``)."""

    def __init__(self, configs: Sequence[AlertConfig], emit: Emit) -> None:
        self.rules = [Rule(c) for c in configs]
        self.emit = emit
        # sensor -> quantity -> rules: the per-reading lookup
        self._by_sensor: dict[str, dict[str, list[Rule]]] = {}
        for rule in self.rules:
            c = rule.config
            self._by_sensor.setdefault(c.sensor, {}).setdefault(c.quantity, []).append(rule)

    @property
    def firing(self) -> bool:
        """Whether any alert is firing now (the status LED shows it)."""
        return any(rule.phase is Phase.FIRING for rule in self.rules)

    def firing_ids(self) -> list[str]:
        return [rule.config.id for rule in self.rules if rule.phase is Phase.FIRING]

    def resume(self, latest: Iterable[LatestValue]) -> None:
        """Start each rule as its last stored alert reading (``Outbox.latest``) left it, before
        the sensor threads start.

        Upstream and ``envagent status`` take that reading as the alert's state, so a rule left
        firing starts firing: it is not raised again (a duplicate 1) while it stays beyond its
        clear value, and its 0 is stored at the first fit reading back past it. Any other rule
        starts inactive, as before.
        """
        last = {v.quantity: v.value for v in latest if v.sensor == ALERT_SENSOR}
        for rule in self.rules:
            if last.get(rule.quantity) == FIRING:
                rule.phase = Phase.FIRING
                log.info("%s: still firing from before the restart", rule.describe())

    def watches(self, sensor: str) -> bool:
        return sensor in self._by_sensor

    def observe(self, readings: Iterable[Reading]) -> None:
        """Feed sampled readings; emit and log an alert reading on every transition."""
        emitted: list[Reading] = []
        for r in readings:
            by_quantity = self._by_sensor.get(r.sensor)
            rules = by_quantity.get(r.quantity) if by_quantity else None
            if not rules or r.quality & UNFIT or not math.isfinite(r.value):
                continue
            for rule in rules:
                value = rule.observe(r)
                if value is None:
                    continue
                emitted.append(Reading(ALERT_SENSOR, rule.quantity, value, ALERT_UNIT,
                                       r.time_ns, r.boot_ns, r.boot_id, r.synced))
                if value == FIRING:
                    log.warning("%s fired: %s %s = %g", rule.describe(), r.sensor, r.quantity,
                                r.value)
                else:
                    log.info("%s cleared: %s %s = %g", rule.describe(), r.sensor, r.quantity,
                             r.value)
        if emitted:
            self.emit(emitted)
