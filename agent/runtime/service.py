"""``envagent run``: sampling, delivery, watchdog and status LED, composed and torn down in order.

Start-up: outbox open (salvaged if damaged), the station record written (agent.store.station; only
when it changed), sampling started, READY=1 once every sensor has tried its first setup. The
writer's commit, the watchdog's tick and the health sample are periodic work of the sampling
scheduler: they ride its wake-ups, with no timer threads of their own.
Shutdown (SIGTERM, SIGINT, ``--duration``): STOPPING=1, delivery starts no new send, sensors
stop, everything sampled is committed, and each upstream's delivery stops once the send in
flight, if any, is acknowledged -- or after ``STOP_GRACE_S``, cut short with its batch still in
the outbox. A clean stop replays nothing.

Maintenance mode (agent.store.maintenance): the agent's Watch is looked at on every supervisor
tick too, so its start and end are logged, written to the status file and shown on the LED
even between samples; holding the service button for 10 s turns it on or off.

Several upstreams: one delivery worker each, started and stopped together; each commit nudges
all of them, and one that is down holds back no other (they share only the outbox).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from agent.config import Config, IndicatorConfig
from agent.core.errors import StorageError
from agent.runtime.health import FIRST_SAMPLE_S, HealthReporter
from agent.runtime.indicator import Condition, ServiceButton, StatusLED, condition
from agent.runtime.notify import Notifier
from agent.runtime.statusfile import StatusFiles
from agent.runtime.supervisor import HUNG_READ_S, Supervisor
from agent.sampling.daemon import Agent
from agent.store import maintenance, station
from agent.store.storage import Store
from agent.uplink.worker import STOP_GRACE_S, Uplink
from drivers.clock import Clock

log = logging.getLogger("envagent")

# How long READY=1 waits for the sensors' first setup: a chip that does not answer fails fast,
# but an SCD4x needs ~0.5 s to stop a measurement it was left in.
SETUP_WAIT_S = 10.0
# How late a health sample may come to ride a sensor slot rather than wake a runner for itself.
HEALTH_SLACK_S = 60.0
# The uplink states, as the status LED groups them.
_LED_UPLINK = {"starting": "ok", "ok": "ok", "retrying": "offline", "failing": "offline",
               "auth_blocked": "auth"}


class Service:
    def __init__(
        self,
        config: Config,
        agent: Agent,
        outbox: Store,
        uplinks: Sequence[Uplink],
        *,
        clock: Clock,
        notifier: Notifier,
        pin_factory: Any = None,
        simulated: bool = False,
    ) -> None:
        self.config = config
        # a rehearsal (agent.store.rehearsal): said in the station record
        self.simulated = simulated
        self.agent = agent
        self.outbox = outbox
        self.uplinks = tuple(uplinks)
        self.clock = clock
        self.notifier = notifier
        timeout = notifier.watchdog_interval()
        self.supervisor = Supervisor(
            notifier, clock, agent.workers,
            writer_beat=lambda: agent.last_cycle,
            writer_timeout=max(15.0, 3 * config.storage.commit_interval),
            # A read stuck longer than the watchdog's own timeout (but never under 10 s, the
            # longest any driver waits) is hung.
            hung_after=HUNG_READ_S if timeout is None else max(10.0, 2 * timeout),
            status=self.status_line,
            on_tick=self._on_tick,
        )
        self.led, self.button = _indicator(config.indicator, clock, pin_factory, self)
        self.health = HealthReporter(agent, outbox, self.uplinks, clock=clock,
                                     boot_id=agent.boot_id)
        # sensors-state.json and history.json, for `envagent status` in another process
        self.status_files = StatusFiles(config.storage.path, clock, latest=outbox.latest,
                                        boot_id=agent.boot_id,
                                        maintenance=self._maintenance_window,
                                        synced=lambda: agent.timekeeper.synced)

    def run(self, duration: float | None) -> None:
        self._save_station()
        self.agent.on_commit = self._nudge
        self.agent.on_stop = self._request_stop  # before the final commit's nudge
        for uplink in self.uplinks:
            uplink.start()
        self.agent.start()
        self.agent.wait_for_setup(SETUP_WAIT_S)
        self.supervisor.begin()
        # Both ride the scheduler's wake-ups (agent.sampling.scheduler.Periodic): no timer
        # threads of their own.
        interval, slack = self.supervisor.pace()
        self.agent.slots.every("the watchdog's tick", interval, self.supervisor.tick,
                               slack=slack)
        health = self.config.health.interval
        self.agent.slots.every("the health sample", health, self.health.report,
                               slack=min(health / 2, HEALTH_SLACK_S), first=FIRST_SAMPLE_S)
        try:
            self.agent.run(duration=duration)
        finally:
            self.health.stop()
            self.supervisor.stop()
            self.status_files.close(self.agent.workers)
            self._stop_uplinks()
            for device in (self.button, self.led):
                if device is not None:
                    device.close()

    def _nudge(self, urgent: bool = False) -> None:
        for uplink in self.uplinks:
            uplink.nudge(urgent=urgent)

    def _request_stop(self) -> None:
        for uplink in self.uplinks:
            uplink.request_stop()

    def _stop_uplinks(self) -> None:
        """The sends in flight share one grace: asked all at once (request_stop), they finish in
        parallel, and each worker's stop waits only what is left of it -- three upstreams stop
        within STOP_GRACE_S, not three times it (the unit's TimeoutStopSec is 20 s)."""
        self._request_stop()
        deadline = time.monotonic() + STOP_GRACE_S
        for uplink in self.uplinks:
            uplink.stop(grace=max(0.0, deadline - time.monotonic()))

    def _save_station(self) -> None:
        """What status, export and doctor need with --data-dir alone (agent.store.station). Never
        fatal: the readings matter more than a record of the config."""
        data_dir = self.config.storage.path
        try:
            if station.save(data_dir, station.describe(self.config, simulated=self.simulated)):
                log.info("station record written to %s", data_dir / station.FILE)
        except OSError as exc:
            log.warning("cannot write the station record %s: %s; status, export and doctor "
                        "there need --config", data_dir / station.FILE, exc.strerror or exc)

    def status_line(self) -> str:
        """What ``systemctl status`` shows: sensors, backlog, delivery -- in one line."""
        states = [w.health.state.value for w in self.agent.workers]
        ok = states.count("ok")
        parts = [f"{ok}/{len(states)} sensors ok"]
        try:
            parts.append(f"backlog {self.outbox.stats().backlog}")
        except StorageError as exc:
            parts.append(f"STORAGE FAILING: {exc}")
        if self._maintenance_window() is not None:
            parts.append("MAINTENANCE mode on")
        for uplink in self.uplinks:  # one upstream: as it always was; several: each by name
            state = uplink.state
            who = "" if len(self.uplinks) == 1 else f"{uplink.name} "
            text = f"uplink {who}{state.state}"
            if state.last_success_ns:
                ago = time.time() - state.last_success_ns / 1e9
                text += f", delivered {_ago(ago)} ago"
            if uplink.holding:
                text += f", {uplink.held} held for the clock"
            parts.append(text)
        return "; ".join(parts)

    def condition(self) -> Condition:
        """The LED shows the worst upstream: one refusing our credentials is FATAL, one
        unreachable OFFLINE, whatever the others do."""
        grouped = {_LED_UPLINK[u.state.state] for u in self.uplinks}
        uplink = next((g for g in ("auth", "offline", "ok") if g in grouped), "disabled")
        states = [w.health.state.value for w in self.agent.workers]
        return condition(states, uplink, storage_ok=not self.agent.storage_failing,
                         alert=self.agent.alerts.firing,
                         holding=any(u.holding for u in self.uplinks),
                         maintenance=self._maintenance_window() is not None)

    def _maintenance_window(self) -> maintenance.Window | None:
        watch = self.agent.maintenance
        return None if watch is None else watch.current()

    def _on_tick(self) -> None:
        stuck = self.supervisor.stuck()
        self.status_files.tick(self.agent.workers, stuck={
            w.sensor.id: since for w in self.agent.workers if (since := stuck.get(w)) is not None})
        if self.led is not None:
            self.led.show(self.condition())

    def sync_now(self) -> None:
        for uplink in self.uplinks:
            uplink.sync_now()

    def identify(self) -> None:
        if self.led is not None:
            self.led.identify()

    def toggle_maintenance(self) -> None:
        """The service button's 10 s hold: maintenance mode on (for the default time) or off,
        and the LED says which at once -- the identify blink of the hold stops."""
        watch = self.agent.maintenance
        if watch is None:
            return
        data_dir = self.config.storage.path
        if watch.active():
            maintenance.turn_off(data_dir, self.clock, self.agent.boot_id,
                                 by=maintenance.BY_BUTTON)
        else:
            maintenance.turn_on(data_dir, self.clock, self.agent.boot_id,
                                by=maintenance.BY_BUTTON)
        watch.active()  # logs the change now, not at the next sample
        if self.led is not None:
            self.led.identify(0)
            self.led.show(self.condition())


def _indicator(
    settings: IndicatorConfig | None, clock: Clock, pin_factory: Any, service: Service
) -> tuple[StatusLED | None, ServiceButton | None]:
    """The LED and button, when configured; a GPIO that cannot be claimed is logged, not fatal."""
    if settings is None:
        return None, None
    led = button = None
    try:
        led = StatusLED(settings.led_pin, pin_factory=pin_factory, clock=clock)
        if settings.button_pin is not None:
            button = ServiceButton(
                settings.button_pin, pin_factory=pin_factory, hold_time=settings.hold_time,
                on_short_press=service.sync_now, on_long_press=service.identify,
                on_maintenance=service.toggle_maintenance,
            )
    except Exception as exc:  # noqa: BLE001 - gpiozero raises many kinds; the LED is optional
        log.error("status LED/button unavailable (GPIO%s): %s; running without it",
                  settings.led_pin, exc)
    return led, button


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{max(0, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"
