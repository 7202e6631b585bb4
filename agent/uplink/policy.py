"""The retry policy: what an attempt's answer means for its batch, how long to wait after a
failure (full-jitter backoff, a server's ``Retry-After``), and the hint people get."""

from __future__ import annotations

import email.utils
import enum
import random
import re
from datetime import UTC

from agent.uplink.sinks import Failure, Reply

MAX_BACKOFF_DOUBLINGS = 40  # 2**40 x backoff_min exceeds any cap; keeps the float finite
RETRY_AFTER_CAP_S = 1e9  # what any Retry-After counts as at most (callers cap it further)
# RFC 9110 10.2.3: delay-seconds = 1*DIGIT, and DIGIT is ASCII (str.isdigit() also takes "²").
DELAY_SECONDS = re.compile(r"[0-9]+", re.ASCII)


class Outcome(enum.Enum):
    IDLE = "idle"  # nothing to send
    DELIVERED = "delivered"
    RETRY = "retry"
    REJECTED = "rejected"  # 400/422: poison data somewhere in the batch
    TOO_LARGE = "too large"  # 413
    AUTH = "auth"  # 401/403 or no usable token
    FAILED = "failed"  # misconfiguration


def classify(reply: Reply) -> Outcome:
    """What an attempt's answer means for the batch."""
    status = reply.status
    if status is None:
        failed = reply.failure in (Failure.TLS_VERIFY, Failure.INVALID)
        return Outcome.FAILED if failed else Outcome.RETRY
    if 200 <= status < 300:
        return Outcome.DELIVERED
    if status in (400, 422):
        return Outcome.REJECTED
    if status == 413:
        return Outcome.TOO_LARGE
    if status in (401, 403):
        return Outcome.AUTH
    if status in (408, 429) or status >= 500:
        return Outcome.RETRY
    return Outcome.FAILED  # 1xx, 3xx, other 4xx


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """A ``Retry-After`` header as seconds from ``now`` (wall clock): delay-seconds or HTTP-date,
    at most ``RETRY_AFTER_CAP_S``; None for anything else, which RFC 9110 says to ignore. Never
    raises, whatever the server sent."""
    if value is None:
        return None
    value = value.strip()
    if DELAY_SECONDS.fullmatch(value):
        digits = value.lstrip("0") or "0"
        if len(digits) > len(str(int(RETRY_AFTER_CAP_S))):  # int() refuses 4,300+ digits
            return RETRY_AFTER_CAP_S
        return min(float(digits), RETRY_AFTER_CAP_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:  # an HTTP-date is always GMT
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    except (TypeError, ValueError, IndexError, OverflowError, OSError):  # not a date we can use
        return None
    return min(max(0.0, seconds), RETRY_AFTER_CAP_S)


def backoff_delay(failures: int, low: float, high: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(high, low x 2^(failures-1))]."""
    ceiling = min(high, low * 2.0 ** min(max(failures - 1, 0), MAX_BACKOFF_DOUBLINGS))
    return rng.uniform(0.0, ceiling)


_HINTS = {
    Failure.TLS_VERIFY: "the server's certificate is not trusted: set uplink.ca_file to the CA "
                        "that signed it (verification is never turned off)",
    Failure.INVALID: "check uplink.url, ca_file, client_cert and client_key",
}


def _hint(reply: Reply) -> str:
    if reply.failure is not None and reply.failure in _HINTS:
        return _HINTS[reply.failure]
    if reply.status is not None and 300 <= reply.status < 400:
        return "the server redirects writes, which are never followed: set uplink.url to the " \
               "final address"
    return "check uplink.url and the server"
