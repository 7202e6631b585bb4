"""``envagent config check``, ``export``, ``commission`` and ``doctor``."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any

from agent.cli.context import EXIT_FAILURE, EXIT_OK, clock_of, context_of, print_json
from agent.cli.hardware import open_buses
from agent.core.errors import ConfigError
from agent.core.timebase import HOLD_UNSYNCED_S
from agent.store import commission

MAX_HEIGHT_M = 100.0  # a mast taller than this is a typo
MAX_TEXT = 200  # characters of a free-text fact


def height_argument(text: str) -> float:
    """``--mounting-height`` for argparse: metres above ground."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= MAX_HEIGHT_M:
        raise argparse.ArgumentTypeError(
            f"expected metres above ground, 0 to {MAX_HEIGHT_M:g}, got {text!r}")
    return value


def text_argument(text: str) -> str:
    """A free-text fact for argparse: one line, not empty, printable (no control characters or
    terminal escape sequences, which `status` would later print to someone's terminal)."""
    text = " ".join(text.split())
    if not text or len(text) > MAX_TEXT:
        raise argparse.ArgumentTypeError(f"expected 1 to {MAX_TEXT} characters")
    if not text.isprintable():
        raise argparse.ArgumentTypeError("expected printable text: no control characters, "
                                         "escape sequences or bytes that are not UTF-8")
    return text


def cmd_config_check(args: argparse.Namespace) -> int:
    ctx = context_of(args)
    print(f"{ctx.config.source}: ok ({len(ctx.config.sensors)} sensor(s))")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    """Undelivered readings to a file (or stdout); the outbox is left as it is."""
    from agent.core.timebase import current_boot
    from agent.store import rehearsal
    from agent.uplink import export

    ctx = context_of(args)
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
        clock_synced=clock_of(args).synchronized(), force=args.force)
    for line in summary.describe(str(args.output or "stdout"), args.format):
        print(line, file=sys.stderr)
    return EXIT_OK


def cmd_commission(args: argparse.Namespace) -> int:
    """Record the as-installed facts and the sensors' serial numbers; exit 1 if one failed."""
    from agent.sampling.daemon import make_drivers
    from agent.store import datadir
    from drivers.registry import DRIVERS

    ctx = context_of(args)
    commission.check_writable(ctx.data_dir)  # before anything talks to the sensors
    # The sensors and commission.json are a running agent's: not beside one.
    with datadir.hold(ctx.data_dir, hint=datadir.COMMISSION_HINT):
        clock = clock_of(args)
        with open_buses(ctx.config, clock, simulate=ctx.simulate,
                        wiring=args.sim_wiring) as buses:
            drivers = make_drivers(ctx.config, buses, clock, DRIVERS)
            sensors = commission.probe_sensors(ctx.config, drivers)
        facts = commission.Facts(args.technician, args.mounting_height, args.radiation_shield,
                                 args.note)
        record = commission.record_now(ctx.config, facts, sensors, clock)
        document = commission.append(ctx.data_dir, record)
    if args.json:
        print_json(record)
    else:
        path = ctx.data_dir / commission.FILE
        print("\n".join(describe(record, len(document["history"]), path)))
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

    ctx = context_of(args)
    clock = clock_of(args)
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


def _unsynced_warning(record: dict[str, Any]) -> str:
    """What becomes of a date taken before the clock synchronised: corrected only where the
    agent can (agent.store.commission.awaits_restamp)."""
    if record["clock_synced"] is None:
        return ("  whether the clock is synchronised is unknown: that date may be wrong; it "
                "goes upstream as recorded")
    if not commission.awaits_restamp(record):
        return ("  the clock is not synchronised: that date may be wrong; it goes upstream "
                "as recorded, flagged unsynchronised")
    return ("  the clock is not synchronised yet: that date may be wrong; the agent corrects it "
            "from the boot time when the clock synchronises (if within "
            f"{HOLD_UNSYNCED_S / 60:g} min of boot, before a reboot) and only then sends it")


def describe(record: dict[str, Any], count: int, path: Path) -> list[str]:
    """The record for a person, a few short lines."""
    where = ", ".join(f"{record[k]:g}{unit}" for k, unit in
                      (("latitude", "°"), ("longitude", "°"), ("elevation_m", " m"))
                      if k in record)
    who = f" by {record['technician']}" if "technician" in record else ""
    lines = [f"commissioned {record['unit']} at {record['site']}"
             f"{f' ({where})' if where else ''} on {record['time'][:19]}Z{who}"]
    if record["clock_synced"] is not True:
        lines.append(_unsynced_warning(record))
    for key, label in (("mounting_height_m", "mounted at"), ("radiation_shield", "shield")):
        if key in record:
            lines.append(f"  {label} {record[key]}{' m' if key == 'mounting_height_m' else ''}")
    for s in record["sensors"]:
        what = (f"FAILED: {s['error']}" if "error" in s
                else f"serial {s['serial']}" if "serial" in s else "no serial number")
        at = f"{s['bus']}:" + (f"0x{s['mux']:02x}/{s['channel']}:" if "mux" in s else "")
        lines.append(f"  {s['id']:<10} {s['driver']:<8} {at}0x{s['address']:02x}  {what}")
    lines.append(f"record {count} in {path} (not sent upstream yet)")
    return lines
