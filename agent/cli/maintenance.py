"""``envagent maintenance [on|off]``: the mode during which readings are flagged MAINTENANCE
(agent.store.maintenance owns the record; this presents it).

It only writes ``maintenance.json`` in the data directory, so it works beside the running agent,
which flags its next sample; it touches no sensor and needs no lock. The data directory is
``--data-dir``, else the config's ``storage.path`` (a rehearsal's with ``--simulate``).
"""

from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path

from agent.cli.context import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, clock_of, context_of, print_json
from agent.core.units import format_duration, parse_duration

ACTIONS = ("on", "off")


def duration_argument(text: str) -> float:
    """``--for``: a duration from 1 s to a week ("90m", "4h", "2d" or seconds)."""
    from agent.store.maintenance import MAX_FOR_S, MIN_FOR_S

    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not MIN_FOR_S <= seconds <= MAX_FOR_S:
        raise argparse.ArgumentTypeError(f"expected a duration from {format_duration(MIN_FOR_S)} "
                                         f"to {format_duration(MAX_FOR_S)}, got {text!r}")
    return seconds


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """The ``maintenance`` subcommand (the common options are added by the caller)."""
    from agent.cli.records import text_argument
    from agent.store.maintenance import DEFAULT_FOR_S

    p = sub.add_parser(
        "maintenance", help="maintenance mode: on, off, or show; its readings are flagged",
        description="While maintenance mode is on, every reading is flagged maintenance (quality "
        "bit 128; HJ 212 flag M), so a technician's work is not reported as pollution. It ends "
        f"by itself after --for (default {format_duration(DEFAULT_FOR_S)}). Works beside the "
        "running agent: it flags from its next sample.")
    p.add_argument("action", nargs="?", choices=ACTIONS,
                   help="on or off; without it, show the mode")
    p.add_argument("--for", dest="for_s", type=duration_argument, metavar="DURATION",
                   help=f"with on: how long (default {format_duration(DEFAULT_FOR_S)}; at most "
                   "7d), e.g. 90m, 2h")
    p.add_argument("--note", type=text_argument, metavar="TEXT",
                   help="with on: what is being done, shown by status")
    p.set_defaults(func=cmd_maintenance)
    return p


def cmd_maintenance(args: argparse.Namespace) -> int:
    from agent.core.timebase import current_boot
    from agent.store import maintenance

    if args.action != "on" and (args.for_s is not None or args.note is not None):
        print("envagent maintenance: --for and --note go with `on`", file=sys.stderr)
        return EXIT_USAGE
    data_dir: Path = args.data_dir if args.data_dir is not None else context_of(args).data_dir
    clock = clock_of(args)
    boot_id = current_boot() or ""
    try:
        if args.action == "on":
            data_dir.mkdir(parents=True, exist_ok=True)
            window: maintenance.Window | None = maintenance.turn_on(
                data_dir, clock, boot_id,
                for_s=maintenance.DEFAULT_FOR_S if args.for_s is None else args.for_s,
                note=args.note)
            error = None
        elif args.action == "off":
            ended = maintenance.turn_off(data_dir, clock, boot_id)
            window, error = None, None
            if not args.json:
                print("maintenance mode off: readings are no longer flagged" if ended else
                      "maintenance mode off (it was not on)")
        else:
            window, error = maintenance.read_active(data_dir, clock, boot_id)
    except OSError as exc:
        print(f"envagent: cannot write {data_dir / maintenance.FILE}: "
              f"{exc.strerror or exc}{_hint(exc)}", file=sys.stderr)
        return EXIT_FAILURE
    if error is not None:
        print(f"envagent: {error}", file=sys.stderr)
    if args.json:
        print_json(maintenance.to_json(window, clock, boot_id))
    elif args.action != "off":
        from agent.cli.statusview import maintenance_words

        print(maintenance_words(window, clock, boot_id, clock.time()))
    return EXIT_OK


def _hint(exc: OSError) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ("; run it as the service's user (sudo -u envagent envagent maintenance ...) "
                "or with sudo")
    return ""
