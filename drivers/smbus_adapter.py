"""An ``smbus2.SMBus`` look-alike over any :class:`~drivers.bus.Bus`.

Many Raspberry Pi drivers (RPi.bme280, Pimoroni's i2cdevice-based ones, ...) take an open
``smbus2.SMBus``. Handing them this object instead runs the unmodified drivers over our bus,
real or simulated, sharing its lock and its errno-preserving errors -- the counterpart of
:mod:`drivers.busio_adapter` for Adafruit's drivers, and next to it for the same reason: it adapts
the :class:`~drivers.bus.Bus` protocol, not the simulator.

Only the calls such drivers make are here, each with the transfer the kernel would put on the
wire for smbus2's call (Documentation/i2c/smbus-protocol.rst):

- ``read_byte`` / ``write_byte``: one one-byte read or write (SMBus receive/send byte);
- ``read_byte_data`` / ``read_word_data`` / ``read_i2c_block_data``: the register byte written,
  a repeated start, then 1, 2 or n <= 32 bytes read (one :meth:`Bus.write_read`); words are
  LSB first;
- ``write_byte_data`` / ``write_word_data`` / ``write_i2c_block_data``: one write of the register
  byte and the data (words LSB first, blocks <= 32 bytes);
- ``write_quick``: an empty write (address acknowledge only);
- ``i2c_rdwr``: one message, or a write followed by a read of the same address (one combined
  transfer with a repeated start). Other combinations cannot be expressed on a
  :class:`~drivers.bus.Bus` and fail with EOPNOTSUPP, as on an adapter that cannot do them.

SMBus block transfers with a count byte (``read_block_data``) are not offered.
"""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Any

from drivers.bus import Bus

BLOCK_MAX = 32  # I2C_SMBUS_BLOCK_MAX: what smbus2 (and the kernel's SMBus emulation) allow
_I2C_M_RD = 0x0001


def _unsupported() -> OSError:
    return OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))


class SMBus:
    """What ``smbus2.SMBus(n)`` offers drivers, over ``bus``; closing it leaves ``bus`` open."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.address: int | None = None  # smbus2 keeps the last slave address set
        self._closed = False

    # --- context manager / lifetime -------------------------------------------------------------

    def __enter__(self) -> SMBus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """smbus2 closes its file descriptor; the Bus belongs to whoever opened it."""
        self._closed = True

    def _bus(self, address: int) -> Bus:
        if self._closed:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        self.address = address
        return self.bus

    # --- SMBus commands -------------------------------------------------------------------------

    def write_quick(self, i2c_addr: int, force: bool | None = None) -> None:
        self._bus(i2c_addr).write(i2c_addr, b"")

    def read_byte(self, i2c_addr: int, force: bool | None = None) -> int:
        return self._bus(i2c_addr).read(i2c_addr, 1)[0]

    def write_byte(self, i2c_addr: int, value: int, force: bool | None = None) -> None:
        self._bus(i2c_addr).write(i2c_addr, bytes([value & 0xFF]))

    def read_byte_data(self, i2c_addr: int, register: int, force: bool | None = None) -> int:
        return self._bus(i2c_addr).write_read(i2c_addr, bytes([register & 0xFF]), 1)[0]

    def write_byte_data(
        self, i2c_addr: int, register: int, value: int, force: bool | None = None
    ) -> None:
        self._bus(i2c_addr).write(i2c_addr, bytes([register & 0xFF, value & 0xFF]))

    def read_word_data(self, i2c_addr: int, register: int, force: bool | None = None) -> int:
        data = self._bus(i2c_addr).write_read(i2c_addr, bytes([register & 0xFF]), 2)
        return data[0] | data[1] << 8  # SMBus words are LSB first

    def write_word_data(
        self, i2c_addr: int, register: int, value: int, force: bool | None = None
    ) -> None:
        word = bytes([register & 0xFF, value & 0xFF, value >> 8 & 0xFF])
        self._bus(i2c_addr).write(i2c_addr, word)

    def read_i2c_block_data(
        self, i2c_addr: int, register: int, length: int, force: bool | None = None
    ) -> list[int]:
        if length > BLOCK_MAX:
            raise ValueError(f"Desired block length over {BLOCK_MAX} bytes")
        return list(self._bus(i2c_addr).write_read(i2c_addr, bytes([register & 0xFF]), length))

    def write_i2c_block_data(
        self, i2c_addr: int, register: int, data: Any, force: bool | None = None
    ) -> None:
        if len(data) > BLOCK_MAX:
            raise ValueError(f"Data length cannot exceed {BLOCK_MAX} bytes")
        self._bus(i2c_addr).write(i2c_addr, bytes([register & 0xFF, *data]))

    # --- raw messages ---------------------------------------------------------------------------

    def i2c_rdwr(self, *i2c_msgs: Any) -> None:
        """Run smbus2 ``i2c_msg`` messages; a read message's buffer receives the data."""
        if len(i2c_msgs) == 1:
            (msg,) = i2c_msgs
            bus = self._bus(msg.addr)
            if msg.flags & _I2C_M_RD:
                _fill(msg, bus.read(msg.addr, msg.len))
            else:
                bus.write(msg.addr, bytes(msg))
            return
        if len(i2c_msgs) == 2:
            out, into = i2c_msgs
            if (not out.flags & _I2C_M_RD and into.flags & _I2C_M_RD
                    and out.addr == into.addr):
                bus = self._bus(out.addr)
                _fill(into, bus.write_read(out.addr, bytes(out), into.len))
                return
        raise _unsupported()


def _fill(msg: Any, data: bytes) -> None:
    ctypes.memmove(msg.buf, data, len(data))
