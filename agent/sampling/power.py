"""Power-cycling a sensor through a load switch, the field cure for a latched-up chip.

A sensor whose I2C state machine has locked up (or that browned out into a bad state) often
answers nothing until its supply is removed. With ``power_pin`` set, the sensor's supply runs
through a high-side load switch driven by that GPIO (high = powered); a failed sensor is switched
off for ``OFF_S`` before each re-probe, then given ``SETTLE_S`` to start up.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from drivers.clock import Clock

log = logging.getLogger("envagent")

# Long enough for a breakout board's decoupling capacitors to discharge below the chips'
# power-on-reset threshold (BME280 datasheet 5.1: V_DD ramp from < 0.2 V).
OFF_S = 2.0
# The slowest start-up among the supported chips: SCD4x "power-up time" 1 s (datasheet 3.1).
SETTLE_S = 1.0


class PowerSwitch:
    def __init__(self, pin: int, *, clock: Clock, pin_factory: Any = None) -> None:
        from gpiozero import DigitalOutputDevice  # only a unit with a power_pin loads gpiozero

        self.pin = pin
        self.clock = clock
        self.cycles = 0
        self._device = DigitalOutputDevice(pin, initial_value=True, pin_factory=pin_factory)

    def cycle(self) -> None:
        """Off, wait, on, wait: the sensor starts from power-on reset."""
        self._device.off()
        self.clock.sleep(OFF_S)
        self._device.on()
        self.clock.sleep(SETTLE_S)
        self.cycles += 1

    def close(self) -> None:
        """Release the GPIO; the switch's own pull-up/-down decides the sensor's supply."""
        self._device.close()


def power_switches(pins: Iterable[int | None], *, clock: Clock,
                   pin_factory: Any = None) -> dict[int, PowerSwitch]:
    """One switch per configured pin; a GPIO that cannot be claimed is logged, not fatal."""
    switches: dict[int, PowerSwitch] = {}
    for pin in sorted({p for p in pins if p is not None}):
        try:
            switches[pin] = PowerSwitch(pin, clock=clock, pin_factory=pin_factory)
        except Exception as exc:  # noqa: BLE001 - gpiozero raises many kinds; sampling goes on
            log.error("GPIO%d (power_pin) unavailable: %s; those sensors cannot be "
                      "power-cycled", pin, exc)
    return switches
