"""Files that are replaced whole or not at all: the state files, exports, commissioning records.

Write a temporary file beside the target, fsync it, rename it over the target, fsync the
directory. A power cut or a yanked USB stick leaves the old file or the new, complete one -- at
worst a hidden ``.NAME.PID.tmp``, never a half file under the real name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_file(path: Path) -> Iterator[IO[str]]:
    """A text file that becomes ``path`` only once complete and on disk; errors propagate."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            tmp.unlink()
        raise
    with suppress(OSError):  # vfat may refuse a directory fsync; the file itself is on disk
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json(path: Path, data: Any, *, indent: int | None = None) -> None:
    """``data`` as UTF-8 JSON in ``path``, atomically."""
    with atomic_file(path) as file:
        separators = None if indent is not None else (",", ":")
        json.dump(data, file, ensure_ascii=False, indent=indent, separators=separators)
