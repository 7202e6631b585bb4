"""How long to wait after a failed send, for any transport: full-jitter exponential backoff, or
longer when the server asked for it (an :class:`~agent.uplink.sink.Answer`'s ``retry_after``,
already parsed by the transport), up to ``uplink.retry_after_max``. One copy, for the readings
(agent.uplink.worker) and the commissioning records (agent.uplink.metadata)."""

from __future__ import annotations

import random

from agent.config import UplinkConfig

MAX_BACKOFF_DOUBLINGS = 40  # 2**40 x backoff_min exceeds any cap; keeps the float finite


def backoff_delay(failures: int, low: float, high: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(high, low x 2^(failures-1))]."""
    ceiling = min(high, low * 2.0 ** min(max(failures - 1, 0), MAX_BACKOFF_DOUBLINGS))
    return rng.uniform(0.0, ceiling)


def retry_delay(failures: int, retry_after: float | None, settings: UplinkConfig,
                rng: random.Random) -> float:
    """The wait before the next try: the backoff, or the server's ``retry_after`` when longer,
    never beyond ``settings.retry_after_max``."""
    delay = backoff_delay(failures, settings.backoff_min, settings.backoff_max, rng)
    if retry_after is not None:
        delay = max(delay, min(retry_after, settings.retry_after_max))
    return delay
