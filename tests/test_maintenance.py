"""Maintenance mode: readings taken while a technician works are flagged MAINTENANCE (128).

The record (agent.store.maintenance) and its end on the boot clock; the flag applied in
processing and nowhere else; a damaged record read as "off"; the LED's pattern and rank; the
service button's 10 s hold; and, through the real ``envagent`` on the simulated bus, the mode
turned on beside a running agent, its readings flagged and those before and after not, its
end by itself, ``status`` and ``status --json``, ``doctor`` and ``--follow``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import agent_process
import pytest
from gpiozero.pins.mock import MockFactory

from agent.cli.watch import Look, changes
from agent.config import Config, IndicatorConfig, parse_config
from agent.core.timebase import NS
from agent.runtime.indicator import PATTERNS, Condition, ServiceButton, condition
from agent.runtime.notify import Notifier
from agent.runtime.service import Service
from agent.runtime.statusfile import SENSORS_FILE, SensorsFile
from agent.sampling.daemon import Agent
from agent.store import maintenance
from agent.store.maintenance import DEFAULT_FOR_S, FILE, MAX_BYTES, Watch
from agent.store.outbox import Outbox
from drivers.base import Quality
from drivers.bme280 import BME280
from drivers.clock import Clock, SystemClock
from drivers.sim import BME280Model, FakeClock, SimBus

M = Quality.MAINTENANCE
WALL = 1_767_225_600.0
BOOT = "b00t"
PROCESS_TIMEOUT_S = 60
envagent = functools.partial(agent_process.envagent, timeout=PROCESS_TIMEOUT_S)


def test_the_bit_is_128_and_has_words() -> None:
    from agent.core import quality

    assert M == 128 and Quality.CLIPPED == 64  # existing bits never move
    assert quality.words(M | Quality.SPIKE) == "spike, maintenance"
    assert quality.names(M) == ["maintenance"]


# --- the record and its end --------------------------------------------------------------------


def test_a_window_ends_by_itself_on_the_boot_clock_whatever_the_wall_clock_does(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(start=100.0, wall=WALL)
    watch = Watch(tmp_path, clock, BOOT)
    with caplog.at_level(logging.INFO, logger="envagent.maintenance"):
        assert not watch.active()
        maintenance.turn_on(tmp_path, clock, BOOT, for_s=600, note="PM sensor swap")
        assert watch.active()
        clock.set_wall(WALL + 3 * 86400, synced=True)  # NTP synchronises: three days later
        assert watch.active()
        clock.advance(599)
        assert watch.active()
        clock.advance(2)
        assert not watch.active()
        assert not watch.active()
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2, said  # the start and the end, once each
    assert said[0].startswith("maintenance mode on since") and "PM sensor swap" in said[0]
    assert said[1].startswith("maintenance mode off (by itself")


def test_after_a_reboot_the_wall_clock_ends_it_never_later_than_its_length(
        tmp_path: Path) -> None:
    first = FakeClock(start=100.0, wall=WALL)
    maintenance.turn_on(tmp_path, first, "boot-1", for_s=600)
    rebooted = FakeClock(start=50.0, wall=WALL + 100)  # 50 s after the next boot
    assert Watch(tmp_path, rebooted, "boot-2").active()
    rebooted.set_wall(WALL + 601)
    assert not Watch(tmp_path, rebooted, "boot-2").active()
    wrong = FakeClock(start=50.0, wall=WALL - 365 * 86400)  # the clock a year behind
    watch = Watch(tmp_path, wrong, "boot-2")
    assert watch.active()
    wrong.advance(551)  # 601 s since boot: longer than the whole window
    assert not watch.active()


def test_on_defaults_to_four_hours_again_moves_the_end_and_off_keeps_the_record(
        tmp_path: Path) -> None:
    clock = FakeClock(start=100.0, wall=WALL)
    first = maintenance.turn_on(tmp_path, clock, BOOT)
    assert first.for_s == DEFAULT_FOR_S == 4 * 3600
    clock.advance(3600)
    again = maintenance.turn_on(tmp_path, clock, BOOT, for_s=600)
    assert again.since_ns == first.since_ns  # on since then; only the end moved
    assert again.until_ns == round((WALL + 3600 + 600) * NS)
    ended = maintenance.turn_off(tmp_path, clock, BOOT)
    assert ended is not None and ended.ended_ns == round((WALL + 3600) * NS)
    assert not Watch(tmp_path, clock, BOOT).active()
    assert maintenance.load(tmp_path) == ended  # kept, with the time it ended
    assert maintenance.turn_off(tmp_path, clock, BOOT) is None  # not on: nothing to end


@pytest.mark.parametrize("content", [
    b"\xff\xfe not utf-8",
    b'{"format": "envagent-maintenance/1", "since_ns": ',
    json.dumps({"format": "envagent-maintenance/1", "since_ns": "yesterday"}).encode(),
    json.dumps({"format": "envagent-maintenance/1", "since_ns": 1, "until_ns": 2,
                "for_s": 1e12, "boot_id": BOOT, "boot_ns": 0}).encode(),  # forever: refused
    b"[]",
    b"{}" + b" " * MAX_BYTES,  # too large
], ids=["not-utf8", "cut-short", "wrong-type", "forever", "a-list", "too-large"])
def test_a_damaged_record_counts_as_off_with_one_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes) -> None:
    clock = FakeClock(start=100.0, wall=WALL)
    (tmp_path / FILE).write_bytes(content)
    watch = Watch(tmp_path, clock, BOOT)
    with caplog.at_level(logging.INFO, logger="envagent.maintenance"):
        assert not watch.active()
        assert not watch.active()
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "maintenance counts as off" in caplog.text
    window, why = maintenance.read_active(tmp_path, clock, BOOT)
    assert window is None and why is not None and "counts as off" in why
    assert maintenance.turn_off(tmp_path, clock, BOOT) is None
    assert not (tmp_path / FILE).exists()  # off removes what nobody can read


# --- flagged in processing ---------------------------------------------------------------------

CONFIG = parse_config(
    {"unit": {"id": "u1", "site": "roof"},
     "sensor": [{"id": "air", "driver": "bme280", "address": 0x76, "interval": "10s"}]},
    source="test.toml",
)


def air_agent(data_dir: Path, clock: Clock, outbox: Outbox, config: Config = CONFIG) -> Agent:
    bus = SimBus(1, clock=clock)
    bus.attach(0x76, BME280Model(clock=clock, temperature=21.0))
    return Agent(config.with_storage_path(data_dir), [BME280(bus, 0x76, clock=clock)],
                 outbox=outbox, clock=clock, boot_id=BOOT,
                 maintenance=Watch(data_dir, clock, BOOT))


def sampled(agent: Agent) -> list[int]:
    """One sample of the one sensor, committed: the quality of each stored reading."""
    (worker,) = agent.workers
    before = agent.outbox.stats().added
    worker.sample()
    agent._drain()
    agent.commit()
    taken = agent.outbox.take(1000)
    agent.outbox.ack(s.id for s in taken)
    assert agent.outbox.stats().added - before == len(taken) == 3
    return [s.reading.quality for s in taken]


def test_readings_sampled_while_on_carry_the_bit_and_only_those(tmp_path: Path) -> None:
    clock = FakeClock(start=100.0, wall=WALL)
    with Outbox(tmp_path / "outbox.sqlite", max_bytes=64 * 1024**2) as outbox:
        agent = air_agent(tmp_path, clock, outbox)
        assert agent.workers[0]._try_setup()
        assert sampled(agent) == [0, 0, 0]
        maintenance.turn_on(tmp_path, clock, BOOT, for_s=60)
        assert sampled(agent) == [M, M, M]
        clock.advance(61)  # its end, by itself
        assert sampled(agent) == [0, 0, 0]
        maintenance.turn_on(tmp_path, clock, BOOT, for_s=60)
        assert sampled(agent) == [M, M, M]
        maintenance.turn_off(tmp_path, clock, BOOT)
        assert sampled(agent) == [0, 0, 0]


# --- the LED and the button --------------------------------------------------------------------


def test_maintenance_outranks_all_but_fatal_and_has_a_pattern_of_its_own() -> None:
    everything = {"alert": True, "holding": True}
    assert condition(["failed"], "offline", True, **everything,
                     maintenance=True) is Condition.MAINTENANCE
    assert condition(["ok"], "auth", True, maintenance=True) is Condition.FATAL
    assert condition(["ok"], "ok", False, maintenance=True) is Condition.FATAL
    assert condition(["ok"], "ok", True) is Condition.OK
    pattern = PATTERNS[Condition.MAINTENANCE]
    assert pattern == (1.8, 0.2)  # mostly lit: the heartbeat turned inside out
    assert [p for c, p in PATTERNS.items() if c is not Condition.MAINTENANCE].count(pattern) == 0


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    mock = MockFactory()
    yield mock
    mock.reset()


class Presses:
    def __init__(self) -> None:
        self.short = self.long = self.maintenance = 0
        self.toggled = threading.Event()

    def on_short(self) -> None:
        self.short += 1

    def on_long(self) -> None:
        self.long += 1

    def on_maintenance(self) -> None:
        self.maintenance += 1
        self.toggled.set()


BUTTON_PIN = 27


def test_holding_the_button_past_the_long_press_toggles_maintenance_once(
        factory: MockFactory) -> None:
    presses = Presses()
    switch = factory.pin(BUTTON_PIN)
    with ServiceButton(BUTTON_PIN, pin_factory=factory, hold_time=0.1, maintenance_hold=0.4,
                       on_short_press=presses.on_short, on_long_press=presses.on_long,
                       on_maintenance=presses.on_maintenance):
        switch.drive_low()
        time.sleep(0.25)
        assert (presses.long, presses.maintenance) == (1, 0)  # identify first
        assert presses.toggled.wait(5)
        time.sleep(0.3)  # held on: reported once
        switch.drive_high()
        assert (presses.short, presses.long, presses.maintenance) == (0, 1, 1)
        switch.drive_low()  # a long press alone toggles nothing
        time.sleep(0.2)
        switch.drive_high()
        switch.drive_low()  # a short one neither
        switch.drive_high()
        time.sleep(0.5)
    assert (presses.short, presses.long, presses.maintenance) == (1, 2, 1)


def test_the_service_button_toggles_the_mode_and_the_led_shows_it(
        tmp_path: Path, factory: MockFactory) -> None:
    clock = SystemClock()  # the LED's thread plays on it, as on a unit
    with Outbox(tmp_path / "outbox.sqlite", max_bytes=64 * 1024**2) as outbox:
        agent = air_agent(tmp_path, clock, outbox)
        indicator = IndicatorConfig(led_pin=17, button_pin=BUTTON_PIN, hold_time=1.0)
        service = Service(dataclasses.replace(agent.config, indicator=indicator), agent, outbox,
                          (), clock=clock, notifier=Notifier({}), pin_factory=factory)
        try:
            assert service.button is not None and service.led is not None
            assert service.button.maintenance_hold == 10.0  # the documented gesture
            assert agent.workers[0]._try_setup()
            service.led.identify()  # the long press on the way to the 10 s hold
            service.toggle_maintenance()  # what the 10 s hold calls
            assert not service.led.identifying  # the answer is at once
            assert service.led.condition is Condition.MAINTENANCE
            assert "MAINTENANCE mode on" in service.status_line()
            assert sampled(agent) == [M, M, M]
            assert maintenance.load(tmp_path).by == maintenance.BY_BUTTON  # type: ignore[union-attr]
            service.status_files.tick(agent.workers)
            recorded = SensorsFile.load(tmp_path / SENSORS_FILE)
            assert recorded is not None and recorded.maintenance is not None
            assert recorded.maintenance["by"] == "button"
            service.toggle_maintenance()
            assert service.led.condition is Condition.OK
            assert sampled(agent) == [0, 0, 0]
            service.status_files.tick(agent.workers)
            recorded = SensorsFile.load(tmp_path / SENSORS_FILE)
            assert recorded is not None and recorded.maintenance is None
        finally:
            for device in (service.button, service.led):
                if device is not None:
                    device.close()


# --- --follow ------------------------------------------------------------------------------------


def test_follow_says_when_the_mode_starts_and_ends() -> None:
    off = Look(10, 0, 0, 0, held=0, synced=True, uplinks=(), sensors=(), agent=1)
    ends = round((time.time() + 3600) * NS)
    on = Look(10, 0, 0, 0, held=0, synced=True, uplinks=(), sensors=(), agent=1,
              maintenance=(1, 2, ends, "PM sensor swap"))
    said = changes(off, on, targets={})
    assert len(said) == 1 and said[0].startswith("maintenance mode on (PM sensor swap) until")
    assert changes(on, on, targets={}) == []
    assert changes(on, off, targets={}) == ["maintenance mode off: readings are no longer "
                                            "flagged"]


# --- the real envagent, beside a running agent -------------------------------------------------


def station(path: Path) -> Path:
    path.write_text('[unit]\nid = "maint-001"\nsite = "pole 7"\n[storage]\n'
                    'commit_interval = "1s"\n[[sensor]]\nid = "air"\ndriver = "bme280"\n'
                    'address = 0x76\ninterval = "1s"\n', encoding="utf-8")
    return path


def exported(config: Path, data: Path, cwd: Path) -> list[tuple[int, int]]:
    """(time_ns, quality) of each temperature in the outbox, through ``envagent export``."""
    out = envagent("export", "--simulate", "--config", config, "--data-dir", data, "--format",
                   "jsonl", cwd=cwd)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    return [(r["time_ns"], r["quality"]) for r in rows if r["quantity"] == "temperature"]


def test_readings_during_the_mode_carry_the_bit_before_and_after_do_not(tmp_path: Path) -> None:
    config, data = station(tmp_path / "c.toml"), tmp_path / "d"
    run = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--simulate", "--config", str(config),
         "--data-dir", str(data), "--duration", "12"], cwd=tmp_path, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=agent_process.environment())
    try:
        deadline = time.monotonic() + 30
        while not (data / "outbox.sqlite").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(2.5)  # a few readings before
        on = envagent("maintenance", "on", "--for", "4s", "--note", "PM sensor swap",
                      "--data-dir", data, cwd=tmp_path)
        assert on.returncode == 0, on.stderr
        assert on.stdout.startswith("MAINTENANCE on since"), on.stdout
        _, stderr = run.communicate(timeout=PROCESS_TIMEOUT_S)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, stderr
    window = maintenance.load(data)
    assert window is not None and window.note == "PM sensor swap"
    since, until = window.since_ns, window.until_ns
    readings = exported(config, data, tmp_path)
    before = [q for t, q in readings if t < since]
    during = [q for t, q in readings if since + NS <= t < until - NS // 2]
    after = [q for t, q in readings if t >= until + NS // 2]
    assert len(before) >= 2 and len(during) >= 2 and len(after) >= 2, (readings, since, until)
    assert all(not q & M for q in before)
    assert all(q & M for q in during)
    assert all(not q & M for q in after)  # it ended by itself
    assert "maintenance mode on since" in stderr and "PM sensor swap" in stderr
    assert "maintenance mode off (by itself" in stderr


def test_status_doctor_and_the_command_show_the_mode_in_words_and_json(tmp_path: Path) -> None:
    config, data = station(tmp_path / "c.toml"), tmp_path / "d"
    ran = envagent("run", "--simulate", "--config", config, "--data-dir", data, "--duration",
                   "2", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert json.loads(envagent("status", "--config", config, "--data-dir", data, "--json",
                               cwd=tmp_path).stdout)["maintenance"] is None
    on = envagent("maintenance", "on", "--for", "2h", "--note", "cleaning the inlet",
                  "--simulate", "--config", config, "--data-dir", data, cwd=tmp_path)
    assert on.returncode == 0, on.stderr
    status = envagent("status", "--config", config, "--data-dir", data, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    line = next(x for x in status.stdout.splitlines() if x.startswith("MAINTENANCE"))
    assert "MAINTENANCE on since" in line and "by itself): readings are flagged" in line
    assert status.stdout.splitlines()[1].startswith("MAINTENANCE")  # right under the unit
    report = json.loads(envagent("status", "--config", config, "--data-dir", data, "--json",
                                 cwd=tmp_path).stdout)
    mode = report["maintenance"]
    assert set(mode) == {"since", "until", "note", "by"} and mode["note"] == "cleaning the inlet"
    window = maintenance.load(data)
    assert window is not None
    assert mode["since"] == maintenance._iso(window.since_ns)
    assert abs(window.until_ns - window.since_ns - 2 * 3600 * NS) < NS
    shown = json.loads(envagent("maintenance", "--data-dir", data, "--json",
                                cwd=tmp_path).stdout)
    assert shown == mode
    doctor = envagent("doctor", "--simulate", "--config", config, "--data-dir", data, "--json",
                      "--samples", "1", cwd=tmp_path)
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert checks["maintenance"]["status"] == "WARN", checks["maintenance"]
    assert "maintenance off" in checks["maintenance"]["hint"]
    off = envagent("maintenance", "off", "--data-dir", data, cwd=tmp_path)
    assert off.returncode == 0 and "off" in off.stdout
    assert json.loads(envagent("status", "--config", config, "--data-dir", data, "--json",
                               cwd=tmp_path).stdout)["maintenance"] is None
    doctor = envagent("doctor", "--simulate", "--config", config, "--data-dir", data, "--json",
                      "--samples", "1", cwd=tmp_path)
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert checks["maintenance"]["status"] == "PASS"


def test_a_damaged_record_is_survived_by_the_agent_and_said_by_the_commands(
        tmp_path: Path) -> None:
    config, data = station(tmp_path / "c.toml"), tmp_path / "d"
    data.mkdir()
    (data / FILE).write_bytes(b"\x00garbage{")
    shown = envagent("maintenance", "--data-dir", data, cwd=tmp_path)
    assert shown.returncode == 0
    assert "off" in shown.stdout and "cannot be read" in shown.stderr
    ran = envagent("run", "--simulate", "--config", config, "--data-dir", data, "--duration",
                   "2", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert "WARNING envagent.maintenance" in ran.stderr and "counts as off" in ran.stderr
    assert "Traceback" not in ran.stderr
    readings = exported(config, data, tmp_path)
    assert readings and all(not q & M for _, q in readings)
    report = json.loads(envagent("status", "--config", config, "--data-dir", data, "--json",
                                 cwd=tmp_path).stdout)
    assert report["maintenance"] is None
    assert envagent("maintenance", "off", "--data-dir", data, cwd=tmp_path).returncode == 0
    assert not (data / FILE).exists()


def test_for_and_note_go_with_on_and_a_duration_is_bounded(tmp_path: Path) -> None:
    assert envagent("maintenance", "off", "--for", "1h", "--data-dir", tmp_path,
                    cwd=tmp_path).returncode == 2
    too_long = envagent("maintenance", "on", "--for", "30d", "--data-dir", tmp_path,
                        cwd=tmp_path)
    assert too_long.returncode == 2 and "7d" in too_long.stderr
    assert not (tmp_path / FILE).exists()


def test_a_note_with_control_characters_is_refused_and_never_printed(tmp_path: Path) -> None:
    escape = "swap \x1b]0;PWNED\x07\x1b[31mred\x9b2J"
    refused = envagent("maintenance", "on", "--note", escape, "--data-dir", tmp_path,
                       cwd=tmp_path)
    assert refused.returncode == 2 and "printable" in refused.stderr
    assert "\x1b" not in refused.stderr + refused.stdout and not (tmp_path / FILE).exists()
    # A record the service's user wrote by hand (status runs as root): read as damaged, never
    # shown.
    clock = FakeClock(start=100.0, wall=WALL)
    maintenance.turn_on(tmp_path, clock, BOOT, note="PM sensor swap")
    record = json.loads((tmp_path / FILE).read_text())
    (tmp_path / FILE).write_text(json.dumps(record | {"note": escape}))
    window, why = maintenance.read_active(tmp_path, clock, BOOT)
    assert window is None and why is not None and "\x1b" not in why
