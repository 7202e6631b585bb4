"""``[storage]``: the state directory (the outbox lives inside it) and the outbox's bounds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.config.checks import byte_size, duration
from agent.config.fields import Bad, Field

DEFAULT_STORAGE_PATH = "/var/lib/envagent"
DEFAULT_MAX_BYTES = 256 * 1024**2
MIN_MAX_BYTES = 1024**2
DEFAULT_COMMIT_INTERVAL = 30.0  # bench/README.md: the SD-card writes per reading
COMMIT_INTERVAL_RANGE = (1.0, 5 * 60.0)


@dataclass(frozen=True, slots=True)
class StorageConfig:
    """``[storage]``: the state directory (the outbox lives inside it) and the outbox's bounds."""

    path: Path = Path(DEFAULT_STORAGE_PATH)
    max_bytes: int = DEFAULT_MAX_BYTES
    commit_interval: float = DEFAULT_COMMIT_INTERVAL


def _path(value: object) -> Path:
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise Bad(f'expected a directory path such as "{DEFAULT_STORAGE_PATH}"')
    return Path(value)


STORAGE_FIELDS = {
    "path": Field(_path, Path(DEFAULT_STORAGE_PATH), ""),
    "max_bytes": Field(byte_size(MIN_MAX_BYTES), DEFAULT_MAX_BYTES, ""),
    "commit_interval": Field(duration(*COMMIT_INTERVAL_RANGE), DEFAULT_COMMIT_INTERVAL, ""),
}
