"""Time sources, injected everywhere so tests advance time instead of sleeping.

Scheduling and deadlines use ``monotonic``; readings are stamped with ``time`` (wall clock) and
``boottime`` (CLOCK_BOOTTIME, which keeps counting through suspend and is what the boot-time anchor
of a reading is measured on).
"""

from __future__ import annotations

import ctypes
import threading
import time
from typing import Protocol

# <sys/timex.h>: adjtimex() returns TIME_ERROR when the kernel's clock is not synchronised
# (STA_UNSYNC set, e.g. before NTP/timesyncd has disciplined it).
_TIME_ERROR = 5
# struct timex is 208 bytes on 64-bit Linux, 128 on 32-bit; a zeroed, larger buffer with
# modes == 0 asks for a read-only query.
_TIMEX_BUFFER_BYTES = 512


class Clock(Protocol):
    def monotonic(self) -> float: ...
    def time(self) -> float: ...
    def boottime(self) -> float: ...
    def sleep(self, seconds: float) -> None: ...
    def wait(self, event: threading.Event, seconds: float) -> bool: ...
    def synchronized(self) -> bool | None: ...


class SystemClock:
    """The real clocks of this machine."""

    def __init__(self) -> None:
        # The C library the interpreter already has loaded (dlopen(NULL) searches the process's
        # global symbols), not ctypes.util.find_library("c"): that runs /sbin/ldconfig in a
        # child process and imports subprocess, shutil and the compression modules (~1.5 MiB).
        try:
            self._libc: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
        except OSError:
            self._libc = None

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def boottime(self) -> float:
        return time.clock_gettime(time.CLOCK_BOOTTIME)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Sleep until ``event`` is set or ``seconds`` pass; True when the event was set."""
        return event.wait(max(0.0, seconds))

    def synchronized(self) -> bool | None:
        """Whether the kernel considers the wall clock synchronised; None when it cannot tell."""
        if self._libc is None:
            return None
        buf = ctypes.create_string_buffer(_TIMEX_BUFFER_BYTES)
        state = self._libc.adjtimex(buf)
        if state < 0:
            return None
        return state != _TIME_ERROR
