"""What every sensor driver looks like: setup / read / close, and the values it hands back."""

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


class Driver(ABC):
    """A sensor chip on a bus.

    ``setup`` identifies and configures the chip (raising :class:`~drivers.errors.WrongChipError`
    with a hint when another chip answers); ``read`` takes one sample and returns every quantity
    from that one measurement; both finish within a bounded time. ``close`` puts the chip to
    sleep where it has a sleep mode.
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

    @abstractmethod
    def read(self) -> list[Measurement]: ...

    def close(self) -> None:  # noqa: B027 - most chips need nothing
        """Leave the chip in its lowest-power state."""

    def serial(self) -> str | None:
        """The serial number the chip reports (after ``setup``), for the commissioning record;
        None for chips that have none."""
        return None
