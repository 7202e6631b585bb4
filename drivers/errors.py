"""One root for every error raised by drivers, each mixed with the builtin it resembles.

Bus errors are *not* wrapped: the kernel's ``OSError`` with its errno (121 EREMOTEIO for a NACK,
110 ETIMEDOUT, 5 EIO) propagates as smbus2 raises it, so callers can tell a missing device from a
hung bus.
"""

from __future__ import annotations


class DriverError(Exception):
    """Root of every error raised by envagent's drivers."""


class SensorError(DriverError, RuntimeError):
    """A sensor answered but its answer cannot be used (bad CRC, impossible value, bad frame)."""


class WrongChipError(SensorError, LookupError):
    """The device at the configured address is not the configured chip."""


class SensorTimeoutError(SensorError, TimeoutError):
    """A sensor did not finish within its deadline (a stuck status bit, a hung conversion)."""


class DriverConfigError(DriverError, ValueError):
    """A driver option has a value the chip cannot use."""
