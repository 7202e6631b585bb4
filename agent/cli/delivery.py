"""``envagent run`` (the service's main job) and ``sync`` (deliver the backlog now)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any

from agent.cli.context import (
    EXIT_FAILURE,
    EXIT_OK,
    Context,
    clock_of,
    context_of,
    log,
    print_json,
    refuse_token_environment,
)
from agent.cli.hardware import mock_pin_factory, open_buses, uses_gpio
from agent.config import Config, UplinkConfig
from agent.core.errors import ConfigError
from agent.store.station import public_url
from drivers.clock import Clock

if TYPE_CHECKING:  # loaded by the commands that use them, not by --help (start-up memory)
    from agent.sampling.timekeeping import TimeKeeper
    from agent.store.outbox import Outbox, Subscriber


def cmd_run(args: argparse.Namespace) -> int:
    from agent.core.timebase import ExternalTime, read_boot_id
    from agent.runtime.notify import Notifier
    from agent.runtime.service import Service
    from agent.sampling.daemon import Agent, make_drivers
    from agent.sampling.power import power_switches
    from agent.store import datadir, maintenance, rehearsal
    from agent.store.storage import ReopeningOutbox
    from drivers.registry import DRIVERS

    ctx = context_of(args)
    refuse_token_environment(ctx.config)
    clock = clock_of(args)
    notifier = Notifier()
    with (
        # one agent per data directory
        datadir.hold(ctx.data_dir, hint=datadir.RUN_HINT, unusable_ok=True),
        open_buses(ctx.config, clock, simulate=ctx.simulate, faults=args.sim_fault,
                   wiring=args.sim_wiring) as buses,
        ReopeningOutbox(ctx.outbox_path, max_bytes=ctx.config.storage.max_bytes,
                        clock=clock, progress=notifier.still_starting,
                        subscribers=subscribers(ctx.config)) as outbox,
    ):
        rehearsal.mark(outbox, simulate=ctx.simulate)  # whose readings these are
        drivers = make_drivers(ctx.config, buses, clock, DRIVERS)
        pin_factory = mock_pin_factory() if ctx.simulate and uses_gpio(ctx.config) else None
        power = power_switches((s.power_pin for s in ctx.config.sensors), clock=clock,
                               pin_factory=pin_factory)
        boot_id = read_boot_id()
        external_time = ExternalTime(clock.synchronized, clock.boottime)
        agent = Agent(ctx.config, drivers, outbox=outbox, clock=clock, boot_id=boot_id,
                      power=power, commission_dir=ctx.data_dir,
                      maintenance=maintenance.Watch(ctx.data_dir, clock, boot_id),
                      external_time=external_time)
        uplinks = []
        if args.deliver or not ctx.simulate:
            from agent.uplink.worker import build_uplink

            uplinks = [build_uplink(ctx.config, settings, outbox, clock, ctx.data_dir,
                                    held_boot=agent.timekeeper.held_boot,
                                    hold=agent.timekeeper.holding, simulated=ctx.simulate,
                                    external_time=external_time)
                       for settings in ctx.config.uplinks]
        if ctx.simulate:
            _log_rehearsal(ctx, [u.sink.where for u in uplinks])
        service = Service(ctx.config, agent, outbox, uplinks, clock=clock, notifier=notifier,
                          pin_factory=pin_factory, simulated=ctx.simulate)
        with _stop_on_signals(agent.request_stop):
            service.run(duration=args.duration)
        for switch in power.values():
            switch.close()
        log.info("stopped; %d reading(s) committed this run", agent.committed)
        if agent.storage_failing:  # the last commit failed too: what it held is gone
            log.error("exit 1: readings sampled this run were lost, the outbox %s could not "
                      "store them (see above); fix it before the next start",
                      ctx.outbox_path)
            return EXIT_FAILURE
    return EXIT_OK


def subscribers(config: Config) -> list[Subscriber]:
    """The configured upstreams as the outbox keeps their cursors (agent.store.outbox)."""
    from agent.store.outbox import Subscriber

    return [Subscriber(u.name, u.takes, u.start) for u in config.uplinks]


def _log_rehearsal(ctx: Context, delivering_to: list[str]) -> None:
    """Where a rehearsal's readings go (agent.store.rehearsal): one line at the start of ``run``."""
    if delivering_to:
        log.info("rehearsal: readings are kept in %s and delivered to %s, marked simulated",
                 ctx.data_dir, " and ".join(delivering_to))
    elif ctx.config.uplinks:
        log.info("rehearsal: readings are kept in %s and not delivered; add --deliver to send "
                 "them, marked simulated", ctx.data_dir)
    else:
        log.info("rehearsal: readings are kept in %s", ctx.data_dir)


@contextmanager
def _stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("%s received, stopping", signal.Signals(signum).name)
        stop()

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def cmd_sync(args: argparse.Namespace) -> int:
    """Deliver the backlog now, to every upstream (or the one ``--uplink`` names); exit 1,
    saying why, unless all of it went: readings held for the clock, refused by a server
    (quarantined) or left by a failure all count."""
    from agent.core.timebase import read_boot_id
    from agent.sampling.timekeeping import TimeKeeper
    from agent.store import datadir
    from agent.store.outbox import Outbox

    ctx = context_of(args)
    if not ctx.config.uplinks:
        raise ConfigError([f"{ctx.config.source}: uplink: missing; add an [uplink] section "
                           "with the url to deliver to"])
    chosen = _chosen(ctx.config, args.uplink)
    refuse_token_environment(ctx.config)
    if not ctx.outbox_path.exists():
        print(f"no outbox at {ctx.outbox_path}: has the agent run with this data directory?",
              file=sys.stderr)
        return EXIT_FAILURE
    clock = clock_of(args)
    with (
        datadir.hold(ctx.data_dir, hint=datadir.SYNC_HINT),  # not beside a running agent
        Outbox(ctx.outbox_path, max_bytes=ctx.config.storage.max_bytes,
               subscribers=subscribers(ctx.config)) as outbox,
    ):
        timekeeper = TimeKeeper(clock, read_boot_id(), commission_dir=ctx.data_dir)
        timekeeper.maintain(outbox)  # re-stamp what the clock's sync allows before sending
        reports = [_flush(ctx, settings, outbox, clock, timekeeper) for settings in chosen]
        backlog = outbox.stats().backlog
    reasons = [r["reason"] if len(reports) == 1 else f"{r['name']}: {r['reason']}"
               for r in reports if r["reason"] is not None]
    report = {"url": reports[0]["url"] if len(reports) == 1 else None,
              "delivered": sum(r["delivered"] for r in reports),
              "quarantined": sum(r["quarantined"] for r in reports),
              "held": max(r["held"] for r in reports), "backlog": backlog,
              "ok": not reasons, "reason": "; ".join(reasons) or None,
              "error": next((r["error"] for r in reports if r["error"]), None),
              "uplinks": reports}
    if args.json:
        print_json(report)
    else:
        for r in reports:
            print(f"delivered {r['delivered']} reading(s) to {r['url']}, quarantined "
                  f"{r['quarantined']}; {r['backlog']} left for it")
        print(f"{backlog} reading(s) left in the outbox")
        if reasons:
            print(f"envagent: not all of it went: {report['reason']}", file=sys.stderr)
    return EXIT_OK if not reasons else EXIT_FAILURE


def _chosen(config: Config, name: str | None) -> tuple[UplinkConfig, ...]:
    if name is None:
        return config.uplinks
    found = tuple(u for u in config.uplinks if u.name == name)
    if not found:
        raise ConfigError([f"--uplink {name}: no such upstream in {config.source}; configured: "
                           + ", ".join(u.name for u in config.uplinks)])
    return found


def _flush(ctx: Context, settings: UplinkConfig, outbox: Outbox, clock: Clock,
           timekeeper: TimeKeeper) -> dict[str, Any]:
    """One upstream's part of a sync, as its report."""
    from agent.cli import statusview
    from agent.uplink.worker import build_uplink

    uplink = build_uplink(ctx.config, settings, outbox, clock, ctx.data_dir,
                          held_boot=timekeeper.held_boot, hold=timekeeper.holding,
                          simulated=ctx.simulate)
    try:
        flushed = uplink.flush()
    finally:
        uplink.sink.close()
    left = next((c.backlog for c in outbox.upstreams() if c.name == settings.name), 0)
    reason = statusview.sync_left(uplink.state, uplink.sink.where, failed=not flushed.ok,
                                  quarantined=flushed.quarantined, backlog=left,
                                  now=clock.time())
    return {"name": settings.name, "url": public_url(settings.url), "delivered": flushed.delivered,
            "quarantined": flushed.quarantined, "held": flushed.held, "backlog": left,
            "ok": reason is None, "reason": reason, "error": flushed.error}
