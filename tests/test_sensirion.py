"""Sensirion framing and conversions against the data sheets' own examples.

Known values: the CRC check value of the SHT3x-DIS data sheet (table 20) and the worked examples
of the SCD4x data sheet v1.3 (read_measurement 3.5.2, set_ambient_pressure 3.6.5, forced
recalibration 3.7.1, ASC 3.7.2, serial number 3.9.2). Both CRC implementations -- the driver's and
the models' -- must agree with them and with each other.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

import pytest

from drivers import sensirion
from drivers.clock import SystemClock
from drivers.errors import SensorError, SensorTimeoutError
from drivers.sim import FakeClock, SimBus
from drivers.sim import sensirion as sim
from drivers.sim.sht import SHT4xModel

CRCS: list[Callable[[bytes], int]] = [sensirion.crc8, sim.crc8]

# (word, CRC) pairs printed in the data sheets.
DATASHEET_CRCS = [
    (0xBEEF, 0x92),  # SHT3x-DIS table 20, the check value
    (0x01F4, 0x33),  # SCD4x 3.5.2: 500 ppm
    (0x6667, 0xA2),  # SCD4x 3.5.2: 25 °C
    (0x5EB9, 0x3C),  # SCD4x 3.5.2: 37 %RH
    (0x03DB, 0x42),  # SCD4x 3.6.5: 98 700 Pa
    (0x01E0, 0xB4),  # SCD4x 3.7.1: 480 ppm
    (0x7FCE, 0x7B),  # SCD4x 3.7.1: FRC correction -50 ppm
    (0x0001, 0xB0),  # SCD4x 3.7.2: ASC enabled
    (0xF896, 0x31),  # SCD4x 3.9.2: serial number words
    (0x9F07, 0xC2),
    (0x3BBE, 0x89),
]


@pytest.mark.parametrize("crc8", CRCS, ids=["driver", "model"])
@pytest.mark.parametrize(("word", "expected"), DATASHEET_CRCS)
def test_crc_matches_the_data_sheets(
    crc8: Callable[[bytes], int], word: int, expected: int
) -> None:
    assert crc8(word.to_bytes(2, "big")) == expected


def test_driver_and_model_crcs_agree_on_every_word() -> None:
    for word in range(0x10000):
        raw = word.to_bytes(2, "big")
        assert sensirion.crc8(raw) == sim.crc8(raw), hex(word)


def test_the_read_measurement_example_of_the_scd4x_data_sheet() -> None:
    """SCD4x 3.5.2: 0x01f4 0x33 0x6667 0xa2 0x5eb9 0x3c -> 500 ppm, 25 °C, 37 %RH."""
    data = bytes.fromhex("01f433" "6667a2" "5eb93c")
    co2, t, rh = sensirion.parse_words(data, "scd4x at 1:0x62")
    assert co2 == 500
    assert sensirion.ticks_to_celsius(t) == pytest.approx(25.0, abs=0.01)
    assert sensirion.ticks_to_rh(rh) == pytest.approx(37.0, abs=0.01)
    assert sim.frame([500, t, rh]) == data


def test_the_ambient_pressure_example_of_the_scd4x_data_sheet() -> None:
    """SCD4x 3.6.5: 98 700 Pa is written as 0xe000 0x03db 0x42."""
    assert sensirion.command(0xE000) + sensirion.frame_words(98_700 // 100) == bytes.fromhex(
        "e00003db42"
    )
    assert sim.unframe(bytes.fromhex("03db42")) == [987]
    assert sim.unframe(bytes.fromhex("03db43")) is None  # the chip rejects a wrong CRC


def test_a_crc_mismatch_is_an_error_naming_the_chip_never_a_value() -> None:
    good = sensirion.frame_words(0x6667, 0x5EB9)
    assert sensirion.parse_words(good, "x") == [0x6667, 0x5EB9]
    for index in range(len(good)):
        for bit in range(8):
            damaged = bytearray(good)
            damaged[index] ^= 1 << bit
            with pytest.raises(SensorError, match="sht3x at 1:0x44: CRC mismatch"):
                sensirion.parse_words(bytes(damaged), "sht3x at 1:0x44")
    with pytest.raises(SensorError, match="whole number"):
        sensirion.parse_words(good[:4], "x")
    with pytest.raises(ValueError, match="16-bit"):
        sensirion.frame_words(0x10000)


def test_conversion_formulas_at_the_ends_of_the_scale() -> None:
    assert sensirion.ticks_to_celsius(0) == -45.0
    assert sensirion.ticks_to_celsius(0xFFFF) == 130.0
    assert sensirion.ticks_to_rh(0) == 0.0
    assert sensirion.ticks_to_rh(0xFFFF) == 100.0
    assert sensirion.sht4x_ticks_to_rh(0) == -6.0  # the SHT4x leaves the clamp to the host
    assert sensirion.sht4x_ticks_to_rh(0xFFFF) == 119.0


@pytest.mark.parametrize("celsius", [-45.0, -40.0, -12.34, 0.0, 21.7, 85.0, 125.0, 130.0])
def test_model_ticks_come_back_within_half_a_tick(celsius: float) -> None:
    half_tick = 175.0 / 0xFFFF / 2
    assert sensirion.ticks_to_celsius(sim.celsius_ticks(celsius)) == pytest.approx(
        celsius, abs=half_tick
    )
    assert sim.celsius_ticks(-60.0) == 0 and sim.celsius_ticks(200.0) == 0xFFFF  # the ADC clips


def measure(bus: SimBus, clock: FakeClock, duration: float, where: str = "x") -> list[int]:
    """A high-precision SHT4x conversion: start, then fetch (its driver's trigger and collect)."""
    sent = sensirion.start(bus, 0x44, b"\xfd", clock=clock)
    return sensirion.fetch(bus, 0x44, 2, clock=clock, sent=sent, duration=duration, where=where)


def test_fetch_polls_while_the_chip_nacks_then_gives_up_at_its_deadline() -> None:
    clock = FakeClock()
    bus = SimBus(1, clock=clock)
    model = SHT4xModel(clock=clock, temperature=31.0)
    bus.attach(0x44, model)
    clock.advance(0.01)
    started = clock.monotonic()
    # a duration shorter than the chip's 6.9 ms: reads are NACKed
    words = measure(bus, clock, 0.002, "sht4x at 1:0x44")
    assert sensirion.ticks_to_celsius(words[0]) == pytest.approx(31.0, abs=0.003)
    assert clock.monotonic() - started == pytest.approx(0.0069, abs=0.0011)
    nacked = [t for t in bus.transactions(0x44) if t.kind == "read" and t.errno]
    assert len(nacked) >= 4 and all(t.errno == errno.EREMOTEIO for t in nacked)

    model.stuck_measuring = True
    started = clock.monotonic()
    with pytest.raises(SensorTimeoutError, match="sht4x at 1:0x44: no result"):
        measure(bus, clock, 0.0083, "sht4x at 1:0x44")
    assert clock.monotonic() - started <= 0.0083 + sensirion.DEADLINE_MARGIN_S + 0.002


class _HeldLock:
    """A bus lock that another sensor's exchange holds for ``seconds`` whenever it is taken
    afresh (not when re-entered by the holder, as the bus's own transfers do)."""

    def __init__(self, clock: FakeClock, seconds: float) -> None:
        self._clock, self._seconds, self._depth = clock, seconds, 0

    def __enter__(self) -> None:
        if not self._depth:
            self._clock.advance(self._seconds)
        self._depth += 1

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1


def test_a_long_wait_for_the_bus_lock_uses_up_no_deadline() -> None:
    # Under load a sensor can wait longer than the margin for another sensor's exchange; the
    # conversion only starts with the write (CI saw "no result (NACK) 0.116 s after ...").
    clock = FakeClock()
    bus = SimBus(1, clock=clock)
    bus.attach(0x44, SHT4xModel(clock=clock, temperature=12.0))
    bus.lock = _HeldLock(clock, sensirion.DEADLINE_MARGIN_S * 2)  # type: ignore[assignment]
    words = measure(bus, clock, 0.0083)
    assert sensirion.ticks_to_celsius(words[0]) == pytest.approx(12.0, abs=0.003)


def test_fetch_does_not_retry_errors_other_than_a_nack() -> None:
    clock = FakeClock()
    bus = SimBus(1, clock=clock)
    bus.attach(0x44, SHT4xModel(clock=clock))
    sent = sensirion.start(bus, 0x44, b"\xfd", clock=clock)
    bus.close()
    with pytest.raises(OSError) as raised:
        sensirion.fetch(bus, 0x44, 2, clock=clock, sent=sent, duration=0.0083, where="x")
    assert raised.value.errno == errno.EBADF


def test_scan_clock_prefers_the_given_then_the_buses_own_clock() -> None:
    clock, other = FakeClock(), FakeClock()
    bus = SimBus(1, clock=clock)
    assert sensirion.scan_clock(bus, other) is other
    assert sensirion.scan_clock(bus, None) is clock

    class Bare:  # a Bus without a clock, like SMBus2Bus
        pass

    assert isinstance(sensirion.scan_clock(Bare(), None), SystemClock)  # type: ignore[arg-type]
