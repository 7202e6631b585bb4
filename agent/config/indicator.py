"""``[indicator]``: the status LED and service button, as BCM GPIO numbers; see
agent.runtime.indicator."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agent.config.checks import duration
from agent.config.fields import REQUIRED, Field, Problems, read_table
from agent.config.pins import gpio


@dataclass(frozen=True, slots=True)
class IndicatorConfig:
    """``[indicator]``: status LED and service button, as BCM GPIO numbers; see
    agent.runtime.indicator."""

    led_pin: int
    button_pin: int | None = None
    hold_time: float = 3.0  # a press this long is a long press (identify)


_INDICATOR_FIELDS = {
    "led_pin": Field(gpio, REQUIRED, "led_pin = 17"),
    "button_pin": Field(gpio, None, ""),
    "hold_time": Field(duration(1.0, 10.0), 3.0, ""),
}


def parse_indicator(problems: Problems, value: object) -> IndicatorConfig | None:
    """``[indicator]``; absent (None) means no status LED and no service button."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        problems.add("indicator", "expected a table [indicator]", value)
        return None
    values, ok = read_table(problems, "indicator", value, _INDICATOR_FIELDS)
    led = values.get("led_pin")
    if led is not None and values.get("button_pin") == led:
        problems.add("indicator.button_pin", f"the same pin as led_pin (GPIO{led}); wire the "
                     "button to another GPIO", value["button_pin"])
        ok = False
    return IndicatorConfig(**values) if ok else None
