"""A simulated I2C adapter: device models at addresses, a transaction log, and fault injection.

:class:`SimBus` implements :class:`drivers.bus.Bus`, so every driver (ours and Adafruit's through
:class:`~drivers.busio_adapter.BusioI2C`) runs over it unchanged. It behaves like the kernel's
I2C_RDWR path on a real adapter: an address nobody acknowledges raises ``OSError(EREMOTEIO)``, a
write followed by a read is one transfer with a repeated start, and errors keep the kernel's errno
(see ``drivers/errors.py``). Faults are injected per address and consumed one per transaction.

An I2C switch model attached with :meth:`SimBus.attach_mux` answers at its own address and lends
the bus the downstream devices of its selected channels; when several devices answer one address
(two selected channels, or a channel and the bus itself), writes reach all of them and reads are
their wired-AND, as on an open-drain bus.
"""

from __future__ import annotations

import errno
import os
import random
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, Protocol, TypeVar

from drivers.bus import check_address
from drivers.clock import Clock, SystemClock

# Enough history for a long test. The log is for tests to assert bus traffic; the CLI's
# --simulate world keeps none (log_length=0): 100,000 transactions are ~25 MB of a daemon's memory.
LOG_LENGTH = 100_000

# What a bus with nothing driving SDA reads: the pull-ups hold every bit high.
_IDLE_BYTE = 0xFF

TransactionKind = Literal["write", "read", "write_read"]
_T = TypeVar("_T")

# What a model remembers of the commands it received, for tests to assert; a --simulate daemon
# runs for days, so only the newest are kept.
HISTORY_LENGTH = 1000


def remember(history: list[_T], item: _T) -> None:
    """Append ``item`` to a model's history; past ``HISTORY_LENGTH``, the oldest half goes."""
    history.append(item)
    if len(history) > HISTORY_LENGTH:
        del history[:HISTORY_LENGTH // 2]


class SimDevice(Protocol):
    """A device model behind one address.

    ``write`` receives the bytes of one write message and ``read`` answers one read message, both
    after the address was acknowledged. A model NACKs by raising ``OSError(errno.EREMOTEIO)``.
    """

    def write(self, data: bytes) -> None: ...
    def read(self, length: int) -> bytes: ...


class SimMux(SimDevice, Protocol):
    """An I2C switch: a device at its own address that connects downstream devices to the bus."""

    def connected(self, address: int) -> list[SimDevice]: ...


class _Contention:
    """Several devices on one address: each sees every write; a read is the AND of the answers.

    The address is acknowledged if any device acknowledges; a NACK from all is a NACK.
    """

    def __init__(self, devices: list[SimDevice]) -> None:
        self.devices = devices

    def write(self, data: bytes) -> None:
        self._each(lambda device: device.write(data))

    def read(self, length: int) -> bytes:
        wired = bytearray([_IDLE_BYTE]) * length
        for answer in self._each(lambda device: device.read(length)):
            for i, byte in enumerate(answer):
                wired[i] &= byte
        return bytes(wired)

    def _each(self, call: Callable[[SimDevice], _T]) -> list[_T]:
        results: list[_T] = []
        nack: OSError | None = None
        for device in self.devices:
            try:
                results.append(call(device))
            except OSError as exc:
                nack = exc
        if not results and nack is not None:
            raise nack
        return results


@dataclass(frozen=True, slots=True)
class Transaction:
    """One transfer as the adapter saw it; ``errno`` is None when it succeeded."""

    time: float  # clock.monotonic() when the transfer started
    address: int
    kind: TransactionKind
    wrote: bytes
    read: bytes
    errno: int | None


# --- faults -------------------------------------------------------------------------------------
# Each fault applies to the next ``count`` transactions to its address (None: until cleared).


@dataclass(frozen=True)
class Nack:
    """The device does not acknowledge its address (EREMOTEIO, as i2c-bcm2835 reports a NACK)."""

    count: int | None = 1


@dataclass(frozen=True)
class BusIOError:
    """The adapter reports EIO, the kernel's catch-all (Documentation/i2c/fault-codes.rst)."""

    count: int | None = 1


@dataclass(frozen=True)
class Timeout:
    """The adapter gives up (ETIMEDOUT) after ``duration`` seconds, e.g. a slave holding SCL."""

    count: int | None = 1
    duration: float = 0.0


@dataclass(frozen=True)
class Garbage:
    """Reads return seeded random bytes of the right length (noise on SDA); writes are untouched."""

    count: int | None = 1
    seed: int = 0


@dataclass(frozen=True)
class Stuck:
    """Reads repeat the last good read of that length from the address (0xFF if none)."""

    count: int | None = 1


Fault = Nack | BusIOError | Timeout | Garbage | Stuck

_ERRNO_FAULTS = (Nack, BusIOError, Timeout)
_READ_FAULTS = (Garbage, Stuck)


class _ActiveFault:
    """An injected fault with its remaining count (and, for Garbage, its random stream)."""

    def __init__(self, fault: Fault) -> None:
        self.fault = fault
        self.remaining = fault.count
        self.rng = random.Random(fault.seed) if isinstance(fault, Garbage) else None

    def consume(self) -> None:
        if self.remaining is not None:
            self.remaining -= 1

    @property
    def spent(self) -> bool:
        return self.remaining is not None and self.remaining <= 0


def _wire_bits(kind: TransactionKind, wrote: int, length: int) -> int:
    """SCL clocks of one transfer: 9 per byte (8 data + ACK) for each address byte and data byte,
    one for each START and for the STOP (a write_read has a repeated START and a second address)."""
    messages = 2 if kind == "write_read" else 1
    return 9 * (messages + wrote + length) + messages + 1


def _os_error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class SimBus:
    """One simulated ``/dev/i2c-N``; thread-safe, like one kernel adapter shared by samplers."""

    def __init__(self, number: int = 1, *, clock: Clock | None = None,
                 log_length: int = LOG_LENGTH, bit_rate: float | None = None) -> None:
        self.number = number
        self.clock: Clock = clock if clock is not None else SystemClock()
        # SCL frequency in Hz: when set, each transfer takes the time its bits take on the wire
        # (9 clocks per byte, address bytes included, plus a START and a STOP), so a driver that
        # polls a status register without sleeping -- as on hardware, where each poll costs
        # time -- sees a FakeClock move. None: transfers are instantaneous.
        self.bit_rate = bit_rate
        self.lock = threading.RLock()
        self._devices: dict[int, SimDevice] = {}
        self._muxes: dict[int, SimMux] = {}
        self._vanished: set[int] = set()
        self._faults: dict[int, deque[_ActiveFault]] = {}
        self._last_reads: dict[tuple[int, int], bytes] = {}
        self._log: deque[Transaction] = deque(maxlen=log_length)  # the newest transactions
        self._closed = False

    # --- wiring ---------------------------------------------------------------------------------

    @property
    def devices(self) -> Mapping[int, SimDevice]:
        """Address -> model, read-only (use attach/detach)."""
        return MappingProxyType(self._devices)

    def attach(self, address: int, device: SimDevice) -> None:
        check_address(address)
        with self.lock:
            if address in self._devices:
                raise ValueError(
                    f"bus {self.number} already has a device at 0x{address:02x}; "
                    "two chips on one address would corrupt each other's answers"
                )
            self._devices[address] = device

    def attach_mux(self, address: int, mux: SimMux) -> None:
        """Attach an I2C switch: it answers at ``address`` and routes its selected channels."""
        with self.lock:
            self.attach(address, mux)
            self._muxes[address] = mux

    def detach(self, address: int) -> SimDevice:
        with self.lock:
            self._vanished.discard(address)
            self._muxes.pop(address, None)
            return self._devices.pop(address)

    # --- faults ---------------------------------------------------------------------------------

    def inject(self, address: int, fault: Fault) -> None:
        """Queue ``fault`` for ``address``; queued faults apply one after the other."""
        check_address(address)
        if fault.count is not None and fault.count < 1:
            raise ValueError(f"fault count must be >= 1 or None, not {fault.count}")
        with self.lock:
            self._faults.setdefault(address, deque()).append(_ActiveFault(fault))

    def clear_faults(self, address: int | None = None) -> None:
        """Drop injected faults (for one address or all) and bring vanished devices back."""
        with self.lock:
            if address is None:
                self._faults.clear()
                self._vanished.clear()
            else:
                self._faults.pop(address, None)
                self._vanished.discard(address)

    def vanish(self, address: int) -> None:
        """The device stops answering (a loose wire, a brown-out) but keeps its state."""
        with self.lock:
            self._vanished.add(address)

    def reappear(self, address: int) -> None:
        with self.lock:
            self._vanished.discard(address)

    # --- log ------------------------------------------------------------------------------------

    def transactions(self, address: int | None = None) -> list[Transaction]:
        with self.lock:
            return [t for t in self._log if address is None or t.address == address]

    def clear_log(self) -> None:
        with self.lock:
            self._log.clear()

    # --- Bus ------------------------------------------------------------------------------------

    def write(self, address: int, data: bytes) -> None:
        self._transfer(address, "write", bytes(data), 0)

    def read(self, address: int, length: int) -> bytes:
        return self._transfer(address, "read", b"", length)

    def write_read(self, address: int, data: bytes, length: int) -> bytes:
        return self._transfer(address, "write_read", bytes(data), length)

    def close(self) -> None:
        with self.lock:
            self._closed = True

    # --- one transfer ---------------------------------------------------------------------------

    def _transfer(self, address: int, kind: TransactionKind, wrote: bytes, length: int) -> bytes:
        check_address(address)
        if length < 0:
            raise _os_error(errno.EINVAL)
        with self.lock:
            if self._closed:
                raise _os_error(errno.EBADF)  # as smbus2 on a closed file descriptor
            started = self.clock.monotonic()
            if self.bit_rate is not None:
                self.clock.sleep(_wire_bits(kind, len(wrote), length) / self.bit_rate)
            try:
                answer = self._run(address, kind, wrote, length)
            except OSError as exc:
                self._log.append(Transaction(started, address, kind, wrote, b"", exc.errno))
                raise
            self._log.append(Transaction(started, address, kind, wrote, answer, None))
            return answer

    def _run(self, address: int, kind: TransactionKind, wrote: bytes, length: int) -> bytes:
        device = self._resolve(address)
        if device is None or address in self._vanished:
            raise _os_error(errno.EREMOTEIO)
        fault = self._next_fault(address, reads=kind != "write")
        if fault is not None and isinstance(fault.fault, _ERRNO_FAULTS):
            fault.consume()
            if isinstance(fault.fault, Timeout):
                self.clock.sleep(fault.fault.duration)
                raise _os_error(errno.ETIMEDOUT)
            raise _os_error(errno.EREMOTEIO if isinstance(fault.fault, Nack) else errno.EIO)

        if kind != "read" and wrote:  # an empty write is the quick-write probe: ACK only
            device.write(wrote)
        if kind == "write":
            return b""
        answer = device.read(length)
        if len(answer) != length:
            raise RuntimeError(
                f"model at 0x{address:02x} returned {len(answer)} bytes for a {length}-byte read"
            )
        if fault is None:
            self._last_reads[(address, length)] = answer
            return answer
        fault.consume()
        if fault.rng is not None:
            return bytes(fault.rng.getrandbits(8) for _ in range(length))
        return self._last_reads.get((address, length), bytes([_IDLE_BYTE]) * length)

    def _resolve(self, address: int) -> SimDevice | None:
        """Whoever answers ``address`` now: a device on the bus or behind a selected channel."""
        device = self._devices.get(address)
        if not self._muxes:
            return device
        answering = [] if device is None else [device]
        for mux in self._muxes.values():
            answering += mux.connected(address)
        if len(answering) > 1:
            return _Contention(answering)
        return answering[0] if answering else None

    def _next_fault(self, address: int, *, reads: bool) -> _ActiveFault | None:
        """The fault that applies to this transfer; spent faults are dropped first."""
        queue = self._faults.get(address)
        while queue and queue[0].spent:
            queue.popleft()
        if not queue:
            return None
        head = queue[0]
        if isinstance(head.fault, _READ_FAULTS) and not reads:
            return None  # Garbage and Stuck only corrupt what the master reads
        return head
