"""sd_notify(3) without libsystemd: readiness, status and watchdog pings to the service manager.

The protocol is one AF_UNIX datagram of newline-separated ``KEY=VALUE`` assignments sent to the
socket named by ``$NOTIFY_SOCKET`` (a filesystem path, or an abstract socket when it starts with
"@"). Outside systemd — a technician's terminal, the test suite — the variable is unset and every
method is a no-op, so callers never need to ask where they run.

Failing to notify must never take sampling down: a send error is logged once at warning level and
reported as ``False``; the service manager notices a missing watchdog ping on its own. Nor may
it wait: a service manager too busy to read its socket (a full queue) costs that one message,
never a stalled writer or stop.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger("envagent.notify")

# sd_watchdog_enabled(3): WATCHDOG_USEC is the watchdog timeout in microseconds; the service
# should ping at half that interval so one late ping does not kill it.
_USEC_PER_SEC = 1_000_000
_PINGS_PER_TIMEOUT = 2
# Long start-up work (the outbox's integrity check, a salvage: minutes on a Pi Zero) asks for more:
# this much at each sign of progress, at most every START_EXTEND_EVERY_S, so a start that moves is
# never killed by TimeoutStartSec.
START_EXTEND_S = 60.0
START_EXTEND_EVERY_S = 5.0


class Notifier:
    """Talks to systemd's notify socket, if there is one.

    ``environ`` is read once, here: ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``.
    ``pid`` is this process's id, injectable for tests (default :func:`os.getpid`).
    """

    def __init__(
        self, environ: Mapping[str, str] = os.environ, *, pid: int | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._socket_name = environ.get("NOTIFY_SOCKET", "")
        self._address = _socket_address(self._socket_name)
        self._watchdog_usec = _watchdog_usec(environ, os.getpid() if pid is None else pid)
        self._sock: socket.socket | None = None
        self._warned = False
        self._monotonic = monotonic
        self._extended_at = -math.inf

    @property
    def enabled(self) -> bool:
        """True when a notify socket was given (we run under systemd with Type=notify)."""
        return self._address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings (half of WATCHDOG_USEC), or None without a watchdog."""
        if self._address is None or self._watchdog_usec is None:
            return None
        return self._watchdog_usec / _USEC_PER_SEC / _PINGS_PER_TIMEOUT

    def ready(self) -> bool:
        """Start-up is complete: config checked, outbox open, workers started."""
        return self._send("READY=1")

    def status(self, text: str) -> bool:
        """One line shown by ``systemctl status``. Newlines are folded so the text cannot
        smuggle in further assignments such as ``READY=1``."""
        return self._send("STATUS=" + " ".join(text.splitlines()))

    def watchdog(self) -> bool:
        """Keep-alive ping; sent only when the watchdog is enabled for this process."""
        if self.watchdog_interval() is None:
            return False
        return self._send("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more to start or stop, counted from now."""
        return self._send(f"EXTEND_TIMEOUT_USEC={max(0, round(seconds * _USEC_PER_SEC))}")

    def still_starting(self) -> bool:
        """Start-up work is making progress: :data:`START_EXTEND_S` more, at most every
        :data:`START_EXTEND_EVERY_S` (False when not sent)."""
        now = self._monotonic()
        if now - self._extended_at < START_EXTEND_EVERY_S:
            return False
        self._extended_at = now
        return self.extend_timeout(START_EXTEND_S)

    def stopping(self) -> bool:
        """Shutdown has begun; systemd stops expecting watchdog pings."""
        return self._send("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send(self, message: str) -> bool:
        if self._address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # never wait: a stalled systemd must not stall sampling or a stop
            self._sock.sendto(message.encode(), socket.MSG_DONTWAIT, self._address)
        except OSError as exc:
            self.close()
            level = logging.DEBUG if self._warned else logging.WARNING
            self._warned = True
            log.log(
                level,
                "sd_notify to %r failed (%s); systemd misses %s — further failures are logged "
                "at debug level",
                self._socket_name,
                exc,
                message.split("=", 1)[0],
            )
            return False
        return True


def _socket_address(name: str) -> bytes | None:
    """The sockaddr_un path for NOTIFY_SOCKET: "@name" is abstract (leading NUL byte)."""
    if name.startswith("/"):
        return os.fsencode(name)
    if name.startswith("@") and len(name) > 1:
        return b"\0" + os.fsencode(name[1:])
    if name:
        # e.g. "vsock:..." (systemd >= 254) — not something a Pi service is handed.
        log.warning("NOTIFY_SOCKET=%r is not a path or @abstract name; not notifying", name)
    return None


def _watchdog_usec(environ: Mapping[str, str], pid: int) -> int | None:
    """WATCHDOG_USEC if the watchdog is meant for this process (sd_watchdog_enabled(3))."""
    raw_usec = environ.get("WATCHDOG_USEC")
    if raw_usec is None:
        return None
    raw_pid = environ.get("WATCHDOG_PID")
    if raw_pid is not None:
        try:
            if int(raw_pid) != pid:
                return None  # the watchdog belongs to another process, e.g. our parent
        except ValueError:
            log.warning("ignoring the watchdog: WATCHDOG_PID=%r is not a process id", raw_pid)
            return None
    try:
        usec = int(raw_usec)
    except ValueError:
        usec = 0
    if usec <= 0:
        log.warning("ignoring the watchdog: WATCHDOG_USEC=%r is not a positive integer", raw_usec)
        return None
    return usec
