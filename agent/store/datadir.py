"""One agent per data directory: an flock on ``agent.lock`` in it.

``envagent run`` holds it for its whole life; ``sync`` and ``commission``, which write beside the
daemon (the outbox, ``uplink-state.json``, ``commission.json``) and talk to its upstream or its
sensors, hold it while they work -- so a second one of any of them is refused at once, naming
the directory and the pid that holds it. ``status``, ``doctor`` and ``export`` only read and
take no lock: they keep working beside a running daemon.

The lock is the kernel's (flock(2)): it goes with the process, however that ends -- a SIGKILL or a
power cut leaves no stale lock, only a file whose content is history. The holder writes its pid
in the file, for the refusal message only; it is read with a size bound and believed only while
the lock is held.

The file is opened with ``O_NOFOLLOW`` and must be a plain file with one name: a symlink or a
hard link planted in its place (the commands often run as root) is refused, never written
through. One left by root (``sudo envagent commission``) is opened read-only by the service's
user -- flock needs no more -- so it never locks the service out; that holder just cannot write
its pid.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from agent.core.errors import AgentError

log = logging.getLogger("envagent")

LOCK_FILE = "agent.lock"
MAX_PID_BYTES = 32  # what a holder writes: a decimal pid and a line break
PID_LIMIT = 2**22  # Linux's PID_MAX_LIMIT (include/linux/threads.h): no pid is larger
# What a refused command says to do (the message names the directory and the holder's pid).
HINT = "stop it first (sudo systemctl stop envagent), or give this command another --data-dir"
RUN_HINT = ("one agent per data directory: stop the other first (sudo systemctl stop "
            "envagent), or give this one another --data-dir")
SYNC_HINT = ("the running agent delivers on its own (envagent status shows how it goes); to "
             "sync by hand, stop it first (sudo systemctl stop envagent)")
COMMISSION_HINT = ("its sensors and commissioning record are the running agent's: stop it "
                   "(sudo systemctl stop envagent), commission, then start it again")
# O_NONBLOCK: a FIFO planted at the name must not make the open wait; no effect on a file.
_OPEN = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_READ_ONLY_CAUSES = (errno.EACCES, errno.EPERM, errno.EROFS)


class DataDirError(AgentError, OSError):
    """The data directory's lock cannot be taken: the directory or the lock file is unusable."""


class DataDirUnusable(DataDirError):
    """The data directory cannot be created or written (not a directory, no permission, a
    read-only filesystem): no outbox can be opened there either."""


class DataDirBusy(DataDirError):
    """Another process holds the data directory; ``pid`` is it, where known."""

    pid: int | None = None


def _error(message: str, cause: OSError | None = None) -> DataDirError:
    error = DataDirError(message)
    error.errno = None if cause is None else cause.errno
    return error


def _open(data_dir: Path) -> tuple[int, bool]:
    """The lock file's descriptor (creating the directory and the file), and whether it is
    writable."""
    path = data_dir / LOCK_FILE
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd, writable = os.open(path, os.O_RDWR | os.O_CREAT | _OPEN, 0o644), True
        except OSError as exc:
            if exc.errno not in _READ_ONLY_CAUSES:
                raise
            try:
                fd, writable = os.open(path, os.O_RDONLY | _OPEN), False  # root's, from sudo
            except FileNotFoundError:
                raise exc from None  # not there, and this user may not create it
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _error(f"{path} is a symbolic link, not the agent's lock file: remove it "
                         "(the agent never follows it)", exc) from None
        unusable = DataDirUnusable(
            f"cannot lock the data directory {data_dir}: {exc.strerror or exc}; check "
            "--data-dir (or storage.path) and that this user may write there")
        unusable.errno = exc.errno
        raise unusable from None
    found = os.fstat(fd)
    if not stat.S_ISREG(found.st_mode) or found.st_nlink != 1:
        os.close(fd)
        raise _error(f"{path} is not a plain file of its own (a link, a device or a "
                     "directory): remove it (the agent never writes through it)")
    return fd, writable


def _pid(fd: int) -> int | None:
    """The pid the holder wrote, if it is a running process."""
    try:
        text = os.pread(fd, MAX_PID_BYTES, 0).decode("ascii").strip()
        pid = int(text)
    except (OSError, ValueError):
        return None
    if not 0 < pid < PID_LIMIT:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, under another user (the service's)
        pass
    return pid


@contextmanager
def hold(data_dir: Path, *, hint: str = HINT, unusable_ok: bool = False) -> Iterator[None]:
    """The data directory's lock, until the block ends; DataDirBusy (naming the directory, the
    holder's pid and ``hint``) when another process holds it, at once.

    ``unusable_ok`` (the daemon): a directory that cannot be used at all is logged and the block
    runs without the lock -- no other agent can store there either, and the daemon samples
    into memory until the directory can be used (agent.store.storage); it is never a reason to stop.
    """
    try:
        fd, writable = _open(data_dir)
    except DataDirUnusable as exc:
        if not unusable_ok:
            raise
        log.warning("%s; going on without the lock", exc)
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _pid(fd)
            who = "pid unknown" if pid is None else f"pid {pid}"
            busy = DataDirBusy(f"the data directory {data_dir} is in use by another envagent "
                               f"({who}); {hint}")
            busy.errno, busy.pid = errno.EWOULDBLOCK, pid
            raise busy from None
        if writable:
            with suppress(OSError):  # the pid is for messages only
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        try:
            yield
        finally:
            if writable:
                with suppress(OSError):
                    os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock
