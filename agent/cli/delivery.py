"""``envagent run`` (the service's main job) and ``sync`` (deliver the backlog now)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

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
from agent.core.errors import ConfigError


def cmd_run(args: argparse.Namespace) -> int:
    from agent.core.timebase import read_boot_id
    from agent.runtime.notify import Notifier
    from agent.runtime.service import Service
    from agent.sampling.daemon import Agent, make_drivers
    from agent.sampling.power import power_switches
    from agent.store import datadir, rehearsal
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
                        clock=clock, progress=notifier.still_starting) as outbox,
    ):
        rehearsal.mark(outbox, simulate=ctx.simulate)  # whose readings these are
        drivers = make_drivers(ctx.config, buses, clock, DRIVERS)
        pin_factory = mock_pin_factory() if ctx.simulate and uses_gpio(ctx.config) else None
        power = power_switches((s.power_pin for s in ctx.config.sensors), clock=clock,
                               pin_factory=pin_factory)
        agent = Agent(ctx.config, drivers, outbox=outbox, clock=clock, boot_id=read_boot_id(),
                      power=power, commission_dir=ctx.data_dir)
        uplink = None
        if ctx.config.uplink is not None and (args.deliver or not ctx.simulate):
            from agent.uplink.worker import build_uplink

            uplink = build_uplink(ctx.config, outbox, clock, ctx.data_dir,
                                  held_boot=agent.timekeeper.held_boot,
                                  hold=agent.timekeeper.holding, simulated=ctx.simulate)
        if ctx.simulate:
            _log_rehearsal(ctx, None if uplink is None else uplink.sink.where)
        service = Service(ctx.config, agent, outbox, uplink, clock=clock, notifier=notifier,
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


def _log_rehearsal(ctx: Context, delivering_to: str | None) -> None:
    """Where a rehearsal's readings go (agent.store.rehearsal): one line at the start of ``run``."""
    if delivering_to is not None:
        log.info("rehearsal: readings are kept in %s and delivered to %s, marked simulated",
                 ctx.data_dir, delivering_to)
    elif ctx.config.uplink is not None:
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
    """Deliver the backlog now; exit 1, saying why, unless all of it went: readings held for
    the clock, refused by the server (quarantined) or left by a failure all count."""
    from agent.cli import statusview
    from agent.core.timebase import read_boot_id
    from agent.sampling.timekeeping import TimeKeeper
    from agent.store import datadir
    from agent.store.outbox import Outbox
    from agent.uplink.worker import build_uplink

    ctx = context_of(args)
    if ctx.config.uplink is None:
        raise ConfigError([f"{ctx.config.source}: uplink: missing; add an [uplink] section "
                           "with the url to deliver to"])
    refuse_token_environment(ctx.config)
    if not ctx.outbox_path.exists():
        print(f"no outbox at {ctx.outbox_path}: has the agent run with this data directory?",
              file=sys.stderr)
        return EXIT_FAILURE
    clock = clock_of(args)
    with (
        datadir.hold(ctx.data_dir, hint=datadir.SYNC_HINT),  # not beside a running agent
        Outbox(ctx.outbox_path, max_bytes=ctx.config.storage.max_bytes) as outbox,
    ):
        timekeeper = TimeKeeper(clock, read_boot_id(), commission_dir=ctx.data_dir)
        timekeeper.maintain(outbox)  # re-stamp what the clock's sync allows before sending
        uplink = build_uplink(ctx.config, outbox, clock, ctx.data_dir,
                              held_boot=timekeeper.held_boot, hold=timekeeper.holding,
                              simulated=ctx.simulate)
        try:
            flushed = uplink.flush()
        finally:
            uplink.sink.close()
        backlog = outbox.stats().backlog
    reason = statusview.sync_left(uplink.state, uplink.sink.where, failed=not flushed.ok,
                                  quarantined=flushed.quarantined, backlog=backlog,
                                  now=clock.time())
    report = {"url": uplink.sink.where, "delivered": flushed.delivered,
              "quarantined": flushed.quarantined, "held": flushed.held, "backlog": backlog,
              "ok": reason is None, "reason": reason, "error": flushed.error}
    if args.json:
        print_json(report)
    else:
        print(f"delivered {flushed.delivered} reading(s) to {uplink.sink.where}, quarantined "
              f"{flushed.quarantined}; {backlog} left in the outbox")
        if reason is not None:
            print(f"envagent: not all of it went: {reason}", file=sys.stderr)
    return EXIT_OK if reason is None else EXIT_FAILURE
