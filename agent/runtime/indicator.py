"""The status LED and the service button: the unit's state readable from across a field.

One LED tells a technician walking up to a pole what the unit needs, before any laptop comes
out. The patterns differ in *rhythm*, not in speed alone, so no manual and no counting of
seconds is needed, and the more urgent the state, the more the LED has to say:

============  ==================================================  ===============================
condition     pattern (repeats)                                   reads as
============  ==================================================  ===============================
ok            one short flash (0.2 s) every 5 s                   a heartbeat: alive, all well
degraded      even slow blink, 0.5 s on / 0.5 s off (1 Hz)        working, but a sensor is failing
offline       two short flashes, then a pause (every 2 s)         sampling and storing, upstream
                                                                  unreachable, backlog growing
holding       one long flash and one short, then a pause          readings held for the clock: it
              (every 3 s)                                         is not synchronised (no NTP),
                                                                  nothing goes upstream yet
alert         three short flashes, then a pause (every 2.5 s)     a threshold alert ([[alert]]) is
                                                                  firing: look at the readings
maintenance   lit, dark for a blink: 1.8 s on, 0.2 s off          maintenance mode is on: readings
              (the heartbeat turned inside out)                   are flagged (turn it off before
                                                                  leaving the site)
fatal         SOS in Morse (... --- ...), every 5.1 s             needs a technician: storage
                                                                  unusable or credentials refused
identify      fast even blink, 0.1 s on / 0.1 s off (5 Hz),       "this unit" - after a long
              for 60 s, over any of the above                     press of the service button
============  ==================================================  ===============================

The service button: a short press delivers the backlog now; a long press (``hold_time``, 3 s)
identifies the unit; a very long hold (10 s, :func:`default_maintenance_hold`: keep holding
through the identify blink) turns maintenance mode on or off, and the LED answers at once --
the fast blink stops and the maintenance pattern starts (or the usual one comes back). A hold
is what a technician in gloves does reliably, and it cannot happen by accident as two short
presses (each a delivery) could, nor does a short press have to wait to be told from a double
one.

A steady LED, on or off, never means a condition: every pattern keeps changing, so a lit or
dark LED that does not change for 10 s means the agent is not running (no power, stopped, or
hung with the pin left where it was). That is why fatal is not "steady on": a crashed process
leaves exactly that behind. Only the most urgent condition shows (identify > fatal >
maintenance > alert > offline > holding > degraded > ok); ``envagent status`` tells the rest.
Maintenance ranks under fatal, because readings being lost matter whatever the mode, and above
everything else, because it is the technician's own doing: what they must see walking away from
the pole is that the mode is still on; the sensor they unplugged they know about, and their
work sets off no alert (maintenance readings neither fire nor clear one). The ok heartbeat lights
the LED 4 % of the time, so it costs almost nothing on a solar budget.

Timing goes through the injected clock (``wait(event, seconds)``) so tests can step through a
pattern; gpiozero's devices come from the injected pin factory (the ``run`` command passes the
lgpio one; tests pass ``MockFactory``).
"""

from __future__ import annotations

import enum
import logging
import math
import threading
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

from drivers.clock import Clock

__all__ = ["PATTERNS", "Condition", "Pattern", "ServiceButton", "StatusLED", "condition",
           "default_maintenance_hold"]

log = logging.getLogger("envagent.indicator")

IDENTIFY_S = 60.0  # how long a long press makes the LED say "this unit"
DEFAULT_HOLD_S = 3.0  # a press this long is a long press
MAINTENANCE_HOLD_S = 10.0  # a hold this long (at least twice hold_time) toggles maintenance mode
HOLD_TICK_S = 0.1  # while the button is held, how often its hold time is looked at
BOUNCE_S = 0.05  # contact bounce of a typical tactile switch is well under 10 ms
JOIN_TIMEOUT_S = 5.0  # close() waits this long for the LED thread
MIN_STEP_S = 0.001  # what is left of an identify after rounding: too short to see


class Condition(enum.StrEnum):
    """What the LED shows; IDENTIFY is an overlay that :meth:`StatusLED.identify` puts on top."""

    OK = "ok"
    DEGRADED = "degraded"  # a sensor is in warning or failed state
    OFFLINE = "offline"  # upstream unreachable and the backlog growing
    FATAL = "fatal"  # storage unusable or upstream refusing our credentials
    ALERT = "alert"  # a threshold alert is firing (agent.sampling.alerts)
    HOLDING = "holding"  # readings held from delivery for the clock (agent.sampling.timekeeping)
    MAINTENANCE = "maintenance"  # maintenance mode is on (agent.store.maintenance)
    IDENTIFY = "identify"


SENSOR_STATES = frozenset({"starting", "ok", "warning", "failed"})  # agent.sampling.sampler.State
UPLINK_STATES = frozenset({"ok", "offline", "auth", "disabled"})


def condition(sensor_states: Iterable[str], uplink_state: str, storage_ok: bool,
              *, alert: bool = False, holding: bool = False,
              maintenance: bool = False) -> Condition:
    """The condition to show, the most urgent first.

    ``sensor_states`` are the sensors' health states (``agent.sampling.sampler.State`` values work
    as
    they are). ``uplink_state``: "ok", "offline" (upstream unreachable and the backlog
    growing), "auth" (upstream refuses our credentials) or "disabled" (no ``[uplink]``: keeping
    readings is then the plan, not a problem). ``storage_ok``: the outbox can store readings.
    ``alert``: a threshold alert is firing; it outranks offline, because what the technician
    came about may be the air or the water, not the unit. ``holding``: readings are held for
    the clock; below offline (then nothing could go anyway), above a failing sensor, because
    until the clock is synchronised nothing of the unit reaches upstream. ``maintenance``: the
    mode is on; it outranks all but fatal (the module docstring says why).
    An unknown state is a wiring mistake and raises ValueError.
    """
    if uplink_state not in UPLINK_STATES:
        raise ValueError(f"unknown uplink state {uplink_state!r}; expected one of "
                         + ", ".join(sorted(UPLINK_STATES)))
    states = [str(state) for state in sensor_states]
    unknown = sorted(set(states) - SENSOR_STATES)
    if unknown:
        raise ValueError(f"unknown sensor state(s) {', '.join(map(repr, unknown))}; expected "
                         + ", ".join(sorted(SENSOR_STATES)))
    if not storage_ok or uplink_state == "auth":
        return Condition.FATAL
    if maintenance:
        return Condition.MAINTENANCE
    if alert:
        return Condition.ALERT
    if uplink_state == "offline":
        return Condition.OFFLINE
    if holding:
        return Condition.HOLDING
    if any(state in ("warning", "failed") for state in states):
        return Condition.DEGRADED
    return Condition.OK


# --- patterns --------------------------------------------------------------------------------

Pattern = tuple[float, ...]  # seconds on, off, on, off, ...: starts lit, even length


def _sos(unit: float) -> Pattern:
    """SOS with the standard Morse timing (ITU-R M.1677-1): a dot is one unit, a dash three;
    one unit between signals, three between letters, seven between words."""
    dot, dash = unit, 3 * unit
    s = (dot, unit, dot, unit, dot)
    o = (dash, unit, dash, unit, dash)
    return (*s, 3 * unit, *o, 3 * unit, *s, 7 * unit)


MORSE_UNIT_S = 0.15  # SOS takes 34 units: 5.1 s

PATTERNS: Mapping[Condition, Pattern] = MappingProxyType({
    Condition.OK: (0.2, 4.8),
    Condition.DEGRADED: (0.5, 0.5),
    Condition.OFFLINE: (0.2, 0.3, 0.2, 1.3),
    Condition.ALERT: (0.2, 0.3, 0.2, 0.3, 0.2, 1.3),
    Condition.HOLDING: (1.0, 0.3, 0.2, 1.5),  # long, short: unlike any other rhythm here
    Condition.MAINTENANCE: (1.8, 0.2),  # mostly lit: the only pattern that is
    Condition.FATAL: _sos(MORSE_UNIT_S),
    Condition.IDENTIFY: (0.1, 0.1),
})


def _check_patterns(patterns: Mapping[Condition, Pattern], time_scale: float) -> None:
    if not time_scale > 0:
        raise ValueError(f"time_scale must be positive, not {time_scale!r}")
    for name in Condition:
        steps = patterns.get(name)
        if not steps or len(steps) % 2 or not all(seconds > 0 for seconds in steps):
            raise ValueError(f"pattern {name}: expected an even number of positive durations "
                             f"(on, off, ...), not {steps!r}")


# --- the LED ---------------------------------------------------------------------------------


class StatusLED:
    """An LED on ``pin`` that plays the pattern of the current condition on its own thread.

    :meth:`show` may be called as often as convenient (on every supervisor tick, say): only a
    change of condition restarts the pattern. ``patterns`` and ``time_scale`` exist for tests.
    """

    def __init__(
        self,
        pin: int | str,
        *,
        pin_factory: Any = None,
        clock: Clock,
        initial: Condition = Condition.OK,
        patterns: Mapping[Condition, Pattern] = PATTERNS,
        time_scale: float = 1.0,
    ) -> None:
        _check_patterns(patterns, time_scale)
        if initial is Condition.IDENTIFY:
            raise ValueError("identify is an overlay; call identify()")
        self._patterns = dict(patterns)
        self._scale = time_scale
        self._clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Event()  # set: stop the current step and look again
        self._condition = initial
        self._identify_until: float | None = None
        self._closed = False
        from gpiozero import LED  # here: a unit without an [indicator] never loads gpiozero

        self._led = LED(pin, pin_factory=pin_factory)
        self._thread = threading.Thread(target=self._run, name="status-led", daemon=True)
        self._thread.start()

    @property
    def condition(self) -> Condition:
        """The condition shown when not identifying."""
        return self._condition

    @property
    def identifying(self) -> bool:
        with self._lock:
            until = self._identify_until
        return until is not None and until - self._clock.monotonic() >= MIN_STEP_S

    def show(self, condition: Condition) -> None:
        """Switch to ``condition``'s pattern at once (under an identify, once that ends)."""
        if condition is Condition.IDENTIFY:
            raise ValueError("identify is an overlay; call identify()")
        with self._lock:
            if self._closed or condition is self._condition:
                return
            log.info("status LED: %s (was %s)", condition, self._condition)
            self._condition = condition
        self._wake.set()

    def identify(self, seconds: float = IDENTIFY_S) -> None:
        """Blink fast for ``seconds`` (again from now if already identifying); 0 stops it."""
        if not seconds >= 0:
            raise ValueError(f"seconds must be 0 or more, not {seconds!r}")
        with self._lock:
            if self._closed:
                return
            self._identify_until = self._clock.monotonic() + seconds if seconds else None
        log.info("status LED: identify for %gs", seconds)
        self._wake.set()

    def close(self) -> None:
        """Stop the thread, switch the LED off and release the pin. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._wake.set()
        self._thread.join(JOIN_TIMEOUT_S)
        if self._thread.is_alive():
            log.warning("status LED: the LED thread did not stop within %gs", JOIN_TIMEOUT_S)
        try:
            self._led.off()
        finally:
            self._led.close()

    def __enter__(self) -> StatusLED:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        try:
            while True:
                self._wake.clear()
                with self._lock:
                    if self._closed:
                        return
                    steps, until = self._now_playing()
                self._play(steps, until)
        except Exception:  # a GPIO error: the LED is lost, the agent goes on
            log.exception("status LED: stopped by an error; the LED no longer shows the state")

    def _now_playing(self) -> tuple[Pattern, float | None]:
        """The pattern to play and, while identifying, when to stop it (called under the lock)."""
        until = self._identify_until
        if until is not None:
            if until - self._clock.monotonic() >= MIN_STEP_S:
                return self._patterns[Condition.IDENTIFY], until
            self._identify_until = None
            log.info("status LED: identify over, back to %s", self._condition)
        return self._patterns[self._condition], None

    def _play(self, steps: Pattern, until: float | None) -> None:
        """One round of ``steps``; returns early when woken or when ``until`` is reached."""
        for index, seconds in enumerate(steps):
            wait = seconds * self._scale
            if until is not None:
                left = until - self._clock.monotonic()
                if left < MIN_STEP_S:
                    return
                wait = min(wait, left)
            if index % 2 == 0:
                self._led.on()
            else:
                self._led.off()
            if self._clock.wait(self._wake, wait):
                return


# --- the button ------------------------------------------------------------------------------


def default_maintenance_hold(hold_time: float) -> float:
    """How long the button is held to toggle maintenance mode: 10 s, or twice ``hold_time``
    when that is longer, so the long press always comes first and well apart."""
    return max(MAINTENANCE_HOLD_S, 2 * hold_time)


class ServiceButton:
    """A push button between ``pin`` and ground (the internal pull-up holds the pin high).

    A release before ``hold_time`` is a short press; holding for ``hold_time`` is a long press,
    reported once while still held, and its release is not also a short press. Exactly one of
    the two is reported per press, even when the release and the hold time coincide. With
    ``on_maintenance``, holding on to ``maintenance_hold`` (after the long press) reports that
    too, once per press. The callbacks run on gpiozero's threads: keep them short (set an
    event, start a thread); an exception they raise is logged and the button keeps working.

    While the button is down, gpiozero's hold thread calls back every :data:`HOLD_TICK_S` (or
    a quarter of ``hold_time``, if shorter), and the time since the press decides which hold
    has been reached; nothing runs while it is up.
    """

    def __init__(
        self,
        pin: int | str,
        *,
        pin_factory: Any = None,
        hold_time: float = DEFAULT_HOLD_S,
        on_short_press: Callable[[], None],
        on_long_press: Callable[[], None],
        on_maintenance: Callable[[], None] | None = None,
        maintenance_hold: float | None = None,
        bounce_time: float | None = BOUNCE_S,
    ) -> None:
        if not hold_time > 0:
            raise ValueError(f"hold_time must be positive, not {hold_time!r}")
        if maintenance_hold is not None:
            very_long = maintenance_hold
        else:
            very_long = math.inf if on_maintenance is None else default_maintenance_hold(hold_time)
        if not very_long > hold_time:
            raise ValueError(f"maintenance_hold must be longer than hold_time ({hold_time!r}), "
                             f"not {very_long!r}")
        self._on_short = on_short_press
        self._on_long = on_long_press
        self._on_maintenance = on_maintenance
        self.hold_time = hold_time
        self.maintenance_hold = very_long
        self._tick = min(HOLD_TICK_S, hold_time / 4)
        self._lock = threading.Lock()
        self._down = False  # a press is in progress (seen starting)
        self._long = False  # ... and has been reported as a long press
        self._very_long = False  # ... and as a maintenance hold
        from gpiozero import Button  # as LED above: only with an [indicator]

        self._button = Button(pin, pull_up=True, bounce_time=bounce_time, hold_time=self._tick,
                              hold_repeat=True, pin_factory=pin_factory)
        self._button.when_pressed = self._pressed
        self._button.when_held = self._held
        self._button.when_released = self._released

    def close(self) -> None:
        """Release the pin; no callback runs afterwards."""
        self._button.when_pressed = self._button.when_held = self._button.when_released = None
        self._button.close()

    def __enter__(self) -> ServiceButton:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pressed(self) -> None:
        with self._lock:
            self._down, self._long, self._very_long = True, False, False

    def _held(self) -> None:
        """Every tick while the button is down: report each hold once, as it is reached."""
        held = self._button.active_time
        if held is None:
            return  # released meanwhile: the release reports the press
        reached = held + self._tick / 2  # a tick late never, a tick early never by much
        with self._lock:
            if not self._down:
                return  # the release won the race
            long = not self._long and reached >= self.hold_time
            very_long = (not self._very_long and self._on_maintenance is not None
                         and reached >= self.maintenance_hold)
            self._long = self._long or long
            self._very_long = self._very_long or very_long
        if long:
            log.info("service button: long press")
            self._call(self._on_long, "long press")
        if very_long and self._on_maintenance is not None:
            log.info("service button: held %gs (maintenance)", self.maintenance_hold)
            self._call(self._on_maintenance, "maintenance hold")

    def _released(self) -> None:
        with self._lock:
            short = self._down and not self._long
            self._down = self._long = self._very_long = False
        if short:
            log.info("service button: short press")
            self._call(self._on_short, "short press")

    @staticmethod
    def _call(action: Callable[[], None], what: str) -> None:
        try:
            action()
        except Exception:  # never into gpiozero's thread: the button must keep working
            log.exception("service button: the %s action failed", what)
