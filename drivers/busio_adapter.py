"""A ``busio.I2C`` look-alike over any :class:`~drivers.bus.Bus`.

Adafruit's CircuitPython drivers (through ``adafruit_bus_device.I2CDevice``) only call
``try_lock``, ``unlock``, ``writeto``, ``readfrom_into``, ``writeto_then_readfrom`` and ``scan``;
giving them this object lets the unmodified drivers run over our bus, real or simulated, sharing
its lock and its errno-preserving errors.
"""

from __future__ import annotations

from typing import Any

from drivers.bus import FIRST_ADDRESS, LAST_ADDRESS, Bus

# How long try_lock blocks before answering False: adafruit_bus_device spins on try_lock with
# time.sleep(0), so blocking briefly here keeps a contended lock from burning a core.
_LOCK_WAIT_S = 0.05


class BusioI2C:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    def try_lock(self) -> bool:
        return self.bus.lock.acquire(timeout=_LOCK_WAIT_S)

    def unlock(self) -> None:
        self.bus.lock.release()

    def scan(self) -> list[int]:
        from drivers.scan import probe  # local: scan imports chip identification

        return [a for a in range(FIRST_ADDRESS, LAST_ADDRESS + 1) if probe(self.bus, a)]

    def writeto(self, address: int, buffer: Any, *, start: int = 0, end: int | None = None) -> None:
        self.bus.write(address, bytes(buffer[start:end]))

    def readfrom_into(
        self, address: int, buffer: Any, *, start: int = 0, end: int | None = None
    ) -> None:
        end = len(buffer) if end is None else end
        buffer[start:end] = self.bus.read(address, end - start)

    def writeto_then_readfrom(
        self,
        address: int,
        buffer_out: Any,
        buffer_in: Any,
        *,
        out_start: int = 0,
        out_end: int | None = None,
        in_start: int = 0,
        in_end: int | None = None,
    ) -> None:
        in_end = len(buffer_in) if in_end is None else in_end
        data = self.bus.write_read(
            address, bytes(buffer_out[out_start:out_end]), in_end - in_start
        )
        buffer_in[in_start:in_end] = data

    def deinit(self) -> None:
        """busio API; the bus itself belongs to whoever opened it."""

    def __enter__(self) -> BusioI2C:
        return self

    def __exit__(self, *exc: object) -> None:
        self.deinit()
