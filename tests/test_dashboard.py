"""The Grafana fleet dashboard (``config/grafana/envagent-fleet.json``): a valid dashboard model,
and every query in it answered by a real VictoriaMetrics holding what the real agent delivered.

How the store is filled: two simulated stations run as real ``envagent run --simulate
--deliver`` processes at once, delivering to the session's VictoriaMetrics over ``/write`` (every
series carries ``simulated="true"``). Their sites need
regex escaping (parentheses, a dot) and one is not ASCII. Station A's light sensor starts
answering NACK after 2 s (``--sim-fault``), so the store holds a failed sensor and a data gap;
station B stays healthy. Station A is commissioned first, so its readings carry the
``mounting_height`` and ``shield`` tags and the store holds its ``envagent_commission_*`` point,
which no panel may show as a sensor. Each runs 9 s: the first health report comes 5 s after the
start (``agent.runtime.health.FIRST_SAMPLE_S``) and ``[health] interval`` cannot be under 30 s, so
each
unit sends one report. ``envagent sync --simulate --deliver`` then delivers what was left.

How a query is evaluated: as Grafana would send it -- ``$site`` and ``$unit`` become ``.*`` (the
dashboard's "All") or one real value escaped as Grafana's Prometheus data source escapes a value
for a regex matcher, ``$lookback`` one of its options, ``$__interval`` and ``$__rate_interval`` a
fixed window -- as an instant query on ``/api/v1/query`` (and on ``/api/v1/query_range`` for the
graphs). Each must succeed; each whose data the agent produced here must return series carrying the
labels its legend or table uses, for both stations or for the selected one only. Two kinds of
query cannot have data here and must only succeed: the CPU temperature (no thermal zone in a
container) and the SD card write rate (a rate needs two health reports). Each station has one
``[[alert]]`` that fires on its first temperature reading, so the threshold alerts panel has
data.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from victoriametrics import VictoriaMetrics

from agent.core.credentials import CREDENTIALS_DIRECTORY, REFUSED_VARIABLES
from agent.runtime.health import SENSOR_STATE, UPLINK_STATE
from agent.sampling.sampler import State
from drivers.base import Quality

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD_PATH = ROOT / "config" / "grafana" / "envagent-fleet.json"
DASHBOARD: dict[str, Any] = json.loads(DASHBOARD_PATH.read_text(encoding="utf-8"))
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
GRID_COLUMNS = 24

# The graphs' range queries: the dashboard's default time range (now-24h) at about the step
# Grafana picks for it on a wide panel. (With a step much shorter than the spacing of the points,
# VictoriaMetrics draws nothing for a series of one point, as a health series is here.)
RANGE_S, STEP_S = 86_400, 60
# Grafana's own variables; windows long enough to span this module's few seconds of data.
BUILTINS = {"__interval": "5m", "__rate_interval": "5m", "__range": "24h"}
LOOKBACK = "1h"  # one of the dashboard's $lookback options
HTTP_TIMEOUT_S = 10.0
RUN_S = 9  # long enough for the first health report (5 s after the start) to be sampled
FAULT_AFTER_S = 2
PROCESS_TIMEOUT_S = 120.0  # generous: a loaded machine; never a speed assertion
METRIC_PREFIX = "dashboard-"  # the unit ids of this module, so its series can be cleared

SITE_A, UNIT_A = "汉中 wetland, east (boardwalk)", f"{METRIC_PREFIX}marsh"
SITE_B, UNIT_B = "Rooftop 3.2, north", f"{METRIC_PREFIX}roof"
OURS = {UNIT_A, UNIT_B}
# sensor id -> its [[sensor]] table (without the id); all at 1 s
SENSORS = {
    "air": 'driver = "bme280"\naddress = 0x76\n',
    "co2": 'driver = "scd4x"\naddress = 0x62\npressure_from = "air"\n',
    "light": 'driver = "bh1750"\naddress = 0x23\n',
    "dust": 'driver = "pmsa003i"\naddress = 0x12\n',
    "probes": ('driver = "ads1115"\naddress = 0x48\n'
               'channel0_quantity = "soil_moisture"\nchannel0_unit = "%"\n'
               'channel0_scale = [[2.8, 0.0], [1.2, 100.0]]\n'
               'channel1_quantity = "water_level"\nchannel1_unit = "m"\n'
               'channel1_scale = [[0.6, 0.0], [3.0, 5.0]]\n'),
}
# The quantity panels: metric -> the sensors of these stations that measure it.
QUANTITY_SENSORS = {
    "envagent_temperature": {"air", "co2"}, "envagent_humidity": {"air", "co2"},
    "envagent_pressure": {"air"}, "envagent_co2": {"co2"}, "envagent_pm2_5": {"dust"},
    "envagent_pm10": {"dust"}, "envagent_illuminance": {"light"},
    "envagent_soil_moisture": {"probes"}, "envagent_water_level": {"probes"},
}
# Named in the dashboard, never produced here: no thermal zone in a container.
NOT_PRODUCED_HERE = {"envagent_cpu_temperature"}
# Fires on the first reading (the simulated air is far above -40 °C): envagent_alert_air_warm.
ALERT = ('[[alert]]\nid = "air_warm"\nsensor = "air"\nquantity = "temperature"\n'
         'above = -40\nclear = -45\n')
# (panel title, refId) of the queries that cannot return data here (see the docstring).
MAY_BE_EMPTY = {("Fleet health", "J"), ("CPU temperature", "A"), ("SD card writes", "A")}

Series = list[dict[str, Any]]  # /api/v1/query's "result": [{"metric": {...}, "value": [t, "v"]}]


def panels(dashboard: dict[str, Any] = DASHBOARD) -> Iterator[dict[str, Any]]:
    """Every panel, those nested in collapsed rows included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def panel(title: str) -> dict[str, Any]:
    found = [p for p in panels() if p["title"] == title]
    assert len(found) == 1, f"{len(found)} panels titled {title!r}"
    return found[0]


TARGETS = [(p, t) for p in panels() if p["type"] != "row" for t in p.get("targets", [])]


def variables() -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in DASHBOARD["templating"]["list"]}


def variable_query(name: str) -> str:
    query = variables()[name]["query"]
    return str(query["query"] if isinstance(query, dict) else query)


def grafana_regex_value(value: str) -> str:
    """One value of a multi-value variable as Grafana's Prometheus data source writes it into a
    ``=~`` matcher (``prometheusSpecialRegexEscape``): regex metacharacters escaped, inside a
    PromQL string (so each escape is two backslashes)."""
    return re.sub(r"[$^*{}\[\]'+?.()|]", lambda m: "\\\\" + m.group(),
                  value.replace("\\", "\\\\\\\\"))


def substitute(expr: str, *, site: str, unit: str) -> str:
    """The query Grafana sends; ``$1`` and other names that are no variable stay as they are."""
    values = {"site": site, "unit": unit, "lookback": LOOKBACK, **BUILTINS}
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), m.group()), expr)


ALL = {"site": ".*", "unit": ".*"}  # the dashboard's "All" (allValue)
ONE = {"site": grafana_regex_value(SITE_A), "unit": grafana_regex_value(UNIT_A)}


def strip_strings(expr: str) -> str:
    """The query without its string literals (label values, regexes)."""
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


# --- the model ----------------------------------------------------------------------------------


def test_it_is_an_importable_dashboard_model() -> None:
    assert DASHBOARD["id"] is None  # Grafana assigns one on import
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", DASHBOARD["uid"])
    assert DASHBOARD["title"] and isinstance(DASHBOARD["schemaVersion"], int)
    assert DASHBOARD["schemaVersion"] >= 36  # the model of Grafana 9 and later
    assert "envagent" in DASHBOARD["description"] and "VictoriaMetrics" in DASHBOARD["description"]
    ids = [p["id"] for p in panels()]
    assert all(isinstance(i, int) for i in ids) and len(ids) == len(set(ids)), ids
    for p in panels():
        grid = p["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] >= 0, p["title"]
        assert grid["x"] + grid["w"] <= GRID_COLUMNS, p["title"]
        if p["type"] != "row":
            assert p["title"] and p.get("description"), p["id"]


def test_every_panel_queries_through_the_datasource_variable() -> None:
    for p in panels():
        if p["type"] == "row":
            assert not p.get("targets"), p["title"]
            continue
        assert p["datasource"] == DATASOURCE, p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
        for target in p["targets"]:
            assert target["datasource"] == DATASOURCE, (p["title"], target["refId"])
            assert target["expr"].strip(), (p["title"], target["refId"])


def test_the_template_variables() -> None:
    found = variables()
    assert found["datasource"]["type"] == "datasource"
    assert found["datasource"]["query"] == "prometheus"
    for name in ("site", "unit"):
        var = found[name]
        assert var["type"] == "query" and var["datasource"] == DATASOURCE
        assert re.fullmatch(rf"label_values\(envagent_\w+(\{{.*\}})?, {name}\)",
                            variable_query(name))
        assert var["includeAll"] and var["multi"] and var["allValue"] == ".*"
    used = {m.group(1) for _, t in TARGETS for m in re.finditer(r"\$\{?(\w+)", t["expr"])}
    unknown = used - set(found) - set(BUILTINS) - {"1"}  # $1: label_replace's replacement
    assert not unknown, unknown
    assert {"site", "unit"} <= used
    assert LOOKBACK in [o["value"] for o in found["lookback"]["options"]]


def test_the_state_mappings_are_the_agents_codes() -> None:
    """The words the dashboard shows for sensor_state and uplink_state are
    agent.runtime.health's."""
    def mapped(p: dict[str, Any]) -> set[int]:
        return {int(k) for m in p["fieldConfig"]["defaults"]["mappings"] for k in m["options"]}

    assert mapped(panel("Sensor state")) == set(SENSOR_STATE.values())
    assert set(UPLINK_STATE.values()) <= mapped(panel("Uplink state"))


def test_the_quality_flags_panel_has_every_flag() -> None:
    """One bar per bit of drivers.base.Quality: a new flag needs a new bar."""
    divisors = {int(m) for t in panel("Quality flags in effect")["targets"]
                for m in re.findall(r"\) / (\d+)\) % 2 == 1", t["expr"])}
    assert divisors == {int(flag) for flag in Quality if flag}


def test_the_threshold_alert_panel_shows_what_the_agent_sends() -> None:
    """agent.sampling.alerts: the metric envagent_alert_<id>; no alert at all is said, not left
    blank."""
    alerts = panel("Threshold alerts")
    assert alerts["fieldConfig"]["defaults"]["noValue"]
    assert all('"envagent_alert_.+"' in t["expr"] for t in alerts["targets"])


# --- the agent fills VictoriaMetrics ------------------------------------------------------------


@dataclass(frozen=True)
class Fleet:
    vm: VictoriaMetrics


def _env() -> dict[str, str]:
    """No token, no systemd in the agent's environment."""
    dropped = {*REFUSED_VARIABLES, CREDENTIALS_DIRECTORY, "NOTIFY_SOCKET", "WATCHDOG_USEC",
               "WATCHDOG_PID"}
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    return {**env, "PYTHONPATH": str(ROOT)}


def _station(directory: Path, *, unit: str, site: str, url: str) -> Path:
    token = directory / "upload-token"
    token.write_text("any-token-victoriametrics-ignores\n")
    token.chmod(0o600)
    text = (f'[unit]\nid = "{unit}"\nsite = "{site}"\n[storage]\ncommit_interval = "1s"\n'
            f'[uplink]\nurl = "{url}"\nallow_insecure_http = true\ntoken_file = "{token}"\n'
            'flush_interval = "1s"\nbackoff_min = "100ms"\nbackoff_max = "1s"\n'
            '[health]\ninterval = "30s"\n')
    for sensor, table in SENSORS.items():
        text += f'[[sensor]]\nid = "{sensor}"\ninterval = "1s"\n{table}'
    text += ALERT
    config = directory / "station.toml"
    config.write_text(text, encoding="utf-8")
    return config


def _agents(commands: list[list[str]], cwd: Path) -> None:
    """Run the commands at once; fail with their stderr unless each exits 0."""
    started = [subprocess.Popen([sys.executable, "-m", "agent", *c], cwd=cwd, env=_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for c in commands]
    try:
        for command, process in zip(commands, started, strict=True):
            _, stderr = process.communicate(timeout=PROCESS_TIMEOUT_S)
            assert process.returncode == 0, (command, stderr)
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def fleet(victoriametrics: VictoriaMetrics,
          tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    vm = victoriametrics
    vm.delete_series(f'{{__name__=~"envagent_.+", unit=~"{METRIC_PREFIX}.+"}}')
    root = tmp_path_factory.mktemp("dashboard")
    runs, syncs, visits = [], [], []
    for unit, site, faults in ((UNIT_A, SITE_A, ["--sim-fault", f"light=nack@{FAULT_AFTER_S}"]),
                               (UNIT_B, SITE_B, [])):
        directory = root / unit
        directory.mkdir()
        config = str(_station(directory, unit=unit, site=site, url=vm.write_url))
        data = str(directory / "data")
        runs.append(["run", "--simulate", "--deliver", "--config", config, "--data-dir", data,
                     "--duration", str(RUN_S), *faults])
        syncs.append(["sync", "--simulate", "--deliver", "--config", config, "--data-dir", data])
        if unit == UNIT_A:  # its readings carry commissioning tags, the store its metadata
            visits.append(["commission", "--simulate", "--config", config, "--data-dir", data,
                           "--mounting-height", "2", "--radiation-shield", "Stevenson screen"])
    _agents(visits, root)
    _agents(runs, root)
    _agents(syncs, root)
    vm.flush()
    return Fleet(vm)


def query(vm: VictoriaMetrics, expr: str) -> Series:
    response = requests.get(f"{vm.url}/api/v1/query", params={"query": expr},
                            timeout=HTTP_TIMEOUT_S)
    answer = response.json()
    assert answer["status"] == "success", (expr, answer)
    return list(answer["data"]["result"])


def query_range(vm: VictoriaMetrics, expr: str) -> Series:
    now = time.time()
    params = {"query": expr, "start": f"{now - RANGE_S:.3f}", "end": f"{now:.3f}",
              "step": str(STEP_S)}
    response = requests.get(f"{vm.url}/api/v1/query_range", params=params,
                            timeout=HTTP_TIMEOUT_S)
    answer = response.json()
    assert answer["status"] == "success", (expr, answer)
    return list(answer["data"]["result"])


def evaluate(vm: VictoriaMetrics, title: str, ref: str, values: dict[str, str]) -> Series:
    target = next(t for p, t in TARGETS if p["title"] == title and t["refId"] == ref)
    return query(vm, substitute(target["expr"], **values))


def by_labels(series: Series, *names: str) -> dict[tuple[str, ...], float]:
    """Value per label tuple, for our units only (the store is shared by the session)."""
    out: dict[tuple[str, ...], float] = {}
    for s in series:
        if s["metric"].get("unit") in OURS:
            key = tuple(s["metric"].get(n, "") for n in names)
            assert key not in out, f"two series for {key}"
            out[key] = float(s["value"][1])
    return out


def scalar(series: Series) -> float:
    assert len(series) == 1 and not series[0]["metric"], series
    return float(series[0]["value"][1])


# --- every query --------------------------------------------------------------------------------


@pytest.mark.parametrize(("p", "target"), TARGETS,
                         ids=[f"{p['title']}/{t['refId']}" for p, t in TARGETS])
def test_the_query_is_answered_with_the_labels_it_shows(fleet: Fleet, p: dict[str, Any],
                                                        target: dict[str, Any]) -> None:
    table = target.get("format") == "table"
    legend_labels = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
    may_be_empty = (p["title"], target["refId"]) in MAY_BE_EMPTY
    for name, values in (("all", ALL), ("one", ONE)):
        expr = substitute(target["expr"], **values)
        answers = [query(fleet.vm, expr)]
        if target.get("range"):
            answers.append(query_range(fleet.vm, expr))
        for series in answers:
            if may_be_empty:
                continue
            assert series, f"{name}: no data for {expr}"
            for s in series:
                assert legend_labels <= set(s["metric"]), (expr, s["metric"])
            units = {s["metric"]["unit"] for s in series if "unit" in s["metric"]}
            sites = {s["metric"]["site"] for s in series if "site" in s["metric"]}
            if name == "one":  # the selected unit and site, nothing else
                assert units <= {UNIT_A} and sites <= {SITE_A}, (expr, units, sites)
            elif units or sites:  # "All": both stations
                assert units >= OURS or {SITE_A, SITE_B} <= sites, (expr, units, sites)
            if table:  # a table's rows are units (and sensors)
                assert all({"unit", "site"} <= set(s["metric"]) for s in series), expr


def test_the_threshold_alert_panel_names_each_firing_alert(fleet: Fleet) -> None:
    """The alert column is the [[alert]] id, taken from envagent_alert_<id>; 1 is firing."""
    (target,) = panel("Threshold alerts")["targets"]
    series = query(fleet.vm, substitute(target["expr"], **ALL))
    ours = [s for s in series if s["metric"].get("unit") in OURS]
    assert {(s["metric"]["unit"], s["metric"]["alert"], s["value"][1]) for s in ours} == {
        (UNIT_A, "air_warm", "1"), (UNIT_B, "air_warm", "1")}


def test_every_metric_named_is_one_the_agent_delivered(fleet: Fleet) -> None:
    response = requests.get(f"{fleet.vm.url}/api/v1/label/__name__/values",
                            params={"match[]": f'{{unit=~"{METRIC_PREFIX}.+"}}'},
                            timeout=HTTP_TIMEOUT_S)
    delivered = set(response.json()["data"])
    named = {m for _, t in TARGETS for m in re.findall(r"\benvagent_\w+", strip_strings(t["expr"]))}
    named |= {m for v in ("site", "unit") for m in re.findall(r"\benvagent_\w+", variable_query(v))}
    assert named - delivered <= NOT_PRODUCED_HERE, named - delivered
    assert named >= NOT_PRODUCED_HERE


def test_the_variables_list_the_sites_and_their_units(fleet: Fleet) -> None:
    """``label_values(metric{...}, label)``, as Grafana asks /api/v1/label/<label>/values."""
    def label_values(definition: str, **values: str) -> set[str]:
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", substitute(definition, **values))
        assert match, definition
        response = requests.get(f"{fleet.vm.url}/api/v1/label/{match.group(2)}/values",
                                params={"match[]": match.group(1),
                                        "start": f"{time.time() - RANGE_S:.0f}"},
                                timeout=HTTP_TIMEOUT_S)
        answer = response.json()
        assert answer["status"] == "success", answer
        return set(answer["data"])

    assert {SITE_A, SITE_B} <= label_values(variable_query("site"), **ALL)
    assert label_values(variable_query("unit"), **ALL) >= OURS
    assert label_values(variable_query("unit"), **ONE) == {UNIT_A}


# --- what the panels say about these two stations -----------------------------------------------


def test_the_fleet_table_has_one_row_per_unit(fleet: Fleet) -> None:
    vm = fleet.vm

    def column(ref: str) -> dict[tuple[str, ...], float]:
        return by_labels(evaluate(vm, "Fleet health", ref, ALL), "unit", "site")

    rows = {(UNIT_A, SITE_A), (UNIT_B, SITE_B)}
    for target in panel("Fleet health")["targets"]:
        if ("Fleet health", target["refId"]) not in MAY_BE_EMPTY:
            assert set(column(target["refId"])) == rows, target["refId"]
    age = column("A")
    assert all(0 <= a < PROCESS_TIMEOUT_S for a in age.values()), age
    assert column("B") == {(UNIT_A, SITE_A): 1, (UNIT_B, SITE_B): 0}  # A's light sensor
    assert all(v >= 0 for ref in "CDEFK" for v in column(ref).values())
    assert column("E") == column("F") == {row: 0 for row in rows}  # nothing dropped, refused
    assert set(column("H").values()) <= set(UPLINK_STATE.values())


def test_the_counts_follow_the_selection(fleet: Fleet) -> None:
    vm = fleet.vm
    assert scalar(evaluate(vm, "Units reporting", "A", ONE)) == 1
    assert scalar(evaluate(vm, "Units reporting", "A", ALL)) >= 2
    assert scalar(evaluate(vm, "Units silent > 15 min", "A", ONE)) == 0
    assert scalar(evaluate(vm, "Sensors not ok", "A", ONE)) == 1
    one = {"site": grafana_regex_value(SITE_B), "unit": grafana_regex_value(UNIT_B)}
    assert scalar(evaluate(vm, "Sensors not ok", "A", one)) == 0  # or vector(0): never "no data"
    assert scalar(evaluate(vm, "Dropped", "A", ONE)) == 0


def test_the_data_gaps_show_the_failed_sensor(fleet: Fleet) -> None:
    vm = fleet.vm
    gaps = by_labels(evaluate(vm, "Time since the last reading", "A", ALL), "unit", "sensor")
    assert {s for u, s in gaps if u == UNIT_A} == set(SENSORS)
    assert {s for u, s in gaps if u == UNIT_B} == set(SENSORS)
    # A's light stopped after ~2 s, its air sensor read until the end (~9 s).
    assert gaps[(UNIT_A, "light")] > gaps[(UNIT_A, "air")] + 3, gaps
    states = by_labels(evaluate(vm, "Sensor state", "A", ALL), "unit", "sensor")
    assert states[(UNIT_A, "light")] in (SENSOR_STATE[State.WARNING],
                                         SENSOR_STATE[State.FAILED]), states
    assert {k: v for k, v in states.items() if k != (UNIT_A, "light")} == {
        (u, s): 0 for u in OURS for s in SENSORS if (u, s) != (UNIT_A, "light")}
    stored = by_labels(evaluate(vm, "Values stored per unit", "A", ALL), "unit")
    assert set(stored) == {(UNIT_A,), (UNIT_B,)} and min(stored.values()) > 0


def test_each_quantity_panel_shows_its_sensors_per_site(fleet: Fleet) -> None:
    shown = set()
    for p, target in TARGETS:
        metrics = set(re.findall(r"\benvagent_\w+", target["expr"])) & set(QUANTITY_SENSORS)
        if not metrics:
            continue
        (metric,) = metrics
        shown.add(metric)
        series = query(fleet.vm, substitute(target["expr"], **ALL))
        ours = {(s["metric"]["site"], s["metric"]["sensor"]) for s in series
                if s["metric"]["site"] in (SITE_A, SITE_B)}
        assert ours == {(site, sensor) for site in (SITE_A, SITE_B)
                        for sensor in QUANTITY_SENSORS[metric]}, (p["title"], ours)
    assert shown == set(QUANTITY_SENSORS)


def test_the_quality_flags_show_the_warm_up(fleet: Fleet) -> None:
    """The SCD4x flags its first 3 minutes as warm-up (bit 1), so A's CO2 carries it."""
    vm = fleet.vm
    flagged = by_labels(evaluate(vm, "Flagged quantities", "A", ONE), "unit", "sensor",
                        "quantity")
    assert int(flagged[(UNIT_A, "co2", "co2")]) & Quality.WARMUP, flagged
    bars = {t["legendFormat"]: scalar(query(vm, substitute(t["expr"], **ONE)))
            for t in panel("Quality flags in effect")["targets"]}
    assert bars["warm-up"] >= 1, bars
    assert all(v >= 0 for v in bars.values())
