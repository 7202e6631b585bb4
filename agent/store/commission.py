"""Commissioning: the as-installed facts of a unit, recorded at each visit in the state directory.

``envagent commission`` writes one record per run to ``commission.json`` in the data directory:
the unit, site and coordinates from ``[unit]``, what the technician says (mounting height,
radiation shield, name, a note), each sensor's serial number where the chip reports one, and the
time -- with whether the clock was synchronised, and the boot id and CLOCK_BOOTTIME, so a time
taken before NTP can be re-derived like a reading's. Records are appended, never rewritten,
except their ``sent`` flag and a re-stamp.

A record taken before the clock synchronised is **re-stamped** by the agent
(agent.sampling.timekeeping,
with the anchor it re-stamps that boot's readings with) once the clock has synchronised in the
same boot and the record has not been sent: ``time`` becomes ``anchor_wall + (boot_ns -
anchor_boot)``, ``clock_synced`` true, ``clock_restamped`` true, and the time recorded is kept
as ``unsynced_time`` / ``unsynced_time_ns``. Until then it waits (agent.uplink.metadata). A record
of a
boot that never synchronised keeps its time and ``clock_synced: false``.

The file (written atomically; read with a size bound, :data:`MAX_BYTES`)::

    {"format": "envagent-commission/1", "unit": "demo-001", "history": [RECORD, ...]}

Upstream (agent.uplink.metadata sends them from the delivery worker), once, as metadata:
:func:`unsent`
picks the records not yet sent, :func:`metadata_document` wraps them for a JSON POST,
:func:`mark_sent` flags them after a 2xx. Each record's ``id`` is stable (SHA-256 of unit and
the time recorded, as a reading's; a re-stamp keeps it), so a resend is recognisable. As tags:
:func:`reading_tags` gives a record's facts that suit a tag on every reading sampled while it is
in force.

Who writes it: ``envagent commission``, and the daemon (or ``sync``) marking records sent and
re-stamping them -- each process holding the data directory (agent.store.datadir), so one at a time;
within the daemon, the delivery worker and the writer take turns on :data:`_WRITING`.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import __version__
from agent.config import Config
from agent.core.atomic import DamagedFileError, read_json, write_json
from agent.core.errors import AgentError
from agent.core.reading import DEFAULT_UPSTREAM
from agent.core.timebase import HOLD_UNSYNCED_S, NS, current_boot, iso_ns
from drivers.base import Driver
from drivers.bus import describe_error
from drivers.clock import Clock

FILE = "commission.json"
# A record is 1-2 KB (most of it the sensors' serials): this holds hundreds of visits, and a
# damaged file costs at most this much memory before it is refused.
MAX_BYTES = 1024 * 1024
FORMAT = "envagent-commission/1"
SENT_KEYS = ("sent", "sent_to")  # where a record went: the unit's own bookkeeping, never sent
ID_HEX_DIGITS = 32  # as agent.uplink.encoders.reading_id


class CommissionError(AgentError, OSError):
    """The commissioning record cannot be read or written."""


def _error(message: str, cause: OSError | None = None) -> CommissionError:
    error = CommissionError(message)
    error.errno = None if cause is None else cause.errno
    return error


@dataclass(frozen=True, slots=True)
class Facts:
    """What the technician says about the installation; None: not given, left out."""

    technician: str | None = None
    mounting_height_m: float | None = None
    radiation_shield: str | None = None
    note: str | None = None


def record_id(unit: str, time_ns: int) -> str:
    return hashlib.sha256(f"{unit}\n{time_ns}".encode()).hexdigest()[:ID_HEX_DIGITS]


def probe_sensors(config: Config, drivers: Sequence[Driver]) -> list[dict[str, Any]]:
    """Each configured sensor, set up and asked for its serial number, then closed; a sensor
    that fails carries ``error`` instead (the others are still probed)."""
    found: list[dict[str, Any]] = []
    for sensor, driver in zip(config.sensors, drivers, strict=True):
        entry: dict[str, Any] = {"id": sensor.id, "driver": sensor.driver, "bus": sensor.bus,
                                 "address": sensor.address}
        if sensor.mux is not None:
            entry |= {"mux": sensor.mux, "channel": sensor.channel}
        try:
            driver.setup()
            serial = driver.serial()
            if serial is not None:
                entry["serial"] = serial
        except Exception as exc:  # noqa: BLE001 - a record of every sensor, then exit 1
            entry["error"] = describe_error(exc, driver.where)
        finally:
            with suppress(Exception):
                driver.close()
        found.append(entry)
    return found


def make_record(config: Config, facts: Facts, sensors: list[dict[str, Any]], *, time_ns: int,
                clock_synced: bool | None, boot_id: str | None, boot_ns: int) -> dict[str, Any]:
    """One commissioning record; facts not known are left out, not null."""
    unit = config.unit
    record: dict[str, Any] = {
        "id": record_id(unit.id, time_ns), "time": iso_ns(time_ns), "time_ns": time_ns,
        "clock_synced": clock_synced, "boot_id": boot_id, "boot_ns": boot_ns,
        "unit": unit.id, "site": unit.site, "latitude": unit.latitude,
        "longitude": unit.longitude, "elevation_m": unit.elevation_m,
        "mounting_height_m": facts.mounting_height_m,
        "radiation_shield": facts.radiation_shield, "technician": facts.technician,
        "note": facts.note, "sensors": sensors, "config": config.source,
        "agent_version": __version__, "sent": False, "sent_to": [],
    }
    return {k: v for k, v in record.items() if v is not None or k == "clock_synced"}


# --- the file --------------------------------------------------------------------------------


# Read-modify-write of the file by the threads of one process (the daemon's delivery worker
# marks records sent, its writer re-stamps them); other processes are kept out by the data
# directory's lock (agent.store.datadir), which the commands that write take.
_WRITING = threading.Lock()


def check_writable(data_dir: Path) -> None:
    """Raise CommissionError now, before the sensors are probed, if the record cannot be kept
    (creating the directory)."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _error(f"cannot write the commissioning record in {data_dir}: "
                     f"{exc.strerror or exc}; check --data-dir (or storage.path) and that this "
                     "user may write there", exc) from exc
    if not os.access(data_dir, os.W_OK):
        raise _error(f"cannot write the commissioning record in {data_dir}: permission "
                     "denied; run it as the agent's user (sudo -u envagent envagent "
                     "commission ...)")


def load(data_dir: Path) -> dict[str, Any] | None:
    """The whole document, or None when the unit was never commissioned; CommissionError (an
    OSError) when it cannot be read or is damaged -- invalid UTF-8 or JSON, too large."""
    path = data_dir / FILE
    try:
        document = read_json(path, MAX_BYTES)
    except FileNotFoundError:
        return None
    except DamagedFileError as exc:
        raise _error(f"{exc}; it is never overwritten: move it aside to start a new "
                     "history") from None
    except OSError as exc:
        raise _error(f"cannot read {path}: {exc.strerror or exc}", exc) from exc
    if not isinstance(document, dict) or not isinstance(document.get("history"), list):
        raise _error(f"{path} is not an {FORMAT} document; move it aside to start a new history")
    return document


def _save(data_dir: Path, document: dict[str, Any]) -> None:
    """Atomically (agent.core.atomic): a temporary file, fsync, rename, fsync."""
    write_json(data_dir / FILE, document, indent=1)


def append(data_dir: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Add ``record`` to the unit's history; return the document as written."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with _WRITING:
        document = load(data_dir) or {"format": FORMAT, "unit": record["unit"], "history": []}
        document["unit"] = record["unit"]
        document["history"].append(record)
        _save(data_dir, document)
    return document


def history(data_dir: Path) -> list[dict[str, Any]]:
    """Every record, oldest first."""
    document = load(data_dir)
    return [] if document is None else list(document["history"])


def restampable(record: object, boot_id: str) -> bool:
    """Whether ``record`` was taken in boot ``boot_id`` before its clock synchronised and can
    still get its true time: not sent yet (what went upstream stays what the file says)."""
    if not isinstance(record, dict):
        return False
    boot_ns = record.get("boot_ns")
    return (record.get("boot_id") == boot_id and record.get("clock_synced") is False
            and not _sent_anywhere(record) and isinstance(boot_ns, int)
            and not isinstance(boot_ns, bool) and isinstance(record.get("time_ns"), int))


def restamp(data_dir: Path, boot_id: str, anchor_wall_ns: int, anchor_boot_ns: int) -> int:
    """Give boot ``boot_id``'s unsynchronised, unsent records their true time from a
    synchronised anchor, as agent.store.outbox re-stamps readings; return how many changed.

    Looks without the lock first, so a unit with nothing to re-stamp writes nothing.
    """
    if not any(restampable(r, boot_id) for r in history(data_dir)):
        return 0

    def true_time(r: dict[str, Any]) -> bool:
        if not restampable(r, boot_id):
            return False
        time_ns = anchor_wall_ns + (r["boot_ns"] - anchor_boot_ns)
        r |= {"time": iso_ns(time_ns), "time_ns": time_ns, "clock_synced": True,
              "clock_restamped": True, "unsynced_time": r.get("time"),
              "unsynced_time_ns": r["time_ns"]}
        return True

    return _update(data_dir, true_time)


def _update(data_dir: Path, change: Callable[[dict[str, Any]], bool]) -> int:
    """Apply ``change`` to each record under the lock and save the file if any changed;
    return how many did."""
    with _WRITING:
        document = load(data_dir)
        if document is None:
            return 0
        changed = sum(change(r) for r in document["history"] if isinstance(r, dict))
        if changed:
            try:
                _save(data_dir, document)
            except OSError as exc:
                raise _error(f"cannot write {data_dir / FILE}: {exc.strerror or exc}; check "
                             "that this user may write there", exc) from exc
    return changed


# --- upstream ---------------------------------------------------------------------------------


def _sent_to(record: dict[str, Any], upstream: str) -> bool:
    """Whether ``record`` went to ``upstream``: named in ``sent_to``; a record the release
    before several upstreams marked has only ``sent``, which meant the one upstream there was."""
    names = record.get("sent_to")
    if isinstance(names, list):
        return upstream in names
    return upstream == DEFAULT_UPSTREAM and record.get("sent") is True


def _sent_anywhere(record: dict[str, Any]) -> bool:
    """``sent``: whether the record went upstream at all, so its time is what upstream has."""
    return record.get("sent") is True


def unsent(records: Iterable[dict[str, Any]],
           upstream: str = DEFAULT_UPSTREAM) -> list[dict[str, Any]]:
    """The records not yet sent to ``upstream``, in file order."""
    return [r for r in records if not _sent_to(r, upstream)]


def metadata_document(unit: str, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The body to POST (as JSON) for ``records``: the record format, without the marks of
    where it went."""
    return {"format": FORMAT, "unit": unit, "count": len(records),
            "records": [{k: v for k, v in r.items() if k not in SENT_KEYS} for r in records]}


def mark_sent(data_dir: Path, ids: Iterable[str], upstream: str = DEFAULT_UPSTREAM) -> int:
    """Flag the records with these ids as sent to ``upstream``; return how many changed."""
    wanted = set(ids)

    def sent(r: dict[str, Any]) -> bool:
        if r.get("id") not in wanted or _sent_to(r, upstream):
            return False
        names = r.get("sent_to")
        if not isinstance(names, list):  # marked by the release before: sent meant "default"
            names = [DEFAULT_UPSTREAM] if r.get("sent") is True else []
        r["sent"], r["sent_to"] = True, [*names, upstream]
        return True

    return _update(data_dir, sent)


def reading_tags(record: dict[str, Any]) -> dict[str, str]:
    """A record's facts that suit a tag on every reading: ``mounting_height`` (metres) and
    ``shield``, where given -- few values per unit, so they split no series but at a visit."""
    tags: dict[str, str] = {}
    height = record.get("mounting_height_m")
    if isinstance(height, int | float) and not isinstance(height, bool):
        tags["mounting_height"] = f"{height:g}"
    shield = record.get("radiation_shield")
    if isinstance(shield, str) and shield:
        tags["shield"] = shield
    return tags


# --- the command ------------------------------------------------------------------------------


def record_now(config: Config, facts: Facts, sensors: list[dict[str, Any]],
               clock: Clock) -> dict[str, Any]:
    """A record stamped with ``clock`` now, and this boot's id and boot time."""
    return make_record(config, facts, sensors, time_ns=round(clock.time() * 1e6) * 1000,
                       clock_synced=clock.synchronized(), boot_id=current_boot(),
                       boot_ns=int(clock.boottime() * NS))


def awaits_restamp(record: dict[str, Any]) -> bool:
    """Whether the agent can still give a record taken before the clock synchronised its true
    time (:func:`restamp`): its boot is known and the record was taken while that boot's
    readings are held for the clock (agent.sampling.timekeeping), so it is not sent before."""
    boot_ns = record.get("boot_ns")
    return (record.get("clock_synced") is False and record.get("boot_id") is not None
            and isinstance(boot_ns, int) and boot_ns < HOLD_UNSYNCED_S * NS)
