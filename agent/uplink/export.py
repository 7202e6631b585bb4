"""Offline export: the undelivered readings of a time window, to a file a USB stick carries away.

The export reads the outbox and changes nothing: the readings stay until upstream acknowledges
them, so the unit also delivers them once online. That is safe because each keeps its identity:
CSV and JSONL carry the JSON batch format's stable id (:func:`agent.uplink.encoders.reading_id`),
line protocol the very line the uplink sends, which InfluxDB and VictoriaMetrics
(``-dedup.minScrapeInterval``) collapse into one point.

Window: ``since <= time < until`` on the stored wall time, so consecutive windows never overlap.

This boot's unsynchronised readings get a new time (and id) when the clock synchronises
(agent.sampling.timekeeping). When it is synchronised now, they are left out: the agent re-stamps
them at
its next commit. When it is not, they are exported flagged CLOCK_UNSYNCED; should it synchronise
before they are delivered, upstream also gets them at their true time, flagged CLOCK_RESTAMPED.

Streamed in outbox order, in chunks: a million-reading backlog needs the memory of a few thousand.

A rehearsal's readings (``--simulate``, agent.store.rehearsal) are marked as upstream gets them: the
CSV column and JSONL key ``simulated`` is true (false for a real unit's), ``lp`` lines carry the
tag ``simulated=true``.

What ``--output`` may not touch: the outbox and its ``-wal``/``-shm``/``-journal``, whatever the
path (relative, through a symlink, a hard link), even with ``--force`` -- the file is replaced by
a rename, which would take the undelivered readings with it. An existing file is replaced only
with ``--force``.

CSV for spreadsheets: a text cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
return gets a leading single quote, so a spreadsheet shows it and never runs it as a formula
(OWASP, "CSV injection"); numbers are written as numbers. A cell with a comma, a quote or a line
break (a lone CR too) is quoted, as RFC 4180 says.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from agent.config import Config
from agent.core.atomic import atomic_file
from agent.core.errors import AgentError
from agent.core.reading import Reading
from agent.core.timebase import EPOCH, iso_ns
from agent.store.outbox import Outbox
from agent.uplink import metadata
from agent.uplink.encoders import reading_id
from agent.uplink.lineprotocol import Epochs, LineProtocolEncoder, nonfinite_name, quality_of

FORMATS = ("csv", "jsonl", "lp")
COLUMNS = ("id", "unit", "site", "sensor", "driver", "quantity", "value", "nonfinite", "uom",
           "time", "time_ns", "quality", "synced", "boot_id", "boot_ns", "calibration",
           "simulated")
CHUNK = 5000  # readings per fetch and per write
_FRACTION = re.compile(r"(?<=\d\d:\d\d:\d\d)[.,](\d+)")
# OWASP, CSV injection: what makes a spreadsheet read a cell as a formula (or a new cell).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_NEEDS_QUOTES = re.compile(r'[,"\r\n]')
# The outbox's own files: a rename over any of them loses the undelivered readings.
OUTBOX_ENDINGS = ("", "-wal", "-shm", "-journal")


class ExportError(AgentError, OSError):
    """The export file cannot be written; nothing was left under its name."""


def parse_time(text: str) -> int:
    """ns since the epoch from ISO 8601 (``2026-11-21T06:00:00Z``; ``2026-11-21``: midnight UTC;
    no offset means UTC; up to 9 fractional digits). Errors are argparse's, for ``--since``."""
    text, fraction = text.strip(), 0
    match = _FRACTION.search(text)
    if match is not None:
        digits = match.group(1)
        if len(digits) > 9:
            raise argparse.ArgumentTypeError(f"at most 9 fractional digits (ns), got {text!r}")
        fraction = int(digits.ljust(9, "0"))
        text = text[:match.start()] + text[match.end():]
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a time such as 2026-11-21T06:00:00Z or a "
                                         f"date such as 2026-11-21, got {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - EPOCH) // timedelta(microseconds=1) * 1000 + fraction


@dataclass(frozen=True, slots=True)
class Station:
    """What a reading's export adds to it: the names the uplink would send with it (``epochs``:
    the commissioning tags by sample time, agent.uplink.metadata -- ``lp`` lines carry them), and
    whether it is a rehearsal's (``simulated``: marked in every format, as upstream)."""

    unit: str
    site: str
    drivers: dict[str, str]
    measurement: str = "envagent"
    epochs: Epochs = ()
    simulated: bool = False

    @classmethod
    def from_config(cls, config: Config, data_dir: Path | None = None, *,
                    simulated: bool = False) -> Station:
        """The station of ``config``, with the commissioning records in ``data_dir``."""
        # line protocol as the first upstream would get it (each may name its own measurement)
        measurement = config.uplinks[0].measurement if config.uplinks else "envagent"
        records = None if data_dir is None else metadata.load(data_dir)
        return cls(config.unit.id, config.unit.site, {s.id: s.driver for s in config.sensors},
                   measurement, tuple(metadata.epochs(records or [])), simulated)

    def record(self, r: Reading) -> dict[str, Any]:
        """One reading's fields, as JSONL writes them (``nonfinite`` only when not finite)."""
        nonfinite = nonfinite_name(r.value)
        item: dict[str, Any] = {
            "id": reading_id(self.unit, r), "unit": self.unit, "site": self.site,
            "sensor": r.sensor, "driver": self.drivers.get(r.sensor), "quantity": r.quantity,
            "value": None if nonfinite else r.value, "uom": r.unit, "time": iso_ns(r.time_ns),
            "time_ns": r.time_ns, "quality": quality_of(r), "synced": r.synced,
            "boot_id": r.boot_id, "boot_ns": r.boot_ns, "calibration": r.calibration,
            "simulated": self.simulated,
        }
        if nonfinite:
            item["nonfinite"] = nonfinite
        return item


@dataclass
class Summary:
    """What an export wrote; ``held`` readings were left out, ``unsynced`` may be re-stamped."""

    count: int = 0
    first_ns: int | None = None
    last_ns: int | None = None
    held: int = 0
    unsynced: int = 0

    def describe(self, where: str, fmt: str) -> list[str]:
        """The lines for stderr: what was written, and what the technician must know."""
        span = "" if self.first_ns is None or self.last_ns is None else (
            f", {iso_ns(self.first_ns)} to {iso_ns(self.last_ns)}")
        lines = [f"exported {self.count} reading(s){span} as {fmt} to {where}; they stay in the "
                 "outbox and are delivered too once online (same ids and times: one copy "
                 "upstream)"]
        if self.held:
            lines.append(f"left out {self.held} reading(s) taken before the clock synchronised: "
                         "the agent re-stamps them at its next commit; export again in a minute")
        if self.unsynced:
            lines.append(f"{self.unsynced} reading(s) of this boot have an unsynchronised clock "
                         "(flagged 16): should it sync before they are delivered, they are also "
                         "sent re-stamped, as new points")
        return lines


def undelivered(path: Path, since_ns: int | None, until_ns: int | None) -> Iterator[list[Reading]]:
    """The undelivered readings with ``since_ns <= time_ns < until_ns``, in chunks, oldest
    appended first, read beside a running daemon (agent.store.outbox.Outbox.scan)."""
    with Outbox.open_readonly(path) as outbox:
        yield from outbox.scan(since_ns, until_ns, CHUNK)


def csv_text(text: str) -> str:
    """A text cell a spreadsheet shows and never runs (see the module docstring)."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _csv_cell(value: Any) -> str:
    if isinstance(value, str):  # most cells: first
        text = csv_text(value)
        return '"' + text.replace('"', '""') + '"' if _NEEDS_QUOTES.search(text) else text
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # -0.0 stays -0.0; never a quote: a number stays a number
    return str(value)  # an int


def _csv_row(values: Sequence[Any]) -> str:
    """One CSV line. Not csv.writer: with a "\n" terminator it leaves a lone CR unquoted, and a
    reader then splits the row there."""
    return ",".join(map(_csv_cell, values)) + "\n"


def _writer(fmt: str, out: IO[str], station: Station) -> Callable[[Sequence[Reading]], None]:
    """A function writing one chunk of readings to ``out`` in ``fmt`` (its header written now)."""
    if fmt == "csv":
        out.write(_csv_row(COLUMNS))
        return lambda rs: out.writelines(
            _csv_row([item.get(c) for c in COLUMNS]) for item in map(station.record, rs))
    if fmt == "jsonl":
        return lambda rs: out.writelines(json.dumps(item, ensure_ascii=False, allow_nan=False,
                                                    separators=(",", ":")) + "\n"
                                         for item in map(station.record, rs))
    encoder = LineProtocolEncoder(unit=station.unit, site=station.site, drivers=station.drivers,
                                  measurement=station.measurement, simulated=station.simulated)
    encoder.set_epochs(station.epochs)
    return lambda rs: out.writelines(line + "\n" for line in encoder.lines(rs))


def export(chunks: Iterator[list[Reading]], out: IO[str], fmt: str, station: Station, *,
           current_boot: str | None, clock_synced: bool | None) -> Summary:
    """Write every reading of ``chunks`` to ``out``; see the module docstring for this boot's
    unsynchronised readings. A sample is never split across two chunks (one line in ``lp``)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    write, summary = _writer(fmt, out, station), Summary()
    pending: list[Reading] = []
    for chunk in chunks:
        for r in chunk:
            if r.synced is False and r.boot_id == current_boot:
                if clock_synced:
                    summary.held += 1
                    continue
                summary.unsynced += 1
            summary.count, t = summary.count + 1, r.time_ns
            summary.first_ns = t if summary.first_ns is None else min(summary.first_ns, t)
            summary.last_ns = t if summary.last_ns is None else max(summary.last_ns, t)
            pending.append(r)
        cut = len(pending)  # the last sample may go on in the next chunk: keep it back
        while cut and (pending[cut - 1].sensor, pending[cut - 1].time_ns) == (
                pending[-1].sensor, pending[-1].time_ns):
            cut -= 1
        write(pending[:cut])
        del pending[:cut]
    write(pending)
    return summary


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (or cannot be looked at)
        return False


def check_output(output: Path, outbox: Path, *, force: bool) -> None:
    """ExportError, before anything is read or written, when writing ``output`` could destroy
    data (see the module docstring)."""
    try:
        target = output.resolve()
    except (OSError, RuntimeError):  # a symlink loop: compare the path as written
        target = Path(os.path.abspath(output))
    for end in OUTBOX_ENDINGS:
        own = Path(f"{outbox}{end}")
        if target == own.resolve() or _same_file(output, own):
            raise ExportError(f"refusing to write {output}: it is the outbox's file {own}, "
                              "which holds the readings not yet delivered; choose another "
                              "--output (e.g. on the USB stick); nothing was written")
    if os.path.lexists(output) and not force:
        raise ExportError(f"{output} exists; add --force to replace it, or choose another "
                          "--output; nothing was written")


@contextmanager
def export_file(path: Path) -> Iterator[IO[str]]:
    """``path`` written atomically (agent.core.atomic), with errors a technician can act on."""
    directory = path.parent
    if not directory.is_dir():
        raise ExportError(f"cannot write {path}: the directory {directory} does not exist "
                          "(is the USB stick mounted?); nothing was written")
    try:
        with atomic_file(path) as file:
            yield file
    except OSError as exc:
        if isinstance(exc, AgentError):
            raise
        error = ExportError(f"cannot write {path}: {exc.strerror or exc}; nothing was "
                            "written under that name")
        error.errno = exc.errno
        raise error from exc


# --- the command ------------------------------------------------------------------------------


def write_export(outbox: Path, output: Path | None, fmt: str, station: Station,
                 since_ns: int | None, until_ns: int | None, *, current_boot: str | None,
                 clock_synced: bool | None, force: bool = False) -> Summary:
    """Export to ``output`` atomically (an existing file only with ``force``, the outbox's files
    never), or to stdout (UTF-8) when it is None."""
    if output is not None:
        check_output(output, outbox, force=force)
    chunks = undelivered(outbox, since_ns, until_ns)
    if output is not None:
        with export_file(output) as file:
            return export(chunks, file, fmt, station, current_boot=current_boot,
                          clock_synced=clock_synced)
    out = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="")
    try:
        return export(chunks, out, fmt, station, current_boot=current_boot,
                      clock_synced=clock_synced)
    finally:
        out.flush()
        out.detach()
