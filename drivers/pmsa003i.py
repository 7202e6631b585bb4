"""Plantower PMSA003I particulate matter sensor: PM1, PM2.5 and PM10 from one 32-byte frame.

The sensor measures continuously with its own fan; the host reads the latest frame: start bytes
0x42 0x4D, a frame length of 28 (2 x 13 data words + 2 checksum bytes), thirteen big-endian
words -- PM1.0/PM2.5/PM10 "CF=1, standard particle", the same "under atmospheric environment",
six particle counts per 0.1 L, version and error code bytes -- and a 16-bit checksum, the sum of
bytes 0..29. A frame that fails any of these is a failed read, never a value. Reported are the
atmospheric-environment concentrations (the datasheet reserves CF=1 for factory use). A sample
is one plain 32-byte read, as Adafruit's drivers do: the frame starts at register 0x00, where the
register pointer returns after each frame.

The datasheet asks for data no earlier than 30 s after the fan started; readings taken within
30 s of ``setup`` are flagged WARMUP (the agent cannot know when the sensor powered up, so setup
is the conservative stand-in).

Numbers: Plantower "PMSA003I series data manual" V2.6, appendix I (transport protocol) and the
performance table (effective range 0-500 µg/m³ for PM2.5).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, ClassVar

from drivers.base import Driver, Measurement, Quality
from drivers.bus import Bus
from drivers.errors import SensorError, WrongChipError

ADDRESS = 0x12
FRAME_BYTES = 32
START = b"\x42\x4d"
FRAME_LENGTH = 2 * 13 + 2  # the length field counts the data words and the checksum
_CHECKSUM_AT = FRAME_BYTES - 2
_LAYOUT = struct.Struct(">2sH6H6HBBH")  # start, length, 6 PM words, 6 counts, ver, err, sum
WARMUP_S = 30.0  # "stable data should be got at least 30 seconds after the sensor wakeup"
EFFECTIVE_RANGE_UG_M3 = 500.0  # PM2.5 effective range; above it values are flagged
UNIT = "µg/m³"
PARTICLE_SIZES_UM = (0.3, 0.5, 1.0, 2.5, 5.0, 10.0)


class FrameError(ValueError):
    """A frame that cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame; concentrations in µg/m³, counts per 0.1 L above each size."""

    pm1_standard: int
    pm2_5_standard: int
    pm10_standard: int
    pm1: int  # atmospheric environment
    pm2_5: int
    pm10: int
    counts: tuple[int, ...]  # six counts: > 0.3, 0.5, 1.0, 2.5, 5.0, 10 µm
    version: int
    error: int


def checksum(data: bytes) -> int:
    """Sum of bytes 0..29 as a 16-bit number, as stored in bytes 30-31."""
    return sum(data[:_CHECKSUM_AT]) & 0xFFFF


def decode_frame(data: bytes) -> Frame:
    """The frame in ``data``; raise :class:`FrameError` unless start, length and checksum hold."""
    if len(data) != FRAME_BYTES:
        raise FrameError(f"expected {FRAME_BYTES} bytes, got {len(data)}")
    if not any(data):
        raise FrameError("the frame is all zeros: the sensor has no data yet (still starting?)")
    start, length, *words, version, error, stored = _LAYOUT.unpack(data)
    if start != START:
        raise FrameError(f"bad start bytes {start.hex()} (expected 424d)")
    if length != FRAME_LENGTH:
        raise FrameError(f"frame length {length} (expected {FRAME_LENGTH})")
    computed = checksum(data)
    if computed != stored:
        raise FrameError(f"checksum 0x{stored:04x} does not match the data's 0x{computed:04x}")
    std1, std2_5, std10, pm1, pm2_5, pm10, *counts = words
    return Frame(std1, std2_5, std10, pm1, pm2_5, pm10, tuple(counts), version, error)


def encode_frame(frame: Frame, *, checksum_offset: int = 0) -> bytes:
    """The 32 bytes of ``frame``; ``checksum_offset`` corrupts the checksum (for fault tests)."""
    body = _LAYOUT.pack(
        START, FRAME_LENGTH,
        frame.pm1_standard, frame.pm2_5_standard, frame.pm10_standard,
        frame.pm1, frame.pm2_5, frame.pm10, *frame.counts,
        frame.version, frame.error, 0,
    )
    return body[:_CHECKSUM_AT] + ((checksum(body) + checksum_offset) & 0xFFFF).to_bytes(2, "big")


def identify(bus: Bus, address: int) -> str | None:
    """"pmsa003i" when the registers hold a Plantower frame (start bytes and length field)."""
    if address != ADDRESS:
        return None
    data = bus.read(address, FRAME_BYTES)
    if data[:2] == START and int.from_bytes(data[2:4], "big") == FRAME_LENGTH:
        return "pmsa003i"
    return None


class PMSA003I(Driver):
    name: ClassVar[str] = "pmsa003i"
    addresses: ClassVar[tuple[int, ...]] = (ADDRESS,)  # fixed
    quantities: ClassVar[dict[str, str]] = {"pm1": UNIT, "pm2_5": UNIT, "pm10": UNIT}

    def __init__(self, bus: Bus, address: int, **kwargs: Any) -> None:
        super().__init__(bus, address, **kwargs)
        self._set_up_at: float | None = None

    def setup(self) -> None:
        data = self._frame_bytes()
        if not any(data):
            raise SensorError(
                f"pmsa003i at {self.where}: no data yet (all zeros); the sensor is still "
                "starting -- it will be probed again"
            )
        if data[:2] != START:
            raise WrongChipError(
                f"pmsa003i at {self.where}: no Plantower frame (starts {data[:4].hex()}, "
                "expected 424d001c); is the address right? Run 'envagent scan'"
            )
        self._set_up_at = self.clock.monotonic()

    def trigger(self) -> float:
        """Nothing to start: the sensor measures continuously; its newest frame is there now."""
        if self._set_up_at is None:
            raise SensorError(f"pmsa003i at {self.where}: read() before setup()")
        return self.clock.monotonic()

    def collect(self) -> list[Measurement]:
        if self._set_up_at is None:
            raise SensorError(f"pmsa003i at {self.where}: read() before setup()")
        data = self._frame_bytes()
        try:
            frame = decode_frame(data)
        except FrameError as exc:
            raise SensorError(f"pmsa003i at {self.where}: {exc}") from None
        if frame.error:
            raise SensorError(
                f"pmsa003i at {self.where}: the sensor reports error code 0x{frame.error:02x}"
            )
        warming = self.clock.monotonic() - self._set_up_at < WARMUP_S
        base = Quality.WARMUP if warming else Quality.GOOD
        return [
            Measurement(quantity, float(value), UNIT, _quality(base, value))
            for quantity, value in (("pm1", frame.pm1), ("pm2_5", frame.pm2_5),
                                    ("pm10", frame.pm10))
        ]

    def _frame_bytes(self) -> bytes:
        return self.bus.read(self.address, FRAME_BYTES)


def _quality(base: Quality, value: int) -> Quality:
    return base | Quality.OUT_OF_RANGE if value > EFFECTIVE_RANGE_UG_M3 else base
