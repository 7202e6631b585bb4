"""Early warning (agent.sampling.alerts): threshold rules from config, a state machine with
hysteresis
on the readings' own time, alert readings under ``envagent`` that the uplink sends ahead of any
backlog, and the status LED."""

from __future__ import annotations

import logging
import random
import tomllib
from pathlib import Path

import pytest
from recording_server import RecordingServer

from agent.cli.statusview import firing_alerts
from agent.config import AlertConfig, Config, UplinkConfig, parse_config
from agent.core.errors import ConfigError
from agent.core.reading import Reading
from agent.core.timebase import NS
from agent.runtime.indicator import PATTERNS, Condition, condition
from agent.runtime.notify import Notifier
from agent.runtime.service import Service
from agent.sampling.alerts import ALERT_SENSOR, ALERT_UNIT, Alerts, Phase
from agent.sampling.daemon import Agent
from agent.store.outbox import LatestValue, Outbox, Subscriber
from agent.store.storage import ReopeningOutbox
from agent.uplink.encoders import make_encoder
from agent.uplink.http import HttpSink
from agent.uplink.httpwire import make_session
from agent.uplink.worker import Uplink
from drivers.base import Driver, Quality
from drivers.pmsa003i import PMSA003I
from drivers.sim.clock import FakeClock
from drivers.sim.pmsa003i import PMSA003IModel
from drivers.sim.simbus import SimBus

ONE = [Subscriber("default")]  # the one upstream of these tests


ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "envagent.example.toml"
SRC = "envagent.toml"
BASE = """
[unit]
id = "demo-001"
site = "Hanzhong wetland, east"
[[sensor]]
id = "dust"
driver = "pmsa003i"
address = 0x12
interval = "10s"
[[sensor]]
id = "probes"
driver = "ads1115"
address = 0x48
channel0_quantity = "water_level"
channel0_unit = "m"
channel0_scale = [[0.6, 0.0], [3.0, 5.0]]
"""
PM_RULE = {"id": "pm25_high", "sensor": "dust", "quantity": "pm2_5", "above": 75.0,
           "for": "10m", "clear": 60.0}


def config(*alerts: dict[str, object]) -> Config:
    data = tomllib.loads(BASE)
    data["alert"] = list(alerts)
    return parse_config(data, source=SRC)


def problems(*alerts: object) -> list[str]:
    data = tomllib.loads(BASE)
    data["alert"] = list(alerts)
    with pytest.raises(ConfigError) as caught:
        parse_config(data, source=SRC)
    return list(caught.value.problems)


# --- config ---------------------------------------------------------------------------------


def test_an_alert_is_typed_with_its_defaults() -> None:
    (pm,) = config(PM_RULE).alerts
    assert pm == AlertConfig(id="pm25_high", sensor="dust", quantity="pm2_5", above=75.0,
                             below=None, clear=60.0, hold=600.0)
    (low,) = config({"id": "water_low", "sensor": "probes", "quantity": "water_level",
                     "below": 0.5}).alerts
    assert (low.below, low.clear, low.hold, low.threshold) == (0.5, 0.5, 0.0, 0.5)
    assert config().alerts == ()


def test_the_example_config_has_a_valid_commented_alert() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    assert "\n# [[alert]]\n" in text
    block = text[text.index("\n# [[alert]]\n") + 1:].splitlines()
    lines = [line[2:] for line in block[:block.index("#")]]  # up to the first blank comment
    data = tomllib.loads(BASE + "\n".join(lines))
    (rule,) = parse_config(data, source=SRC).alerts
    assert (rule.sensor, rule.quantity, rule.above, rule.hold, rule.clear) == (
        "dust", "pm2_5", 75.0, 600.0, 60.0)


@pytest.mark.parametrize(("change", "line"), [
    ({"id": "PM-high"}, "alert[0].id = \"PM-high\": expected 1 to 48 lowercase letters, digits "
     "or '_', starting with a letter (it becomes the metric envagent_alert_<id>)"),
    ({"id": "pm_q"}, "alert[0].id = \"pm_q\": must not end in _q: upstream that names the "
     "quality flags of alert 'pm'; choose another id"),
    ({"sensor": "air"}, "alert[0].sensor = \"air\": no [[sensor]] has this id; expected one of "
     "\"dust\", \"probes\""),
    ({"quantity": "co2"}, "alert[0].quantity = \"co2\": sensor 'dust' (pmsa003i) does not "
     "report it; expected one of pm1, pm2_5, pm10"),
    ({"above": "75"}, "alert[0].above = \"75\": expected a number; write 75 without quotes"),
    ({"for": "2d"}, "alert[0].for = \"2d\": expected a duration from 0s to 1d"),
    ({"clear": 80}, "alert[0].clear = 80: must not be more than above = 75: the alert clears "
     "when the value falls back to clear or under"),
    ({"colour": "red"}, "alert[0].colour: unknown key; valid keys are id, sensor, quantity, "
     "above, below, for, clear"),
    ({"id": None}, "alert[0].id: missing; add it, such as id = \"pm25_high\""),
    ({"below": 10}, "alert[0]: has both above and below; keep one (write a second [[alert]] "
     "for the other side)"),
    ({"above": None}, "alert[0]: missing a threshold; add above = <number> or below = <number>"),
])
def test_each_alert_problem_is_one_line(change: dict[str, object], line: str) -> None:
    rule = {k: v for k, v in (PM_RULE | change).items() if v is not None}
    found = problems(rule)
    assert found == [f"{SRC}: {line}"]


def test_below_clear_must_not_be_under_the_threshold_and_ids_are_unique() -> None:
    low = {"id": "water_low", "sensor": "probes", "quantity": "water_level", "below": 0.5,
           "clear": 0.2}
    assert problems(low, PM_RULE, PM_RULE) == [
        f"{SRC}: alert[0].clear = 0.2: must not be less than below = 0.5: the alert clears "
        "when the value rises back to clear or over",
        f"{SRC}: alert[2].id = \"pm25_high\": already used by alert[1]; give each alert its "
        "own id",
    ]
    assert problems("x") == [f'{SRC}: alert[0] = "x": expected an [[alert]] table']
    data = tomllib.loads(BASE)
    data["alert"] = {"id": "x"}
    with pytest.raises(ConfigError) as caught:
        parse_config(data, source=SRC)
    assert caught.value.problems[0].startswith(f"{SRC}: alert = ")


# --- the engine -----------------------------------------------------------------------------


class Engine:
    """Alerts fed synthetic readings of one quantity; ``emitted`` collects alert readings."""

    def __init__(self, *rules: AlertConfig) -> None:
        self.emitted: list[Reading] = []
        self.alerts = Alerts(rules, self.emitted.extend)

    def feed(self, t: float, value: float, quality: int = 0, *, sensor: str = "dust",
             quantity: str = "pm2_5") -> list[float]:
        """One reading at ``t`` seconds; the alert values it emitted."""
        before = len(self.emitted)
        self.alerts.observe([Reading(sensor, quantity, value, "µg/m³", int(1e18 + t * NS),
                                     int(t * NS), "b00t", True, quality)])
        return [r.value for r in self.emitted[before:]]


PM = AlertConfig(id="pm25_high", sensor="dust", quantity="pm2_5", above=75.0, below=None,
                 clear=60.0, hold=600.0)


def test_an_alert_fires_only_after_the_condition_held_for_its_duration() -> None:
    engine = Engine(PM)
    assert engine.feed(0, 80) == []
    assert engine.alerts.rules[0].phase is Phase.PENDING
    assert engine.feed(300, 90) == []
    assert engine.feed(599, 90) == []
    assert not engine.alerts.firing
    assert engine.feed(600, 78) == [1.0]
    assert engine.alerts.firing and engine.alerts.firing_ids() == ["pm25_high"]
    (alert,) = engine.emitted
    assert (alert.sensor, alert.quantity, alert.unit) == (ALERT_SENSOR, "alert_pm25_high",
                                                          ALERT_UNIT)
    assert (alert.time_ns, alert.boot_ns, alert.boot_id, alert.synced, alert.quality) == (
        int(1e18 + 600 * NS), 600 * NS, "b00t", True, 0)


def test_a_dip_below_the_threshold_restarts_the_wait() -> None:
    engine = Engine(PM)
    engine.feed(0, 80)
    engine.feed(500, 70)  # back within: pending ends, nothing was said
    assert engine.alerts.rules[0].phase is Phase.INACTIVE
    assert engine.feed(700, 80) == []
    assert engine.feed(1299, 80) == []
    assert engine.feed(1300, 80) == [1.0]


def test_hysteresis_no_flapping_between_clear_and_threshold_then_clears() -> None:
    engine = Engine(PM)
    engine.feed(0, 80)
    assert engine.feed(600, 80) == [1.0]
    for t, value in enumerate([74, 76, 61, 75, 60.5, 90, 62], start=601):
        assert engine.feed(t, value) == [], value  # wandering around 75: still firing
    assert engine.alerts.firing
    assert engine.feed(700, 60) == [0.0]  # clear is "at or under"
    assert not engine.alerts.firing
    assert engine.feed(701, 59) == []  # already cleared: said once
    assert [r.value for r in engine.emitted] == [1.0, 0.0]


def test_flagged_and_nonfinite_readings_neither_raise_nor_clear() -> None:
    engine = Engine(PM)
    unfit = (Quality.OUT_OF_RANGE, Quality.STUCK, Quality.SPIKE, Quality.WARMUP,
             Quality.MAINTENANCE)  # a technician at work (agent.store.maintenance)
    for flag in unfit:
        assert engine.feed(0, 500, flag) == []
    assert engine.alerts.rules[0].phase is Phase.INACTIVE
    engine.feed(0, 80)
    engine.feed(300, 0, Quality.SPIKE)  # does not interrupt the wait either
    assert engine.feed(600, 80) == [1.0]
    for flag in unfit:
        assert engine.feed(601, 0, flag) == []
    assert engine.feed(602, float("nan")) == []
    assert engine.alerts.firing
    assert engine.feed(603, 10, Quality.CLOCK_RESTAMPED) == [0.0]  # a time flag is no doubt


def test_below_rules_with_no_wait_and_other_readings_ignored() -> None:
    low = AlertConfig(id="water_low", sensor="probes", quantity="water_level", above=None,
                      below=0.5, clear=0.6, hold=0.0)
    engine = Engine(PM, low)
    assert engine.feed(0, 0.4, sensor="probes", quantity="water_level") == [1.0]
    assert engine.feed(1, 0.55, sensor="probes", quantity="water_level") == []
    assert engine.feed(2, 0.1, sensor="other", quantity="water_level") == []
    assert engine.feed(3, 0.6, sensor="probes", quantity="water_level") == [0.0]
    assert engine.feed(4, 80) == []  # pm: pending only
    assert [r.quantity for r in engine.emitted] == ["alert_water_low"] * 2


def test_transitions_are_logged_warning_on_fire_info_on_clear(
        caplog: pytest.LogCaptureFixture) -> None:
    engine = Engine(PM)
    caplog.set_level(logging.INFO, logger="envagent.alerts")
    engine.feed(0, 80)
    engine.feed(100, 81)
    assert caplog.records == []  # no line per reading
    engine.feed(600, 82.5)
    engine.feed(601, 59)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "alert 'pm25_high' (dust pm2_5 above 75 for 600s, clear at 60) fired: "
         "dust pm2_5 = 82.5"),
        (logging.INFO, "alert 'pm25_high' (dust pm2_5 above 75 for 600s, clear at 60) cleared: "
         "dust pm2_5 = 59"),
    ]


# --- through the agent, with a simulated PMSA003I ---------------------------------------------


def dust_config(rule: dict[str, object]) -> Config:
    return parse_config({"unit": {"id": "demo-001", "site": "roof"},
                         "sensor": [{"id": "dust", "driver": "pmsa003i", "address": 0x12,
                                     "interval": "10s"}],
                         "alert": [rule]}, source=SRC)


def dust_agent(tmp_path: Path, rule: dict[str, object]) -> tuple[Agent, Outbox, FakeClock,
                                                                 PMSA003IModel]:
    clock = FakeClock(start=100.0, wall=1_767_225_600.0, synced=True)
    bus = SimBus(1, clock=clock)
    model = PMSA003IModel.running(clock=clock)
    bus.attach(0x12, model)
    drivers: list[Driver] = [PMSA003I(bus, 0x12, clock=clock)]
    outbox = Outbox(tmp_path / "outbox.sqlite", max_bytes=64 * 1024**2)
    agent = Agent(dust_config(rule), drivers, outbox=outbox, clock=clock, boot_id="b00t")
    return agent, outbox, clock, model


def test_a_high_pm25_through_the_agent_stores_an_alert_reading(tmp_path: Path) -> None:
    agent, outbox, clock, model = dust_agent(tmp_path, PM_RULE | {"for": "30s"})
    with outbox:
        (worker,) = agent.workers
        assert worker._try_setup()
        clock.advance(31.0)  # past the driver's warm-up flag
        model.pm2_5 = 150.0
        for _ in range(5):
            worker.sample()
            clock.advance(10.0)
        agent._drain()
        agent.commit()
        assert agent.alerts.firing
        stored = [s.reading for s in outbox.take(1000)]
        alerts = [r for r in stored if r.sensor == ALERT_SENSOR]
        assert [(r.quantity, r.value, r.unit) for r in alerts] == [
            ("alert_pm25_high", 1.0, "state")]
        assert any(r.quantity == "pm2_5" and r.value > 75 for r in stored)  # the data too
        service = Service(agent.config.with_storage_path(tmp_path), agent, outbox, (),
                          clock=clock, notifier=Notifier({}))
        assert service.condition() is Condition.ALERT  # what the status LED is given
        model.pm2_5 = 20.0
        worker.sample()
        assert not agent.alerts.firing
        assert service.condition() is Condition.OK


# --- across a restart ------------------------------------------------------------------------


def run_until_stopped(tmp_path: Path, rule: dict[str, object], pm2_5: float) -> list[float]:
    """An agent sampling ``pm2_5`` for 50 s, all delivered, then stopped: its alert values.
    The next ``dust_agent`` on ``tmp_path`` is the agent restarted."""
    agent, outbox, clock, model = dust_agent(tmp_path, rule)
    with outbox:
        (worker,) = agent.workers
        assert worker._try_setup()
        clock.advance(31.0)  # past the driver's warm-up flag
        model.pm2_5 = pm2_5
        return sample(agent, clock, 5)


def sample(agent: Agent, clock: FakeClock, count: int) -> list[float]:
    """``count`` samples 10 s apart, committed and delivered: the alert values among them."""
    (worker,) = agent.workers
    for _ in range(count):
        worker.sample()
        clock.advance(10.0)
    agent._drain()
    agent.commit()
    taken = agent.outbox.take(1000)
    agent.outbox.ack(s.id for s in taken)  # only the outbox's latest table remembers them
    return [s.reading.value for s in taken if s.reading.sensor == ALERT_SENSOR]


def test_an_alert_that_ended_while_the_agent_was_down_clears_at_its_first_good_sample(
        tmp_path: Path) -> None:
    rule = PM_RULE | {"for": "30s"}
    assert run_until_stopped(tmp_path, rule, pm2_5=150.0) == [1.0]
    agent, outbox, clock, model = dust_agent(tmp_path, rule)
    with outbox:
        # as status and upstream last heard
        assert agent.alerts.firing_ids() == ["pm25_high"]
        service = Service(agent.config.with_storage_path(tmp_path), agent, outbox, (),
                          clock=clock, notifier=Notifier({}))
        assert service.condition() is Condition.ALERT  # the LED agrees with `envagent status`
        (worker,) = agent.workers
        assert worker._try_setup()
        model.pm2_5 = 20.0
        assert sample(agent, clock, 3) == []  # warming up: no evidence either way
        assert agent.alerts.firing
        assert sample(agent, clock, 1) == [0.0]  # the first good sample
        assert not agent.alerts.firing and service.condition() is Condition.OK
        assert firing_alerts(agent.config, outbox.latest()) == []
        assert sample(agent, clock, 3) == []


def test_an_alert_still_beyond_after_a_restart_is_not_raised_again(tmp_path: Path) -> None:
    rule = PM_RULE | {"for": "30s"}
    assert run_until_stopped(tmp_path, rule, pm2_5=150.0) == [1.0]
    agent, outbox, clock, model = dust_agent(tmp_path, rule)
    with outbox:
        (worker,) = agent.workers
        assert worker._try_setup()
        clock.advance(31.0)
        model.pm2_5 = 150.0
        assert sample(agent, clock, 6) == []  # longer than its `for`: no duplicate 1
        model.pm2_5 = 70.0
        assert sample(agent, clock, 2) == []  # between clear and threshold: still firing
        (alert,) = firing_alerts(agent.config, outbox.latest())
        assert alert.rule.id == "pm25_high" and agent.alerts.firing
        model.pm2_5 = 60.0
        assert sample(agent, clock, 1) == [0.0]  # clear is "at or under", as without a restart


def test_an_alert_cleared_before_a_restart_starts_inactive_and_waits_its_for_again(
        tmp_path: Path) -> None:
    rule = PM_RULE | {"for": "30s"}
    assert run_until_stopped(tmp_path, rule, pm2_5=150.0) == [1.0]
    assert run_until_stopped(tmp_path, rule, pm2_5=20.0) == [0.0]
    agent, outbox, clock, model = dust_agent(tmp_path, rule)
    with outbox:
        assert not agent.alerts.firing
        (worker,) = agent.workers
        assert worker._try_setup()
        clock.advance(31.0)
        model.pm2_5 = 150.0
        assert sample(agent, clock, 3) == []  # 20 s beyond: pending
        assert sample(agent, clock, 1) == [1.0]  # 30 s: fires


def test_resume_takes_only_a_firing_state_of_a_configured_rule() -> None:
    low = AlertConfig(id="water_low", sensor="probes", quantity="water_level", above=None,
                      below=0.5, clear=0.6, hold=0.0)
    engine = Engine(PM, low)
    engine.alerts.resume([
        LatestValue(ALERT_SENSOR, "alert_pm25_high", ALERT_UNIT, 5 * NS, 1.0, 0),
        LatestValue(ALERT_SENSOR, "alert_water_low", ALERT_UNIT, 5 * NS, 0.0, 0),
        LatestValue(ALERT_SENSOR, "alert_gone", ALERT_UNIT, 5 * NS, 1.0, 0),  # no such rule now
        LatestValue("probes", "alert_water_low", "m", 5 * NS, 1.0, 0),  # not an alert reading
    ])
    assert engine.alerts.firing_ids() == ["pm25_high"]
    assert engine.feed(0, 80) == []
    assert engine.feed(1, 0.55, sensor="probes", quantity="water_level") == []
    assert engine.feed(2, 59) == [0.0]


def test_an_unreadable_outbox_at_start_leaves_every_alert_inactive(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state directory should be\n")
    clock = FakeClock(start=100.0)
    with ReopeningOutbox(blocker / "outbox.sqlite", max_bytes=1 << 24, clock=clock) as outbox:
        caplog.set_level(logging.INFO)
        dust = PMSA003I(SimBus(1, clock=clock), 0x12, clock=clock)
        agent = Agent(dust_config(PM_RULE), [dust], outbox=outbox, clock=clock, boot_id="b00t")
    assert not agent.alerts.firing
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert line.startswith("alerts start as not firing: their last state could not be read (")


# --- ahead of the backlog -------------------------------------------------------------------


def backlog(count: int) -> list[Reading]:
    return [Reading("dust", "pm2_5", float(i % 50), "µg/m³", 1_700_000_000 * NS + i * NS,
                    i * NS, "old-boot", True) for i in range(count)]


def test_take_alerts_finds_only_alert_readings_oldest_first_and_forgets_acked(
        tmp_path: Path) -> None:
    alert = Reading(ALERT_SENSOR, "alert_pm25_high", 1.0, ALERT_UNIT, 5 * NS, 5 * NS, "b", True)
    health = Reading(ALERT_SENSOR, "backlog", 3.0, "readings", 5 * NS, 5 * NS, "b", True)
    with Outbox(tmp_path / "o.sqlite", max_bytes=4 * 1024**2) as outbox:
        outbox.append([*backlog(3), alert, health])
        first = outbox.take_alerts(10)  # the first call scans for stored ones
        assert [s.reading for s in first] == [alert]
        later = Reading(ALERT_SENSOR, "alert_pm25_high", 0.0, ALERT_UNIT, 9 * NS, 9 * NS, "b",
                        False)
        outbox.append([later])  # noticed on append from now on
        assert [s.reading for s in outbox.take_alerts(10)] == [alert, later]
        assert [s.reading for s in outbox.take_alerts(1)] == [alert]
        outbox.ack([first[0].id])
        assert [s.reading for s in outbox.take_alerts(10)] == [later]
    with ReopeningOutbox(tmp_path / "o.sqlite", max_bytes=4 * 1024**2,
                         clock=FakeClock()) as reopened:  # after a restart: found by the scan
        assert [s.reading for s in reopened.take_alerts(10)] == [later]
        assert len(reopened.take(100)) == 5  # the normal take still has everything


def test_an_alert_raised_behind_a_large_backlog_reaches_the_server_first(
        tmp_path: Path) -> None:
    """Done-when: 50,000 readings wait; the alert raised after them is in the first request."""
    agent, outbox, clock, model = dust_agent(tmp_path, PM_RULE | {"for": "0s"})
    with outbox, RecordingServer() as server:
        outbox.append(backlog(50_000))
        (worker,) = agent.workers
        assert worker._try_setup()
        clock.advance(31.0)
        model.pm2_5 = 120.0
        worker.sample()
        agent._drain()
        agent.commit()
        assert outbox.stats().backlog > 50_000
        outbox.subscribe(ONE)  # the one upstream below
        settings = UplinkConfig(url=server.url(), allow_insecure=True, batch_size=5000)
        encoder = make_encoder("influx", unit="demo-001", site="roof",
                               drivers={"dust": "pmsa003i"}, measurement=settings.measurement)
        sink = HttpSink(settings.url, encoder, make_session(), connect_timeout=2.0, deadline=5.0)
        uplink = Uplink(outbox, sink, settings, clock=FakeClock(), token=lambda: None,
                        rng=random.Random(1))
        first = uplink.step()
        assert first.delivered == 1 and not first.caught_up
        second = uplink.step()
        assert second.delivered == 5000
        requests = server.snapshot()
        assert len(requests) == 2
        body = requests[0].body.decode()
        assert body.startswith("envagent,") and "sensor=envagent" in body
        assert "alert_pm25_high=1" in body and "pm2_5=" not in body
        assert "alert_pm25_high" not in requests[1].body.decode()
        assert "pm2_5=" in requests[1].body.decode()


def test_an_alert_is_not_held_back_for_an_unsynchronised_clock(tmp_path: Path) -> None:
    """Readings of an unsynced boot wait to be re-stamped; an alert goes at once, flagged."""
    alert = Reading(ALERT_SENSOR, "alert_pm25_high", 1.0, ALERT_UNIT, 5 * NS, 5 * NS, "now",
                    False)
    waiting = Reading("dust", "pm2_5", 80.0, "µg/m³", 5 * NS, 5 * NS, "now", False)
    with Outbox(tmp_path / "o.sqlite", max_bytes=4 * 1024**2, subscribers=ONE) as outbox, \
            RecordingServer() as server:
        outbox.append([waiting, alert])
        settings = UplinkConfig(url=server.url(), allow_insecure=True)
        encoder = make_encoder("influx", unit="demo-001", site="roof",
                               drivers={"dust": "pmsa003i"}, measurement=settings.measurement)
        sink = HttpSink(settings.url, encoder, make_session(), connect_timeout=2.0, deadline=5.0)
        uplink = Uplink(outbox, sink, settings, clock=FakeClock(), token=lambda: None,
                        rng=random.Random(1), held_boot=lambda: "now")
        assert uplink.step().delivered == 1
        assert uplink.step().caught_up  # the dust reading waits for the clock
        (request,) = server.snapshot()
        assert "alert_pm25_high=1" in request.body.decode()
        assert "alert_pm25_high_q=16i" in request.body.decode()  # flagged CLOCK_UNSYNCED


# --- the status LED -------------------------------------------------------------------------


def test_a_firing_alert_shows_on_the_led_between_fatal_and_offline() -> None:
    assert condition(["ok"], "ok", True, alert=True) is Condition.ALERT
    assert condition(["failed"], "offline", True, alert=True) is Condition.ALERT
    assert condition(["ok"], "auth", True, alert=True) is Condition.FATAL
    assert condition(["ok"], "ok", False, alert=True) is Condition.FATAL
    assert condition(["ok"], "offline", True) is Condition.OFFLINE
    pattern = PATTERNS[Condition.ALERT]
    assert pattern == (0.2, 0.3, 0.2, 0.3, 0.2, 1.3)  # three short flashes, then a pause
    assert pattern not in [p for c, p in PATTERNS.items() if c is not Condition.ALERT]
