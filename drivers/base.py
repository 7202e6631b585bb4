"""What every sensor driver looks like: setup / trigger / collect / close, and the values it hands
back.

A sample is two steps so that one scheduler can serve every sensor with one wait: ``trigger()``
starts a conversion and answers the monotonic time at which it will be ready; ``collect()`` reads
and decodes it. A scheduler triggers every due sensor, sleeps once until the latest of those
times, and collects them all. ``read()`` is the two steps with the wait between, for the CLI and
the tests.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from drivers.bus import Bus
from drivers.clock import Clock


class Quality(enum.IntFlag):
    """Quality flags carried by every reading; 0 means good.

    Values are stored in the outbox and sent upstream, so existing bits never change meaning.
    """

    GOOD = 0
    WARMUP = 1 << 0  # the sensor is still settling after power-up or start of measurement
    OUT_OF_RANGE = 1 << 1  # outside the sensor's physical measuring range
    STUCK = 1 << 2  # identical value for longer than plausible
    SPIKE = 1 << 3  # jump larger than plausible between consecutive samples
    CLOCK_UNSYNCED = 1 << 4  # the wall clock was never synchronised in this boot
    CLOCK_RESTAMPED = 1 << 5  # time re-derived from the boot-time anchor after a later sync
    CLIPPED = 1 << 6  # the chip clipped the value at the end of its scale
    MAINTENANCE = 1 << 7  # taken while the unit was in maintenance mode (agent.store.maintenance)


@dataclass(frozen=True, slots=True)
class Measurement:
    """One quantity from one sample, in engineering units."""

    quantity: str
    value: float
    unit: str
    quality: Quality = Quality.GOOD


@dataclass(frozen=True)
class Option:
    """A driver option as it appears in a ``[[sensor]]`` table of the config."""

    kind: type
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None


class Pending(Exception):  # noqa: N818 - not an error: "collect again later"
    """Raised by ``collect()`` when the sample needs another conversion before it is complete
    (the next input of a multi-input ADC, a measurement started again because its result was
    suspect): call ``collect()`` again at ``ready`` (monotonic seconds)."""

    def __init__(self, ready: float) -> None:
        super().__init__(ready)
        self.ready = ready


class Driver(ABC):
    """A sensor chip on a bus.

    ``setup`` identifies and configures the chip (raising :class:`~drivers.errors.WrongChipError`
    with a hint when another chip answers). A sample is ``trigger()`` -- start a conversion, return
    the monotonic time it will be ready -- then ``collect()`` -- read and decode every quantity of
    that one measurement. ``collect()`` called before the ready time waits for it (a bounded
    sleep), so it is never wrong, only slower; a scheduler avoids the sleep by collecting at the
    ready time. ``collect()`` may raise :class:`Pending` when the sample needs another
    conversion. Every step finishes within a bounded time. ``read()`` is trigger, wait, collect.
    ``close`` puts the chip to sleep where it has a sleep mode.

    A driver that cannot split its sample (a test double) overrides ``read()`` alone: its
    ``trigger()`` then starts nothing and its ``collect()`` is its ``read()``.
    """

    name: ClassVar[str]
    # Every address the chip can have, from its datasheet: the one declaration that
    # `config check` holds a sensor's address to and `envagent scan` identifies chips at.
    addresses: ClassVar[tuple[int, ...]]
    quantities: ClassVar[Mapping[str, str]]  # quantity -> unit
    options: ClassVar[Mapping[str, Option]] = {}

    def __init__(
        self, bus: Bus, address: int, *, clock: Clock, options: Mapping[str, Any] | None = None
    ) -> None:
        self.bus = bus
        self.address = address
        self.clock = clock
        given = dict(options or {})
        self.settings = {k: given.get(k, opt.default) for k, opt in self.options.items()}

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Problems spanning several options, as (key, message); most drivers have none."""
        return []

    @classmethod
    def configured_quantities(cls, options: Mapping[str, Any]) -> Mapping[str, str]:
        """Quantity -> unit reported with these options (a probe ADC's come from its config)."""
        return cls.quantities

    @property
    def where(self) -> str:
        """``bus:0xAA`` as used in every log line and error about this sensor; a bus that has a
        path of its own to the chip (a multiplexer channel: ``1:0x70/2:0x44``) describes it."""
        describe = getattr(self.bus, "describe", None)
        if callable(describe):
            return str(describe(self.address))
        return f"{self.bus.number}:0x{self.address:02x}"

    @abstractmethod
    def setup(self) -> None: ...

    def trigger(self) -> float:
        """Start one sample; the monotonic time at which ``collect()`` can read it."""
        return self.clock.monotonic()

    def collect(self) -> list[Measurement]:
        """Read and decode the sample ``trigger()`` started (waiting for it if called early)."""
        if type(self).read is Driver.read:
            raise TypeError(f"{type(self).__name__} implements neither collect() nor read()")
        return self.read()

    def read(self) -> list[Measurement]:
        """One sample now: trigger, wait until it is ready, collect."""
        ready = self.trigger()
        while True:
            self.wait_until(ready)
            try:
                return self.collect()
            except Pending as more:
                ready = more.ready

    def wait_until(self, ready: float) -> None:
        """Sleep until the monotonic time ``ready`` (at once when it has passed)."""
        delay = ready - self.clock.monotonic()
        if delay > 0:
            self.clock.sleep(delay)

    def oversample(self, count: int) -> bool:
        """Let the chip average ``count`` conversions itself, in one conversion of ``count``
        times the length, instead of ``count`` samples read back to back; True when it will.
        Most chips cannot."""
        return False

    def close(self) -> None:  # noqa: B027 - most chips need nothing
        """Leave the chip in its lowest-power state; best effort: a chip that does not answer
        is logged (debug), never raised, so closing never hides what the caller was doing."""

    def serial(self) -> str | None:
        """The serial number the chip reports (after ``setup``), for the commissioning record;
        None for chips that have none."""
        return None
