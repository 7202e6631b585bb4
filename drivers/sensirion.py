"""Sensirion's I2C framing, shared by the SHT3x, SHT4x and SCD4x drivers.

Every Sensirion chip here talks in commands (one or two bytes) and 16-bit big-endian words, each
word followed by a CRC-8 over its two bytes. A word whose CRC does not match is never a value: the
read fails. The conversions are the data sheets' formulas from raw "ticks" to engineering units.

CRC-8 parameters, identical in all three data sheets (SHT3x-DIS v5 table 20; the checksum
sections of the SHT4x and SCD4x data sheets): polynomial 0x31 (x^8 + x^5 + x^4 + 1), init 0xFF,
no reflection, final XOR 0x00; check value CRC(0xBE 0xEF) = 0x92.
"""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable

from drivers.base import Quality
from drivers.bus import Bus
from drivers.clock import Clock, SystemClock
from drivers.errors import SensorError, SensorTimeoutError

CRC8_POLYNOMIAL = 0x31
CRC8_INIT = 0xFF
_BYTE_MASK = 0xFF
_TOP_BIT = 0x80

WORD_BYTES = 2
FRAME_BYTES = WORD_BYTES + 1  # a word and its CRC
WORD_MAX = 0xFFFF  # 2^16 - 1: the denominator of every Sensirion conversion formula

# SHT3x-DIS 4.13, SHT4x "conversion of signal output", SCD4x 3.5.2: T = -45 + 175 * S / (2^16 - 1).
T_OFFSET_C = -45.0
T_SPAN_C = 175.0
# RH = 100 * S / (2^16 - 1) on SHT3x and SCD4x; SHT4x: RH = -6 + 125 * S / (2^16 - 1), which the
# data sheet tells the host to clamp to 0..100 %RH.
RH_SPAN = 100.0
SHT4X_RH_OFFSET = -6.0
SHT4X_RH_SPAN = 125.0
RH_MIN = 0.0
RH_MAX = 100.0

# The read-only commands that tell the two humidity families apart (each driver's identify, and
# its "found the other chip" explanation): SHT3x-DIS table 9 status register; SHT4x serial number.
SHT3X_ADDRESSES = (0x44, 0x45)  # ADDR pin low / high
SHT3X_READ_STATUS = 0xF32D
SHT3X_COMMAND_S = 0.001  # the 1 ms pause table 9 asks for between a command and the next transfer
# Fixed by the part number (datasheet, ordering): SHT4x-AD1B 0x44, -BD1B 0x45, -CD1B 0x46.
SHT4X_ADDRESSES = (0x44, 0x45, 0x46)
SHT4X_READ_SERIAL = 0x89
# Not in the SHT4x timing table; Sensirion's and Adafruit's drivers wait 10 ms before reading it.
SHT4X_SERIAL_S = 0.01

POLL_INTERVAL_S = 0.001  # between reads the chip NACKed because it is still converting
DEADLINE_MARGIN_S = 0.1  # beyond the data sheet's maximum before a conversion counts as hung


def crc8(data: bytes) -> int:
    """The Sensirion CRC-8 of ``data`` (bitwise: small, and fast enough for a few bytes)."""
    crc = CRC8_INIT
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ CRC8_POLYNOMIAL) if crc & _TOP_BIT else crc << 1
            crc &= _BYTE_MASK
    return crc


def command(code: int, *, length: int = WORD_BYTES) -> bytes:
    """A command code as sent on the wire (big-endian, ``length`` bytes)."""
    return code.to_bytes(length, "big")


def frame_words(*words: int) -> bytes:
    """Words as the chip expects arguments: each big-endian and followed by its CRC."""
    out = bytearray()
    for word in words:
        if not 0 <= word <= WORD_MAX:
            raise ValueError(f"0x{word:x} does not fit a 16-bit word")
        raw = word.to_bytes(WORD_BYTES, "big")
        out += raw + bytes([crc8(raw)])
    return bytes(out)


def parse_words(data: bytes, where: str) -> list[int]:
    """The words of a read, each checked against its CRC.

    ``where`` names the chip in the error (``sht3x at 1:0x44``). A mismatch raises
    :class:`SensorError` and no value at all comes back: a flipped bit must not become a reading.
    """
    if len(data) % FRAME_BYTES:
        raise SensorError(
            f"{where}: {len(data)} bytes is not a whole number of word+CRC frames"
        )
    words = []
    for index in range(0, len(data), FRAME_BYTES):
        raw, received = data[index : index + WORD_BYTES], data[index + WORD_BYTES]
        expected = crc8(raw)
        if received != expected:
            raise SensorError(
                f"{where}: CRC mismatch in word {index // FRAME_BYTES} (data 0x{raw.hex()}, "
                f"CRC 0x{received:02x}, expected 0x{expected:02x}); noise on the bus? "
                "Check cable length and pull-ups"
            )
        words.append(int.from_bytes(raw, "big"))
    return words


def ticks_to_celsius(ticks: int) -> float:
    return T_OFFSET_C + T_SPAN_C * ticks / WORD_MAX


def ticks_to_rh(ticks: int) -> float:
    """SHT3x and SCD4x relative humidity, %RH."""
    return RH_SPAN * ticks / WORD_MAX


def sht4x_ticks_to_rh(ticks: int) -> float:
    """SHT4x relative humidity before the data sheet's clamp: it spans -6 .. 119 %RH."""
    return SHT4X_RH_OFFSET + SHT4X_RH_SPAN * ticks / WORD_MAX


def temperature_quality(celsius: float, low: float, high: float) -> Quality:
    """OUT_OF_RANGE outside a chip's specified range; a value one tick past a limit is the
    limit itself, rounded by the ADC, and stays good."""
    tick = T_SPAN_C / WORD_MAX
    return Quality.GOOD if low - tick <= celsius <= high + tick else Quality.OUT_OF_RANGE


def read_words(
    bus: Bus, address: int, request: bytes, words: int, *, clock: Clock, wait: float, where: str
) -> list[int]:
    """Send a command, wait its execution time, read ``words`` words and check their CRCs.

    Holds the bus lock for the whole exchange. A NACK (the chip still busy) is the kernel's
    ``OSError`` and propagates unchanged.
    """
    with bus.lock:
        bus.write(address, request)
        clock.sleep(wait)
        data = bus.read(address, words * FRAME_BYTES)
    return parse_words(data, where)


def start(bus: Bus, address: int, request: bytes, *, clock: Clock) -> float:
    """Send a measurement command; the monotonic time it was sent, which :func:`fetch`'s times
    count from: waiting for the bus lock while another sensor's exchange runs uses up no
    deadline."""
    with bus.lock:
        bus.write(address, request)
        return clock.monotonic()


def fetch(bus: Bus, address: int, words: int, *, clock: Clock, sent: float, duration: float,
          where: str) -> list[int]:
    """The ``words`` of the conversion :func:`start` began at ``sent``: first read at
    ``sent + duration`` (sleeping until then if called earlier), retried while the chip NACKs
    until :data:`DEADLINE_MARGIN_S` later, then :class:`SensorTimeoutError`. The bus lock is held
    for each read only: the conversion itself needs nothing of the bus."""
    ready = sent + duration
    delay = ready - clock.monotonic()
    if delay > 0:
        clock.sleep(delay)
    while True:
        try:
            with bus.lock:
                data = bus.read(address, words * FRAME_BYTES)
            return parse_words(data, where)
        except OSError as exc:
            if exc.errno != errno.EREMOTEIO:
                raise
            if clock.monotonic() >= ready + DEADLINE_MARGIN_S:
                raise SensorTimeoutError(
                    f"{where}: no result (NACK) {clock.monotonic() - sent:.3f} s after "
                    "a measurement command; check the sensor's power and wiring"
                ) from exc
        clock.sleep(POLL_INTERVAL_S)


def identify_by(probe: Callable[[Bus, int, Clock, str], object], name: str,
                addresses: tuple[int, ...], bus: Bus, address: int,
                clock: Clock | None) -> str | None:
    """``name`` when ``probe`` (a read-only command) gets a CRC-checked answer at ``address``.

    A chip that refuses the command (NACK) or answers with a bad CRC is another chip.
    """
    if address not in addresses:
        return None
    try:
        probe(bus, address, scan_clock(bus, clock), f"{name}? at 0x{address:02x}")
    except SensorError:
        return None
    except OSError as exc:
        if exc.errno == errno.EREMOTEIO:
            return None  # the command or its answer was refused: another chip
        raise
    return name


def read_sht3x_status(bus: Bus, address: int, clock: Clock, where: str) -> int:
    """The SHT3x status register; any answer with a good CRC comes from an SHT3x."""
    words = read_words(bus, address, command(SHT3X_READ_STATUS), 1, clock=clock,
                       wait=SHT3X_COMMAND_S, where=where)
    return words[0]


def read_sht4x_serial(bus: Bus, address: int, clock: Clock, where: str) -> int:
    """The SHT4x's 32-bit serial number; any answer with two good CRCs comes from an SHT4x."""
    high, low = read_words(bus, address, bytes([SHT4X_READ_SERIAL]), 2, clock=clock,
                           wait=SHT4X_SERIAL_S, where=where)
    return high << 16 | low


def identify_sht3x(bus: Bus, address: int, clock: Clock | None = None) -> str | None:
    """``"sht3x"`` when the chip at ``address`` answers the SHT3x status command with a good CRC.

    Safe on any chip: it only reads. An SHT4x does not know the command and NACKs it; an answer
    with a bad CRC is not an SHT3x.
    """
    return identify_by(read_sht3x_status, "sht3x", SHT3X_ADDRESSES, bus, address, clock)


def identify_sht4x(bus: Bus, address: int, clock: Clock | None = None) -> str | None:
    """``"sht4x"`` when the chip at ``address`` answers the serial-number command with good CRCs.

    Safe on any chip: an SHT3x takes the lone byte as an incomplete command, flags it in its status
    register and has nothing to read (it NACKs, which ``envagent scan`` takes as "not this chip").
    """
    return identify_by(read_sht4x_serial, "sht4x", SHT4X_ADDRESSES, bus, address, clock)


def scan_clock(bus: Bus, clock: Clock | None) -> Clock:
    """The clock an identifier waits on: the given one, the bus's own (a SimBus carries the
    simulated world's clock), or the system clock for real hardware.

    `envagent scan` calls identifiers as ``identify(bus, address)`` without a clock, yet Sensirion
    chips need a millisecond or more between a command and its answer.
    """
    if clock is not None:
        return clock
    own = getattr(bus, "clock", None)
    return own if own is not None else _system_clock()


@functools.cache
def _system_clock() -> Clock:
    return SystemClock()
