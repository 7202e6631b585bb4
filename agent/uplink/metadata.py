"""Commissioning facts upstream (agent.store.commission keeps them): each record once as metadata,
and the facts that suit a tag on every reading sampled while the record is in force.

The delivery worker (agent.uplink.worker) calls :meth:`Commissioning.step` before each new batch.
It looks at ``commission.json``'s inode, mtime and size (one ``stat``) and reads the file only
when they changed; then it gives the sink's encoder the tag epochs (one per record, from its time
on) and notes the records not yet sent. Those go in one send to the upstream -- not ahead of a
waiting alert -- and are marked sent only once delivered. Only a transport that carries such
documents on the same path as the readings gets them (its ``documents`` capability,
agent.uplink.sink: HTTP does, the URL takes line protocol or JSON whatever it holds); for any
other the records only set the tags. A failure is tried again after the upstream's backoff (and
the delay the server asked for), on a schedule of its own: readings never wait for metadata. A
refusal of the document itself (rejected or too large: a backend that takes readings but not
this) is not tried again by the same process -- it would only be refused again, every
``backoff_max``, for as long as the unit runs. A damaged file is logged once per change and
changes nothing: the tags stay as they were.

A record taken before the clock synchronised, in the boot whose readings are held for the same
reason (``held_boot``, agent.sampling.timekeeping), **waits** like them: it is neither sent nor
an epoch until the time keeper has re-stamped it (agent.store.commission.restamp) -- so its point
carries the true time and its tags start at the true time, where the re-stamped readings are. A
record of another boot that never synchronised (or once the hold is over) goes as recorded,
``clock_synced`` false, and its epoch starts at the time recorded: as wrong as that boot's
readings (sent flagged), so those still get its tags, but a reading of another boot may fall on
the wrong side of it.

On the wire, with the line protocol: one point per record at the record's time, measurement
``<uplink.measurement>_commission``; tags ``unit`` and ``site`` (the readings'), ``technician``,
``shield`` and ``serial_<sensor id>``; float fields ``latitude``, ``longitude``, ``elevation_m``,
``mounting_height_m`` where known, ``clock_synced`` (0/1) where known, ``clock_restamped=1i``
for a re-stamped record and ``record=1i``, so a point exists whatever was given. With the JSON
format: :func:`agent.store.commission.metadata_document`, whose ``format``
(``envagent-commission/1``) tells a backend it is not a batch of readings.

Why tags by sample time, not the latest record's: a re-commissioning must not change how a
reading already taken is encoded, or its replay would not be byte-identical (and would land
upstream as another series).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agent.config import Config, UplinkConfig
from agent.core.credentials import Secret
from agent.core.wire import SIMULATED_TAG
from agent.store.commission import (
    FILE,
    CommissionError,
    history,
    mark_sent,
    metadata_document,
    reading_tags,
    restampable,
    unsent,
)
from agent.uplink.lineprotocol import escape_key, escape_measurement
from agent.uplink.policy import retry_delay
from agent.uplink.sink import Outcome, Sink
from drivers.clock import Clock

log = logging.getLogger("envagent.metadata")

MEASUREMENT_SUFFIX = "_commission"
FIELDS = ("latitude", "longitude", "elevation_m", "mounting_height_m")
TAGS = (("technician", "technician"), ("radiation_shield", "shield"))  # record key, tag key
SERIAL_TAG = "serial_"  # + sensor id
CONSTANT_FIELD = ("record", "1i")

Record = dict[str, Any]
Body = Callable[[list[Record]], bytes]


def usable(record: object) -> bool:
    """Whether a record can go upstream and start an epoch: an ``id`` and an integer time."""
    if not isinstance(record, dict):
        return False
    time_ns = record.get("time_ns")
    return (isinstance(record.get("id"), str) and isinstance(time_ns, int)
            and not isinstance(time_ns, bool))


def load(data_dir: Path) -> list[Record] | None:
    """The usable records in ``data_dir`` (none when never commissioned); None, logged, when the
    file is damaged -- never an exception, so the agent never stops over it."""
    try:
        found = history(data_dir)
    except CommissionError as exc:
        log.warning("commissioning record: %s", exc)
        return None
    records = [r for r in found if usable(r)]
    if len(records) < len(found):
        log.warning("%s: %d record(s) without an id or time_ns ignored", data_dir / FILE,
                    len(found) - len(records))
    return records


def waiting(record: Record, held_boot: str | None) -> bool:
    """Whether ``record`` waits for its re-stamp: taken unsynchronised in the held boot and
    not sent yet (one that went upstream as recorded keeps its epoch)."""
    return held_boot is not None and restampable(record, held_boot)


def epochs(records: Sequence[Record]) -> list[tuple[int, dict[str, str]]]:
    """The readings' extra tags from each record's time on (for ``set_epochs``)."""
    return [(r["time_ns"], reading_tags(r)) for r in records]


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) \
        and math.isfinite(value)


def line_protocol(records: Sequence[Record], *, measurement: str, unit: str,
                  site: str, simulated: bool = False) -> bytes:
    """One point per record (see the module docstring), escaped as the readings' lines; a
    rehearsal's (``simulated``) with the readings' tag ``simulated=true``."""
    name = escape_measurement(measurement + MEASUREMENT_SUFFIX)
    lines = []
    for r in records:
        tags = {"unit": unit, "site": site}
        if simulated:
            tags.update([SIMULATED_TAG])
        for key, tag in TAGS:
            if isinstance(r.get(key), str):
                tags[tag] = r[key]
        for sensor in r.get("sensors") or ():
            if isinstance(sensor, dict) and isinstance(sensor.get("id"), str) \
                    and isinstance(sensor.get("serial"), str):
                tags[SERIAL_TAG + sensor["id"]] = sensor["serial"]
        fields = dict([CONSTANT_FIELD])
        fields.update((key, repr(float(r[key]))) for key in FIELDS if _number(r.get(key)))
        if isinstance(r.get("clock_synced"), bool):
            fields["clock_synced"] = f"{int(r['clock_synced'])}i"
        if r.get("clock_restamped") is True:
            fields["clock_restamped"] = "1i"
        tag_text = "".join(f",{escape_key(k)}={escape_key(v)}"
                           for k, v in sorted(tags.items()) if v)
        field_text = ",".join(f"{escape_key(k)}={v}" for k, v in sorted(fields.items()))
        lines.append(f"{name}{tag_text} {field_text} {r['time_ns']}\n")
    return "".join(lines).encode("utf-8")


def json_document(records: Sequence[Record], *, unit: str, simulated: bool = False) -> bytes:
    """:func:`agent.store.commission.metadata_document` as UTF-8 JSON, as the batches are written; a
    rehearsal's (``simulated``) says ``"simulated": true``, as its batches do."""
    document = metadata_document(unit, records)
    if simulated:
        document["simulated"] = True
    return json.dumps(document, ensure_ascii=False, allow_nan=False,
                      separators=(",", ":")).encode("utf-8")


class Commissioning:
    """``commission.json`` as the delivery worker sees it; see the module docstring."""

    def __init__(self, data_dir: Path, body: Body, settings: UplinkConfig, *, clock: Clock,
                 rng: random.Random | None = None,
                 held_boot: Callable[[], str | None] = lambda: None) -> None:
        self.data_dir, self.path = data_dir, data_dir / FILE
        self._body, self._settings, self._clock = body, settings, clock
        self._rng = rng or random.Random()
        self.held_boot = held_boot  # the time keeper's: whose unsynced records wait
        self._seen: tuple[int, int, int] | None = (-1, -1, -1)  # inode, mtime, size last read
        self._held: str | None = None  # held_boot() when last read
        self.pending: list[Record] = []  # read from the file, not sent yet
        self._sent: set[str] = set()  # ids sent by this process, should marking them fail
        self._refused: set[str] = set()  # ids refused (rejected, too large): not again
        self._failures = 0
        self._due = -math.inf  # monotonic time of the next attempt

    def step(self, sink: Sink, token: Secret | None, *, send: bool = True) -> None:
        """Bring the encoder's tags up to date; then, with ``send`` and a sink that carries
        documents, send the unsent records if their backoff is over."""
        self.refresh(sink)
        if send and sink.documents and self.pending and self._clock.monotonic() >= self._due:
            self._send(sink, token)

    def refresh(self, sink: Sink) -> None:
        """Re-read the file if it (or the boot whose records wait) changed since the last
        look."""
        try:
            stat = os.stat(self.path)
            seen: tuple[int, int, int] | None = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        except OSError:
            seen = None  # not commissioned (or unreadable: history() says which)
        held = self.held_boot()
        if seen == self._seen and held == self._held:
            return
        self._seen, self._held = seen, held
        records = load(self.data_dir)
        if records is None:  # damaged: the readings keep the tags they had
            return
        ready = [r for r in records if r["id"] in self._sent or not waiting(r, held)]
        if len(ready) < len(records):
            log.info("%d commissioning record(s) taken before the clock synchronised wait for "
                     "it, to go upstream with their true time", len(records) - len(ready))
        self.pending = [r for r in unsent(ready, self._settings.name)
                        if r["id"] not in self._sent and r["id"] not in self._refused]
        sink.set_epochs(epochs(ready))

    def _send(self, sink: Sink, token: Secret | None) -> None:
        records = self.pending
        try:
            body = self._body(records)
        except ValueError as exc:  # NaN in a hand-edited file: JSON cannot carry it
            log.warning("%s cannot be sent upstream: %s", self.path, exc)
            self.pending = []
            return
        answer = sink.send(body, token)
        if answer.outcome is Outcome.DELIVERED:
            self.pending, self._failures, self._due = [], 0, -math.inf
            self._sent.update(r["id"] for r in records)
            log.info("sent %d commissioning record(s) to %s", len(records), sink.where)
            try:
                mark_sent(self.data_dir, [r["id"] for r in records], self._settings.name)
            except OSError as exc:
                log.warning("%s; the commissioning record(s) are sent again after a restart",
                            exc)
            return
        if answer.outcome in (Outcome.REJECTED, Outcome.TOO_LARGE):
            # The document itself is refused (a backend that takes readings but not this):
            # sending it again would be refused again. Once per start of the agent, and for
            # each new record.
            self._refused.update(r["id"] for r in records)
            self.pending, self._failures, self._due = [], 0, -math.inf
            log.warning("%s refused %d commissioning record(s): %s; not sent again until the "
                        "agent restarts or the unit is commissioned again; readings go on",
                        sink.where, len(records), answer.detail)
            return
        self._failures += 1  # a stop that cut it short too: the next start sends it
        delay = retry_delay(self._failures, answer.retry_after, self._settings, self._rng)
        self._due = self._clock.monotonic() + delay
        if self._failures == 1:
            log.warning("cannot send %d commissioning record(s) to %s: %s; trying again with "
                        "backoff, readings go on", len(records), sink.where, answer.detail)


def build_commissioning(config: Config, settings: UplinkConfig, data_dir: Path,
                        clock: Clock,
                        held_boot: Callable[[], str | None] = lambda: None, *,
                        simulated: bool = False) -> Commissioning:
    """The commissioning sender of the real uplink, in its format (marked a rehearsal's with
    ``simulated``, agent.store.rehearsal)."""
    unit = config.unit
    body: Body = (functools.partial(json_document, unit=unit.id, simulated=simulated)
                  if settings.format == "json"
                  else functools.partial(line_protocol, measurement=settings.measurement,
                                         unit=unit.id, site=unit.site, simulated=simulated))
    return Commissioning(data_dir, body, settings, clock=clock, held_boot=held_boot)
