"""GPIO pins as a technician may write them: a BCM number or one of gpiozero's pin names.

Shared by ``[indicator]`` (the LED and button) and ``[[sensor]]`` (``power_pin``).
"""

from __future__ import annotations

import re

from agent.config.checks import unquote_hint
from agent.config.fields import Bad

GPIO_RANGE = (0, 27)  # the BCM GPIOs of the 40-pin header
I2C1_PINS = {2: "SDA", 3: "SCL"}  # i2c-1, the sensors' bus, is enabled on every unit
# Physical pin of the 40-pin header -> BCM GPIO, the same on every 40-pin Pi including the Pi 5
# (https://pinout.xyz); the pins not listed are power and ground.
BOARD_TO_BCM = {
    3: 2, 5: 3, 7: 4, 8: 14, 10: 15, 11: 17, 12: 18, 13: 27, 15: 22, 16: 23, 18: 24, 19: 10,
    21: 9, 22: 25, 23: 11, 24: 8, 26: 7, 27: 0, 28: 1, 29: 5, 31: 6, 32: 12, 33: 13, 35: 19,
    36: 16, 37: 26, 38: 20, 40: 21,
}
PIN_NAME = re.compile(r"(GPIO|BCM|BOARD|J8:)([0-9]{1,2})", re.IGNORECASE)  # gpiozero's names
PIN_EXPECTED = ('expected a GPIO number from 0 to 27 such as 17, or a pin name such as "GPIO17" '
                'or "BOARD11" (physical pin 11 of the 40-pin header)')


def gpio(value: object) -> int:
    """A pin as its BCM GPIO number, from a number or one of gpiozero's pin names."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise Bad(PIN_EXPECTED)
    if isinstance(value, str):
        match = PIN_NAME.fullmatch(value.strip())
        if match is None:
            raise Bad(PIN_EXPECTED + unquote_hint(value))
        kind, number = match[1].upper(), int(match[2])
        if kind in ("BOARD", "J8:") and number not in BOARD_TO_BCM:
            raise Bad(f"physical pin {number} is not a GPIO pin; {PIN_EXPECTED}")
        value = BOARD_TO_BCM[number] if kind in ("BOARD", "J8:") else number
    low, high = GPIO_RANGE
    if not low <= value <= high:
        raise Bad(PIN_EXPECTED)
    if value in I2C1_PINS:
        raise Bad(f"GPIO{value} is {I2C1_PINS[value]} of I2C bus 1, the sensors' bus; "
                  "choose a free GPIO such as 17")
    return value
