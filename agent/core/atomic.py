"""Files that are replaced whole or not at all, and files read with a size bound.

Writing (the state files, exports, commissioning records): a temporary file beside the target,
fsync it, rename it over the target, fsync the directory. A power cut or a yanked USB stick
leaves the old file or the new, complete one -- at worst a hidden ``.NAME.<random>.tmp``, never a
half file under the real name. The temporary file is created new (``O_CREAT|O_EXCL|O_NOFOLLOW``)
under a random name: a symlink or a file planted at a predictable name (the agent often runs as
root for ``sudo envagent commission``) is never followed or written through.

Reading (the config, commissioning records, uplink state, status files): :func:`read_bounded`
reads at most ``limit`` bytes of a regular file, so a damaged or planted file (a FIFO, a link to
``/dev/zero``, gigabytes of garbage) costs an error, never the agent's memory or a hung thread;
:func:`read_json` adds UTF-8 and JSON. Every kind of damage is one :class:`DamagedFileError`, a
ValueError, which the readers log once and survive.

SQLite databases (the outbox, the HJ 212 archive): :func:`connect_writable` refuses a database
whose file or ``-wal``/``-shm``/``-journal`` is a symbolic link, a hard link or not a regular
file -- the service's user could plant one, and ``sudo envagent sync`` would write through it
as root. :func:`connect_readonly` never creates or writes a file through a link either.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from agent.core.errors import AgentError, StorageError

_RANDOM_BYTES = 6  # 48 bits in the temporary file's name: never guessed, never a collision
_ATTEMPTS = 100  # names tried before giving up (each collision is a 2**-48 event, or an attack)
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO must not wait for a writer; a regular file ignores it.
_READ = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
BUSY_TIMEOUT_S = 5.0  # an SQLite connection waits this long for another one's lock
# the files of an SQLite database: the main one and those SQLite creates beside it
DATABASE_ENDS = ("", "-wal", "-shm", "-journal")
DATABASE_MODE = 0o644  # a new database's, less the umask (SQLITE_DEFAULT_FILE_PERMISSIONS)
_JSON_ERRORS = (ValueError, RecursionError)  # RecursionError: "[[[[..." nested too deeply


class DamagedFileError(AgentError, ValueError):
    """A file is not what the agent wrote: too large, not a regular file, not UTF-8 or JSON."""


class FileTooLargeError(DamagedFileError):
    """A file is larger than the bound it is read with."""


def _new_temporary(path: Path) -> tuple[int, Path]:
    """A new, empty file beside ``path``, created by us alone (mode 0666 less the umask, as
    ``open(..., "w")`` would give)."""
    for _ in range(_ATTEMPTS):
        tmp = path.with_name(f".{path.name}.{os.urandom(_RANDOM_BYTES).hex()}.tmp")
        try:
            return os.open(tmp, _NEW_FILE, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary file beside {path}")


def write_new(path: Path, data: bytes) -> None:
    """Create ``path`` with ``data``; FileExistsError when anything (a symlink too) is there.

    For files beside evidence at names others can predict (agent.store.salvage): never followed,
    never written through."""
    fd = os.open(path, _NEW_FILE, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: Path, *, mode: int | None = None) -> Iterator[IO[str]]:
    """A text file that becomes ``path`` only once complete and on disk; errors propagate.

    ``mode``: the file's permissions whatever the umask (a file ``sudo`` writes for the
    service's user to read); default 0666 less the umask."""
    fd, tmp = _new_temporary(path)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with open(fd, "w", encoding="utf-8", newline="") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)  # replaces a symlink at ``path`` itself, never its target
    except BaseException:
        with suppress(OSError):
            tmp.unlink()
        raise
    with suppress(OSError):  # vfat may refuse a directory fsync; the file itself is on disk
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_json(path: Path, data: Any, *, indent: int | None = None,
               mode: int | None = None) -> None:
    """``data`` as UTF-8 JSON in ``path``, atomically (``mode``: as :func:`atomic_file`)."""
    with atomic_file(path, mode=mode) as file:
        separators = None if indent is not None else (",", ":")
        json.dump(data, file, ensure_ascii=False, indent=indent, separators=separators)


def connect_readonly(path: Path, **options: Any) -> sqlite3.Connection:
    """A connection that reads the SQLite database at ``path`` beside the agent that writes it,
    creating nothing: while the agent runs, its ``-wal`` and ``-shm`` exist and a read-only
    connection shares them; without them the main file holds every commit and is opened
    ``immutable``, because a plain read-only open would create them, owned by whoever reads.
    So is a symbolic link at ``path`` (never the agent's, which refuses one): SQLite would open
    the ``-wal``/``-shm`` beside its target, creating them there.
    Waits up to BUSY_TIMEOUT_S for the writer's lock; ``options`` go to ``sqlite3.connect``.
    sqlite3.Error when it cannot be opened."""
    live = not path.is_symlink() and all(Path(f"{path}{end}").exists()
                                         for end in ("-wal", "-shm"))
    uri = path.resolve().as_uri() + ("?mode=ro" if live else "?mode=ro&immutable=1")
    return sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, **options)


def refuse_links(path: Path, ends: Iterable[str] = DATABASE_ENDS) -> None:
    """StorageError, saying what to do, if ``path`` + any of ``ends`` that exists is not a
    regular file with one name (a symbolic or hard link, a FIFO, a device, a directory): the
    agent never opens such a file for writing. One that cannot be looked at is left to the open
    that follows, which says why."""
    for end in ends:
        name = Path(f"{path}{end}")
        try:
            found = os.lstat(name)
        except OSError:
            continue
        if stat.S_ISLNK(found.st_mode):
            raise StorageError(f"{name} is a symbolic link, not a file of the agent's: remove "
                               "the link (the agent never writes through one)")
        if not stat.S_ISREG(found.st_mode):
            raise StorageError(f"{name} is not a regular file (a directory, a FIFO or a "
                               "device): move it away (the agent never writes to it)")
        if found.st_nlink != 1:
            raise StorageError(f"{name} has {found.st_nlink} names (a hard link): copy it "
                               "elsewhere if it matters and remove this name (the agent never "
                               "writes through a hard link)")


def connect_writable(path: Path, **options: Any) -> sqlite3.Connection:
    """A connection that may write the SQLite database at ``path``; ``options`` go to
    ``sqlite3.connect``.

    StorageError (:func:`refuse_links`) when the database or its ``-wal``/``-shm``/``-journal``
    is a link or not a regular file, also when one was swapped in while SQLite opened it (SQLite
    itself opens the ``-wal`` and ``-shm`` with ``O_NOFOLLOW``, not the main file), or when the
    file cannot be created; sqlite3.Error when it cannot be opened."""
    refuse_links(path)
    try:  # created here, never through a link (O_EXCL): SQLite's own create follows one
        os.close(os.open(path, _NEW_FILE, DATABASE_MODE))
    except FileExistsError:
        pass
    except OSError as exc:
        raise StorageError(exc.errno, f"cannot create {path}: {exc.strerror}") from exc
    # mode=rw: SQLite creates nothing, so a link swapped in now (to a file that does not exist
    # yet) makes the open fail rather than create its target
    conn = sqlite3.connect(Path(os.path.abspath(path)).as_uri() + "?mode=rw", uri=True,
                           **options)
    try:
        # SQLite names the file it opened with every link resolved: ours, or a link's target
        opened = next(row[2] for row in conn.execute("PRAGMA database_list") if row[1] == "main")
        expected = os.path.join(os.path.realpath(path.parent), path.name)
        if os.path.realpath(opened) != expected:
            raise StorageError(f"{path} was replaced by a link to {opened} while it was opened:"
                               " remove the link (the agent never writes through one)")
    except BaseException:
        conn.close()
        raise
    return conn


def read_bounded(path: Path, limit: int, *, follow: bool = True) -> bytes:
    """The content of the regular file ``path``, at most ``limit`` bytes.

    OSError when it cannot be opened or read (FileNotFoundError when missing; with
    ``follow=False``, ELOOP when it is a symbolic link); DamagedFileError when it is not a
    regular file or is larger than ``limit``.
    """
    return read_bounded_stat(path, limit, follow=follow)[0]


def read_bounded_stat(path: Path, limit: int, *,
                      follow: bool = True) -> tuple[bytes, os.stat_result]:
    """:func:`read_bounded`, and the file's status as it was read (its mode, its owner)."""
    fd = os.open(path, _READ if follow else _READ | os.O_NOFOLLOW)
    try:
        found = os.fstat(fd)
        if stat.S_ISDIR(found.st_mode):  # as open() says it
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(found.st_mode):
            raise DamagedFileError(f"{path} is not a regular file")
        os.set_blocking(fd, True)
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise FileTooLargeError(f"{path} is larger than {limit} bytes")
    return b"".join(chunks), found


def read_json(path: Path, limit: int) -> Any:
    """The JSON document in ``path`` (UTF-8, at most ``limit`` bytes).

    OSError when it cannot be read; DamagedFileError for any damage, its message naming the
    file and what is wrong.
    """
    raw = read_bounded(path, limit)
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DamagedFileError(f"{path} is not UTF-8 (byte 0x{raw[exc.start]:02x} at offset "
                               f"{exc.start})") from None
    except _JSON_ERRORS as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise DamagedFileError(f"{path} is not valid JSON ({reason})") from None
