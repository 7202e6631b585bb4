"""Rehearsals (``--simulate``) never leak into production.

A technician rehearses on the unit itself, with its own config: ``envagent run --simulate``. That
run must not write among the real readings, deliver to the real upstream unasked, or send
anything upstream that looks like a real reading of the unit. Three rules:

- **Apart.** Every command given ``--simulate`` works on a data directory of its own:
  ``simulated/`` under ``storage.path`` (the service never looks there), unless ``--data-dir``
  names one. With no config at all (a fresh clone), the shipped example station keeps its data
  in ``./envagent-data``, beside the newcomer, never under ``/var``.
- **Marked.** The outbox says whose readings it holds (``meta`` key ``simulated``: 1 for a
  rehearsal's, 0 for a real agent's, set at the first start). The commands that write --
  ``run``, ``sync``, ``commission`` -- refuse, before touching anything, a real outbox with
  ``--simulate`` and a rehearsal's without it. An outbox without the mark (a salvage starts a
  fresh database; an older version made it) goes by the station record beside it
  (agent.store.station, which says ``simulated`` too); with neither, one holding readings counts as
  real. Exports and every upstream format carry the mark (``simulated=true`` tag in line
  protocol, ``"simulated": true`` in JSON documents).
- **Kept unless asked.** A rehearsal delivers only with ``--deliver``; without it ``run
  --simulate`` builds no uplink at all, and ``sync --simulate`` refuses.
"""

from __future__ import annotations

import logging
from pathlib import Path

from agent.core.errors import ConfigError, StorageError
from agent.store import station
from agent.store.outbox import Outbox
from agent.store.storage import ReopeningOutbox

log = logging.getLogger("envagent")

SIMULATED_DIR = "simulated"  # under storage.path: a rehearsal's data directory


def outbox_mark(path: Path) -> tuple[bool | None, int] | None:
    """The outbox's mark (agent.store.outbox.Outbox.simulated) and how many readings were ever added
    to it; None when there is no outbox or it cannot be read (a damaged one is salvaged by the
    ``run`` that opens it, and marked then)."""
    if not path.is_file():
        return None
    try:
        with Outbox.open_readonly(path) as outbox:
            return outbox.simulated(), outbox.stats().added
    except StorageError:
        return None


def is_simulated(path: Path, *, default: bool) -> bool:
    """Whether the outbox at ``path`` is a rehearsal's, by its mark; ``default`` (whether the
    command was given ``--simulate``) when it has none."""
    found = outbox_mark(path)
    return default if found is None or found[0] is None else found[0]


def check(path: Path, *, simulate: bool) -> None:
    """ConfigError (exit 2) when a writing command would mix a rehearsal's readings with real
    ones in the outbox at ``path``; see the module docstring."""
    if not path.exists():
        return  # nothing to mix with
    mark, added = outbox_mark(path) or (None, 0)
    _refuse(path, simulate, _witness(path.parent) if mark is None else mark, added)


def _witness(data_dir: Path) -> bool | None:
    """Whether the station record beside an unmarked outbox says a rehearsal's: the mark's
    second witness, for an outbox that lost it (a salvage starts a fresh database, and a kill
    may come before the mark is set again) or cannot be read (damaged)."""
    try:
        record = station.load(data_dir)
    except (OSError, ValueError):
        return None
    return None if record is None else station.simulated(record)


def _refuse(path: Path, simulate: bool, mark: bool | None, added: int) -> None:
    if simulate and mark is False:
        raise ConfigError([f"{path} holds a real agent's readings: a rehearsal (--simulate) "
                           "never writes among them; leave out --data-dir to rehearse in "
                           f"{SIMULATED_DIR}/ under storage.path, or name another directory"])
    if simulate and mark is None and added:
        raise ConfigError([f"{path} holds {added} reading(s) not marked as a rehearsal's "
                           "(an older agent's, taken as real): a rehearsal (--simulate) never "
                           "writes among them; name another --data-dir"])
    if not simulate and mark is True:
        raise ConfigError([f"{path} holds a rehearsal's readings (made with --simulate): a "
                           "real agent never stores or delivers its readings beside them; point "
                           "storage.path or --data-dir elsewhere, or add --simulate to work on "
                           f"the rehearsal (delete {path.parent} once it is no longer needed)"])


def mark(outbox: ReopeningOutbox, *, simulate: bool) -> None:
    """Mark an unmarked outbox as ``simulate`` says, at the start of ``run``. One the agent
    cannot open yet is marked at its next start; one that :func:`check` could not read
    (damaged, salvaged since) and is of the other kind is refused now."""
    try:
        opened = outbox.get()
        found = opened.simulated()
        if found is None:
            found = _witness(outbox.path.parent)
            if found is None or found == simulate:
                opened.mark_simulated(simulate)
                return
    except StorageError:
        return  # logged by the outbox; sampling goes on into memory
    _refuse(outbox.path, simulate, found, 0)
