"""The Sink protocol: what one transport (HTTP, HJ 212 over TCP, MQTT) does for the delivery
worker, and the record that puts a transport in the registry (agent.uplink.transports).

Why a protocol this small: the worker (agent.uplink.worker) owns everything that is the same for
every upstream -- batches, the outbox's acks, backoff with full jitter, bisecting out poison
readings, the clock hold, the clean stop, the state file -- and a transport owns only its wire.
So a transport answers each send with an :class:`Answer` in the worker's words, never with its
own (an HTTP status, an HJ 212 ``ExeRtn``, an MQTT reason code), and adding one is one module
plus one line in the registry.

What a transport promises:

- ``encode(readings)``: the body of a batch -- its encoder's bytes (the format: line protocol,
  the JSON batch, an HJ 212 packet) and its own framing. The same readings give the same bytes,
  so a retried batch is byte-identical.
- ``send(body, token)``: one attempt, answered with an outcome. A network fault is an outcome
  (``retry``), never an exception; a stop that cut the attempt short is ``stopped``. A transport
  that acknowledges per packet may say how many leading readings of the batch it accepted
  (``accepted``): the worker acknowledges those and keeps the rest.
- ``idle(token)``: nothing to send now (the worker is caught up, or all it has waits for the
  clock); a transport that keeps a connection open (HJ 212) opens it, so the server can reach
  the unit. Never raises; most transports do nothing.
- ``where``: the upstream's name and host for log lines, never a token or a credential.
- ``refuse()`` lets the send in flight finish and refuses new ones (a clean stop begins);
  ``abort()`` cuts the one in flight short; ``close()`` does both and frees the connection.
- ``documents``: a capability -- whether the upstream also takes documents that are not batches
  of readings on the same path (the commissioning records, agent.uplink.metadata).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from agent.config import Config, UplinkConfig
from agent.core.credentials import Secret
from agent.core.reading import Reading
from agent.core.timebase import ExternalTime
from agent.uplink.lineprotocol import Epochs

ERROR_TEXT_CHARS = 1000  # of an answer's detail or hint kept and logged
# The first words of a retry's detail when the server was reached but did not acknowledge,
# or when this unit itself failed: ``envagent status`` does not call those "unreachable".
NOT_ACKNOWLEDGED = "no acknowledgement"
THIS_UNIT = "this unit"


class Outcome(enum.Enum):
    """What an attempt means for its batch; ``IDLE`` is the worker's own (nothing to send)."""

    IDLE = "idle"
    DELIVERED = "delivered"
    RETRY = "retry"  # the network or the server's trouble: the same bytes again, later
    REJECTED = "rejected"  # poison data somewhere in the batch: bisect, quarantine
    TOO_LARGE = "too large"  # the batch is too large for the server: halve it
    AUTH = "auth"  # the credentials were refused, or there are none
    FAILED = "failed"  # misconfiguration: no point retrying soon
    STOPPED = "stopped"  # a stop cut the attempt short: not the server's doing


@dataclass(frozen=True, slots=True)
class Answer:
    """A transport's answer to one send, in the worker's words.

    ``detail`` says for people what came back (``HTTP 503: maintenance``), made fit to log
    (agent.core.credentials.redact) and at most ``ERROR_TEXT_CHARS`` long; ``hint`` says what to
    do about it. ``retry_after``: the delay the server asked for, in seconds, already parsed and
    clamped (never negative, never unbounded); the worker waits at least that long, up to
    ``uplink.retry_after_max``. ``accepted``: how many leading readings of the batch the
    upstream acknowledged, from a transport that acknowledges per packet; None means all of
    them when ``delivered`` and none otherwise.
    """

    outcome: Outcome
    detail: str = ""
    hint: str = ""
    retry_after: float | None = None
    accepted: int | None = None

    def __post_init__(self) -> None:
        if self.outcome is Outcome.IDLE:
            raise ValueError("IDLE is the worker's outcome, never a transport's answer")
        if self.accepted is not None and self.accepted < 0:
            raise ValueError(f"accepted = {self.accepted}: expected a count of readings >= 0")
        if self.outcome is Outcome.DELIVERED and self.accepted == 0:
            raise ValueError("delivered, accepted = 0: a transport that took none of the batch "
                             "answers retry (or what went wrong)")
        if self.retry_after is not None and not 0.0 <= self.retry_after < float("inf"):
            raise ValueError(f"retry_after = {self.retry_after}: expected seconds >= 0, "
                             "parsed and clamped by the transport")


class Sink(Protocol):
    """One upstream's transport, as the delivery worker uses it (see the module docstring)."""

    @property
    def where(self) -> str: ...

    @property
    def documents(self) -> bool: ...

    def encode(self, readings: Sequence[Reading]) -> bytes: ...

    def set_epochs(self, epochs: Epochs) -> None: ...

    def send(self, body: bytes, token: Secret | None) -> Answer: ...

    def idle(self, token: Secret | None) -> None: ...

    def refuse(self) -> None: ...

    def abort(self) -> None: ...

    def close(self) -> None: ...


# --- the registry's record of a transport (agent.uplink.transports) ----------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a transport connects, for ``envagent doctor``'s DNS, TCP and TLS probes."""

    host: str
    port: int
    tls: bool


Level = Literal["PASS", "WARN", "FAIL"]  # agent.doctor.report.Status's values


@dataclass(frozen=True, slots=True)
class Verdict:
    """A transport's judgement of an exchange that stores nothing (doctor's ``auth`` probe)."""

    level: Level
    detail: str
    hint: str | None = None


class Build(Protocol):
    def __call__(self, config: Config, settings: UplinkConfig, *, simulated: bool,
                 wall: Callable[[], float], data_dir: Path | None,
                 external_time: ExternalTime | None) -> Sink: ...


class CheckWrite(Protocol):
    def __call__(self, config: Config, settings: UplinkConfig, token: Secret | None,
                 named: str | None) -> Verdict: ...


@dataclass(frozen=True, slots=True)
class Transport:
    """One line of the registry: how to build the sink of an ``[[uplink]]`` whose URL has this
    scheme, and the probes doctor runs for it.

    ``build``: the sink, with ``simulated`` marking every batch a rehearsal's
    (agent.store.rehearsal), ``wall`` the clock a server's dates are read against and
    ``data_dir`` where a transport keeps files of its own (HJ 212's archive) and
    ``external_time`` where one that hears the time from its server offers it (HJ 212).
    ``endpoint(url)``: the host and port doctor resolves and connects to, and whether it
    checks TLS there. ``check_write(config, settings, token, named)``: one exchange that stores
    nothing, judged; ``named`` says where the token came from (never the token itself).
    """

    name: str
    build: Build
    endpoint: Callable[[str], Endpoint]
    check_write: CheckWrite
