"""The message-level I2C bus every driver talks to.

A :class:`Bus` moves whole I2C messages: a write, a read, or a write followed by a read with a
repeated start (no STOP in between, which register-pointer chips need). Errors are the kernel's
``OSError`` with its errno, never wrapped.

There is exactly one :class:`Bus` object per ``/dev/i2c-N`` in a process, and it carries the lock
that a driver holds across a multi-message exchange (trigger, wait, read) and that a multiplexer
holds while its channel is selected.
"""

from __future__ import annotations

import errno
import threading
from typing import Protocol

# Valid 7-bit addresses for ordinary devices; 0x00-0x07 and 0x78-0x7F are reserved by the I2C
# specification (general call, CBUS, HS-mode master codes, 10-bit addressing).
FIRST_ADDRESS = 0x08
LAST_ADDRESS = 0x77


class Bus(Protocol):
    """One I2C adapter. ``lock`` serialises multi-message exchanges between threads."""

    number: int
    lock: threading.RLock

    def write(self, address: int, data: bytes) -> None: ...
    def read(self, address: int, length: int) -> bytes: ...
    def write_read(self, address: int, data: bytes, length: int) -> bytes: ...
    def close(self) -> None: ...


def check_address(address: int) -> None:
    if not FIRST_ADDRESS <= address <= LAST_ADDRESS:
        raise OSError(errno.EINVAL, f"I2C address 0x{address:02x} is outside 0x08-0x77")


class SMBus2Bus:
    """``/dev/i2c-N`` through smbus2's ``i2c_rdwr`` (the kernel's I2C_RDWR ioctl).

    ``i2c_rdwr`` sends raw messages, so chips without a register pointer (Sensirion's command
    protocol, Plantower frames) work as well as register chips, and a write+read pair is one
    ioctl with a repeated start.
    """

    def __init__(self, number: int) -> None:
        from smbus2 import SMBus  # imported here so the simulated world never needs /dev/i2c-*

        self.number = number
        self.lock = threading.RLock()
        self._smbus = SMBus(number)

    def write(self, address: int, data: bytes) -> None:
        from smbus2 import i2c_msg

        check_address(address)
        with self.lock:
            self._smbus.i2c_rdwr(i2c_msg.write(address, data))

    def read(self, address: int, length: int) -> bytes:
        from smbus2 import i2c_msg

        check_address(address)
        msg = i2c_msg.read(address, length)
        with self.lock:
            self._smbus.i2c_rdwr(msg)
        return bytes(msg)

    def write_read(self, address: int, data: bytes, length: int) -> bytes:
        from smbus2 import i2c_msg

        check_address(address)
        out = i2c_msg.write(address, data)
        msg = i2c_msg.read(address, length)
        with self.lock:
            self._smbus.i2c_rdwr(out, msg)
        return bytes(msg)

    def close(self) -> None:
        with self.lock:
            self._smbus.close()
