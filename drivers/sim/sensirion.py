"""What the Sensirion chip models share: the CRC, word framing, and a command state machine that
NACKs while the chip is busy.

Sensirion's I2C chips (SHT3x, SHT4x, SCD4x) are not register files: the master writes a command,
the chip executes it for a documented time during which it does not acknowledge its address, and
a following read returns words, each followed by a CRC-8. A read with nothing to answer is NACKed
too (SHT3x-DIS 4.4-4.6, SHT4x "communication", SCD4x 3.3 and 3.5.2). :class:`CommandChip` keeps
that machinery; the chip models add their command tables.

The CRC here is table-driven and written independently of ``drivers/sensirion.py``, so a mistake in
one cannot cancel out in the other; both are tested against the data sheets' check values.

Fault modes, on every model: :meth:`CommandChip.corrupt` flips a bit in a data word of the next
answers (the CRC is left as computed, so it no longer matches), :meth:`CommandChip.hold_busy`
makes the chip NACK every transfer for a while, and ``stuck_measuring`` keeps a started
measurement from ever ending (the chip NACKs until a test clears it).
"""

from __future__ import annotations

import errno
import math
import os
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from drivers.clock import Clock, SystemClock
from drivers.sim.environment import Conditions, Source

CRC8_POLYNOMIAL = 0x31  # x^8 + x^5 + x^4 + 1, init 0xFF, no reflection, no final XOR
CRC8_INIT = 0xFF
WORD_MAX = 0xFFFF
IDLE_BYTE = 0xFF  # what the master clocks in after the chip has stopped driving SDA

# T = -45 + 175 * S / (2^16 - 1) on all three chips; RH = 100 * S / (2^16 - 1) on SHT3x and SCD4x.
T_OFFSET_C = -45.0
T_SPAN_C = 175.0
RH_SPAN = 100.0

STANDARD_PRESSURE_HPA = 1013.25  # what a model sees when neither a test nor a source sets it
# Physical inputs: changing one first lets the chip finish what ended before the change.
_INPUTS = frozenset({"temperature", "humidity", "co2", "pressure", "source"})


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = ((crc << 1) ^ CRC8_POLYNOMIAL) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc8(data: bytes) -> int:
    crc = CRC8_INIT
    for byte in data:
        crc = _CRC_TABLE[crc ^ byte]
    return crc


def frame(words: Sequence[int]) -> bytes:
    """Words as the chip sends them: big-endian, each followed by its CRC."""
    out = bytearray()
    for word in words:
        raw = bytes([(word >> 8) & 0xFF, word & 0xFF])
        out += raw + bytes([crc8(raw)])
    return bytes(out)


def unframe(data: bytes) -> list[int] | None:
    """The argument words of a write, or None when a CRC is wrong (the chip rejects the write)."""
    if len(data) % 3:
        return None
    words = []
    for i in range(0, len(data), 3):
        if crc8(data[i : i + 2]) != data[i + 2]:
            return None
        words.append(data[i] << 8 | data[i + 1])
    return words


def to_ticks(value: float, offset: float, span: float) -> int:
    """Invert ``value = offset + span * S / 65535``; the ADC clips at both ends of its range."""
    ticks = round((value - offset) * WORD_MAX / span)
    return min(max(ticks, 0), WORD_MAX)


def celsius_ticks(temperature: float) -> int:
    return to_ticks(temperature, T_OFFSET_C, T_SPAN_C)


def nack() -> OSError:
    """What the kernel reports when the chip does not acknowledge (i2c-bcm2835: EREMOTEIO)."""
    return OSError(errno.EREMOTEIO, os.strerror(errno.EREMOTEIO))


@dataclass
class _Corruption:
    remaining: int | None
    word: int
    bit: int
    skip: int


class CommandChip:
    """A Sensirion command-protocol chip behind one address; a :class:`SimDevice`.

    Subclasses implement :meth:`execute` and call :meth:`respond` and :meth:`busy` from it.
    Physical inputs: ``temperature`` (°C) and ``humidity`` (%RH), or a ``source`` mapping wall
    time to :class:`Conditions`, which wins while set.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        source: Source | None = None,
        temperature: float = 20.0,
        humidity: float = 50.0,
    ) -> None:
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.source = source
        self.temperature = temperature
        self.humidity = humidity
        self.commands: list[int] = []  # accepted, in order; the newest (simbus.remember)
        self.stuck_measuring = False
        self._lock = threading.RLock()
        self._busy_until = -math.inf
        self._held_until = -math.inf
        self._measurement_ends: float | None = None
        self._stretching = False  # the running measurement answers a read by stretching SCL
        self._response: bytes | None = None
        self._response_at = -math.inf
        self._corruptions: deque[_Corruption] = deque()

    def __setattr__(self, name: str, value: object) -> None:
        """A new physical input only shows in measurements that end after it is set."""
        if name in _INPUTS and "_lock" in self.__dict__:
            with self._lock:
                self.advance(self.clock.monotonic())
                super().__setattr__(name, value)
            return
        super().__setattr__(name, value)

    # --- faults ---------------------------------------------------------------------------------

    def corrupt(
        self, count: int | None = 1, *, word: int = 0, bit: int = 0, skip: int = 0
    ) -> None:
        """Flip ``bit`` (0-15) of data word ``word`` in the next ``count`` answers that have such
        a word (None: all of them), after leaving the next ``skip`` answers intact."""
        with self._lock:
            self._corruptions.append(_Corruption(count, word, bit, skip))

    def hold_busy(self, seconds: float) -> None:
        """NACK every transfer for ``seconds`` from now, as during a long internal operation."""
        with self._lock:
            self._held_until = self.clock.monotonic() + seconds

    def clear_faults(self) -> None:
        with self._lock:
            self._corruptions.clear()
            self._held_until = -math.inf
            self.stuck_measuring = False

    # --- SimDevice ------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        with self._lock:
            now = self._now()
            if self._is_busy(now):
                raise nack()
            self.execute(bytes(data), now)

    def read(self, length: int) -> bytes:
        with self._lock:
            now = self._now()
            ends = self._measurement_ends
            if self._stretching and ends is not None and now >= self._held_until:
                # A clock-stretching command (SHT3x-DIS 4.3, table 9): the read header is
                # acknowledged and SCL held low until the measurement is complete.
                if self.stuck_measuring:
                    raise OSError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT))  # adapter gives up
                self.clock.sleep(ends - now)
                now = self._now()
            if self._is_busy(now) or self._response is None or now < self._response_at:
                raise nack()  # nothing to send: the read header is not acknowledged
            answer, self._response = self._damage(self._response), None
            return (answer + bytes([IDLE_BYTE]) * length)[:length]

    # --- for subclasses -------------------------------------------------------------------------

    def execute(self, data: bytes, now: float) -> None:
        """Run one write message; raise :func:`nack` to reject it."""
        raise NotImplementedError

    def advance(self, now: float) -> None:
        """Bring time-driven state up to ``now`` (periodic measurements); nothing by default."""

    def busy(self, now: float, seconds: float) -> None:
        """The chip executes for ``seconds``: it NACKs every transfer until then."""
        self._busy_until = max(self._busy_until, now + seconds)

    def measure(
        self, now: float, seconds: float, words: Sequence[int], *, stretch: bool = False
    ) -> None:
        """A conversion of ``seconds`` whose result is ``words`` (unless the chip is stuck).

        ``stretch``: a read during the conversion is acknowledged and waits (SCL held low)
        instead of being NACKed."""
        self._measurement_ends = now + seconds
        self._stretching = stretch
        self.respond(words, now, seconds)

    def respond(self, words: Sequence[int], now: float, delay: float = 0.0) -> None:
        """Have ``words`` ready to read ``delay`` seconds from now; replaces an unread answer."""
        self._response = frame(words)
        self._response_at = now + delay

    def discard_response(self) -> None:
        self._response = None

    def conditions(self, now: float) -> Conditions:
        """What the sensor sees at monotonic time ``now``."""
        if self.source is not None:
            return self.source(self.clock.time() - (self.clock.monotonic() - now))
        return Conditions(
            temperature=self.temperature, humidity=self.humidity, pressure=STANDARD_PRESSURE_HPA
        )

    # --- internals ------------------------------------------------------------------------------

    def _now(self) -> float:
        now = self.clock.monotonic()
        ends = self._measurement_ends
        if ends is not None and now >= ends and not self.stuck_measuring:
            self._measurement_ends = None  # finished: a later stuck fault needs a new one
            self._stretching = False
        self.advance(now)
        return now

    def _is_busy(self, now: float) -> bool:
        measuring = self._measurement_ends is not None and (
            self.stuck_measuring or now < self._measurement_ends
        )
        return measuring or now < self._busy_until or now < self._held_until

    def _damage(self, answer: bytes) -> bytes:
        while self._corruptions and self._corruptions[0].remaining == 0:
            self._corruptions.popleft()
        if not self._corruptions:
            return answer
        fault = self._corruptions[0]
        if fault.skip:
            fault.skip -= 1
            return answer
        index = 3 * fault.word + (0 if fault.bit >= 8 else 1)  # msb, then lsb
        if index >= len(answer):
            return answer  # a shorter answer: not one this fault is for
        if fault.remaining is not None:
            fault.remaining -= 1
        damaged = bytearray(answer)
        damaged[index] ^= 1 << (fault.bit % 8)
        return bytes(damaged)
