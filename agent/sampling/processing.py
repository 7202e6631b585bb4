"""What happens to a sample between ``driver.read()`` and the stored Reading, per quantity.

One reading attempt: ``average`` driver reads (default 1), back to back, their mean per quantity
(quality is the OR of the samples' flags; any failed read fails the whole attempt), then the
quantity's calibration, then the plausibility checks on the calibrated value. The reading keeps
the time stamp taken before the first read; ``average`` times a driver's read time must fit in
the sensor's interval (a BME280 read is ~40 ms, an SCD4x measurement 5 s).

The checks only set quality flags -- OUT_OF_RANGE (outside the physical range), SPIKE (a jump
larger than allowed since the previous reading), STUCK (the same value too many readings in a
row) -- and never drop a value: DESIGN.md's rule that a bad value is stored flagged, not silently
lost or passed as good.

Calibration ids. Every reading of a calibrated quantity carries the id of its calibration
(``Reading.calibration``), which names a calibration record kept upstream (who calibrated, when,
against what, and the coefficients). The stored value is the calibrated one, and the raw value
can be recovered from it: offset and linear calibrations are invertible (raw = (value - offset) /
scale, see :meth:`Calibration.invert`; scale may not be 0). A polynomial is invertible only where
it is monotonic, so upstream needs the record's coefficients and solves c0 + c1·x + ... = value
for the root inside the sensor's physical range; a record should state that range.

Maintenance mode (agent.store.maintenance) is applied here, and only here: a reading attempt
that starts while the mode is on has every quantity flagged MAINTENANCE. ``maintenance`` is
asked once per attempt, before the first read, as the reading's time stamp is taken.

Spike and stuck checks are off unless configured: a value that legitimately stays put (0 lx all
night, a CO2 sensor in an empty room) would otherwise be flagged. The physical ranges are built in
per quantity name (:data:`PHYSICAL_RANGES`); a quantity without an entry has no range check until
a ``[sensor.plausible.<quantity>]`` gives one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.config.processing import Calibration, Plausible
from drivers.base import Measurement, Quality
from drivers.errors import SensorError

if TYPE_CHECKING:
    from agent.config import SensorConfig

@dataclass(frozen=True, slots=True)
class Processed:
    """One quantity of one reading attempt, ready to become a Reading."""

    quantity: str
    value: float
    unit: str
    quality: Quality
    calibration: str | None


class _History:
    """What the spike and stuck checks remember about one quantity."""

    __slots__ = ("previous", "repeats")

    def __init__(self) -> None:
        self.previous: float | None = None
        self.repeats = 0


class Processor:
    """The processing of one sensor; keeps the spike/stuck history of its quantities.

    Not thread-safe: one per sensor worker.
    """

    def __init__(
        self,
        *,
        average: int = 1,
        calibration: Mapping[str, Calibration] | None = None,
        plausible: Mapping[str, Plausible] | None = None,
    ) -> None:
        self.average = average
        self.calibration = dict(calibration or {})
        self._plausible = dict(plausible or {})
        self._limits: dict[str, Plausible] = {}
        self._history: dict[str, _History] = {}
        # Whether the unit is in maintenance mode now (agent.store.maintenance.Watch.active);
        # set by the agent (agent.sampling.daemon) for every sensor it samples.
        self.maintenance: Callable[[], bool] | None = None

    @classmethod
    def for_sensor(cls, sensor: SensorConfig) -> Processor:
        return cls(
            average=sensor.average, calibration=sensor.calibration, plausible=sensor.plausible
        )

    def sample(self, read: Callable[[], Sequence[Measurement]]) -> list[Processed]:
        """Read ``average`` times and process the mean; a failed read propagates."""
        return self.finish([read() for _ in range(self.average)])

    def finish(self, samples: Sequence[Sequence[Measurement]]) -> list[Processed]:
        """Process the mean of samples read elsewhere (the scheduler reads them in steps);
        taken in maintenance mode, they are flagged so."""
        flags = Quality.MAINTENANCE if self.maintenance is not None and self.maintenance() \
            else Quality.GOOD
        return [self._process(m, flags) for m in mean(samples)]

    def _process(self, m: Measurement, flags: Quality = Quality.GOOD) -> Processed:
        calibration = self.calibration.get(m.quantity)
        value = m.value if calibration is None else calibration.apply(m.value)
        quality = m.quality | flags | self._check(m.quantity, value)
        return Processed(
            m.quantity, value, m.unit, quality, None if calibration is None else calibration.id
        )

    def _check(self, quantity: str, value: float) -> Quality:
        limits = self._limits.get(quantity)
        if limits is None:
            limits = self._limits[quantity] = self._plausible.get(
                quantity, Plausible()
            ).resolved(quantity)
        if not math.isfinite(value):
            return Quality.OUT_OF_RANGE  # and the history skips it
        flags = Quality.GOOD
        if (limits.min is not None and value < limits.min) or (
            limits.max is not None and value > limits.max
        ):
            flags |= Quality.OUT_OF_RANGE
        history = self._history.setdefault(quantity, _History())
        previous = history.previous
        jump = 0.0 if previous is None else abs(value - previous)
        if limits.spike is not None and jump > limits.spike:
            flags |= Quality.SPIKE
        history.repeats = history.repeats + 1 if value == previous else 1
        history.previous = value
        if limits.stuck_after is not None and history.repeats >= limits.stuck_after:
            flags |= Quality.STUCK
        return flags


def mean(samples: Sequence[Sequence[Measurement]]) -> list[Measurement]:
    """The mean of each quantity over ``samples`` (each one driver read), flags OR-ed."""
    first = samples[0]
    if len(samples) == 1:
        return list(first)
    quantities = [m.quantity for m in first]
    for sample in samples[1:]:
        if [m.quantity for m in sample] != quantities:
            raise SensorError(
                f"the driver returned {', '.join(m.quantity for m in sample)} after "
                f"{', '.join(quantities)}; cannot average samples with different quantities"
            )
    merged = []
    for index, m in enumerate(first):
        column = [sample[index] for sample in samples]
        quality = Quality.GOOD
        for x in column:
            quality |= x.quality
        value = math.fsum(x.value for x in column) / len(column)
        merged.append(Measurement(m.quantity, value, m.unit, quality))
    return merged
