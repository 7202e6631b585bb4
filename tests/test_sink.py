"""Transport-neutral delivery (issue 13, point 3): the one delivery worker drives any transport
through the Sink protocol (agent.uplink.sink), and a transport is found by its URL's scheme.

The transport here is a model, not a Mock(): :class:`ScriptedSink` encodes a batch as one line
per reading (so a test reads back which readings each send carried), answers each send from a
script of :class:`Answer`s -- or by a rule, as a server that refuses a poison reading would --
records what went out, and refuses new sends once a stop began, as the protocol says. The
worker runs on a real outbox; its waits are returned by ``Uplink.step`` and never slept.
"""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
import threading
import tomllib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from agent.config import UplinkConfig, parse_config
from agent.core.credentials import Secret
from agent.core.errors import ConfigError
from agent.core.reading import Reading
from agent.store import commission
from agent.store.commission import Facts, make_record
from agent.store.outbox import Outbox, Subscriber
from agent.uplink import http
from agent.uplink.encoders import JsonEncoder
from agent.uplink.http import HttpSink
from agent.uplink.lineprotocol import Epochs
from agent.uplink.metadata import Commissioning
from agent.uplink.sink import Answer, Outcome
from agent.uplink.state import STATE_FILE, UplinkState, state_file
from agent.uplink.transports import TRANSPORTS, build_sink, transport_for
from agent.uplink.worker import Step, Uplink
from drivers.sim.clock import FakeClock

ROOT = Path(__file__).resolve().parents[1]

ONE = [Subscriber("default")]  # the one upstream of these tests


T0 = 1_767_225_600_000_000_000
NS = 1_000_000_000
SETTINGS = {"backoff_min": 1.0, "backoff_max": 40.0, "retry_after_max": 60.0,
            "auth_retry": 600.0, "flush_interval": 5.0}
Key = tuple[str, str, int]
Rule = Callable[[list[Key]], Answer]


def delivered(keys: list[Key]) -> Answer:
    return Answer(Outcome.DELIVERED, "accepted")


class ScriptedSink:
    """A transport model (see the module docstring): each send pops the next scripted answer,
    and once the script is spent answers by ``rule`` (delivered, unless told otherwise)."""

    def __init__(self, script: Iterable[Answer] = (), *, rule: Rule = delivered,
                 name: str = "default", documents: bool = False) -> None:
        self.where = f"'{name}' at scripted://collector"
        self.documents = documents
        self.script = deque(script)
        self.rule = rule
        self.sent: list[bytes] = []
        self.tokens: list[Secret | None] = []
        self.epochs: list[tuple[int, dict[str, str]]] = []
        self.refused = self.closed = False

    def encode(self, readings: Sequence[Reading]) -> bytes:
        return "".join(json.dumps([r.sensor, r.quantity, r.time_ns]) + "\n"
                       for r in readings).encode()

    def set_epochs(self, epochs: Epochs) -> None:
        self.epochs = [(start, dict(tags)) for start, tags in epochs]

    def idle(self, token: Secret | None) -> None:
        """Nothing kept open."""

    def send(self, body: bytes, token: Secret | None) -> Answer:
        if self.refused:
            return Answer(Outcome.STOPPED)
        self.sent.append(body)
        self.tokens.append(token)
        return self.script.popleft() if self.script else self.rule(keys_in(body))

    def refuse(self) -> None:
        self.refused = True

    def abort(self) -> None:
        pass  # nothing is ever in flight across threads here

    def close(self) -> None:
        self.refuse()
        self.closed = True


def keys_in(body: bytes) -> list[Key]:
    return [tuple(json.loads(line)) for line in body.decode().splitlines()]  # type: ignore[misc]


def readings(count: int, *, start: int = 0, quantity: str = "temperature") -> list[Reading]:
    return [Reading("air", quantity, 20.0 + i / 8, "°C", T0 + i * NS, i * NS, "boot-1", True)
            for i in range(start, start + count)]


def key(r: Reading) -> Key:
    return (r.sensor, r.quantity, r.time_ns)


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    with Outbox(tmp_path / "outbox.sqlite", max_bytes=64 * 1024**2, subscribers=ONE) as box:
        yield box


def worker(outbox: Outbox, sink: ScriptedSink, tmp_path: Path, *, name: str = "default",
           batch_size: int = 100, tokens: list[str] | None = None) -> Uplink:
    settings = UplinkConfig(url="scripted://collector", name=name, batch_size=batch_size,
                            **SETTINGS)
    read = tokens if tokens is not None else []

    def token() -> Secret:
        read.append("read")
        return Secret("tok-SECRET-1")

    return Uplink(outbox, sink, settings, clock=FakeClock(), token=token,
                  state_path=tmp_path / state_file(name), rng=random.Random(3))


def drain(uplink: Uplink, limit: int = 100) -> list[Step]:
    steps = []
    for _ in range(limit):
        steps.append(uplink.step())
        if steps[-1].caught_up and uplink.outbox.stats().backlog == 0:
            return steps
    raise AssertionError(f"not drained after {limit} steps: {steps[-3:]}")


# --- every outcome --------------------------------------------------------------------------


def test_delivered_acks_the_batch(outbox: Outbox, tmp_path: Path) -> None:
    outbox.append(readings(5))
    sink = ScriptedSink([Answer(Outcome.DELIVERED, "accepted")])
    uplink = worker(outbox, sink, tmp_path)
    step = uplink.step()
    assert (step.outcome, step.delivered, step.caught_up) == (Outcome.DELIVERED, 5, True)
    assert step.wait == SETTINGS["flush_interval"] and step.answer == Answer(
        Outcome.DELIVERED, "accepted")
    assert outbox.stats().backlog == 0 and uplink.state.state == "ok"
    assert [keys_in(b) for b in sink.sent] == [[key(r) for r in readings(5)]]


@pytest.mark.parametrize(("retry_after", "low", "high"), [
    (None, 0.0, SETTINGS["backoff_min"]),  # full jitter under the first ceiling
    (30.0, 30.0, 30.0),  # the server's delay, longer than the backoff
    (1e9, 60.0, 60.0),  # clamped to retry_after_max
    (0.0, 0.0, SETTINGS["backoff_min"]),  # shorter than the backoff: the backoff
])
def test_retry_waits_and_sends_the_very_same_bytes(retry_after: float | None, low: float,
                                                   high: float, outbox: Outbox,
                                                   tmp_path: Path) -> None:
    outbox.append(readings(5))
    sink = ScriptedSink([Answer(Outcome.RETRY, "unreachable", retry_after=retry_after)])
    uplink = worker(outbox, sink, tmp_path)
    first = uplink.step()
    assert first.outcome is Outcome.RETRY and low <= first.wait <= high
    assert outbox.stats().backlog == 5 and uplink.state.state == "retrying"
    assert uplink.state.last_error == "unreachable"
    assert uplink.step().outcome is Outcome.DELIVERED
    assert sink.sent[0] == sink.sent[1] and outbox.stats().backlog == 0


def test_backoff_doubles_while_the_transport_keeps_failing(outbox: Outbox,
                                                           tmp_path: Path) -> None:
    outbox.append(readings(1))
    sink = ScriptedSink(rule=lambda keys: Answer(Outcome.RETRY, "down"))
    uplink = worker(outbox, sink, tmp_path)
    waits = [uplink.step().wait for _ in range(200)]
    assert max(waits[:1]) <= 1.0 and max(waits[150:]) <= SETTINGS["backoff_max"]
    assert max(waits[100:]) > 20.0  # the ceiling grew to backoff_max: the jitter reaches it


def test_auth_pauses_and_reads_the_token_again(outbox: Outbox, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    outbox.append(readings(3))
    sink = ScriptedSink([Answer(Outcome.AUTH, "HTTP 401: bad token"),
                         Answer(Outcome.AUTH, "HTTP 401: bad token")])
    reads: list[str] = []
    uplink = worker(outbox, sink, tmp_path, tokens=reads)
    steps = [uplink.step() for _ in range(3)]
    assert [(s.outcome, s.wait) for s in steps] == [
        (Outcome.AUTH, 600.0), (Outcome.AUTH, 600.0), (Outcome.DELIVERED, 5.0)]
    assert len(reads) == 3  # re-read before every try after a refusal
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "paused" in errors[0] and "'default' at scripted://" in errors[0]


def test_failed_is_loud_with_the_transports_hint(outbox: Outbox, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    outbox.append(readings(2))
    sink = ScriptedSink([Answer(Outcome.FAILED, "HTTP 404: no such bucket",
                                "check the bucket= of uplink.url")])
    uplink = worker(outbox, sink, tmp_path)
    step = uplink.step()
    assert (step.outcome, step.wait) == (Outcome.FAILED, SETTINGS["backoff_max"])
    assert uplink.state.state == "failing"
    assert uplink.state.last_error == "HTTP 404: no such bucket; check the bucket= of uplink.url"
    saved = UplinkState.load(tmp_path / STATE_FILE)
    assert saved is not None and saved.last_error == uplink.state.last_error
    assert outbox.stats().backlog == 2
    assert "delivery to 'default' at scripted://collector failed" in caplog.text


def test_stopped_keeps_the_batch_and_blames_nobody(outbox: Outbox, tmp_path: Path) -> None:
    outbox.append(readings(4))
    sink = ScriptedSink([Answer(Outcome.STOPPED)])
    uplink = worker(outbox, sink, tmp_path)
    step = uplink.step()
    assert (step.outcome, step.wait, step.delivered) == (Outcome.RETRY, 0.0, 0)
    assert uplink.state.state == "starting" and uplink.state.last_error is None
    assert outbox.stats().backlog == 4
    assert uplink.step().outcome is Outcome.DELIVERED and sink.sent[0] == sink.sent[1]


def test_rejected_readings_are_bisected_out_and_quarantined(outbox: Outbox,
                                                           tmp_path: Path) -> None:
    appended = readings(40)
    poison = readings(1, start=1000, quantity="POISON")[0]
    appended[17:17] = [poison]
    outbox.append(appended)

    def refusing(keys: list[Key]) -> Answer:
        if any(k[1] == "POISON" for k in keys):
            return Answer(Outcome.REJECTED, "unparsable POISON")
        return Answer(Outcome.DELIVERED)

    sink = ScriptedSink(rule=refusing)
    steps = drain(worker(outbox, sink, tmp_path))
    (moved,) = outbox.quarantined(10)
    # the reason names the upstream that refused it (the others may still take the reading)
    assert key(moved.reading) == key(poison) and moved.reason == "default: unparsable POISON"
    assert sum(s.quarantined for s in steps) == 1 and sum(s.delivered for s in steps) == 40
    accepted = [k for body in sink.sent for k in keys_in(body) if "POISON" not in body.decode()]
    assert sorted(accepted) == sorted(key(r) for r in appended if r is not poison)


def test_too_large_halves_and_remembers_the_size(outbox: Outbox, tmp_path: Path) -> None:
    outbox.append(readings(40))
    sink = ScriptedSink(rule=lambda keys: Answer(Outcome.TOO_LARGE, "413") if len(keys) > 10
                        else Answer(Outcome.DELIVERED))
    uplink = worker(outbox, sink, tmp_path, batch_size=40)
    drain(uplink)
    assert uplink.batch_limit == 10 and outbox.stats().delivered == 40
    sizes = [len(keys_in(b)) for b in sink.sent]
    assert sizes == [40, 20, 10, 10, 10, 10]


# --- partial acknowledgement (a transport that acks per packet) ------------------------------


def test_accepted_readings_of_a_failed_send_are_acked_and_the_rest_retried(
        outbox: Outbox, tmp_path: Path) -> None:
    appended = readings(10)
    outbox.append(appended)
    sink = ScriptedSink([Answer(Outcome.RETRY, "connection reset after 4 packets", accepted=4)])
    uplink = worker(outbox, sink, tmp_path)
    first = uplink.step()
    assert (first.outcome, first.delivered) == (Outcome.RETRY, 4)
    assert outbox.stats().backlog == 6 and outbox.stats().delivered == 4
    assert uplink.state.last_success_ns is not None and uplink.state.state == "retrying"
    second = uplink.step()
    assert (second.outcome, second.delivered) == (Outcome.DELIVERED, 6)
    assert keys_in(sink.sent[1]) == [key(r) for r in appended[4:]]  # the rest, nothing twice
    assert outbox.stats().backlog == 0


def test_a_partial_delivery_sends_the_rest_at_once(outbox: Outbox, tmp_path: Path) -> None:
    appended = readings(10)
    outbox.append(appended)
    sink = ScriptedSink([Answer(Outcome.DELIVERED, "window full", accepted=3)])
    uplink = worker(outbox, sink, tmp_path)
    first = uplink.step()
    assert (first.outcome, first.wait, first.delivered, first.caught_up) == (
        Outcome.DELIVERED, 0.0, 3, False)
    second = uplink.step()
    assert (second.delivered, second.caught_up) == (7, True)
    assert keys_in(sink.sent[1]) == [key(r) for r in appended[3:]]
    report = worker(outbox, ScriptedSink(), tmp_path).flush()
    assert report.ok and outbox.stats().delivered == 10


def test_a_flush_goes_on_through_partial_deliveries(outbox: Outbox, tmp_path: Path) -> None:
    outbox.append(readings(9))
    sink = ScriptedSink(rule=lambda keys: Answer(Outcome.DELIVERED, accepted=min(2, len(keys))))
    report = worker(outbox, sink, tmp_path).flush()
    assert (report.ok, report.delivered) == (True, 9)
    assert [len(keys_in(b)) for b in sink.sent] == [9, 7, 5, 3, 1]


def test_accepted_readings_of_a_stopped_send_are_acked(outbox: Outbox, tmp_path: Path) -> None:
    outbox.append(readings(5))
    sink = ScriptedSink([Answer(Outcome.STOPPED, accepted=2)])
    uplink = worker(outbox, sink, tmp_path)
    step = uplink.step()
    assert (step.outcome, step.wait, step.delivered) == (Outcome.RETRY, 0.0, 2)
    assert outbox.stats().backlog == 3


def test_a_rejection_after_accepted_packets_bisects_only_the_rest(outbox: Outbox,
                                                                   tmp_path: Path) -> None:
    appended = readings(6)
    outbox.append(appended)
    bad = key(appended[2])
    sink = ScriptedSink([Answer(Outcome.REJECTED, "bad packet", accepted=2)],
                        rule=lambda keys: Answer(Outcome.REJECTED, "bad packet") if bad in keys
                        else Answer(Outcome.DELIVERED))
    uplink = worker(outbox, sink, tmp_path)
    drain(uplink)
    (moved,) = outbox.quarantined(10)
    assert key(moved.reading) == key(appended[2])
    assert [keys_in(b) for b in sink.sent[1:3]] == [[key(r) for r in appended[2:4]],
                                                   [key(appended[2])]]
    assert outbox.stats().delivered == 5


def test_every_reading_accepted_is_a_delivery_whatever_followed(outbox: Outbox,
                                                                 tmp_path: Path) -> None:
    outbox.append(readings(3))
    sink = ScriptedSink([Answer(Outcome.RETRY, "closed after the last ack", accepted=3)])
    step = worker(outbox, sink, tmp_path).step()
    assert (step.outcome, step.delivered, step.caught_up) == (Outcome.DELIVERED, 3, True)


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"outcome": Outcome.IDLE}, "worker's outcome"),
    ({"outcome": Outcome.DELIVERED, "accepted": 0}, "answers retry"),
    ({"outcome": Outcome.RETRY, "accepted": -1}, "count of readings"),
    ({"outcome": Outcome.RETRY, "retry_after": -5.0}, "parsed and clamped"),
    ({"outcome": Outcome.RETRY, "retry_after": float("nan")}, "parsed and clamped"),
])
def test_an_answer_no_transport_may_give_is_refused(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        Answer(**kwargs)


# --- the stop, names, the state file ------------------------------------------------------------


def test_a_stop_refuses_new_sends_then_closes_the_transport(outbox: Outbox,
                                                            tmp_path: Path) -> None:
    sink = ScriptedSink()
    uplink = worker(outbox, sink, tmp_path, name="bureau")
    uplink.start()
    assert "uplink-bureau" in {t.name for t in threading.enumerate()}
    uplink.request_stop()
    assert sink.refused and not sink.closed
    outbox.append(readings(3))
    uplink.stop(grace=1.0)
    assert sink.closed and not sink.sent and outbox.stats().backlog == 3


def test_each_upstream_has_its_own_state_file_and_names_itself(
        outbox: Outbox, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    outbox.subscribe([Subscriber("bureau")])
    outbox.append(readings(2))
    uplink = worker(outbox, ScriptedSink(name="bureau"), tmp_path, name="bureau")
    assert uplink.name == "bureau"
    assert uplink.flush().ok
    state = UplinkState.load(tmp_path / "uplink-bureau-state.json")
    assert state is not None and state.state == "ok"
    assert not (tmp_path / STATE_FILE).exists()
    assert "delivering to 'bureau' at scripted://collector" in caplog.text


def test_state_file_names() -> None:
    assert state_file("default") == STATE_FILE == "uplink-state.json"  # as before
    assert state_file("bureau") == "uplink-bureau-state.json"
    for bad in ("../etc", "Bureau", "a b", ""):
        with pytest.raises(ValueError, match="fix \\[\\[uplink\\]\\] name"):
            state_file(bad)


def test_a_worker_in_its_thread_delivers_through_any_sink(outbox: Outbox,
                                                          tmp_path: Path) -> None:
    done = threading.Event()

    def noting(keys: list[Key]) -> Answer:
        done.set()
        return Answer(Outcome.DELIVERED)

    outbox.append(readings(3))
    uplink = worker(outbox, ScriptedSink(rule=noting), tmp_path)
    uplink.start()
    try:
        assert done.wait(10.0)
    finally:
        uplink.stop()
    assert outbox.stats().backlog == 0


# --- the registry -----------------------------------------------------------------------------

CONFIG = '[unit]\nid = "u1"\nsite = "Roof"\n[[sensor]]\nid = "air"\ndriver = "bme280"\n' \
         'address = 0x76\n'


def test_the_url_scheme_picks_the_transport() -> None:
    config = parse_config(tomllib.loads(CONFIG), source="t.toml")
    settings = UplinkConfig(url="https://user:pw@tsdb.example.org:8428/write?db=x&p=secret",
                            name="network")
    sink = build_sink(config, settings)
    try:
        assert isinstance(sink, HttpSink)
        assert sink.where == "'network' at https://tsdb.example.org:8428/write"
        assert sink.documents
    finally:
        sink.close()
    assert transport_for(settings) is http.TRANSPORT
    assert transport_for(UplinkConfig(url="HTTPS://x.org/write")) is http.TRANSPORT


def test_a_transport_is_loaded_only_when_an_upstream_uses_it() -> None:
    """A unit posting over HTTP does not carry the HJ 212 and MQTT code in its memory."""
    probe = ("import sys, tomllib\n"
             "from agent.config import parse_config, UplinkConfig\n"
             "from agent.uplink.transports import build_sink\n"
             f"config = parse_config(tomllib.loads({CONFIG!r}), source='t.toml')\n"
             "build_sink(config, UplinkConfig(url='https://tsdb.example.org/write')).close()\n"
             "print(sorted(m for m in sys.modules if m.startswith('agent.uplink.')))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    loaded = done.stdout
    assert "agent.uplink.http" in loaded
    assert "agent.uplink.hj212" not in loaded and "agent.uplink.mqtt" not in loaded
    assert TRANSPORTS["hj212"] == "agent.uplink.hj212.transport"


@pytest.mark.parametrize("url", ["coap://sensors.example.org:5683/envagent",
                                 "tsdb.example.org/write"])
def test_a_scheme_without_a_transport_is_a_clear_config_error(url: str) -> None:
    config = parse_config(tomllib.loads(CONFIG), source="t.toml")
    settings = UplinkConfig(url=url, name="bureau")
    with pytest.raises(ConfigError) as caught:
        build_sink(config, settings)
    (problem,) = caught.value.problems
    scheme = url.partition("://")[0] + "://" if "://" in url else "a URL without a scheme"
    assert problem == (f"uplink 'bureau': url: no transport for {scheme}; use one of "
                       "hj212://, http://, https://, mqtt://, mqtts://")


# --- commissioning records: only where the transport carries documents --------------------------


@pytest.mark.parametrize("documents", [True, False])
def test_commissioning_records_go_only_through_a_transport_that_carries_them(
        documents: bool, tmp_path: Path) -> None:
    config = parse_config(tomllib.loads(CONFIG), source="t.toml")
    record = make_record(config, Facts(mounting_height_m=2.0), [], time_ns=T0,
                         clock_synced=True, boot_id="boot-1", boot_ns=NS)
    commission.append(tmp_path, record)
    encoder = JsonEncoder(unit="u1", site="Roof", drivers={})
    settings = UplinkConfig(url="scripted://collector", **SETTINGS)
    records = Commissioning(tmp_path, lambda rs: encoder.encode([]), settings, clock=FakeClock())
    sink = ScriptedSink(documents=documents)
    records.step(sink, None)
    assert [start for start, _ in sink.epochs] == [T0]  # the readings' tags, either way
    assert len(sink.sent) == (1 if documents else 0)
