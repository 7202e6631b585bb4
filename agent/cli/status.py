"""``envagent status``: one report, or ``--watch``/``--follow`` (agent.cli.watch)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from agent.cli.context import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    Context,
    clock_of,
    context_of,
    iso,
    print_json,
)

if TYPE_CHECKING:
    from agent.store.outbox import UpstreamStats


def _uplinks_status(ctx: Context, cursors: Sequence[UpstreamStats]) -> list[dict[str, Any]]:
    """Each configured upstream: what its delivery worker last recorded in the data directory
    (``state`` None when it never ran) and its share of the outbox (its cursor)."""
    from agent.cli.statusview import aggregates_waiting
    from agent.uplink.worker import UplinkState, state_file

    found = {c.name: c for c in cursors}
    report = []
    for settings in ctx.config.uplinks:
        state = UplinkState.load(ctx.data_dir / state_file(settings.name))
        cursor = found.get(settings.name)
        report.append({
            "name": settings.name,
            "state": None if state is None else state.state,
            "since": None if state is None else iso(state.since_ns),
            "last_success": None if state is None else iso(state.last_success_ns),
            "last_error": None if state is None else state.last_error,
            "last_error_time": None if state is None else iso(state.last_error_ns),
            "backlog": None if cursor is None else cursor.backlog,
            "oldest": None if cursor is None else iso(cursor.oldest_ns),
            "delivered": None if cursor is None else cursor.delivered,
            "dropped": None if cursor is None else cursor.dropped,
            "quarantined": None if cursor is None else cursor.rejected,
            # HJ 212: minute, hourly and daily data not yet acknowledged (else None)
            "aggregates_waiting": aggregates_waiting(settings, ctx.data_dir),
        })
    return report


def _first_uplink(uplinks: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """``uplink`` as it was before several upstreams, for scripts that read it: the first
    upstream's state, None when its worker never ran."""
    if not uplinks or uplinks[0]["state"] is None:
        return None
    keys = ("state", "since", "last_success", "last_error", "last_error_time")
    return {k: uplinks[0][k] for k in keys}


def _status_live(args: argparse.Namespace) -> int:
    """``status --watch``: the one-shot status, redrawn; ``--follow``: one line per event
    (agent.cli.watch). The config is read first, so a bad one exits 2 as the one-shot would."""
    from agent.cli import watch
    from agent.core.timebase import read_boot_id

    if args.json:
        print("envagent status: --watch and --follow are for people; --json prints one report "
              "(a machine can run it again)", file=sys.stderr)
        return EXIT_USAGE
    ctx = context_of(args)
    if args.follow:
        station = watch.Station.of(ctx.config, ctx.outbox_path, read_boot_id())
        return watch.follow(station, clock_of(args))
    once = argparse.Namespace(**{**vars(args), "watch": None, "follow": False})
    encoding = sys.stdout.encoding
    return watch.watch(lambda: watch.captured(lambda: cmd_status(once), encoding), args.watch,
                       clock_of(args))


def cmd_status(args: argparse.Namespace) -> int:
    if getattr(args, "watch", None) is not None or getattr(args, "follow", False):
        return _status_live(args)
    from agent.store.outbox import Outbox

    ctx = context_of(args)
    if not ctx.outbox_path.exists():
        print(f"no outbox at {ctx.outbox_path}: has the agent run with this data directory?",
              file=sys.stderr)
        return EXIT_FAILURE
    with Outbox.open_readonly(ctx.outbox_path) as outbox:
        stats = outbox.stats()
        latest = outbox.latest()
        recovery = outbox.recovery()
        simulated = outbox.simulated()  # a rehearsal's (agent.store.rehearsal); None: not marked
        uplinks = _uplinks_status(ctx, outbox.upstreams())
    report: dict[str, Any] = {
        "unit": ctx.config.unit.id,
        "simulated": simulated,
        "outbox": str(ctx.outbox_path),
        "backlog": stats.backlog,
        "backlog_bytes": stats.backlog_bytes,
        "oldest": iso(stats.oldest_ns),
        "newest": iso(stats.newest_ns),
        "added": stats.added,
        "delivered": stats.delivered,
        "dropped": stats.dropped,
        "quarantined": stats.rejected,
        "uplink": _first_uplink(uplinks),
        "uplinks": uplinks,
        "clock_synchronized": None,  # below: the running agent's view, else this host's
        "recovered": None if recovery is None else {
            "at": iso(recovery.at_ns), "reason": recovery.reason, "moved_to": recovery.moved_to,
            "salvaged": recovery.salvaged, "lost": recovery.lost},
        "latest": [
            {"sensor": x.sensor, "quantity": x.quantity, "value": x.value, "unit": x.unit,
             "time": iso(x.time_ns), "quality": x.quality}
            for x in latest
        ],
    }
    import shutil

    from agent.cli import statusview
    from agent.core.timebase import read_boot_id
    from agent.sampling.timekeeping import hold_ends
    from agent.store import maintenance

    clock = clock_of(args)
    seen = statusview.agent_clock(ctx.data_dir, read_boot_id())
    synced, hold_end = (clock.synchronized(), hold_ends(clock)) if seen is None else seen
    report["clock_synchronized"] = synced
    window, damaged = maintenance.read_active(ctx.data_dir, clock, read_boot_id())
    report["maintenance"] = maintenance.to_json(window, clock, read_boot_id())
    report["sensors"] = statusview.sensors_json(ctx.data_dir, read_boot_id())
    report["alerts"] = [a.to_json() for a in statusview.firing_alerts(ctx.config, latest)]
    report["clock"] = statusview.clock_json(report["clock_synchronized"], statusview.held_in(
        ctx.config, ctx.data_dir, read_boot_id(), stats.backlog, clock_of(args).time()))
    if args.json:
        print_json(report)
        return EXIT_OK
    bars = statusview.BARS if _can_print(statusview.BARS) else statusview.ASCII_BARS
    lines = statusview.render(
            ctx.config, ctx.data_dir, stats, latest, recovery=recovery,
            synced=report["clock_synchronized"], boot_id=read_boot_id(),
            now=clock_of(args).time(), width=shutil.get_terminal_size().columns, bars=bars,
            hold_ends=hold_end,
            backlogs={u["name"]: u["backlog"] for u in uplinks if u["backlog"] is not None},
            maintenance=(window, damaged, clock))
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
