"""Delivery: one worker thread per upstream drains the outbox, oldest first, through that
upstream's sink -- any transport (agent.uplink.sink: HTTP today, HJ 212 and MQTT next; the URL's
scheme picks it, agent.uplink.transports).

One step takes a batch (``batch_size`` readings while there is a backlog; whatever is there
otherwise), sends it and acts on the transport's answer. The writer nudges the worker after each
commit (:meth:`Uplink.nudge`); while it is caught up it posts at most once per
``flush_interval`` (a commit that comes sooner waits for the next post, one POST carrying
several commits), except when something urgent waits: a commit holding an alert, a backlog
(full batches go back to back), a retry's own schedule, the service button. It also looks by
itself every ``flush_interval``. The answer:

==============  =================================================================================
delivered       ack: the outbox deletes the batch (once every upstream has it)
retry           send the same bytes again after a full-jitter exponential backoff
                (``backoff_min`` doubling up to ``backoff_max``), or after the delay the server
                asked for when longer, up to ``retry_after_max``
rejected        bisect: send each half on its own until the refused readings stand alone, then
                quarantine them; the others are delivered
too large       halve the batch, and remember the smaller size
auth            pause delivery (sampling goes on); re-read the token and try again every
                ``auth_retry`` (an unreadable token file too)
failed          misconfiguration: reported loudly with the transport's hint, retried every
                ``backoff_max``
stopped         a stop cut the send short: the batch stays, nothing is counted against the server
==============  =================================================================================

A transport that acknowledges per packet may answer that only the first ``accepted`` readings of
a batch went through: those are acked, the rest stays the head of the queue and goes next (at
once after a delivery, after the backoff after a failure). agent.uplink.http says which HTTP
answers mean what.

Alert readings (agent.sampling.alerts) waiting in the outbox are taken first, as a batch of their
own, so an alert raised behind a large backlog goes in the next request. A batch already taken is
not cut short for them: it is kept until it is acknowledged or quarantined, so a retry sends
the very same bytes (within one process; after a restart the batch boundaries may differ, the
readings do not). Before each new batch, the commissioning records (agent.uplink.metadata) bring
the readings' tags up to date and, never ahead of an alert, go upstream once -- through a
transport that carries such documents.
Logs name transitions (delivering -> retrying -> delivering), not every retry, and the upstream
by name and host (the sink's ``where``). The state is also written to the upstream's state file
in the data directory (agent.uplink.state: ``uplink-state.json`` for the one named "default"),
for ``envagent status`` in another process: atomically, on transitions only, plus at most every
``STATE_REFRESH_S`` while delivering, to keep the last-success time roughly current without
wearing the SD card. Every error text logged or saved goes through
agent.core.credentials.redact. The worker writes it once as it starts, so ``status`` knows it
ran even when it had nothing to send.

A hold for the clock (agent.sampling.timekeeping: this boot's readings wait while the clock is not
synchronised) is part of that state: when the worker finds nothing else to send and readings are
held, it logs that holding starts (how many, why, until when at most) and records it; when the
clock synchronises or the hold runs out it logs that holding ends and how the readings go. While
it lasts, the count is written at most every ``HOLD_REFRESH_S``, and once more at the stop.

A clean stop replays nothing: once it is asked (:meth:`Uplink.request_stop`, which the writer
calls as its stop begins) no new send starts, and the one in flight gets ``STOP_GRACE_S`` to be
answered and acknowledged before :meth:`Uplink.stop` cuts it short. Only a crash, a power cut
or a server slower than the grace can still make the next start send a batch again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from agent.config import Config, UplinkConfig
from agent.core.credentials import CredentialError, Secret, load_token, redact
from agent.core.errors import StorageError
from agent.core.reading import StoredReading
from agent.core.timebase import ExternalTime
from agent.store.storage import Store
from agent.uplink.metadata import Commissioning, build_commissioning
from agent.uplink.policy import retry_delay
from agent.uplink.sink import ERROR_TEXT_CHARS, Answer, Outcome, Sink
from agent.uplink.state import STATE_FILE, UplinkState, state_file
from agent.uplink.transports import build_sink
from drivers.clock import Clock

__all__ = ["STATE_FILE", "STOP_GRACE_S", "ClockHold", "FlushReport", "Outcome", "Step",
           "Uplink", "UplinkState", "build_sink", "build_uplink", "state_file"]

log = logging.getLogger("envagent.uplink")

STATE_REFRESH_S = 600.0  # while delivering, the last-success time is persisted this often
HOLD_REFRESH_S = 60.0  # while holding for the clock, the count is persisted this often at most
JOIN_SLACK_S = 2.0  # a stop waits this long beyond the deadline for the worker to finish
# A commit this much before ``flush_interval`` has passed since the last post is sent with it
# anyway: commits on wall-clock multiples, a post a few ms after its commit -- the next due
# commit must not wait a whole interval more for a few ms (at most a tenth of the interval).
FLUSH_EARLY_S = 1.0
# How long a clean stop lets the send in flight finish: a few round trips of a slow link, well
# inside the unit's TimeoutStopSec=20s (systemd/envagent.service) with the sensors' joins.
STOP_GRACE_S = 5.0


class ClockHold(Protocol):
    """A hold for the clock as agent.sampling.timekeeping describes it (its ``Hold``): the
    readings of boot ``boot_id`` wait, for ``reason``, until ``until_ns`` (wall clock) at most.
    The worker reports it; ``Outbox.take(hold_boot=...)`` is what applies it."""

    @property
    def boot_id(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def until_ns(self) -> int: ...


# --- the worker -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    """One step of the worker: what happened and how long until the next is due."""

    outcome: Outcome
    wait: float
    delivered: int = 0
    quarantined: int = 0
    caught_up: bool = False  # nothing more was waiting in the outbox
    answer: Answer | None = None  # the transport's answer, when something was sent


@dataclass(frozen=True, slots=True)
class FlushReport:
    """``ok``: no delivery failed (readings may still be ``held`` for the clock)."""

    delivered: int
    quarantined: int
    ok: bool
    error: str | None
    held: int = 0


class Uplink:
    """Drains ``outbox`` to one upstream through ``sink``, any transport; ``token`` reads the
    upload token (see credentials)."""

    def __init__(self, outbox: Store, sink: Sink, settings: UplinkConfig, *, clock: Clock,
                 token: Callable[[], Secret | None], state_path: Path | None = None,
                 rng: random.Random | None = None,
                 held_boot: Callable[[], str | None] = lambda: None,
                 hold: Callable[[], ClockHold | None] = lambda: None,
                 commissioning: Commissioning | None = None) -> None:
        """``held_boot``: the boot whose readings ``take`` skips for now; ``hold``: why, for
        the log and the state (both from agent.sampling.timekeeping's TimeKeeper)."""
        self.outbox, self.sink, self.settings, self.clock = outbox, sink, settings, clock
        self.commissioning = commissioning
        # readings waiting to be re-stamped (agent.sampling.timekeeping)
        self._held_boot = held_boot
        self._hold = hold
        self._hold_saved_at: float | None = None  # monotonic time the count was last persisted
        self._counting_held = False  # the last step found only held readings left
        self.batch_limit = settings.batch_size
        self._read_token = token
        self._token: Secret | None = None
        self._token_fresh = False  # _token holds what the file held after the last 401/403
        self._pending: deque[list[StoredReading]] = deque()  # the taken batch, maybe bisected
        self._body: tuple[list[StoredReading], bytes] | None = None  # the head, encoded
        self._more = False  # the last take was full: more backlog waits behind it
        self._failures = 0
        self._rng = rng or random.Random()
        self._state_path = state_path
        previous = UplinkState.load(state_path) if state_path is not None else None
        self.state = UplinkState(last_success_ns=previous.last_success_ns) if previous \
            else UplinkState()
        self._carry_hold(previous)
        self._saved_success_ns = self.state.last_success_ns
        # what the file holds: a hold recorded there and over now is cleared at the next save
        self._saved_hold = (previous or UplinkState()).hold_fields()
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by stop(), sync_now() and nudge()
        self._caught_up = False  # the worker waits for news: a nudge may wake it
        self._news = False  # a nudge came since the current step began
        self._urgent = False  # ... and it carried an alert
        self._posted: float | None = None  # monotonic time of the last send
        self._thread: threading.Thread | None = None

    @property
    def name(self) -> str:
        """The upstream's name (``[[uplink]] name``): its state file, health readings, logs."""
        return self.settings.name

    # --- one step -----------------------------------------------------------------------------

    def step(self) -> Step:
        """Take (or keep) a batch, send it once, act on the answer."""
        if not self._token_fresh:
            try:
                self._token = self._read_token()
            except CredentialError as exc:
                self._enter("auth_blocked", str(exc))
                return Step(Outcome.AUTH, self.settings.auth_retry)
            self._token_fresh = True
        if not self._pending:
            # Alerts (agent.sampling.alerts) go ahead of any backlog, in a batch of their own --
            # even before the clock has synchronised (then flagged CLOCK_UNSYNCED): late is worse.
            batch = self.outbox.take_alerts(self.batch_limit, upstream=self.name)
            if self.commissioning is not None:  # the tags in force; records once, not first
                self.commissioning.step(self.sink, self._token, send=not batch)
            if batch:
                self._more = True  # the backlog, if any, comes next
            else:
                held_boot = self._held_boot()
                batch = self.outbox.take(self.batch_limit, upstream=self.name,
                                         hold_boot=held_boot)
                self._follow_hold(held_boot, only_held_left=not batch)
                if not batch:
                    self.sink.idle(self._token)
                    return Step(Outcome.IDLE, self.settings.flush_interval, caught_up=True)
                self._more = len(batch) >= self.batch_limit
            self._pending.append(batch)
        head = self._pending[0]
        if self._body is None or self._body[0] is not head:
            self._body = (head, self.sink.encode([s.reading for s in head]))
        self._posted = self.clock.monotonic()
        answer = self.sink.send(self._body[1], self._token)
        return replace(self._act(head, answer), answer=answer)

    def _act(self, head: list[StoredReading], answer: Answer) -> Step:
        outcome = answer.outcome
        if outcome is not Outcome.STOPPED:
            log.debug("%s: %d reading(s): %s -> %s", self.sink.where, len(head), answer.detail,
                      outcome.value)
        taken = answer.accepted
        if taken is not None and taken >= len(head):  # all of it, whatever came after
            return self._delivered(head)
        if not taken:
            return self._decide(head, answer)
        acked = self._ack_leading(head, taken)
        step = self._decide(self._pending[0], answer, partial=True)
        return replace(step, delivered=step.delivered + acked)

    def _ack_leading(self, head: list[StoredReading], count: int) -> int:
        """A transport that acknowledges per packet took the first ``count`` readings: ack
        them; the rest becomes the head, sent next (its own bytes, encoded afresh)."""
        acked = self.outbox.ack((s.id for s in head[:count]), upstream=self.name)
        self._pending[0] = head[count:]
        self.state.last_success_ns = self._now_ns()
        self._failures = 0  # it answers: a failure now starts the backoff afresh
        return acked

    def _decide(self, head: list[StoredReading], answer: Answer, *,
                partial: bool = False) -> Step:
        """What the answer means for ``head``: the batch, or with ``partial`` what is left of
        it after the transport took its first readings."""
        outcome = answer.outcome
        if outcome is Outcome.STOPPED:  # stop() cut it short: not the server's doing
            return Step(Outcome.RETRY, 0.0)
        if outcome is Outcome.DELIVERED:
            if partial:  # the rest goes at once
                self._enter("ok")
                return Step(outcome, 0.0)
            return self._delivered(head)
        if outcome in (Outcome.REJECTED, Outcome.TOO_LARGE):
            return self._refused(head, answer)
        if outcome is Outcome.AUTH:
            self._token_fresh = False  # re-read the file before the next attempt
            self._enter("auth_blocked", answer.detail)
            return Step(outcome, self.settings.auth_retry)
        self._failures += 1
        if outcome is Outcome.FAILED:
            self._enter("failing", f"{answer.detail}; {answer.hint}" if answer.hint
                        else answer.detail)
            return Step(outcome, self.settings.backoff_max)
        delay = retry_delay(self._failures, answer.retry_after, self.settings, self._rng)
        self._enter("retrying", answer.detail)
        return Step(outcome, delay)

    def _delivered(self, head: list[StoredReading]) -> Step:
        acked = self.outbox.ack((s.id for s in head), upstream=self.name)
        self._pending.popleft()
        self.state.last_success_ns = self._now_ns()
        self._enter("ok")
        return self._next(Outcome.DELIVERED, delivered=acked)

    def _refused(self, head: list[StoredReading], answer: Answer) -> Step:
        """Rejected or too large: split the batch; quarantine a reading refused on its own."""
        outcome, said = answer.outcome, answer.detail
        self._enter("ok")  # the server answers and reads what it gets
        self._pending.popleft()
        if len(head) > 1:
            half = (len(head) + 1) // 2
            self._pending.extendleft([head[half:], head[:half]])
            if outcome is Outcome.TOO_LARGE and half < self.batch_limit:
                self.batch_limit = half
                log.warning("%s: %s for %d readings; sending at most %d per request "
                            "from now on", self.sink.where, said, len(head), half)
                self._pending = deque(part[i:i + half] for part in self._pending
                                      for i in range(0, len(part), half))
            return Step(outcome, 0.0)
        (one,) = head
        r = one.reading
        moved = self.outbox.quarantine([one.id], said, upstream=self.name)
        log.warning("%s refused %s %s at time_ns %d (%s); moved it to quarantine",
                    self.sink.where, r.sensor, r.quantity, r.time_ns, said)
        return self._next(outcome, quarantined=moved)

    def _next(self, outcome: Outcome, *, delivered: int = 0, quarantined: int = 0) -> Step:
        """After a batch (or part of it) is done: go on at once while there is more."""
        self._failures = 0
        more = bool(self._pending) or self._more
        wait = 0.0 if more else self.settings.flush_interval
        return Step(outcome, wait, delivered, quarantined, caught_up=not more)

    # --- state --------------------------------------------------------------------------------

    def _enter(self, state: str, error: str | None = None) -> None:
        """Record a state (and error); log and persist only when the state changes."""
        previous, now = self.state.state, self._now_ns()
        if error is not None:
            error = redact(error, self._token, limit=ERROR_TEXT_CHARS)
            self.state.last_error, self.state.last_error_ns = error, now
        if state == previous:
            refresh = self.state.last_success_ns or 0
            if state == "ok" and refresh - (self._saved_success_ns or 0) >= STATE_REFRESH_S * 1e9:
                self._save()
            return
        self.state.state, self.state.since_ns = state, now
        where, s = self.sink.where, self.settings
        if state == "ok":
            log.info("delivering to %s%s", where, " again" if previous != "starting"
                     else "")
        elif state == "retrying":
            log.warning("cannot deliver to %s: %s; retrying with backoff, readings wait "
                        "in the outbox", where, error)
        elif state == "auth_blocked":
            log.error("delivery to %s paused, sampling goes on: %s; fix the %s (trying "
                      "again every %gs, no restart needed)", where, error, s.secret_name,
                      s.auth_retry)
        else:
            log.error("delivery to %s failed: %s; trying again every %gs", where,
                      error, s.backoff_max)
        self._save()

    def _save(self) -> None:
        if self._state_path is None:
            return
        try:
            self.state.save(self._state_path)
        except OSError as exc:
            log.warning("cannot write %s: %s", self._state_path, exc.strerror or exc)
            return
        self._saved_success_ns = self.state.last_success_ns
        self._saved_hold = self.state.hold_fields()
        self._hold_saved_at = self.clock.monotonic()

    def _now_ns(self) -> int:
        return int(self.clock.time() * 1e9)

    # --- the hold for the clock ---------------------------------------------------------------

    @property
    def holding(self) -> bool:
        """Readings are held for the clock (the status LED shows it)."""
        return self.state.hold_boot is not None

    @property
    def held(self) -> int:
        """How many readings are held for the clock, at the worker's last look."""
        return (self.state.hold_count or 0) if self.holding else 0

    def _carry_hold(self, previous: UplinkState | None) -> None:
        """A hold an earlier process of this boot recorded stands until this one looks."""
        hold = self._hold()
        if previous is None or hold is None or previous.hold_boot != hold.boot_id:
            return
        s = self.state
        s.hold_boot, s.hold_count = previous.hold_boot, previous.hold_count
        s.hold_since_ns, s.hold_until_ns, s.hold_reason = (previous.hold_since_ns, hold.until_ns,
                                                           hold.reason)

    def _follow_hold(self, held_boot: str | None, *, only_held_left: bool) -> None:
        """After a take: a hold for the clock starts, grows or ends. The count is exact only
        when the take found nothing else: then every reading in the backlog is a held one (a
        count of its own would scan the outbox on every commit)."""
        hold = self._hold() if held_boot is not None else None
        self._counting_held = hold is not None and only_held_left
        if hold is None:
            if self.holding:
                self._end_hold()
            return
        if not only_held_left:
            return
        count = self.outbox.stats().backlog
        if count <= 0:  # nothing is waiting for the clock after all
            if self.holding:
                self.state.clear_hold()
                self._save()
        elif self.state.hold_boot != hold.boot_id:
            self._start_hold(hold, count)
        else:
            self._count_held(hold, count)

    def _start_hold(self, hold: ClockHold, count: int) -> None:
        s = self.state
        s.hold_boot, s.hold_count, s.hold_since_ns = hold.boot_id, count, self._now_ns()
        s.hold_until_ns, s.hold_reason = hold.until_ns, hold.reason
        log.info("holding %d reading(s) back from %s: %s; they go upstream re-stamped once it "
                 "is, or flagged clock_unsynced at %s at most (in %s); envagent doctor says how "
                 "to get it synchronised", count, self.sink.where, hold.reason,
                 _wall_words(hold.until_ns), _duration_words(hold.until_ns - self._now_ns()))
        self._save()

    def _count_held(self, hold: ClockHold, count: int) -> None:
        """Readings keep coming in while the hold lasts: persisted at most every
        ``HOLD_REFRESH_S``, not on every commit (the SD card)."""
        s = self.state
        s.hold_count, s.hold_until_ns, s.hold_reason = count, hold.until_ns, hold.reason
        last = self._hold_saved_at
        if last is None or self.clock.monotonic() - last >= HOLD_REFRESH_S:
            self._save()

    def _end_hold(self) -> None:
        count, where = self.held, self.sink.where
        if self.clock.synchronized():
            log.info("the clock is synchronised: the %d held reading(s) go upstream to %s now, "
                     "re-stamped with their true time", count, where)
        else:
            log.warning("the hold for the clock is over and it is still not synchronised: the "
                        "%d held reading(s) go upstream to %s now, flagged clock_unsynced (their "
                        "time is not trusted); envagent doctor says how to get it synchronised",
                        count, where)
        self.state.clear_hold()
        self._save()

    def _settle_hold(self) -> None:
        """At the stop: the last commit's readings are held too; count them, and persist what
        the refresh interval kept back."""
        if self.holding and self._counting_held:
            with contextlib.suppress(StorageError):  # the outbox logs why; the count stands
                self.state.hold_count = self.outbox.stats().backlog
        if self.state.hold_fields() != self._saved_hold:
            self._save()

    # --- running --------------------------------------------------------------------------------

    def run(self) -> None:
        """The worker thread's body: step, wait, until :meth:`stop`."""
        s = self.settings
        log.info("sending %s to %s, up to %d readings per request", s.format,
                 self.sink.where, self.batch_limit)
        self._save()  # status knows the worker ran, even if it never sends a thing
        while not self._stop.is_set():
            self._news = self._urgent = False
            try:
                step = self.step()
                wait, self._caught_up = step.wait, step.caught_up
                if step.caught_up and self._news:  # committed after this step's take
                    wait = 0.0 if self._urgent else min(wait, self._until_post())
            except Exception as exc:  # noqa: BLE001 - the outbox or a bug: never stop delivering
                self._enter("failing", f"{type(exc).__name__}: {exc}")
                log.debug("%s: step failed", self.sink.where, exc_info=True)
                wait = s.backoff_max
            if wait > 0:
                self.clock.wait(self._wake, wait)
                self._wake.clear()
            self._caught_up = False
        if self.state.last_success_ns != self._saved_success_ns:
            self._save()

    def _until_post(self) -> float:
        """Seconds until a post is allowed again (0: now): ``flush_interval`` after the last."""
        if self._posted is None:
            return 0.0
        interval = self.settings.flush_interval
        early = min(FLUSH_EARLY_S, interval / 10)
        return max(0.0, self._posted + interval - early - self.clock.monotonic())

    def nudge(self, *, urgent: bool = False) -> None:
        """New readings were committed (``Agent.on_commit``): when the worker is caught up, it
        sends them now if ``urgent`` (an alert) or if ``flush_interval`` has passed since its
        last post, else with the next post; a backoff in progress runs its course."""
        self._news = True
        if urgent:
            self._urgent = True
        if self._caught_up and (urgent or self._until_post() <= 0):
            self._wake.set()

    def sync_now(self) -> None:
        """Try delivering at once, even in the middle of a backoff (the service button)."""
        log.info("sync requested: delivering to %s at once", self.sink.where)
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=f"uplink-{self.name}",
                                        daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Begin a stop, without waiting: no new POST starts; the one in flight goes on."""
        self._stop.set()
        self.sink.refuse()
        self._wake.set()

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """Stop the worker: an upload in flight has ``grace`` seconds to be answered and
        acknowledged; then it is cut short and its batch stays in the outbox."""
        self.request_stop()
        if self._thread is not None:
            self._thread.join(grace)
            if self._thread.is_alive():
                log.warning("%s has not answered within %gs of the stop; cutting the upload "
                            "short, its readings are sent again at the next start",
                            self.sink.where, grace)
        self.sink.close()
        if self._thread is not None:
            self._thread.join(self.settings.deadline + JOIN_SLACK_S)
            if self._thread.is_alive():
                log.warning("delivery to %s still busy at shutdown (name resolution?); left "
                            "behind", self.sink.where)
                return
        self._settle_hold()

    def flush(self) -> FlushReport:
        """Deliver until the outbox is empty, or stop at the first failure (``envagent sync``)."""
        delivered = quarantined = 0
        while True:
            step = self.step()
            delivered += step.delivered
            quarantined += step.quarantined
            if step.outcome not in (Outcome.IDLE, Outcome.DELIVERED, Outcome.REJECTED,
                                    Outcome.TOO_LARGE):
                self._settle_hold()
                return FlushReport(delivered, quarantined, False, self.state.last_error,
                                   self.held)
            if step.caught_up:
                if self.state.last_success_ns != self._saved_success_ns:
                    self._save()
                self._settle_hold()
                return FlushReport(delivered, quarantined, True, None, self.held)


def _wall_words(time_ns: int) -> str:
    """A wall-clock time for a log line: UTC, to the second."""
    return datetime.fromtimestamp(time_ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration_words(ns: int) -> str:
    seconds = max(0.0, ns / 1e9)
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def build_uplink(config: Config, settings: UplinkConfig, outbox: Store, clock: Clock,
                 data_dir: Path, environ: Mapping[str, str] | None = None, *,
                 held_boot: Callable[[], str | None] = lambda: None,
                 hold: Callable[[], ClockHold | None] = lambda: None,
                 simulated: bool = False, external_time: ExternalTime | None = None) -> Uplink:
    """The real delivery worker of one upstream (``settings``: one of ``config.uplinks``) for
    the ``run`` and ``sync`` commands: its transport by the URL's scheme
    (agent.uplink.transports), its token, its own state file (agent.uplink.state). With
    ``simulated`` (``--simulate --deliver``) everything it sends is marked a rehearsal's."""
    env = dict(os.environ if environ is None else environ)
    sink = build_sink(config, settings, simulated=simulated, wall=clock.time, data_dir=data_dir,
                      external_time=external_time)
    with contextlib.suppress(OSError):
        data_dir.mkdir(parents=True, exist_ok=True)
    return Uplink(outbox, sink, settings, clock=clock,
                  token=lambda: load_token(settings.token_file, env, settings.name,
                                           what=settings.secret_name,
                                           key=f"uplink.{settings.secret_key}"),
                  state_path=data_dir / state_file(settings.name), held_boot=held_boot,
                  hold=hold,
                  commissioning=build_commissioning(config, settings, data_dir, clock,
                                                    held_boot=held_boot, simulated=simulated))
