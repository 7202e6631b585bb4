"""The ``envagent`` command: the one composition root that builds real or simulated hardware.

Exit codes: 0 ok, 1 runtime failure, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar

from agent import __version__
from agent.config import Config, load_config
from agent.core.errors import ConfigError, StorageError, describe
from drivers.bus import Bus
from drivers.clock import Clock, SystemClock

# Each command imports what it uses inside its function, for start-up memory: --help, shell
# completion and `status` must not load the drivers, requests or the delivery worker.
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # 141: stdout's reader has gone (| head)
DEFAULT_CONFIG = Path("/etc/envagent/envagent.toml")
# Where a newcomer's simulated run keeps its data: beside them, never under /var.
SIMULATE_DATA_DIR = Path("envagent-data")
OUTBOX_NAME = "outbox.sqlite"

log = logging.getLogger("envagent")


def example_config_path() -> Path:
    """The annotated example shipped inside the package (a copy of config/envagent.example.toml)."""
    return Path(__file__).parent.parent / "example.toml"


# With no config file these only read what the agent left in --data-dir (its station record,
# agent.store.station); the writing ones keep a rehearsal's readings apart from real ones
# (agent.store.rehearsal).
READ_ONLY_COMMANDS = ("status", "export", "doctor")
WRITING_COMMANDS = ("run", "sync", "commission")
_noticed: set[str] = set()  # each notice once per process (status --watch redraws)


@dataclass(frozen=True)
class Context:
    config: Config
    data_dir: Path
    simulate: bool
    # The station record standing in for a missing config file (agent.store.station): read-only
    # commands only -- it holds no driver settings and no token.
    record: Path | None = None

    @property
    def outbox_path(self) -> Path:
        return self.data_dir / OUTBOX_NAME


def _context(args: argparse.Namespace) -> Context:
    """The config, data directory and mode a command works with.

    The config: ``--config``; else /etc/envagent/envagent.toml when it exists -- with
    ``--simulate`` too, so a rehearsal is of the technician's own station; else, for status,
    export and doctor, the station record in ``--data-dir``; else, with ``--simulate``, the
    shipped example station. The data directory: ``--data-dir``; else ``storage.path`` -- for
    a rehearsal ``simulated/`` under it, or ./envagent-data for the shipped example.
    """
    from agent.store import rehearsal  # loads the outbox: not for --help and completion

    simulate = getattr(args, "simulate", False)
    command = getattr(args, "command", None)
    given: Path | None = getattr(args, "data_dir", None)
    _check_deliver(args, simulate)
    if args.config is None and not _exists(DEFAULT_CONFIG):
        if command in READ_ONLY_COMMANDS and given is not None:
            from_record = _record_context(given, simulate)
            if from_record is not None:
                return from_record
        if not simulate:
            raise ConfigError([_no_config(command, given)])
        _notice(f"no {DEFAULT_CONFIG}: using the shipped example station")
        config = load_config(example_config_path())
        data_dir = given or SIMULATE_DATA_DIR
    else:
        config = load_config(args.config or DEFAULT_CONFIG)
        data_dir = given or (config.storage.path / rehearsal.SIMULATED_DIR if simulate
                             else config.storage.path)
    if getattr(args, "deliver", False) and config.uplink is None:
        raise ConfigError([f"{config.source}: uplink: missing; --deliver needs an [uplink] "
                           "section with the url to deliver to"])
    if command in WRITING_COMMANDS:
        rehearsal.check(Path(data_dir) / OUTBOX_NAME, simulate=simulate)
    config = replace(config, storage=replace(config.storage, path=Path(data_dir)))
    return Context(config, Path(data_dir), simulate)


def _check_deliver(args: argparse.Namespace, simulate: bool) -> None:
    """A rehearsal delivers only when asked, and only a rehearsal is asked
    (agent.store.rehearsal)."""
    deliver = getattr(args, "deliver", False)
    if deliver and not simulate:
        raise ConfigError(["--deliver is for a rehearsal, with --simulate: without it, run and "
                           "sync always deliver to [uplink]"])
    if getattr(args, "command", None) == "sync" and simulate and not deliver:
        raise ConfigError(["sync --simulate: a rehearsal's readings are delivered only when "
                           "asked; add --deliver to send them, marked simulated"])


def _exists(path: Path) -> bool:
    """Whether ``path`` is there; one that cannot be looked at is, and load_config says why."""
    try:
        path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    return True


def _no_config(command: str | None, data_dir: Path | None) -> str:
    """The error when there is no config file: every way on."""
    from agent.store import station

    text = f"{DEFAULT_CONFIG}: no such file; pass --config PATH"
    if command in READ_ONLY_COMMANDS and data_dir is None:
        text += (", or --data-dir DIR of a unit whose agent has run there (its station record "
                 f"{station.FILE} stands in for the config)")
    elif command in READ_ONLY_COMMANDS:
        text += (f", or a --data-dir where the agent has run: {data_dir} has no station record "
                 f"({station.FILE})")
    return text + "; --simulate tries the shipped example station"


def _record_context(data_dir: Path, simulate: bool) -> Context | None:
    """The station record in ``data_dir`` standing in for the missing config, if there is one."""
    from agent.store import station

    path = data_dir / station.FILE
    try:
        record = station.load(data_dir)
        if record is None:
            return None
        config = station.as_config(record, data_dir)
    except station.StationRecordError as exc:
        raise ConfigError([f"{exc}; pass --config PATH"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the station record: "
                           f"{exc.strerror or type(exc).__name__}; pass --config PATH"]) from None
    _notice(f"no {DEFAULT_CONFIG}: using the station record {path} (unit {config.unit.id}), "
            "written by the agent that ran there")
    return Context(config, data_dir, simulate, record=path)


def _notice(text: str) -> None:
    """One line on stderr for people (stdout may be --json), once per process."""
    if text not in _noticed:
        _noticed.add(text)
        print(f"envagent: {text}", file=sys.stderr)


@dataclass(frozen=True)
class SimFault:
    """``--sim-fault SENSOR=KIND[@SECONDS]``: break a simulated sensor, now or later."""

    sensor: str
    kind: str
    after: float

    KINDS: ClassVar[tuple[str, ...]] = ("hang", "nack", "eio")

    @classmethod
    def parse(cls, text: str) -> SimFault:
        sensor, _, rest = text.partition("=")
        kind, _, after = rest.partition("@")
        try:
            delay = float(after) if after else 0.0
        except ValueError:
            delay = -1.0
        if not sensor or kind not in cls.KINDS or delay < 0:
            raise argparse.ArgumentTypeError(
                f"expected SENSOR=KIND[@SECONDS] with KIND one of {', '.join(cls.KINDS)}, "
                f"got {text!r}"
            )
        return cls(sensor, kind, delay)


@dataclass(frozen=True)
class SimClock:
    """``--sim-clock STATE[@SECONDS][,booted=UNIX_TIME]``: the simulated unit's clock facts.

    STATE is ``synced`` (the default) or ``unsynced``; ``unsynced@30`` synchronises 30 s after
    the command starts; ``booted`` is when the simulated unit booted (default: this machine's
    boot). The host's own clock facts never leak into a simulated run.
    """

    synced: bool = True
    sync_after: float | None = None
    booted: float | None = None

    @classmethod
    def parse(cls, text: str) -> SimClock:
        state, _, rest = text.partition(",")
        state, _, after = state.partition("@")
        key, _, booted = rest.partition("=")
        try:
            sync_after = float(after) if after else None
            boot_time = float(booted) if booted else None
        except ValueError:
            sync_after = boot_time = -1.0
        bad_numbers = any(x is not None and not 0 <= x < float("inf")
                          for x in (sync_after, boot_time))
        if (state not in ("synced", "unsynced") or bad_numbers or (rest and key != "booted")
                or (rest and boot_time is None) or (sync_after is not None and state == "synced")):
            raise argparse.ArgumentTypeError(
                "expected synced or unsynced[@SECONDS], optionally followed by "
                f",booted=UNIX_TIME, got {text!r}")
        return cls(state == "synced", sync_after, boot_time)

    def clock(self) -> Clock:
        from drivers.sim.clock import SimulatedClock

        return SimulatedClock(synced=self.synced, sync_after=self.sync_after, booted=self.booted)


def _clock(args: argparse.Namespace) -> Clock:
    """The host's clock, or with ``--simulate`` the simulated world's."""
    if getattr(args, "simulate", False):
        spec: SimClock = getattr(args, "sim_clock", None) or SimClock()
        return spec.clock()
    return SystemClock()


SIM_WIRING_NEEDS_SIMULATE = ("--sim-wiring needs --simulate: the wiring file describes the "
                             "simulated bus, not /dev/i2c-N")


def _check_simulate_only(args: argparse.Namespace) -> None:
    """``--sim-wiring`` means nothing on real hardware: refused before anything starts."""
    if getattr(args, "sim_wiring", None) is not None and not getattr(args, "simulate", False):
        raise ConfigError([SIM_WIRING_NEEDS_SIMULATE])


def _inject(buses: Mapping[int, Any], config: Config, fault: SimFault) -> None:
    from drivers.sim.simbus import BusIOError, Nack, Timeout

    sensor = next((s for s in config.sensors if s.id == fault.sensor), None)
    if sensor is None:
        raise ConfigError([f"--sim-fault: no sensor {fault.sensor!r} in {config.source}"])
    kinds = {"hang": Timeout(count=None, duration=3600.0), "nack": Nack(count=None),
             "eio": BusIOError(count=None)}
    timer = threading.Timer(fault.after, buses[sensor.bus].inject,
                            (sensor.address, kinds[fault.kind]))
    timer.daemon = True
    timer.start()


@contextmanager
def open_buses(
    config: Config, clock: Clock, *, simulate: bool, faults: Sequence[SimFault] = (),
    wiring: Path | None = None,
) -> Iterator[dict[int, Bus]]:
    """One Bus per bus number the config uses: the simulated world, or /dev/i2c-N.

    ``wiring`` (``--sim-wiring``): the simulated world holds the devices that file lists, not
    the configured sensors, to rehearse a wiring mistake (drivers.sim.wiring).
    """
    if faults and not simulate:
        raise ConfigError(["--sim-fault needs --simulate"])
    if wiring is not None and not simulate:
        raise ConfigError([SIM_WIRING_NEEDS_SIMULATE])
    if simulate:
        from drivers.sim.environment import Environment
        from drivers.sim.world import Placement, build_world

        unit = config.unit
        environment = Environment(
            latitude=unit.latitude, longitude=unit.longitude, elevation_m=unit.elevation_m or 0.0
        )
        placements = [
            Placement(s.bus, s.address, s.driver, s.id, s.mux, s.channel) for s in config.sensors
        ]
        if wiring is not None:
            from agent.config import load_wiring
            from drivers.sim.wiring import wired_placements

            placements = wired_placements(load_wiring(wiring), placements)
        world = build_world(placements, clock=clock, environment=environment,
                            options={s.id: s.options for s in config.sensors}, log_length=0,
                            buses={s.bus for s in config.sensors})
        for fault in faults:
            _inject(world, config, fault)
        yield dict(world)
        return
    from drivers.bus import SMBus2Bus

    buses: dict[int, Bus] = {}
    try:
        for number in sorted({s.bus for s in config.sensors}):
            buses[number] = SMBus2Bus(number)
        yield buses
    finally:
        for bus in buses.values():
            bus.close()


def _print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def _iso(time_ns: int | None) -> str | None:
    if time_ns is None:
        return None
    return datetime.fromtimestamp(time_ns / 1e9, UTC).isoformat(timespec="seconds")


# --- commands ---------------------------------------------------------------------------------


def cmd_config_check(args: argparse.Namespace) -> int:
    ctx = _context(args)
    print(f"{ctx.config.source}: ok ({len(ctx.config.sensors)} sensor(s))")
    return EXIT_OK


def cmd_read(args: argparse.Namespace) -> int:
    from agent.core import quality
    from agent.sampling.daemon import make_drivers
    from agent.sampling.processing import Processor
    from drivers.bus import describe_error
    from drivers.registry import DRIVERS

    ctx = _context(args)
    clock = _clock(args)
    rows: list[dict[str, Any]] = []
    failed = False
    with open_buses(ctx.config, clock, simulate=ctx.simulate, wiring=args.sim_wiring) as buses:
        drivers = make_drivers(ctx.config, buses, clock, DRIVERS)
        for sensor, driver in zip(ctx.config.sensors, drivers, strict=True):
            try:
                driver.setup()
                measurements = Processor.for_sensor(sensor).sample(driver.read)
            except Exception as exc:  # noqa: BLE001 - report every sensor, then exit 1
                failed = True
                print(f"{sensor.id}: {describe_error(exc, driver.where)}", file=sys.stderr)
                continue
            finally:
                driver.close()
            rows += [
                {"sensor": sensor.id, "quantity": m.quantity, "value": m.value, "unit": m.unit,
                 "quality": int(m.quality), "flags": quality.names(m.quality),
                 "calibration": m.calibration}
                for m in measurements
            ]
    if args.json:
        _print_json(rows)
    else:
        for r in rows:
            # the flags in words, so a clipped or out-of-range value never reads as a good one
            flags = f"  {quality.words(r['quality'])}" if r["quality"] else ""
            cal = f"  (calibration {r['calibration']})" if r["calibration"] else ""
            print(f"{r['sensor']:<12} {r['quantity']:<14} {r['value']:>10.2f} {r['unit']}{flags}"
                  f"{cal}")
    return EXIT_FAILURE if failed else EXIT_OK


def cmd_scan(args: argparse.Namespace) -> int:
    from drivers.registry import IDENTIFIERS
    from drivers.scan import scan

    clock = _clock(args)
    if args.simulate:
        ctx = _context(args)
        cm = open_buses(ctx.config, clock, simulate=True, wiring=args.sim_wiring)
    else:
        cm = _real_bus(args.bus)
    with cm as buses:
        bus = buses.get(args.bus)
        found = scan(bus, IDENTIFIERS) if bus is not None else []
    # Devices behind a multiplexer also carry "mux" and "channel"; the bus's own leave them out.
    rows: list[dict[str, Any]] = [
        {"bus": args.bus, "address": f.address, "chip": f.chip}
        | ({} if f.mux is None else {"mux": f.mux, "channel": f.channel})
        for f in found
    ]
    if args.json:
        _print_json(rows)
    elif not rows:
        print(f"no device answered on bus {args.bus}")
    else:
        for r in rows:
            via = f"  (mux 0x{r['mux']:02x} channel {r['channel']})" if "mux" in r else ""
            print(f"{r['bus']}:0x{r['address']:02x}  {r['chip'] or 'unknown'}{via}")
    return EXIT_OK


@contextmanager
def _real_bus(number: int) -> Iterator[dict[int, Bus]]:
    from drivers.bus import SMBus2Bus

    bus = SMBus2Bus(number)
    try:
        yield {number: bus}
    finally:
        bus.close()


def cmd_run(args: argparse.Namespace) -> int:
    from agent.core.timebase import read_boot_id
    from agent.runtime.notify import Notifier
    from agent.runtime.service import Service
    from agent.sampling.daemon import Agent, make_drivers
    from agent.sampling.power import power_switches
    from agent.store import datadir, rehearsal
    from agent.store.storage import ReopeningOutbox
    from drivers.registry import DRIVERS

    ctx = _context(args)
    _refuse_token_environment(ctx.config)
    clock = _clock(args)
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
        pin_factory = _mock_pin_factory() if ctx.simulate and _uses_gpio(ctx.config) else None
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


def _uses_gpio(config: Config) -> bool:
    """A status LED, a button or a sensor's power switch: only then is gpiozero loaded."""
    return config.indicator is not None or any(s.power_pin is not None for s in config.sensors)


def _mock_pin_factory() -> Any:
    """gpiozero's mock pins: the status LED, button and power switches of a simulated unit."""
    from gpiozero.pins.mock import MockFactory

    return MockFactory()


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


def _refuse_token_environment(config: Config) -> None:
    if config.uplink is not None:
        from agent.core.credentials import check_environment

        check_environment(os.environ)


def cmd_sync(args: argparse.Namespace) -> int:
    """Deliver the backlog now; exit 1, saying why, unless all of it went: readings held for
    the clock, refused by the server (quarantined) or left by a failure all count."""
    from agent.cli import statusview
    from agent.core.timebase import read_boot_id
    from agent.sampling.timekeeping import TimeKeeper
    from agent.store import datadir
    from agent.store.outbox import Outbox
    from agent.uplink.worker import build_uplink

    ctx = _context(args)
    if ctx.config.uplink is None:
        raise ConfigError([f"{ctx.config.source}: uplink: missing; add an [uplink] section "
                           "with the url to deliver to"])
    _refuse_token_environment(ctx.config)
    if not ctx.outbox_path.exists():
        print(f"no outbox at {ctx.outbox_path}: has the agent run with this data directory?",
              file=sys.stderr)
        return EXIT_FAILURE
    clock = _clock(args)
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
        _print_json(report)
    else:
        print(f"delivered {flushed.delivered} reading(s) to {uplink.sink.where}, quarantined "
              f"{flushed.quarantined}; {backlog} left in the outbox")
        if reason is not None:
            print(f"envagent: not all of it went: {reason}", file=sys.stderr)
    return EXIT_OK if reason is None else EXIT_FAILURE


def _uplink_status(ctx: Context) -> dict[str, Any] | None:
    """What the delivery worker last recorded in the data directory, if it ever ran."""
    from agent.uplink.worker import STATE_FILE, UplinkState

    state = UplinkState.load(ctx.data_dir / STATE_FILE)
    if state is None:
        return None
    return {"state": state.state, "since": _iso(state.since_ns),
            "last_success": _iso(state.last_success_ns), "last_error": state.last_error,
            "last_error_time": _iso(state.last_error_ns)}


def _status_live(args: argparse.Namespace) -> int:
    """``status --watch``: the one-shot status, redrawn; ``--follow``: one line per event
    (agent.cli.watch). The config is read first, so a bad one exits 2 as the one-shot would."""
    from agent.cli import watch
    from agent.core.timebase import read_boot_id

    if args.json:
        print("envagent status: --watch and --follow are for people; --json prints one report "
              "(a machine can run it again)", file=sys.stderr)
        return EXIT_USAGE
    ctx = _context(args)
    if args.follow:
        station = watch.Station.of(ctx.config, ctx.outbox_path, read_boot_id())
        return watch.follow(station, _clock(args))
    once = argparse.Namespace(**{**vars(args), "watch": None, "follow": False})
    encoding = sys.stdout.encoding
    return watch.watch(lambda: watch.captured(lambda: cmd_status(once), encoding), args.watch,
                       _clock(args))


def cmd_status(args: argparse.Namespace) -> int:
    if getattr(args, "watch", None) is not None or getattr(args, "follow", False):
        return _status_live(args)
    from agent.store.outbox import Outbox

    ctx = _context(args)
    if not ctx.outbox_path.exists():
        print(f"no outbox at {ctx.outbox_path}: has the agent run with this data directory?",
              file=sys.stderr)
        return EXIT_FAILURE
    with Outbox.open_readonly(ctx.outbox_path) as outbox:
        stats = outbox.stats()
        latest = outbox.latest()
        recovery = outbox.recovery()
        simulated = outbox.simulated()  # a rehearsal's (agent.store.rehearsal); None: not marked
    report: dict[str, Any] = {
        "unit": ctx.config.unit.id,
        "simulated": simulated,
        "outbox": str(ctx.outbox_path),
        "backlog": stats.backlog,
        "backlog_bytes": stats.backlog_bytes,
        "oldest": _iso(stats.oldest_ns),
        "newest": _iso(stats.newest_ns),
        "added": stats.added,
        "delivered": stats.delivered,
        "dropped": stats.dropped,
        "quarantined": stats.rejected,
        "uplink": _uplink_status(ctx),
        "clock_synchronized": _clock(args).synchronized(),
        "recovered": None if recovery is None else {
            "at": _iso(recovery.at_ns), "reason": recovery.reason, "moved_to": recovery.moved_to,
            "salvaged": recovery.salvaged, "lost": recovery.lost},
        "latest": [
            {"sensor": x.sensor, "quantity": x.quantity, "value": x.value, "unit": x.unit,
             "time": _iso(x.time_ns), "quality": x.quality}
            for x in latest
        ],
    }
    import shutil

    from agent.cli import statusview
    from agent.core.timebase import read_boot_id
    from agent.sampling.timekeeping import hold_ends

    report["sensors"] = statusview.sensors_json(ctx.data_dir, read_boot_id())
    report["alerts"] = [a.to_json() for a in statusview.firing_alerts(ctx.config, latest)]
    report["clock"] = statusview.clock_json(report["clock_synchronized"], statusview.held_in(
        ctx.data_dir, read_boot_id(), stats.backlog, _clock(args).time()))
    if args.json:
        _print_json(report)
        return EXIT_OK
    bars = statusview.BARS if _can_print(statusview.BARS) else statusview.ASCII_BARS
    lines = statusview.render(
            ctx.config, ctx.data_dir, stats, latest, recovery=recovery,
            synced=report["clock_synchronized"], boot_id=read_boot_id(),
            now=_clock(args).time(), width=shutil.get_terminal_size().columns, bars=bars,
            hold_ends=hold_ends(_clock(args)))
    if simulated:  # a rehearsal's outbox (agent.store.rehearsal): said first, on the unit's line
        lines[0] = statusview.clip(f"REHEARSAL (simulated) · {lines[0]}",
                                   max(statusview.MIN_WIDTH, shutil.get_terminal_size().columns))
    print("\n".join(lines))
    return EXIT_OK


def _can_print(text: str) -> bool:
    try:
        text.encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def cmd_export(args: argparse.Namespace) -> int:
    """Undelivered readings to a file (or stdout); the outbox is left as it is."""
    from agent.core.timebase import current_boot
    from agent.store import rehearsal
    from agent.uplink import export

    ctx = _context(args)
    if args.since is not None and args.until is not None and args.since >= args.until:
        raise ConfigError(["--since must be before --until (exported: since <= time < until)"])
    if not ctx.outbox_path.exists():
        print(f"no outbox at {ctx.outbox_path}: has the agent run with this data directory?",
              file=sys.stderr)
        return EXIT_FAILURE
    summary = export.write_export(
        ctx.outbox_path, args.output, args.format,
        export.Station.from_config(ctx.config, ctx.data_dir, simulated=rehearsal.is_simulated(
            ctx.outbox_path, default=ctx.simulate)),
        args.since, args.until, current_boot=current_boot(),
        clock_synced=_clock(args).synchronized(), force=args.force)
    for line in summary.describe(str(args.output or "stdout"), args.format):
        print(line, file=sys.stderr)
    return EXIT_OK


def cmd_commission(args: argparse.Namespace) -> int:
    """Record the as-installed facts and the sensors' serial numbers; exit 1 if one failed."""
    from agent.sampling.daemon import make_drivers
    from agent.store import commission, datadir
    from drivers.registry import DRIVERS

    ctx = _context(args)
    commission.check_writable(ctx.data_dir)  # before anything talks to the sensors
    # The sensors and commission.json are a running agent's: not beside one.
    with datadir.hold(ctx.data_dir, hint=datadir.COMMISSION_HINT):
        clock = _clock(args)
        with open_buses(ctx.config, clock, simulate=ctx.simulate,
                        wiring=args.sim_wiring) as buses:
            drivers = make_drivers(ctx.config, buses, clock, DRIVERS)
            sensors = commission.probe_sensors(ctx.config, drivers)
        facts = commission.Facts(args.technician, args.mounting_height, args.radiation_shield,
                                 args.note)
        record = commission.record_now(ctx.config, facts, sensors, clock)
        document = commission.append(ctx.data_dir, record)
    if args.json:
        _print_json(record)
    else:
        path = ctx.data_dir / commission.FILE
        print("\n".join(commission.describe(record, len(document["history"]), path)))
    failed = [s for s in sensors if "error" in s]
    for s in failed:
        print(f"{s['id']}: {s['error']}", file=sys.stderr)
    return EXIT_FAILURE if failed else EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    """Every check of agent.doctor.checkup; exit 1 when one FAILs (WARNs do not)."""
    import shutil
    from contextlib import ExitStack

    from agent.doctor import checkup as doctor
    from agent.doctor import report

    ctx = _context(args)
    clock = _clock(args)
    with ExitStack() as stack:
        world = (stack.enter_context(open_buses(ctx.config, clock, simulate=True,
                                                wiring=args.sim_wiring))
                 if ctx.simulate and ctx.record is None else None)
        without = None if ctx.record is None else (
            f"no config file, only the station record {ctx.record}, which holds no sensor "
            "settings and no token")
        checks = doctor.Doctor(ctx.config, ctx.data_dir, clock, os.environ,
                               simulate=ctx.simulate, samples=args.samples, buses=world,
                               without_config=without).run()
    if args.json:
        report.print_json(checks, sys.stdout)
    else:
        report.print_human(checks, sys.stdout, shutil.get_terminal_size().columns)
    return report.exit_code(checks)


def cmd_completion(args: argparse.Namespace) -> int:
    from agent.cli.completion import bash_script

    sys.stdout.write(bash_script(build_parser()))
    return EXIT_OK


# --- parsing ----------------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().replace("\n", "; ")
    return text or type(exc).__name__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="envagent",
        description="Field agent for environmental monitoring: reads I2C sensors, keeps every "
        "reading in a local outbox.",
        epilog="Exit codes: 0 ok, 1 runtime failure, 2 bad usage or config.",
    )
    parser.add_argument("--version", action="version", version=f"envagent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add_common(p: argparse.ArgumentParser, *names: str) -> None:
        """The options several commands share, with one wording everywhere."""
        if "config" in names:
            record = (", else the station record in --data-dir"
                      if p.prog.split()[-1] in READ_ONLY_COMMANDS else "")
            p.add_argument("--config", type=Path, metavar="PATH",
                           help=f"config file (default {DEFAULT_CONFIG}{record}; with "
                           "--simulate and no config at all, the shipped example)")
        if "simulate" in names:
            p.add_argument("--simulate", action="store_true",
                           help="use the simulated sensors instead of /dev/i2c-*, and a "
                           "rehearsal's data directory kept apart from the real one")
        if "deliver" in names:
            p.add_argument("--deliver", action="store_true",
                           help="with --simulate: deliver the rehearsal's readings to [uplink], "
                           "marked simulated (without it they are only kept)")
        if "sim_clock" in names:
            p.add_argument("--sim-clock", type=SimClock.parse, metavar="STATE[@S][,booted=T]",
                           help="with --simulate: the simulated clock is synced (default) or "
                           "unsynced (synchronising after S seconds); T: the Unix time the "
                           "simulated unit booted (default: this machine's boot)")
        if "sim_wiring" in names:
            p.add_argument("--sim-wiring", type=Path, metavar="PATH",
                           help="with --simulate: the simulated bus holds the devices this file "
                           "lists ([[device]] chip, address, bus, mux, channel) instead of the "
                           "configured sensors, to rehearse a wiring mistake")
        if "data_dir" in names:
            p.add_argument("--data-dir", type=Path, metavar="DIR",
                           help="state directory holding the outbox (overrides storage.path; "
                           "with --simulate: simulated/ under storage.path, or "
                           f"./{SIMULATE_DATA_DIR} for the shipped example)")
        if "json" in names:
            p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("run", help="sample and store, in the foreground, until stopped")
    add_common(p, "config", "simulate", "deliver", "sim_clock", "sim_wiring", "data_dir")
    p.add_argument("--duration", type=_positive_seconds, metavar="SECONDS",
                   help="stop cleanly after this many seconds")
    p.add_argument("--sim-fault", type=SimFault.parse, action="append", default=[],
                   metavar="SENSOR=KIND[@S]",
                   help="with --simulate: make a sensor hang, nack or eio (after S seconds)")
    _refuse_token_option(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("sync", help="deliver the outbox to [uplink] now, and report; exit 1 "
                       "unless all of it went")
    add_common(p, "config", "simulate", "deliver", "sim_clock", "data_dir", "json")
    _refuse_token_option(p)
    p.set_defaults(func=cmd_sync)

    p = sub.add_parser("read", help="take one sample from every configured sensor")
    add_common(p, "config", "simulate", "sim_wiring", "json")
    p.set_defaults(func=cmd_read)

    p = sub.add_parser("scan", help="list the addresses that answer on a bus, and their chips")
    p.add_argument("--bus", type=int, default=1, metavar="N", help="/dev/i2c-N (default 1)")
    add_common(p, "config", "simulate", "sim_wiring", "json")
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("status", help="backlog and last values, from the outbox")
    add_common(p, "config", "simulate", "sim_clock", "data_dir", "json")
    live = p.add_mutually_exclusive_group()
    live.add_argument("--watch", type=_positive_seconds, nargs="?", const=2.0,
                      metavar="SECONDS", help="redraw the status every SECONDS (default 2) "
                      "until Ctrl-C; in place on a terminal")
    live.add_argument("--follow", action="store_true",
                      help="print each commit, delivery, hold and state change as it happens, "
                      "until Ctrl-C")
    p.set_defaults(func=cmd_status)

    from agent.store.commission import height_argument, text_argument
    from agent.uplink.export import FORMATS, parse_time

    p = sub.add_parser("export", help="undelivered readings to a file, for offline sites")
    add_common(p, "config", "simulate", "sim_clock", "data_dir")
    p.add_argument("--since", type=parse_time, metavar="T",
                   help="from T, inclusive (2026-11-21T06:00:00Z or 2026-11-21; UTC)")
    p.add_argument("--until", type=parse_time, metavar="T", help="to T, exclusive")
    p.add_argument("--format", choices=FORMATS, default="csv", help="default csv")
    p.add_argument("--output", type=Path, metavar="FILE",
                   help="written atomically (default: stdout); never the outbox")
    p.add_argument("--force", action="store_true", help="replace --output if it exists")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("commission", help="record the as-installed facts of this unit")
    add_common(p, "config", "simulate", "sim_clock", "sim_wiring", "data_dir", "json")
    p.add_argument("--technician", type=text_argument, metavar="NAME")
    p.add_argument("--mounting-height", type=height_argument, metavar="M",
                   help="sensor height above ground, metres")
    p.add_argument("--radiation-shield", type=text_argument, metavar="TEXT",
                   help="e.g. \"Stevenson screen\"")
    p.add_argument("--note", type=text_argument, metavar="TEXT")
    p.set_defaults(func=cmd_commission)

    p = sub.add_parser("config", help="configuration tools")
    config_sub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    c = config_sub.add_parser("check", help="validate the config file and exit")
    add_common(c, "config", "simulate")
    c.set_defaults(func=cmd_config_check)

    from agent.cli.completion import SHELLS, apply_help_layout
    from agent.doctor.report import sample_count

    p = sub.add_parser("doctor", help="check this unit: PASS, WARN or FAIL, and what to do",
                       description="Checks the I2C buses, each sensor (the right chip? a few "
                       "samples), the clock (and how to get it synchronised), the data "
                       "directory (writable by the service's user? held by another agent?), "
                       "free space, the outbox and its backlog, and the uplink (the token "
                       "file's mode, DNS, TCP, TLS, token). Each check: PASS, WARN or FAIL, and "
                       "what to do next. Writes nothing.")
    add_common(p, "config", "simulate", "sim_clock", "sim_wiring", "data_dir", "json")
    p.add_argument("--samples", type=sample_count, default=3, metavar="N",
                   help="test samples per sensor (default 3)")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("completion", help="print a shell completion script")
    p.add_argument("shell", choices=SHELLS, help="the shell")
    p.set_defaults(func=cmd_completion)
    apply_help_layout(parser)
    return parser


def _refuse_token_option(parser: argparse.ArgumentParser) -> None:
    """``--token`` fails with a clear message that does not repeat the token."""
    parser.add_argument("--token", "--upload-token", type=_no_token, help=argparse.SUPPRESS)


def _no_token(text: str) -> str:
    raise argparse.ArgumentTypeError(
        "the upload token is never taken from the command line (other users can read it in "
        "the process list); put it in the file named by uplink.token_file, or use "
        "LoadCredential=upload-token:... in the systemd unit")


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    args = build_parser().parse_args(argv)
    if args.command != "run":
        logging.getLogger().setLevel(logging.WARNING)
    try:
        _check_simulate_only(args)
        code = int(args.func(args))
        sys.stdout.flush()  # a reader gone (| head) shows here, not as a traceback at exit
        return code
    except BrokenPipeError:
        return _reader_gone()
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return EXIT_USAGE
    except StorageError as exc:
        print(f"envagent: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:  # no /dev/i2c-1, a file that cannot be read: one sentence
        print(f"envagent: {describe(exc)}", file=sys.stderr)
        return EXIT_FAILURE


def _reader_gone() -> int:
    """Stop quietly when the reader of stdout has gone (``envagent scan --json | head -c 10``),
    with the status a shell shows for any program a closed pipe stopped (128 + SIGPIPE).

    Python ignores SIGPIPE, so the write fails with BrokenPipeError instead; and it flushes
    stdout once more at exit, so stdout now points at /dev/null (Python's "Note on SIGPIPE").
    """
    with suppress(OSError, ValueError):  # stdout may be no file (a test captures it)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return EXIT_BROKEN_PIPE
