"""What every command starts from: the config and data directory it works on (a file, the
station record, or the shipped example for a rehearsal), the simulated world's clock and
faults, and the small output helpers."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from agent.config import Config, load_config
from agent.core.errors import ConfigError
from drivers.clock import Clock, SystemClock

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


def context_of(args: argparse.Namespace) -> Context:
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
    if getattr(args, "deliver", False) and not config.uplinks:
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


def clock_of(args: argparse.Namespace) -> Clock:
    """The host's clock, or with ``--simulate`` the simulated world's."""
    if getattr(args, "simulate", False):
        spec: SimClock = getattr(args, "sim_clock", None) or SimClock()
        return spec.clock()
    return SystemClock()


SIM_WIRING_NEEDS_SIMULATE = ("--sim-wiring needs --simulate: the wiring file describes the "
                             "simulated bus, not /dev/i2c-N")


def check_simulate_only(args: argparse.Namespace) -> None:
    """``--sim-wiring`` means nothing on real hardware: refused before anything starts."""
    if getattr(args, "sim_wiring", None) is not None and not getattr(args, "simulate", False):
        raise ConfigError([SIM_WIRING_NEEDS_SIMULATE])


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def iso(time_ns: int | None) -> str | None:
    if time_ns is None:
        return None
    return datetime.fromtimestamp(time_ns / 1e9, UTC).isoformat(timespec="seconds")


def refuse_token_environment(config: Config) -> None:
    if config.uplinks:
        from agent.core.credentials import check_environment

        check_environment(os.environ)
