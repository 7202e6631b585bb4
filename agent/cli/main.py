"""The ``envagent`` command: the one composition root that builds real or simulated hardware.

Exit codes: 0 ok, 1 runtime failure, 2 bad usage or configuration.

One module per command group (context, hardware, delivery, status, records, maintenance); each
command imports what it uses inside its function, for start-up memory: --help, shell completion
and `status` must not load the drivers, requests or the delivery worker.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path

from agent import __version__
from agent.cli.context import (
    DEFAULT_CONFIG,
    EXIT_BROKEN_PIPE,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    READ_ONLY_COMMANDS,
    SIMULATE_DATA_DIR,
    SimClock,
    SimFault,
    check_simulate_only,
)
from agent.cli.delivery import cmd_run, cmd_sync
from agent.cli.hardware import cmd_read, cmd_scan
from agent.cli.records import cmd_commission, cmd_config_check, cmd_doctor, cmd_export
from agent.cli.status import cmd_status
from agent.core.errors import ConfigError, StorageError, describe


def cmd_completion(args: argparse.Namespace) -> int:
    from agent.cli.completion import bash_script

    sys.stdout.write(bash_script(build_parser()))
    return EXIT_OK


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().replace("\n", "; ")
    return text or type(exc).__name__


# A token option as typed: the full name, or an abbreviation argparse would take for it (long
# enough to be no other option's: --technician, --uplink), alone or with ``=VALUE``.
_TOKEN_OPTIONS = (("--token", len("--to")), ("--upload-token", len("--uplo")))
TOKEN_REFUSAL = ("the upload token is never taken from the command line (other users can read "
                 "it in the process list); put it in the file named by uplink.token_file, or "
                 "use LoadCredential=upload-token:... in the systemd unit")


def _is_token_option(arg: str) -> bool:
    name = arg.split("=", 1)[0]
    return any(len(name) >= shortest and full.startswith(name)
               for full, shortest in _TOKEN_OPTIONS)


class _Parser(argparse.ArgumentParser):
    """Refuses a ``--token`` for every command (the subcommands' parsers are of this class too)
    before parsing, with a message that repeats no argument: argparse's own errors quote them
    ("unrecognized arguments: --token S3CRET"), and the next one after ``--token`` is the
    secret."""

    def parse_known_args(  # type: ignore[override]  # typeshed: overloads; one signature here
            self, args: Sequence[str] | None = None,
            namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        if any(_is_token_option(arg) for arg in (sys.argv[1:] if args is None else args)):
            self.error(TOKEN_REFUSAL)
        return super().parse_known_args(args, namespace)


def build_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = _Parser(
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
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("sync", help="deliver the outbox to every upstream now, and report; "
                       "exit 1 unless all of it went")
    p.add_argument("--uplink", metavar="NAME", help="only this upstream (its name in the config)")
    add_common(p, "config", "simulate", "deliver", "sim_clock", "data_dir", "json")
    p.set_defaults(func=cmd_sync)

    p = sub.add_parser("read", help="take one sample from every configured sensor")
    add_common(p, "config", "simulate", "sim_wiring", "json")
    p.set_defaults(func=cmd_read)

    p = sub.add_parser("scan", help="list the addresses that answer on a bus, and their chips")
    p.add_argument("--bus", type=_bus_number, default=1, metavar="N",
                   help="/dev/i2c-N (default 1)")
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

    from agent.cli.records import height_argument, text_argument
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

    from agent.cli.maintenance import add_parser as add_maintenance

    p = add_maintenance(sub)
    add_common(p, "config", "simulate", "sim_clock", "data_dir", "json")

    p = sub.add_parser("config", help="configuration tools")
    config_sub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    c = config_sub.add_parser("check", help="validate the config file and exit")
    add_common(c, "config")
    c.add_argument("--simulate", action="store_true",
                   help="without --config and /etc/envagent/envagent.toml: check the shipped "
                   "example, the config a rehearsal then uses")
    c.set_defaults(func=cmd_config_check)

    from agent.cli.completion import SHELLS, apply_help_layout
    from agent.doctor.report import sample_count

    p = sub.add_parser("doctor", help="check this unit: PASS, WARN, FAIL or SKIP, and what "
                       "to do",
                       description="Checks the I2C buses, each sensor (the right chip? a few "
                       "samples), the clock (and how to get it synchronised), the data "
                       "directory (writable by the service's user? held by another agent?), "
                       "free space, the outbox and its backlog, and the uplink (the token "
                       "file's mode, DNS, TCP, TLS, token). Each check: PASS, WARN or FAIL, and "
                       "what to do next, or SKIP when an earlier check made it pointless (no "
                       "samples from a sensor that was not found). Exit 1 when any FAILs. "
                       "Writes nothing.")
    add_common(p, "config", "simulate", "sim_clock", "sim_wiring", "data_dir", "json")
    p.add_argument("--samples", type=sample_count, default=3, metavar="N",
                   help="test samples per sensor (default 3)")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("completion", help="print a shell completion script")
    p.add_argument("shell", choices=SHELLS, help="the shell")
    p.set_defaults(func=cmd_completion)
    apply_help_layout(parser)
    return parser


def _positive_seconds(text: str) -> float:
    """Seconds, as a number (``90``) or a duration as the config writes them (``90s``, ``2m``)."""
    from agent.core.units import parse_duration

    try:
        value = float(text)
    except ValueError:
        try:
            value = parse_duration(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected seconds such as 90, 90s or 2m, got {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _bus_number(text: str) -> int:
    """``--bus N``: the N of /dev/i2c-N, as the config allows it."""
    from agent.config.placement import BUS_RANGE

    low, high = BUS_RANGE
    if not text.isdigit() or not low <= int(text) <= high:
        raise argparse.ArgumentTypeError(f"expected a bus number, {low} to {high}, got {text!r}")
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    args = build_parser().parse_args(argv)
    if args.command != "run":
        logging.getLogger().setLevel(logging.WARNING)
    try:
        check_simulate_only(args)
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
