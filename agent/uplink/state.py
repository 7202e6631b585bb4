"""The delivery worker's state as other processes see it: ``uplink-state.json`` in the data
directory, one file per upstream (:func:`state_file`), read by ``envagent status``, ``status
--watch`` and ``sync`` in another process.

The worker (agent.uplink.worker) writes it atomically, on transitions, and reads its last
success time back at the start; a reader gets None for a file that is missing, unreadable or
not what the agent writes -- read with a size bound, never trusted further.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from agent.core.atomic import read_json, write_json
from agent.core.reading import DEFAULT_UPSTREAM

log = logging.getLogger("envagent.uplink")

STATE_FILE = "uplink-state.json"  # the upstream named "default": the name it always had
UPSTREAM_NAME = re.compile(r"[a-z0-9_-]+")  # as config allows for [[uplink]] name
MAX_STATE_BYTES = 64 * 1024  # what the worker writes is a few hundred bytes


def state_file(name: str) -> str:
    """The state file of the upstream ``name`` in the data directory: ``uplink-state.json`` for
    the one named "default" (so the files and readers of a single-upstream unit keep working),
    ``uplink-<name>-state.json`` for any other."""
    if name == DEFAULT_UPSTREAM:
        return STATE_FILE
    if not UPSTREAM_NAME.fullmatch(name):
        raise ValueError(f"upstream name {name!r}: expected lower-case letters, digits, _ and - "
                         "only (it names a file in the data directory); fix [[uplink]] name")
    return f"uplink-{name}-state.json"


def _state_field_ok(name: str, value: object) -> bool:
    """A field of ``uplink-state.json`` as the worker writes it: ``state`` a str, ns times and
    counts int or null, the texts str or null."""
    if value is None:
        return name != "state"
    if name.endswith(("_ns", "_count")):
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, str)


@dataclass
class UplinkState:
    """``state`` is starting, ok, retrying, auth_blocked or failing; times are wall-clock ns.

    ``hold_*``: readings of boot ``hold_boot`` held for the clock (``hold_count`` of them at the
    worker's last look, since ``hold_since_ns``, until ``hold_until_ns`` at most, because
    ``hold_reason``); all None when nothing is held.
    """

    state: str = "starting"
    since_ns: int | None = None
    last_success_ns: int | None = None
    last_error: str | None = None
    last_error_ns: int | None = None
    hold_boot: str | None = None
    hold_count: int | None = None
    hold_since_ns: int | None = None
    hold_until_ns: int | None = None
    hold_reason: str | None = None

    def hold_fields(self) -> tuple[object, ...]:
        return (self.hold_boot, self.hold_count, self.hold_since_ns, self.hold_until_ns,
                self.hold_reason)

    def clear_hold(self) -> None:
        self.hold_boot = self.hold_count = self.hold_since_ns = None
        self.hold_until_ns = None
        self.hold_reason = None

    @classmethod
    def load(cls, path: Path) -> UplinkState | None:
        """The state last written to ``path``; None when there is none, or it is unreadable
        or damaged (read with a size bound; a field of the wrong type is damage, logged)."""
        try:
            data = read_json(path, MAX_STATE_BYTES)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring the uplink state file: %s", exc)
            return None
        known = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or not all(
                _state_field_ok(k, v) for k, v in data.items() if k in known):
            log.warning("ignoring the uplink state file %s: not what the agent writes", path)
            return None
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, path: Path) -> None:
        """Write atomically (agent.core.atomic): a power cut leaves the old state or the new."""
        write_json(path, asdict(self), indent=1)
