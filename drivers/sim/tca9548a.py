"""A register-level model of the TI TCA9548A 8-channel I2C switch (datasheet SCPS207).

The model is the chip's one register plus its eight downstream segments: attached to a
:class:`~drivers.sim.simbus.SimBus` with ``attach_mux``, it answers at its own address like any
device, and the bus asks it which downstream devices are connected for every other address.
A downstream device is visible only while its channel's bit is set in the control register;
several enabled channels with a device at the same address is bus contention, which the bus
models as the wired-AND of their answers (open-drain SDA: any device pulling a bit low wins).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from drivers.bus import check_address
from drivers.sim.simbus import SimDevice

CHANNELS = 8
POWER_ON_CONTROL = 0x00  # 8.5.4: no channel selected after power-up or a RESET pulse


class TCA9548AModel:
    """The mux: a SimDevice at its own address, and a device map per downstream channel."""

    def __init__(self) -> None:
        self.control = POWER_ON_CONTROL
        self._channels: list[dict[int, SimDevice]] = [{} for _ in range(CHANNELS)]

    # --- wiring ---------------------------------------------------------------------------------

    def attach(self, channel: int, address: int, device: SimDevice) -> None:
        """Put ``device`` at ``address`` on downstream ``channel``."""
        check_address(address)
        devices = self._channels[self._check_channel(channel)]
        if address in devices:
            raise ValueError(f"mux channel {channel} already has a device at 0x{address:02x}")
        devices[address] = device

    def detach(self, channel: int, address: int) -> SimDevice:
        return self._channels[self._check_channel(channel)].pop(address)

    def devices(self, channel: int) -> Mapping[int, SimDevice]:
        """Address -> model on ``channel``, read-only."""
        return MappingProxyType(self._channels[self._check_channel(channel)])

    @staticmethod
    def _check_channel(channel: int) -> int:
        if not 0 <= channel < CHANNELS:
            raise ValueError(f"a TCA9548A has channels 0-{CHANNELS - 1}, not {channel}")
        return channel

    # --- the chip -------------------------------------------------------------------------------

    def reset(self) -> None:
        """A low pulse on RESET (or a power cycle): every channel off."""
        self.control = POWER_ON_CONTROL

    def connected(self, address: int) -> list[SimDevice]:
        """The downstream devices at ``address`` whose channels are selected now."""
        return [
            devices[address]
            for channel, devices in enumerate(self._channels)
            if self.control >> channel & 1 and address in devices
        ]

    # --- SimDevice ------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """8.5.4: the control register takes the byte written; of several, the last one."""
        if data:
            self.control = data[-1]

    def read(self, length: int) -> bytes:
        """The control register, repeated for a longer read."""
        return bytes([self.control]) * length
