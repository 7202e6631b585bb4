"""Status LED and service button on gpiozero's MockFactory: what the pin did, step by step.

The LED thread waits through an injected clock. ``SteppedClock`` makes each wait one step the
test lets pass, so a pattern is asserted exactly: the LED's state during each step and the
step's length, plus the pin's own state history (``MockPin.states``). MockPin stamps changes
with the real monotonic clock, so one test runs a short pattern on the SystemClock and checks
those times too. The button is pressed by driving its mock pin low and released by driving it
high, as the switch to ground does; the hold time is real time (gpiozero's hold thread).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from gpiozero import LED, Button
from gpiozero.pins.mock import MockFactory, MockPin

from agent.config import ConfigError, IndicatorConfig, parse_config
from agent.runtime.indicator import (
    PATTERNS,
    Condition,
    Pattern,
    ServiceButton,
    StatusLED,
    condition,
)
from agent.sampling.sampler import State
from drivers.clock import SystemClock
from drivers.sim.clock import FakeClock

LED_PIN, BUTTON_PIN = 17, 27
PRESS_HOLD_S = 0.2  # a short hold time keeps the long-press tests quick
CALLBACK_TIMEOUT_S = 3.0


class SteppedClock(FakeClock):
    """A FakeClock whose ``wait`` blocks until the test lets that much time pass (``step``)."""

    POLL_S = 0.002  # how often a blocked wait looks at its event

    def __init__(self) -> None:
        super().__init__()
        self._cv = threading.Condition()
        self.calls = 0  # waits begun so far
        self._pending: float | None = None  # the length of the wait in progress
        self._release = False

    def wait(self, event: threading.Event, seconds: float) -> bool:
        with self._cv:
            self.calls += 1
            self._pending, self._release = seconds, False
            self._cv.notify_all()
            while not self._release:
                if event.is_set():
                    self._pending = None
                    return True
                self._cv.wait(self.POLL_S)
            self._release = False
            return event.is_set()

    def next_wait(self, after: int) -> float:
        """The length of the wait in progress, once one begun after wait number ``after`` is."""
        with self._cv:
            began = self._cv.wait_for(
                lambda: self.calls > after and self._pending is not None, CALLBACK_TIMEOUT_S
            )
            assert began and self._pending is not None, "the LED thread is not waiting"
            return self._pending

    def step(self) -> None:
        """Let the wait in progress run out, and return once the thread waits again."""
        with self._cv:
            seconds, call = self._pending, self.calls
            assert seconds is not None, "the LED thread is not waiting"
            self._pending = None
            self.advance(seconds)
            self._release = True
            self._cv.notify_all()
        self.next_wait(after=call)


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    mock = MockFactory()
    yield mock
    mock.reset()


@pytest.fixture
def clock() -> SteppedClock:
    return SteppedClock()


def led_on(factory: MockFactory, clock: SteppedClock, **kwargs: object) -> StatusLED:
    led = StatusLED(LED_PIN, pin_factory=factory, clock=clock, **kwargs)  # type: ignore[arg-type]
    clock.next_wait(after=0)
    return led


def pin(factory: MockFactory, number: int) -> MockPin:
    return factory.pin(number)


def trace(factory: MockFactory, clock: SteppedClock, steps: int) -> list[tuple[bool, float]]:
    """(LED lit, seconds) for each of the next ``steps`` waits."""
    seen = []
    for _ in range(steps):
        seconds = clock.next_wait(after=clock.calls - 1)
        seen.append((pin(factory, LED_PIN).state, seconds))
        clock.step()
    return seen


def interrupt(clock: SteppedClock, action: Callable[[], None]) -> None:
    """Run ``action`` and wait until the LED thread has started over on it."""
    call = clock.calls
    action()
    clock.next_wait(after=call)


def expected(pattern: Pattern, rounds: int = 1, scale: float = 1.0) -> list[tuple[bool, object]]:
    """What ``trace`` should see, durations compared with a float tolerance."""
    steps: list[tuple[bool, object]] = [
        (i % 2 == 0, pytest.approx(s * scale)) for i, s in enumerate(pattern)
    ]
    return steps * rounds


def history(factory: MockFactory, number: int = LED_PIN) -> list[bool]:
    return [change.state for change in pin(factory, number).states]


def alternating(count: int) -> list[bool]:
    """Off (the initial state), then on, off, on, ... for ``count`` changes."""
    return [bool(i % 2) for i in range(count + 1)]


# --- condition() -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sensors", "uplink", "storage_ok", "want"),
    [
        ([], "ok", True, Condition.OK),
        (["starting", "ok"], "disabled", True, Condition.OK),
        (["ok", "warning"], "ok", True, Condition.DEGRADED),
        (["failed"], "disabled", True, Condition.DEGRADED),
        (["ok"], "offline", True, Condition.OFFLINE),
        (["failed", "warning"], "offline", True, Condition.OFFLINE),
        ([], "auth", True, Condition.FATAL),
        (["failed"], "auth", True, Condition.FATAL),
        (["ok"], "ok", False, Condition.FATAL),
        (["failed"], "offline", False, Condition.FATAL),
        ([State.OK, State.WARNING], "ok", True, Condition.DEGRADED),  # the sampler's own enum
        ((s for s in ["ok", "failed"]), "ok", True, Condition.DEGRADED),  # any iterable
    ],
)
def test_condition_shows_the_most_urgent(
    sensors: list[str], uplink: str, storage_ok: bool, want: Condition
) -> None:
    assert condition(sensors, uplink, storage_ok) is want


@pytest.mark.parametrize(
    ("sensors", "uplink", "message"),
    [([], "retrying", "unknown uplink state 'retrying'"), (["ok", "dead"], "ok", "'dead'")],
)
def test_condition_refuses_states_it_does_not_know(
    sensors: list[str], uplink: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        condition(sensors, uplink, True)


# --- the patterns ----------------------------------------------------------------------------


def test_patterns_are_the_documented_ones() -> None:
    assert PATTERNS[Condition.OK] == (0.2, 4.8)
    assert PATTERNS[Condition.DEGRADED] == (0.5, 0.5)
    assert PATTERNS[Condition.OFFLINE] == (0.2, 0.3, 0.2, 1.3)
    assert PATTERNS[Condition.IDENTIFY] == (0.1, 0.1)
    sos = PATTERNS[Condition.FATAL]
    assert [pytest.approx(s) for s in sos[::2]] == [0.15] * 3 + [0.45] * 3 + [0.15] * 3
    assert sum(sos) == pytest.approx(5.1)
    for pattern in PATTERNS.values():  # every pattern changes within 5 s: steady means dead
        assert max(pattern) < 5.0 and len(pattern) % 2 == 0


@pytest.mark.parametrize("shown", [Condition.OK, Condition.DEGRADED, Condition.OFFLINE,
                                   Condition.FATAL])
def test_each_condition_plays_its_pattern_round_after_round(
    factory: MockFactory, clock: SteppedClock, shown: Condition
) -> None:
    with led_on(factory, clock, initial=shown):
        steps = len(PATTERNS[shown])
        assert trace(factory, clock, 2 * steps) == expected(PATTERNS[shown], rounds=2)
        assert history(factory) == alternating(2 * steps + 1)  # and lit for the next round


def test_time_scale_shortens_every_step(factory: MockFactory, clock: SteppedClock) -> None:
    with led_on(factory, clock, initial=Condition.OFFLINE, time_scale=0.1):
        assert trace(factory, clock, 4) == expected(PATTERNS[Condition.OFFLINE], scale=0.1)


def test_patterns_can_be_replaced(factory: MockFactory, clock: SteppedClock) -> None:
    patterns = dict(PATTERNS) | {Condition.OK: (1.0, 2.0, 3.0, 4.0)}
    with led_on(factory, clock, patterns=patterns):
        assert trace(factory, clock, 4) == expected((1.0, 2.0, 3.0, 4.0))


def test_pattern_timing_on_the_real_clock(factory: MockFactory) -> None:
    # MockPin stamps each change with the real monotonic clock: 0.1 s on, 0.1 s off.
    led_pin = pin(factory, LED_PIN)
    with StatusLED(LED_PIN, pin_factory=factory, clock=SystemClock(),
                   initial=Condition.DEGRADED, time_scale=0.2):
        time.sleep(0.75)
    states = led_pin.states
    assert len(states) >= 8
    led_pin.assert_states_and_times(
        [(0.0, False), (0.0, True)] + [(0.1, bool(i % 2)) for i in range(6)]
    )


# --- switching, identify, close --------------------------------------------------------------


def test_show_switches_at_once_and_restarts_the_pattern(
    factory: MockFactory, clock: SteppedClock
) -> None:
    with led_on(factory, clock) as led:
        assert trace(factory, clock, 2) == expected(PATTERNS[Condition.OK])
        assert trace(factory, clock, 1) == [(True, 0.2)]  # OK is lit: cut its flash short
        interrupt(clock, lambda: led.show(Condition.FATAL))
        assert led.condition is Condition.FATAL
        sos = PATTERNS[Condition.FATAL]
        assert trace(factory, clock, len(sos)) == expected(sos)
        interrupt(clock, lambda: led.show(Condition.OFFLINE))
        assert trace(factory, clock, 4) == expected(PATTERNS[Condition.OFFLINE])
        # the SOS began lit, where OK's flash was, so the history only alternates
        assert history(factory) == alternating(len(history(factory)) - 1)


def test_showing_the_same_condition_again_changes_nothing(
    factory: MockFactory, clock: SteppedClock
) -> None:
    with led_on(factory, clock, initial=Condition.OFFLINE) as led:
        assert trace(factory, clock, 1) == [(True, 0.2)]
        calls = clock.calls
        led.show(Condition.OFFLINE)
        time.sleep(20 * SteppedClock.POLL_S)
        assert clock.calls == calls  # the 0.3 s gap was not cut short
        assert trace(factory, clock, 3) == [(False, 0.3), (True, 0.2), (False, 1.3)]


def test_identify_overrides_then_reverts_after_its_time(
    factory: MockFactory, clock: SteppedClock
) -> None:
    with led_on(factory, clock, initial=Condition.DEGRADED) as led:
        interrupt(clock, lambda: led.identify(1.0))
        assert led.identifying
        assert trace(factory, clock, 10) == expected(PATTERNS[Condition.IDENTIFY], rounds=5)
        assert not led.identifying
        assert trace(factory, clock, 2) == expected(PATTERNS[Condition.DEGRADED])


def test_identify_ends_on_time_even_mid_flash(factory: MockFactory, clock: SteppedClock) -> None:
    with led_on(factory, clock, initial=Condition.OFFLINE) as led:
        interrupt(clock, lambda: led.identify(0.25))
        assert trace(factory, clock, 3) == [(True, 0.1), (False, 0.1), (True, pytest.approx(0.05))]
        assert trace(factory, clock, 4) == expected(PATTERNS[Condition.OFFLINE])


def test_identify_lasts_a_minute_by_default(factory: MockFactory, clock: SteppedClock) -> None:
    with led_on(factory, clock) as led:
        start = clock.monotonic()
        interrupt(clock, led.identify)
        while led.identifying:
            assert trace(factory, clock, 1)[0][1] == pytest.approx(0.1)
        assert clock.monotonic() - start == pytest.approx(60.0)
        assert trace(factory, clock, 2) == expected(PATTERNS[Condition.OK])


def test_a_condition_shown_while_identifying_follows_it(
    factory: MockFactory, clock: SteppedClock
) -> None:
    with led_on(factory, clock) as led:
        interrupt(clock, lambda: led.identify(0.4))
        assert trace(factory, clock, 1) == [(True, 0.1)]
        interrupt(clock, lambda: led.show(Condition.OFFLINE))
        assert trace(factory, clock, 3) == expected(PATTERNS[Condition.IDENTIFY] * 2)[:3]
        assert trace(factory, clock, 4) == expected(PATTERNS[Condition.OFFLINE])


def test_identify_zero_stops_it(factory: MockFactory, clock: SteppedClock) -> None:
    with led_on(factory, clock, initial=Condition.DEGRADED) as led:
        interrupt(clock, led.identify)
        assert trace(factory, clock, 3) == expected(PATTERNS[Condition.IDENTIFY] * 2)[:3]
        interrupt(clock, lambda: led.identify(0))
        assert not led.identifying
        assert trace(factory, clock, 2) == expected(PATTERNS[Condition.DEGRADED])


def test_close_turns_the_led_off_stops_the_thread_and_frees_the_pin(
    factory: MockFactory, clock: SteppedClock
) -> None:
    before = set(threading.enumerate())
    led = led_on(factory, clock, initial=Condition.DEGRADED)
    (thread,) = set(threading.enumerate()) - before
    assert pin(factory, LED_PIN).state is True  # closed in the middle of a lit step
    led.close()
    assert not thread.is_alive()
    assert history(factory) == [False, True, False]
    led.close()  # twice is fine
    led.show(Condition.FATAL)  # and a late show is ignored
    with LED(LED_PIN, pin_factory=factory):  # the pin is free again
        pass


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"time_scale": 0.0}, "time_scale must be positive"),
        ({"patterns": {Condition.OK: (0.2, 4.8)}}, "pattern degraded"),
        ({"patterns": dict(PATTERNS) | {Condition.FATAL: (0.2,)}}, "pattern fatal"),
        ({"patterns": dict(PATTERNS) | {Condition.OK: (0.2, 0.0)}}, "pattern ok"),
        ({"initial": Condition.IDENTIFY}, "identify is an overlay"),
    ],
)
def test_bad_led_arguments_are_refused(
    factory: MockFactory, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        StatusLED(LED_PIN, pin_factory=factory, clock=FakeClock(), **kwargs)  # type: ignore[arg-type]


def test_identify_cannot_be_shown_as_a_condition(
    factory: MockFactory, clock: SteppedClock
) -> None:
    with led_on(factory, clock) as led, pytest.raises(ValueError, match="overlay"):
        led.show(Condition.IDENTIFY)


# --- the button ------------------------------------------------------------------------------


class Presses:
    """What the button reported, and events to wait for it."""

    def __init__(self) -> None:
        self.short = 0
        self.long = 0
        self.long_seen = threading.Event()

    def on_short(self) -> None:
        self.short += 1

    def on_long(self) -> None:
        self.long += 1
        self.long_seen.set()


def button_on(
    factory: MockFactory, presses: Presses, hold_time: float = PRESS_HOLD_S
) -> ServiceButton:
    return ServiceButton(BUTTON_PIN, pin_factory=factory, hold_time=hold_time,
                         on_short_press=presses.on_short, on_long_press=presses.on_long)


def test_a_short_press_is_reported_on_release(factory: MockFactory) -> None:
    presses = Presses()
    switch = pin(factory, BUTTON_PIN)
    with button_on(factory, presses):
        assert switch.state is True  # the pull-up holds the open switch high
        switch.drive_low()
        assert (presses.short, presses.long) == (0, 0)
        switch.drive_high()
        assert (presses.short, presses.long) == (1, 0)
        switch.drive_low()
        switch.drive_high()
        assert (presses.short, presses.long) == (2, 0)
        time.sleep(2 * PRESS_HOLD_S)  # no hold fires after the release
        assert presses.long == 0


def test_a_long_press_is_reported_once_while_held_and_not_again_on_release(
    factory: MockFactory,
) -> None:
    presses = Presses()
    switch = pin(factory, BUTTON_PIN)
    with button_on(factory, presses):
        switch.drive_low()
        assert presses.long_seen.wait(CALLBACK_TIMEOUT_S)
        time.sleep(2 * PRESS_HOLD_S)  # still held: no repeat
        switch.drive_high()
        assert (presses.short, presses.long) == (0, 1)
        switch.drive_low()  # the next press is counted afresh
        switch.drive_high()
        assert (presses.short, presses.long) == (1, 1)


def test_each_press_is_reported_exactly_once_even_at_the_hold_time(
    factory: MockFactory,
) -> None:
    # Released right around the hold time, the release and gpiozero's hold thread race.
    presses = Presses()
    switch = pin(factory, BUTTON_PIN)
    count = 12
    with button_on(factory, presses, hold_time=0.05):
        for _ in range(count):
            switch.drive_low()
            time.sleep(0.05)
            switch.drive_high()
            time.sleep(0.03)  # a late hold must arrive before the next press to be dropped
        time.sleep(0.1)
    assert presses.short + presses.long == count


def test_an_action_that_raises_is_logged_and_the_button_keeps_working(
    factory: MockFactory, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def broken() -> None:
        calls.append("short")
        raise RuntimeError("upstream exploded")

    held = threading.Event()

    def broken_long() -> None:
        held.set()
        raise OSError("no LED")

    switch = pin(factory, BUTTON_PIN)
    with caplog.at_level(logging.ERROR, logger="envagent.indicator"), ServiceButton(
        BUTTON_PIN, pin_factory=factory, hold_time=PRESS_HOLD_S,
        on_short_press=broken, on_long_press=broken_long,
    ):
        for _ in range(2):
            switch.drive_low()
            switch.drive_high()  # would raise here if the error escaped into gpiozero
        switch.drive_low()
        assert held.wait(CALLBACK_TIMEOUT_S)
        switch.drive_high()
        switch.drive_low()
        switch.drive_high()
    assert calls == ["short"] * 3
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("service button: the short press action failed") == 3
    assert messages.count("service button: the long press action failed") == 1
    assert "upstream exploded" in caplog.text


def test_close_frees_the_pin_and_ends_the_reports(factory: MockFactory) -> None:
    presses = Presses()
    switch = pin(factory, BUTTON_PIN)
    button_on(factory, presses).close()
    switch.drive_low()
    switch.drive_high()
    assert (presses.short, presses.long) == (0, 0)
    with Button(BUTTON_PIN, pin_factory=factory):  # the pin is free again
        pass


def test_a_bad_hold_time_is_refused(factory: MockFactory) -> None:
    with pytest.raises(ValueError, match="hold_time"):
        button_on(factory, Presses(), hold_time=0)


# --- [indicator] in the config ---------------------------------------------------------------

UNIT = {"unit": {"id": "u1", "site": "roof"}}


def indicator(table: object) -> IndicatorConfig | None:
    return parse_config(UNIT | {"indicator": table}, source="test.toml", drivers={}).indicator


def test_no_indicator_section_means_no_led_and_no_button() -> None:
    assert parse_config(UNIT, drivers={}).indicator is None


@pytest.mark.parametrize(
    "written", [17, "GPIO17", "gpio17", "BCM17", "BOARD11", "J8:11", " GPIO17 "]
)
def test_a_pin_may_be_written_as_a_number_or_any_gpiozero_name(written: object) -> None:
    assert indicator({"led_pin": written}) == IndicatorConfig(led_pin=17)


def test_indicator_keys_and_defaults() -> None:
    assert indicator({"led_pin": 17}) == IndicatorConfig(17, None, 3.0)
    got = indicator({"led_pin": "BOARD40", "button_pin": 0, "hold_time": "1500ms"})
    assert got == IndicatorConfig(led_pin=21, button_pin=0, hold_time=1.5)


PIN_EXPECTED = ('expected a GPIO number from 0 to 27 such as 17, or a pin name such as "GPIO17" '
                'or "BOARD11" (physical pin 11 of the 40-pin header)')


@pytest.mark.parametrize(
    ("table", "line"),
    [
        ({"led_pin": 28}, f"indicator.led_pin = 28: {PIN_EXPECTED}"),
        ({"led_pin": -1}, f"indicator.led_pin = -1: {PIN_EXPECTED}"),
        ({"led_pin": True}, f"indicator.led_pin = true: {PIN_EXPECTED}"),
        ({"led_pin": 17.0}, f"indicator.led_pin = 17.0: {PIN_EXPECTED}"),
        ({"led_pin": "WPI0"}, f'indicator.led_pin = "WPI0": {PIN_EXPECTED}'),
        ({"led_pin": "GPIO40"}, f'indicator.led_pin = "GPIO40": {PIN_EXPECTED}'),
        ({"led_pin": "17"},
         f'indicator.led_pin = "17": {PIN_EXPECTED}; write 17 without quotes'),
        ({"led_pin": "BOARD1"},
         f'indicator.led_pin = "BOARD1": physical pin 1 is not a GPIO pin; {PIN_EXPECTED}'),
        ({"led_pin": 2}, "indicator.led_pin = 2: GPIO2 is SDA of I2C bus 1, the sensors' bus; "
                         "choose a free GPIO such as 17"),
        ({"led_pin": 17, "button_pin": "BOARD5"},
         'indicator.button_pin = "BOARD5": GPIO3 is SCL of I2C bus 1, the sensors\' bus; '
         "choose a free GPIO such as 17"),
        ({"led_pin": 17, "button_pin": "BOARD11"},
         'indicator.button_pin = "BOARD11": the same pin as led_pin (GPIO17); wire the button '
         "to another GPIO"),
        ({"led_pin": 17, "hold_time": "20s"},
         'indicator.hold_time = "20s": expected a duration from 1s to 10s'),
        ({"led_pin": 17, "hold_time": 0.5},
         "indicator.hold_time = 0.5: expected a duration from 1s to 10s"),
        ({"led_pin": 17, "hold_time": "3 seconds"},
         'indicator.hold_time = "3 seconds": unknown unit "seconds" (use ms, s, m, h or d); '
         'expected a duration such as "10s", "5m" or "1h"'),
        ({"led_pin": 17, "led": 18},
         "indicator.led: unknown key; valid keys are led_pin, button_pin, hold_time"),
        ({"button_pin": 27}, "indicator.led_pin: missing; add it, such as led_pin = 17"),
        ("GPIO17", 'indicator = "GPIO17": expected a table [indicator]'),
    ],
)
def test_indicator_mistakes_give_one_line_naming_key_value_and_expectation(
    table: object, line: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        indicator(table)
    assert caught.value.problems == [f"test.toml: {line}"]
