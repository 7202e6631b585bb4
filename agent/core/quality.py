"""A reading's quality flags named: in words for people (``envagent read``), as stable names for
machines (``read --json``'s ``flags``).

A value printed without its flags reads as good: a clipped ADC input showed ``12.80 %`` like any
other. The stored ``quality`` integer stays the record; these only name its bits, in bit order.
"""

from __future__ import annotations

from collections.abc import Mapping

from drivers.base import Quality

WORDS: Mapping[Quality, str] = {
    Quality.WARMUP: "warm-up",
    Quality.OUT_OF_RANGE: "out of range",
    Quality.STUCK: "stuck",
    Quality.SPIKE: "spike",
    Quality.CLOCK_UNSYNCED: "clock not synchronised",
    Quality.CLOCK_RESTAMPED: "re-stamped",
    Quality.CLIPPED: "clipped",
    Quality.MAINTENANCE: "maintenance",
}


def bits(quality: int) -> list[int]:
    """The set bits of ``quality``, lowest first."""
    return [1 << n for n in range(quality.bit_length()) if quality >> n & 1]


def names(quality: int) -> list[str]:
    """``["out_of_range", "clipped"]``: the flags' names in lower case; ``bit_N`` for a bit this
    agent does not know (a newer agent's outbox)."""
    return [str(Quality(bit).name).lower() if bit in WORDS else f"bit_{_number(bit)}"
            for bit in bits(quality)]


def words(quality: int) -> str:
    """``"out of range, clipped"``; empty for a good reading."""
    return ", ".join(WORDS[Quality(bit)] if bit in WORDS else f"bit {_number(bit)}"
                     for bit in bits(quality))


def _number(bit: int) -> int:
    return bit.bit_length() - 1
