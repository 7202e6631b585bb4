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
import os
import re
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


# --- errors, for people ---------------------------------------------------------------------------

DEVICE = re.compile(r"/dev/i2c-(\d+)")
NO_ANSWER = frozenset({errno.EREMOTEIO, errno.ENXIO})  # a NACK: i2c-bcm2835 / other adapters
DENIED = frozenset({errno.EACCES, errno.EPERM})
WIRING = "check wiring, power and address"


def describe_error(exc: BaseException, where: str | None = None) -> str:
    """One sentence for people: what happened, where and what to do -- never an errno's name.

    For the kernel's ``OSError`` from opening ``/dev/i2c-N`` or from a transfer to the device at
    ``where`` (``1:0x76``, ``1:0x70/2:0x44``: as log lines name it); any other exception is its
    own message on one line. Documentation/i2c/fault-codes.rst says what each errno means.
    """
    if not isinstance(exc, OSError) or exc.errno is None or exc.strerror is None:
        return " ".join(str(exc).split()) or type(exc).__name__
    opened = DEVICE.fullmatch(str(exc.filename or ""))
    if opened is not None:
        return _device_error(exc, opened.group(0), int(opened.group(1)))
    device = where or "the device"
    if exc.errno in NO_ANSWER:
        return f"no answer at {where}: {WIRING}" if where else f"no answer: {WIRING}"
    if exc.errno == errno.ETIMEDOUT:
        return (f"the bus timed out talking to {device}: a device may be holding SDA or SCL "
                "low; check the wiring, then power the sensors off and on")
    if exc.errno == errno.EIO:
        return (f"I/O error talking to {device}: a loose or noisy connection, or wires too "
                f"long; {WIRING}")
    return f"{_lower(exc.strerror)} talking to {device}"


def _device_error(exc: OSError, path: str, number: int) -> str:
    """Opening ``/dev/i2c-N`` failed: I2C not enabled, or this user not allowed."""
    if exc.errno == errno.ENOENT:
        enable = ("enable I2C (sudo raspi-config nonint do_i2c 0)" if number == 1 else
                  "enable its adapter (a dtoverlay= line in /boot/firmware/config.txt)")
        return f"no I2C bus {path}: {enable} and reboot"
    if exc.errno in DENIED:
        return (f"permission denied on {path}: add the user to the i2c group (sudo usermod "
                f"-aG i2c {_user()}), then log in again")
    return f"cannot open {path}: {_lower(exc.strerror or 'failed')}"


def _lower(strerror: str) -> str:
    """``Device or resource busy`` as it reads inside a sentence (``I2C ...`` stays)."""
    return strerror[:1].lower() + strerror[1:] if strerror[1:2].islower() else strerror


def _user() -> str:
    """This process's user name, for the command to type."""
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return "$USER"
