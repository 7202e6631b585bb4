"""TI TCA9548A 8-channel I2C switch, and the :class:`~drivers.bus.Bus` each channel looks like.

The mux sits on a parent bus at 0x70-0x77 (0x70 + A2A1A0, datasheet 8.5.2) and has one register:
the control byte, bit n connecting downstream channel n (8.5.4); a write stores it, a read returns
it. :class:`MuxChannel` makes one channel look like a bus of its own: every transfer selects the
channel and then runs on the parent bus, both under the parent's lock, and that lock *is* the
channel's lock, so a driver holding it across trigger-wait-read keeps its channel selected.

Selecting costs a write, so what each mux holds is remembered per parent bus (in this process)
and the write is skipped when the mux already has the channel; any error forgets it, because a
failed transfer may have come with a bus reset or a glitch on the mux. Selecting a channel also
switches off any other mux on the same bus that may have a channel on, so identical chips behind
two muxes never answer together. Another process writing to the mux (an ``envagent scan`` while
the service runs, ``i2cset``) is not seen; stop the service first.

Datasheet: TI SCPS207 (TCA9548A), sections 8.5.2 and 8.5.4.
"""

from __future__ import annotations

import contextlib
import errno
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from drivers.bus import Bus

ADDRESSES = tuple(range(0x70, 0x78))  # 8.5.2: 1110 A2 A1 A0
CHANNELS = 8
ALL_OFF = 0x00  # the power-on value of the control register (8.5.4)
# Identification writes each of these and reads it back: a plain read-back register at 0x70-0x77.
# Alternating bits so a stuck bus (0x00 or 0xFF) cannot pass, and three values so a register-
# pointer chip (a BME280 at 0x76) would need three coincidences; the last one leaves all off.
IDENTIFY_MASKS = (0xA5, 0x5A, 0x00)

T = TypeVar("T")


class _Known:
    """What each mux on one parent bus is known to hold: address -> mask, None when unknown.

    Guarded by the parent bus's lock; holds no reference to the bus, so the registry below
    lets a closed bus go.
    """

    def __init__(self) -> None:
        self.masks: dict[int, int | None] = {}


_KNOWN: weakref.WeakKeyDictionary[Any, _Known] = weakref.WeakKeyDictionary()
_KNOWN_LOCK = threading.Lock()


def _known(bus: Bus) -> _Known:
    with _KNOWN_LOCK:
        known = _KNOWN.get(bus)
        if known is None:
            known = _KNOWN[bus] = _Known()
        return known


class TCA9548A:
    """One mux on a parent bus. Cheap to create: every instance for the same bus and address
    shares what is known about the mux."""

    def __init__(self, bus: Bus, address: int = ADDRESSES[0]) -> None:
        if address not in ADDRESSES:
            raise ValueError(f"a TCA9548A is at 0x70-0x77, not 0x{address:02x}")
        self.bus = bus
        self.address = address
        self._known = _known(bus)

    def select(self, mask: int) -> None:
        """Make ``mask`` the control register, unless the mux is known to hold it already."""
        with self.bus.lock:
            masks = self._known.masks
            if masks.get(self.address) == mask:
                return
            for other, held in list(masks.items()):
                if other != self.address and held != ALL_OFF:
                    self._switch_off(other)
            self._write_control(self.address, mask)

    def _switch_off(self, address: int) -> None:
        """Best effort: a dead neighbour must not take this mux's channels down with it."""
        with contextlib.suppress(OSError):  # stays unknown; tried again at the next selection
            self._write_control(address, ALL_OFF)

    def _write_control(self, address: int, mask: int) -> None:
        masks = self._known.masks
        masks[address] = None
        self.bus.write(address, bytes([mask]))
        masks[address] = mask

    def control(self) -> int:
        """The control register as the chip reports it (and, from now on, as known)."""
        with self.bus.lock:
            self.invalidate()
            mask = self.bus.read(self.address, 1)[0]
            self._known.masks[self.address] = mask
            return mask

    def invalidate(self) -> None:
        """Forget what the mux holds: the next selection writes it again."""
        with self.bus.lock:
            self._known.masks[self.address] = None

    def channel(self, channel: int) -> MuxChannel:
        return MuxChannel(self.bus, self.address, channel)


class MuxChannel:
    """Downstream channel ``channel`` of the mux at ``mux_address`` on ``bus``, as a Bus.

    ``number`` is the parent's (log lines name the mux and channel separately); ``close`` leaves
    the parent open, since the composition root owns it.
    """

    def __init__(self, bus: Bus, mux_address: int, channel: int) -> None:
        if not 0 <= channel < CHANNELS:
            raise ValueError(f"a TCA9548A has channels 0-{CHANNELS - 1}, not {channel}")
        self.parent = bus
        self.mux = TCA9548A(bus, mux_address)
        self.channel = channel
        self.number = bus.number
        self.lock = bus.lock
        self._mask = 1 << channel

    def __repr__(self) -> str:
        return f"MuxChannel(bus {self.number}, mux 0x{self.mux.address:02x}, {self.channel})"

    def describe(self, address: int) -> str:
        """Where ``address`` is on this channel, as log lines name it: ``1:0x70/2:0x44``."""
        return f"{self.number}:0x{self.mux.address:02x}/{self.channel}:0x{address:02x}"

    def _transfer(self, address: int, run: Callable[[], T]) -> T:
        if address == self.mux.address:
            raise OSError(
                errno.EINVAL, f"0x{address:02x} is the multiplexer itself, not a downstream device"
            )
        with self.lock:
            self.mux.select(self._mask)
            try:
                return run()
            except OSError:
                self.mux.invalidate()
                raise

    def write(self, address: int, data: bytes) -> None:
        self._transfer(address, lambda: self.parent.write(address, data))

    def read(self, address: int, length: int) -> bytes:
        return self._transfer(address, lambda: self.parent.read(address, length))

    def write_read(self, address: int, data: bytes, length: int) -> bytes:
        return self._transfer(address, lambda: self.parent.write_read(address, data, length))

    def close(self) -> None:
        """Nothing to release: the parent bus belongs to whoever opened it."""


def identify(bus: Bus, address: int) -> str | None:
    """``"tca9548a"`` if ``address`` holds a read-back control register; leaves it all off.

    Writes and reads back each of :data:`IDENTIFY_MASKS` (a register-pointer chip such as a
    BME280 at 0x76 takes them as pointers and reads back its registers instead), ending all-off.
    """
    if address not in ADDRESSES:
        return None
    masks = _known(bus).masks
    with bus.lock:
        masks.pop(address, None)  # not a known mux until proven
        for mask in IDENTIFY_MASKS:
            bus.write(address, bytes([mask]))
            if bus.read(address, 1)[0] != mask:
                return None
        masks[address] = ALL_OFF
    return "tca9548a"
