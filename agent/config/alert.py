"""``[[alert]]``: a threshold on one quantity of one sensor; see agent.sampling.alerts.

Parsed after ``[[sensor]]``, so each rule is checked against the station's sensors and the
quantities they report.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.config.checks import duration, real
from agent.config.fields import REQUIRED, Bad, Field, Problems, read_table
from agent.core.units import toml_key, toml_quote
from agent.core.wire import QUALITY_SUFFIX

# Alert ids become part of a metric name (``envagent_alert_<id>``): health names' rule applies,
# lowercase letters, digits and ``_`` only (agent.runtime.health explains why; "-" and "." break
# them).
ALERT_ID_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,47}")  # used with fullmatch
ALERT_FOR_RANGE = (0.0, 24 * 3600.0)


@dataclass(frozen=True, slots=True)
class AlertConfig:
    """One ``[[alert]]``: a threshold on one quantity of one sensor; see agent.sampling.alerts.

    Exactly one of ``above`` and ``below`` is set; ``clear`` is where a firing alert clears
    (the hysteresis), ``hold`` how long (s) the condition must hold before it fires (``for``).
    """

    id: str
    sensor: str
    quantity: str
    above: float | None
    below: float | None
    clear: float
    hold: float = 0.0

    @property
    def threshold(self) -> float:
        return self.above if self.above is not None else self.below  # type: ignore[return-value]


def _alert_id(value: object) -> str:
    if not isinstance(value, str) or not ALERT_ID_PATTERN.fullmatch(value):
        raise Bad("expected 1 to 48 lowercase letters, digits or '_', starting with a letter "
                  "(it becomes the metric envagent_alert_<id>)")
    if value.endswith(QUALITY_SUFFIX):  # envagent_alert_x_q is the quality of alert x
        raise Bad(f"must not end in {QUALITY_SUFFIX}: upstream that names the quality flags "
                  f"of alert {value[:-len(QUALITY_SUFFIX)]!r}; choose another id")
    return value


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise Bad("expected a quoted name")
    return value


_ALERT_FIELDS = {
    "id": Field(_alert_id, REQUIRED, 'id = "pm25_high"'),
    "sensor": Field(_text, REQUIRED, 'sensor = "dust"'),
    "quantity": Field(_text, REQUIRED, 'quantity = "pm2_5"'),
    "above": Field(real, None, ""),
    "below": Field(real, None, ""),
    "for": Field(duration(*ALERT_FOR_RANGE), 0.0, ""),
    "clear": Field(real, None, ""),
}


def parse_alerts(problems: Problems, value: object) -> tuple[AlertConfig, ...] | None:
    """``[[alert]]`` tables; runs after ``[[sensor]]`` so it can check the names against them."""
    if not isinstance(value, list):
        problems.add("alert", "expected [[alert]] tables, with double brackets, one per rule",
                     value)
        return None
    alerts: list[AlertConfig] = []
    ids: dict[str, int] = {}
    for index, item in enumerate(value):
        path = f"alert[{index}]"
        if not isinstance(item, Mapping):
            problems.add(path, "expected an [[alert]] table", item)
            continue
        values, ok = read_table(problems, path, item, _ALERT_FIELDS)
        alert_id = values.get("id")
        if alert_id is not None:
            if alert_id in ids:
                problems.add(toml_key(path, "id"), f"already used by alert[{ids[alert_id]}]; "
                             "give each alert its own id", alert_id)
                ok = False
            else:
                problems.alerts.append(alert_id)
            ids.setdefault(alert_id, index)
        ok = _check_alert(problems, path, item, values) and ok
        if ok:
            threshold = values["above"] if values["above"] is not None else values["below"]
            alerts.append(AlertConfig(
                id=values["id"], sensor=values["sensor"], quantity=values["quantity"],
                above=values["above"], below=values["below"],
                clear=threshold if values["clear"] is None else values["clear"],
                hold=values["for"]))
    return tuple(alerts)


def _check_alert(problems: Problems, path: str, table: Mapping[str, Any],
                 values: Mapping[str, Any]) -> bool:
    """The rules spanning keys: a known sensor and quantity, one threshold, a sane ``clear``."""
    ok = True
    sensor, quantity = values.get("sensor"), values.get("quantity")
    if isinstance(sensor, str):
        known = ", ".join(toml_quote(i) for i in problems.sensors) or "(none)"
        if sensor not in problems.sensors:
            problems.add(toml_key(path, "sensor"), "no [[sensor]] has this id; expected one "
                         f"of {known}", sensor)
            ok = False
        elif isinstance(quantity, str):
            driver, quantities = problems.sensors[sensor]
            if quantities is not None and quantity not in quantities:
                problems.add(toml_key(path, "quantity"), f"sensor {sensor!r} ({driver}) does not "
                             f"report it; expected one of {', '.join(quantities)}", quantity)
                ok = False
    above, below, clear = values.get("above"), values.get("below"), values.get("clear")
    if "above" in table and "below" in table:
        problems.add(path, "has both above and below; keep one (write a second [[alert]] for "
                     "the other side)")
        return False
    if "above" not in table and "below" not in table:
        problems.add(path, "missing a threshold; add above = <number> or below = <number>")
        return False
    if clear is not None and above is not None and clear > above:
        problems.add(toml_key(path, "clear"), f"must not be more than above = {above:g}: "
                     "the alert clears when the value falls back to clear or under", table["clear"])
        ok = False
    if clear is not None and below is not None and clear < below:
        problems.add(toml_key(path, "clear"), f"must not be less than below = {below:g}: "
                     "the alert clears when the value rises back to clear or over", table["clear"])
        ok = False
    return ok
