"""Delivery against a fault-injecting server: nothing lost, duplicates only as exact replays,
sampling never waits for the network.

Time: the worker's backoff waits are returned by ``Uplink.step`` and never slept here, so the
injected clock only has to supply wall time (Retry-After dates, the state file); network timeouts
are real but tiny (0.3 s connect, 0.5 s read, 1.5 s total deadline).
"""

from __future__ import annotations

import email.utils
import itertools
import json
import logging
import math
import os
import random
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from httpfaults import (
    Action,
    FaultServer,
    Handler,
    Received,
    commit_then_drop,
    drip,
    hang,
    limit_size,
    ok,
    parse_line,
    reject_marker,
    reset_mid_request,
    reset_mid_response,
    status,
)

from agent.config import UplinkConfig, parse_config
from agent.core.credentials import Secret
from agent.core.errors import ConfigError
from agent.core.reading import Reading
from agent.store.outbox import Outbox, Subscriber
from agent.uplink.encoders import make_encoder
from agent.uplink.http import HttpSink, answer_of, classify, retry_after_seconds
from agent.uplink.httpwire import Failure, Reply, make_session
from agent.uplink.policy import backoff_delay
from agent.uplink.worker import STATE_FILE, Outcome, Step, Uplink, UplinkState
from drivers.clock import SystemClock
from drivers.sim.clock import FakeClock

ONE = [Subscriber("default")]  # the one upstream of these tests


ROOT = Path(__file__).resolve().parents[1]
T0 = 1_767_225_600_000_000_000
SITE = "汉中 wetland, east"
TOKEN = "tok-SECRET-8c1f2e9d"
FAST: dict[str, Any] = {
    "connect_timeout": 0.3, "read_timeout": 0.5, "deadline": 1.5, "backoff_min": 0.05,
    "backoff_max": 2.0, "retry_after_max": 60.0, "auth_retry": 600.0, "flush_interval": 5.0,
}
APPEND_BOUND_S = 0.5  # sampling may never wait this long for delivery: a correctness bound
Key = tuple[str, str, int]


# --- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    with Outbox(tmp_path / "outbox.sqlite", max_bytes=64 * 1024**2, subscribers=ONE) as box:
        yield box


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as fault_server:
        yield fault_server


def samples(count: int, *, sensor: str = "air", start: int = 0) -> list[Reading]:
    return [Reading(sensor, quantity, 20.0 + i / 8 + k, "x", T0 + i * 10**9, i * 10**9, "boot-1",
                    True)
            for i in range(start, start + count)
            for k, quantity in enumerate(("temperature", "humidity", "pressure"))]


def make_uplink(url: str, outbox: Outbox, tmp_path: Path, *, fmt: str = "json",
                token: Callable[[], Secret | None] = lambda: Secret(TOKEN),
                clock: Any = None, **overrides: Any) -> Uplink:
    settings = UplinkConfig(url=url, format=fmt, allow_insecure=True,
                            **{"batch_size": 500, **FAST, **overrides})
    encoder = make_encoder(fmt, unit="demo-001", site=SITE,
                           drivers={"air": "bme280", "probe": "sim"},
                           measurement=settings.measurement)
    clock = clock or FakeClock()
    sink = HttpSink(settings.url, encoder, make_session(ca_file=settings.ca_file),
                    auth=settings.auth, connect_timeout=settings.connect_timeout,
                    read_timeout=settings.read_timeout, deadline=settings.deadline,
                    name=settings.name, wall=clock.time)  # Retry-After dates: the test's time
    return Uplink(outbox, sink, settings, clock=clock, token=token,
                  state_path=tmp_path / STATE_FILE, rng=random.Random(7))


def said(step: Step) -> str:
    """What the answer said first, as the log and ``status`` show it: ``HTTP 503``,
    ``connect timeout``, ``total deadline exceeded``..."""
    assert step.answer is not None, step
    return step.answer.detail.split(":")[0]


def key(r: Reading) -> Key:
    return (r.sensor, r.quantity, r.time_ns)


def keys_in(body: bytes) -> list[Key]:
    """The readings in a body the sink sent, JSON or line protocol."""
    if body.startswith(b"{"):
        return [(i["sensor"], i["quantity"], i["time_ns"]) for i in json.loads(body)["readings"]]
    found = []
    for line in body.decode("utf-8").splitlines():
        _, tags, fields, stamp = parse_line(line)
        for name in fields:
            if name.endswith("_q"):
                continue
            found.append((tags["sensor"], name.removesuffix("_nonfinite"), stamp))
    return found


def drain(uplink: Uplink, limit: int = 200) -> list[Step]:
    """Step until the outbox is empty, skipping every wait (the time is ours)."""
    steps = []
    for _ in range(limit):
        steps.append(uplink.step())
        if steps[-1].caught_up and uplink.outbox.stats().backlog == 0:
            return steps
    raise AssertionError(f"not drained after {limit} steps: {steps[-3:]}")


def check_nothing_lost(appended: list[Reading], server: FaultServer, outbox: Outbox) -> None:
    """Every reading delivered or quarantined; a reading kept twice only in identical bodies."""
    assert outbox.stats().backlog == 0
    quarantined = {key(q.reading) for q in outbox.quarantined(10**6)}
    bodies: dict[Key, set[bytes]] = {}
    for body in server.committed:
        for k in keys_in(body):
            bodies.setdefault(k, set()).add(body)
    assert set(bodies) | quarantined == {key(r) for r in appended}
    assert not set(bodies) & quarantined
    replays = {k: b for k, b in bodies.items() if len(b) > 1}
    assert not replays, f"{len(replays)} reading(s) kept in different bodies"


class Appender:
    """Sampling during delivery: one append every 5 ms, each timed."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox, self.readings, self.latencies = outbox, list[Reading](), list[float]()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            r = Reading("probe", "level", float(i), "1", T0 + 10**15 + i, i, "boot-1", True)
            started = time.perf_counter()
            self.outbox.append([r])
            self.latencies.append(time.perf_counter() - started)
            self.readings.append(r)
            i += 1
            self._stop.wait(0.005)

    def __enter__(self) -> Appender:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        assert self.latencies, "the appender never ran"
        assert max(self.latencies) < APPEND_BOUND_S


def timed_posts(uplink: Uplink) -> list[float]:
    """How long each of the sink's POSTs takes: what the deadline bounds, without the state
    saves (fsync'd) around it. (HttpSink.send answers what its ``post`` got.)"""
    took: list[float] = []
    post = uplink.sink.post

    def timed(*args: Any) -> Any:
        started = time.monotonic()
        try:
            return post(*args)
        finally:
            took.append(time.monotonic() - started)

    uplink.sink.post = timed  # type: ignore[method-assign]
    return took


# --- the fault matrix --------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    name: str
    arm: Callable[[FaultServer, FakeClock], object]
    outcome: Outcome
    failure: Failure | None = None
    status: int | None = None
    wait: tuple[float, float] = (0.0, FAST["backoff_min"])  # the first retry's delay
    accepting: bool = True
    reached: bool = True  # the failed request reached the handler: the retry must equal it


def then(*actions: Action) -> Callable[[FaultServer, FakeClock], object]:
    return lambda server, clock: server.then(*actions)


def retry_after_date(seconds: int) -> Callable[[FaultServer, FakeClock], object]:
    def arm(server: FaultServer, clock: FakeClock) -> object:
        date = email.utils.formatdate(clock.time() + seconds, usegmt=True)
        return server.then(status(503, headers={"Retry-After": date}))

    return arm


FAULTS = [
    Fault("connect timeout", lambda s, c: None, Outcome.RETRY, Failure.CONNECT_TIMEOUT,
          accepting=False, reached=False),
    Fault("read timeout", then(hang(10)), Outcome.RETRY, Failure.READ_TIMEOUT),
    *(Fault(f"HTTP {code}", then(status(code, b"overloaded")), Outcome.RETRY, status=code)
      for code in (500, 501, 502, 503, 504, 507)),
    Fault("HTTP 408", then(status(408)), Outcome.RETRY, status=408),
    Fault("429 Retry-After seconds", then(status(429, headers={"Retry-After": "7"})),
          Outcome.RETRY, status=429, wait=(7.0, 7.0)),
    Fault("503 Retry-After HTTP-date", retry_after_date(30), Outcome.RETRY, status=503,
          wait=(30.0, 30.0)),
    Fault("429 huge Retry-After is capped", then(status(429, headers={"Retry-After": "9" * 15})),
          Outcome.RETRY, status=429, wait=(60.0, 60.0)),
    Fault("reset in the request body", lambda s, c: setattr(s, "before_body",
                                                             reset_mid_request()),
          Outcome.RETRY, Failure.CONNECTION, reached=False),
    Fault("reset in the response body", then(reset_mid_response()), Outcome.RETRY,
          Failure.CONNECTION),
    Fault("commit then drop", then(commit_then_drop()), Outcome.RETRY, Failure.CONNECTION),
    Fault("slow drip", then(drip(0.1)), Outcome.RETRY, Failure.DEADLINE),
]


@pytest.mark.parametrize("fmt", ["json", "influx"])
@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_fault_matrix(fault: Fault, fmt: str, outbox: Outbox, tmp_path: Path,
                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    appended = samples(400)  # 1200 readings: three batches of up to 500
    outbox.append(appended)
    clock = FakeClock()
    with FaultServer(accepting=fault.accepting) as server:
        uplink = make_uplink(server.url(), outbox, tmp_path, fmt=fmt, clock=clock)
        fault.arm(server, clock)
        posts = timed_posts(uplink)
        with Appender(outbox) as sampling:
            first = uplink.step()
        expected = fault.failure.value if fault.failure else f"HTTP {fault.status}"
        assert (first.outcome, said(first)) == (fault.outcome, expected), first.answer
        assert fault.wait[0] <= first.wait <= fault.wait[1]
        assert posts[0] < FAST["deadline"] + 0.5  # the total deadline holds for every fault
        assert uplink.state.state == "retrying"
        if not fault.accepting:
            server.start_accepting()
        drain(uplink)
        check_nothing_lost(appended + sampling.readings, server, outbox)
        if fault.reached:  # the retry sent the very same bytes, gzip included
            assert server.requests[1].raw == server.requests[0].raw
    assert uplink.state.state == "ok"
    assert TOKEN not in caplog.text
    assert TOKEN not in (tmp_path / STATE_FILE).read_text()


def test_commit_then_drop_duplicates_are_exactly_the_same_bytes(
        server: FaultServer, outbox: Outbox, tmp_path: Path) -> None:
    outbox.append(samples(100))
    server.then(commit_then_drop())
    uplink = make_uplink(server.url(), outbox, tmp_path, fmt="influx")
    assert uplink.step().outcome is Outcome.RETRY
    drain(uplink)
    first, second = server.committed
    assert first == second  # upstream holds the same points twice: InfluxDB keeps one
    assert outbox.stats().delivered == 300


def test_a_slow_drip_is_cut_off_at_the_total_deadline(server: FaultServer, outbox: Outbox,
                                                      tmp_path: Path) -> None:
    outbox.append(samples(10))
    server.then(drip(0.05))  # each byte well within the read timeout
    uplink = make_uplink(server.url(), outbox, tmp_path, deadline=0.8, read_timeout=0.5)
    posts = timed_posts(uplink)
    step = uplink.step()
    assert said(step) == Failure.DEADLINE.value
    assert 0.75 <= posts[0] < 1.3
    assert outbox.stats().backlog == 30  # nothing acknowledged on a cut-off answer



def test_a_deadline_cuts_only_its_own_upstreams_connection() -> None:
    """Two upstreams on one port (two HTTPS servers both use 443): the one that never answers
    is cut off at its deadline, the other one's POST in flight meanwhile is not."""
    listeners = []
    for host in ("127.0.0.1", "127.0.0.2"):
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, listeners[0].getsockname()[1] if listeners else 0))
        listener.listen(4)
        listeners.append(listener)
    port = listeners[0].getsockname()[1]
    stop = threading.Event()

    def serve(listener: socket.socket, answer_after: float | None) -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            if stop.wait(answer_after if answer_after is not None else 30):
                return
            conn.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
            stop.wait(5)

    def sink(host: str, deadline: float) -> HttpSink:
        encoder = make_encoder("json", unit="u", site="s", drivers={}, measurement="m")
        return HttpSink(f"http://{host}:{port}/write", encoder, make_session(),
                        connect_timeout=1.0, deadline=deadline, name=host)

    servers = [threading.Thread(target=serve, args=(listeners[0], None), daemon=True),
               threading.Thread(target=serve, args=(listeners[1], 1.0), daemon=True)]
    for server in servers:
        server.start()
    silent, healthy = sink("127.0.0.1", 0.5), sink("127.0.0.2", 10.0)
    replies: dict[str, Reply] = {}
    cut = threading.Thread(target=lambda: replies.update(silent=silent.post(b"{}", None)))
    try:
        cut.start()
        time.sleep(0.2)  # its deadline falls while the healthy upstream's POST is in flight
        replies["healthy"] = healthy.post(b"{}", None)
        cut.join(5)
    finally:
        stop.set()
        silent.close()
        healthy.close()
        for listener in listeners:
            listener.close()
    assert replies["silent"].failure is Failure.DEADLINE
    assert replies["healthy"].status == 204, replies["healthy"].describe()

def test_connection_refused_and_dns_failure_are_retried(outbox: Outbox, tmp_path: Path) -> None:
    outbox.append(samples(3))
    with FaultServer() as closed:
        url = closed.url()
    for target in (url, "https://envagent-test.invalid/write"):
        step = make_uplink(target, outbox, tmp_path).step()
        assert step.outcome is Outcome.RETRY
        assert said(step) == Failure.CONNECTION.value, step.answer
    assert outbox.stats().backlog == 9


# --- refused data ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "influx"])
@pytest.mark.parametrize("code", [400, 422])
def test_poison_readings_are_bisected_out_and_quarantined(fmt: str, code: int, outbox: Outbox,
                                                          server: FaultServer,
                                                          tmp_path: Path) -> None:
    appended = samples(400)
    poison = [Reading("air", "POISON", 1.0, "x", T0 + k * 7919, 0, "boot-1", True)
              for k in (11, 250, 1111)]
    appended[17:17], appended[600:600], appended[1100:1100] = poison[:1], poison[1:2], poison[2:]
    outbox.append(appended)
    server.default = reject_marker(b"POISON", code)
    uplink = make_uplink(server.url(), outbox, tmp_path, fmt=fmt)
    steps = drain(uplink)
    check_nothing_lost(appended, server, outbox)
    quarantined = outbox.quarantined(100)
    assert [key(q.reading) for q in quarantined] == [key(p) for p in poison]
    assert all(f"HTTP {code}" in q.reason and "unparsable" in q.reason for q in quarantined)
    assert sum(s.quarantined for s in steps) == 3 == outbox.stats().rejected
    assert len(server.requests) <= 3 * 2 * 10 + 3  # bisection: ~2 log2(500) per poison reading


def test_413_halves_the_batch_and_remembers_the_size(server: FaultServer, outbox: Outbox,
                                                      tmp_path: Path) -> None:
    appended = samples(1000)
    outbox.append(appended)
    server.default = limit_size(40_000)
    uplink = make_uplink(server.url(), outbox, tmp_path, batch_size=1000)
    drain(uplink, limit=400)
    check_nothing_lost(appended, server, outbox)
    assert uplink.batch_limit < 1000
    sizes = [len(r.body) for r in server.requests]
    first_ok = next(i for i, size in enumerate(sizes) if size <= 40_000)
    assert all(size <= 40_000 for size in sizes[first_ok:])  # no 413 once the size is known


def test_a_reading_too_large_on_its_own_is_quarantined(server: FaultServer, outbox: Outbox,
                                                       tmp_path: Path) -> None:
    outbox.append(samples(1))
    server.default = limit_size(10)
    drain(make_uplink(server.url(), outbox, tmp_path))
    assert outbox.stats().rejected == 3
    assert all("HTTP 413" in q.reason for q in outbox.quarantined(10))


# --- authentication and misconfiguration ----------------------------------------------------------


def authenticating(good: str) -> Action:
    """A server that keeps bodies sent with ``good`` and echoes any other token in its 401."""

    def act(handler: Handler, request: Received) -> None:
        sent = request.headers.get("authorization", "")
        if sent == f"Token {good}":
            handler.commit(request)
            handler.answer(204)
        else:
            handler.answer(401, f'{{"message":"unauthorized: {sent}"}}'.encode())

    return act


def test_401_pauses_delivery_and_a_fixed_token_file_resumes_it(
        server: FaultServer, outbox: Outbox, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token_file = tmp_path / "upload-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    good = "tok-GOOD-77c3e1"
    server.default = authenticating(good)
    appended = samples(50)
    outbox.append(appended)
    from agent.core.credentials import load_token

    uplink = make_uplink(server.url(), outbox, tmp_path,
                         token=lambda: load_token(token_file, {}))
    for _ in range(3):  # refused again and again: one loud log line, one state write
        step = uplink.step()
        assert (step.outcome, step.wait) == (Outcome.AUTH, FAST["auth_retry"])
    assert uplink.state.state == "auth_blocked"
    assert UplinkState.load(tmp_path / STATE_FILE).state == "auth_blocked"  # type: ignore[union-attr]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "paused" in errors[0].getMessage()
    with Appender(outbox) as sampling:  # sampling goes on meanwhile
        time.sleep(0.05)
    token_file.write_text(good + "\n")
    drain(uplink)
    check_nothing_lost(appended + sampling.readings, server, outbox)
    assert uplink.state.state == "ok" and "again" in caplog.text
    for secret in (TOKEN, good):
        assert secret not in caplog.text
        assert secret not in (tmp_path / STATE_FILE).read_text()
        assert secret not in (uplink.state.last_error or "")
    assert "<redacted>" in (uplink.state.last_error or "")  # the server's echo was scrubbed


def test_a_missing_token_file_blocks_without_sending_until_it_appears(
        server: FaultServer, outbox: Outbox, tmp_path: Path) -> None:
    from agent.core.credentials import load_token

    token_file = tmp_path / "upload-token"
    server.default = authenticating(TOKEN)
    outbox.append(samples(5))
    uplink = make_uplink(server.url(), outbox, tmp_path, token=lambda: load_token(token_file, {}))
    step = uplink.step()
    assert step.outcome is Outcome.AUTH and step.answer is None and not server.requests
    assert str(token_file) in (uplink.state.last_error or "")
    token_file.write_text(TOKEN)
    drain(uplink)
    assert outbox.stats().delivered == 15


@pytest.mark.parametrize("code", [301, 302, 307, 308])
def test_a_redirect_is_reported_loudly_and_never_followed(
        code: int, server: FaultServer, outbox: Outbox, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    outbox.append(samples(5))
    with FaultServer() as elsewhere:
        server.default = status(code, headers={"Location": elsewhere.url()})
        step = make_uplink(server.url(), outbox, tmp_path).step()
        assert not elsewhere.requests
    assert (step.outcome, step.wait) == (Outcome.FAILED, FAST["backoff_max"])
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and f"HTTP {code}" in errors[0] and "redirect" in errors[0]
    assert outbox.stats().backlog == 15


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key_file = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key_file), "-out", str(cert), "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True)
    return cert, key_file


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    return self_signed(tmp_path_factory.mktemp("tls"), "server")


def test_tls_verification_failure_is_never_answered_by_turning_it_off(
        certificate: tuple[Path, Path], outbox: Outbox, tmp_path: Path) -> None:
    cert, key_file = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key_file)
    outbox.append(samples(5))
    with FaultServer(tls=context) as server:
        untrusting = make_uplink(server.url(), outbox, tmp_path)
        step = untrusting.step()
        assert said(step) == Failure.TLS_VERIFY.value
        assert (step.outcome, step.wait) == (Outcome.FAILED, FAST["backoff_max"])
        assert not server.requests
        assert "set uplink.ca_file" in (untrusting.state.last_error or "")
        trusted = make_uplink(server.url(), outbox, tmp_path, ca_file=cert)
        assert trusted.step().outcome is Outcome.DELIVERED
        assert len(server.committed) == 1


@pytest.mark.parametrize(("fmt", "path", "content_type"), [
    ("influx", "/api/v2/write?org=eco&bucket=field&precision=ns", "text/plain; charset=utf-8"),
    ("json", "/api/v2/write?org=eco&bucket=field", "application/json; charset=utf-8"),
])
def test_what_goes_on_the_wire_ignores_the_environment(
        fmt: str, path: str, content_type: str, server: FaultServer, outbox: Outbox,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9" if "PROXY" in name.upper() else "")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "nonexistent.pem"))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    (tmp_path / "netrc").write_text("machine 127.0.0.1 login eve password stolen\n")
    outbox.append(samples(2))
    uplink = make_uplink(server.url("/api/v2/write?org=eco&bucket=field"), outbox, tmp_path,
                         fmt=fmt)
    assert uplink.step().outcome is Outcome.DELIVERED
    (request,) = server.requests
    assert request.path == path
    assert request.headers["content-encoding"] == "gzip"
    assert request.headers["content-type"] == content_type
    assert request.headers["authorization"] == f"Token {TOKEN}"
    assert request.headers["user-agent"].startswith("envagent/")


def test_a_missing_ca_file_is_a_loud_misconfiguration(outbox: Outbox, tmp_path: Path) -> None:
    outbox.append(samples(1))
    uplink = make_uplink("https://127.0.0.1:9/write", outbox, tmp_path,
                         ca_file=tmp_path / "missing-ca.pem")
    step = uplink.step()
    assert said(step) == Failure.INVALID.value, step.answer
    assert step.outcome is Outcome.FAILED and uplink.state.state == "failing"
    assert "check uplink.url, ca_file" in (uplink.state.last_error or "")


def test_delivered_to_a_real_victoriametrics_exactly_once(victoriametrics: Any, outbox: Outbox,
                                                          tmp_path: Path) -> None:
    victoriametrics.delete_series('{__name__=~"uplinkit_.*"}')
    readings = [
        Reading("air", "temperature", 21.5, "°C", T0 + 123_456_789, 1, "b", True),
        Reading("air", "humidity", math.nan, "%RH", T0 + 123_456_789, 1, "b", True),
        Reading("air", "temperature", -0.1, "°C", T0 + 10**9, 2, "b", False, 2),
    ]
    outbox.append(readings)
    uplink = make_uplink(victoriametrics.write_url, outbox, tmp_path, fmt="influx",
                         measurement="uplinkit")
    body = uplink.sink.encode(readings)
    assert uplink.step().outcome is Outcome.DELIVERED
    assert uplink.sink.send(body, None).outcome is Outcome.DELIVERED  # a replay, same bytes
    victoriametrics.flush()
    tags = {"driver": "bme280", "sensor": "air", "site": SITE, "unit": "demo-001"}
    series = {s["metric"]["__name__"]: s for s in
              victoriametrics.query_export('{__name__=~"uplinkit_.*"}')}
    assert series["uplinkit_temperature"] == {
        "metric": {"__name__": "uplinkit_temperature", **tags},
        "values": [21.5, -0.1], "timestamps": [(T0 + 123_456_789) // 10**6, (T0 + 10**9) // 10**6]}
    assert series["uplinkit_temperature_q"]["values"] == [2 | 16]  # out of range, unsynced
    assert series["uplinkit_humidity_q"]["values"] == [0]  # NaN: no value, but the sample shows
    assert set(series) == {"uplinkit_temperature", "uplinkit_temperature_q", "uplinkit_humidity_q"}


def test_mutual_tls_with_a_client_certificate(certificate: tuple[Path, Path], outbox: Outbox,
                                              tmp_path: Path) -> None:
    cert, key_file = certificate
    client_cert, client_key = self_signed(tmp_path, "client")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key_file)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(client_cert)
    outbox.append(samples(5))
    with FaultServer(tls=context) as server:
        anonymous = make_uplink(server.url(), outbox, tmp_path, ca_file=cert).step()
        assert anonymous.outcome is not Outcome.DELIVERED and not server.requests
        settings = UplinkConfig(url=server.url(), allow_insecure=True, ca_file=cert,
                                client_cert=client_cert, client_key=client_key, **FAST)
        encoder = make_encoder("json", unit="demo-001", site=SITE, drivers={},
                               measurement="envagent")
        session = make_session(ca_file=cert, client_cert=client_cert, client_key=client_key)
        uplink = Uplink(outbox, HttpSink(settings.url, encoder, session), settings,
                        clock=FakeClock(), token=lambda: None)
        assert uplink.step().outcome is Outcome.DELIVERED
        assert len(server.committed) == 1


# --- the worker thread -------------------------------------------------------------------------


def test_the_worker_delivers_while_sampling_goes_on(server: FaultServer, outbox: Outbox,
                                                    tmp_path: Path) -> None:
    appended = samples(700)
    outbox.append(appended)
    uplink = make_uplink(server.url(), outbox, tmp_path, clock=SystemClock(),
                         flush_interval=0.1)
    uplink.start()
    try:
        with Appender(outbox) as sampling:
            time.sleep(0.5)
        deadline = time.monotonic() + 60  # left as soon as it holds
        while outbox.stats().backlog and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        uplink.stop()
    check_nothing_lost(appended + sampling.readings, server, outbox)
    assert max(len(keys_in(body)) for body in server.committed) == 500  # full batches first


def test_an_alert_committed_during_a_post_is_sent_at_once_not_at_the_next_look(
        server: FaultServer, outbox: Outbox, tmp_path: Path) -> None:
    """The writer's nudge (Agent.on_commit) may come while the worker is still in the step
    that will find it caught up: an urgent one must not be lost until the next look, an hour
    away."""
    outbox.append(samples(2))
    uplink = make_uplink(server.url(), outbox, tmp_path, clock=SystemClock(),
                         flush_interval=3600.0)
    first = ok()

    def commit_meanwhile(handler: Handler, request: Received) -> None:
        outbox.append(samples(2, start=10))  # committed while this batch is in flight
        uplink.nudge(urgent=True)
        first(handler, request)

    server.then(commit_meanwhile)
    uplink.start()
    try:
        deadline = time.monotonic() + 60  # left as soon as it holds
        while outbox.stats().backlog and time.monotonic() < deadline:  # sent, then acked
            time.sleep(0.02)
    finally:
        uplink.stop()
    assert len(server.committed) == 2 and outbox.stats().backlog == 0


def test_commits_go_at_most_once_per_flush_interval_alerts_at_once(
        server: FaultServer, outbox: Outbox, tmp_path: Path) -> None:
    """Issue 16: a commit every 0.2 s, a post every 1.5 s with all of them; an alert at once."""
    uplink = make_uplink(server.url(), outbox, tmp_path, clock=SystemClock(),
                         flush_interval=1.5)
    answer, times = ok(), []

    def timed(handler: Handler, request: Received) -> None:
        times.append(time.monotonic())
        answer(handler, request)

    server.default = timed
    uplink.start()
    try:
        for i in range(20):  # 4 s of commits
            outbox.append(samples(1, start=i))
            uplink.nudge()
            time.sleep(0.2)
        posts = len(times)
        outbox.append(samples(1, start=100))
        uplink.nudge(urgent=True)  # an alert's commit, well inside the interval
        deadline = time.monotonic() + 1.0
        while len(times) == posts:
            assert time.monotonic() < deadline, "the alert waited for the flush interval"
            time.sleep(0.01)
    finally:
        uplink.stop()
    times = times[:posts]
    assert 3 <= posts <= 4, posts  # 0 s, 1.5 s, 3 s (and 4 s for the last commits at most)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 1.5 - 0.15 - 0.05, gaps  # the interval, less its tenth of tolerance


def test_stop_cuts_an_upload_short_after_its_grace_and_keeps_its_batch(
        server: FaultServer, outbox: Outbox, tmp_path: Path) -> None:
    """See test_uplink_stop for the grace itself: a POST answered within it is acked."""
    outbox.append(samples(10))
    server.default = hang(30)
    uplink = make_uplink(server.url(), outbox, tmp_path, clock=SystemClock(), deadline=20.0,
                         read_timeout=20.0)
    uplink.start()
    while not server.requests:
        time.sleep(0.01)
    started = time.monotonic()
    uplink.stop(grace=0.3)
    assert 0.25 < time.monotonic() - started < 1.3
    assert outbox.stats().backlog == 30


def test_the_state_file_is_written_on_transitions_only(
        server: FaultServer, outbox: Outbox, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    saves: list[str] = []
    original = UplinkState.save

    def counting(self: UplinkState, path: Path) -> None:
        saves.append(self.state)
        original(self, path)

    monkeypatch.setattr(UplinkState, "save", counting)
    uplink = make_uplink(server.url(), outbox, tmp_path, batch_size=3)
    outbox.append(samples(5))
    drain(uplink)  # five deliveries
    server.then(status(503), status(503), status(503))
    outbox.append(samples(5, start=5))
    drain(uplink)
    assert saves == ["ok", "retrying", "ok"]
    state = UplinkState.load(tmp_path / STATE_FILE)
    assert state is not None and state.state == "ok" and state.last_error == "HTTP 503"
    assert not list(tmp_path.glob(".*.tmp"))


# --- the pieces ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "outcome"), [
    (200, Outcome.DELIVERED), (204, Outcome.DELIVERED), (400, Outcome.REJECTED),
    (422, Outcome.REJECTED), (413, Outcome.TOO_LARGE), (401, Outcome.AUTH), (403, Outcome.AUTH),
    (408, Outcome.RETRY), (429, Outcome.RETRY), (500, Outcome.RETRY), (599, Outcome.RETRY),
    (301, Outcome.FAILED), (304, Outcome.FAILED), (404, Outcome.FAILED), (405, Outcome.FAILED),
])
def test_classify(code: int, outcome: Outcome) -> None:
    assert classify(Reply(code)) is outcome


@pytest.mark.parametrize(("failure", "outcome"), [
    (Failure.CONNECT_TIMEOUT, Outcome.RETRY), (Failure.READ_TIMEOUT, Outcome.RETRY),
    (Failure.DEADLINE, Outcome.RETRY), (Failure.CONNECTION, Outcome.RETRY),
    (Failure.TLS, Outcome.RETRY), (Failure.TLS_VERIFY, Outcome.FAILED),
    (Failure.INVALID, Outcome.FAILED), (Failure.STOPPED, Outcome.STOPPED),
])
def test_classify_failures(failure: Failure, outcome: Outcome) -> None:
    assert classify(Reply(None, failure)) is outcome


NOW = T0 / 1e9
# What the HTTP transport answers the worker (agent.uplink.http): the status or failure becomes
# an outcome, the text a detail for people, the fix a hint, Retry-After a parsed delay (only
# where the batch is retried) -- the worker never sees a status code.
HTTP_ANSWERS = [
    (Reply(204), Outcome.DELIVERED, "HTTP 204", "", None),
    (Reply(503, None, "maintenance", "120"), Outcome.RETRY, "HTTP 503: maintenance",
     "retries by itself", 120.0),
    (Reply(429, None, "", "Thu, 01 Jan 2026 00:00:30 GMT"), Outcome.RETRY, "HTTP 429",
     "retries by itself", 30.0),
    (Reply(503, None, "", "²"), Outcome.RETRY, "HTTP 503", "retries by itself", None),
    (Reply(400, None, "unparsable", "60"), Outcome.REJECTED, "HTTP 400: unparsable", "", None),
    (Reply(422), Outcome.REJECTED, "HTTP 422", "", None),
    (Reply(413, None, "too big", "60"), Outcome.TOO_LARGE, "HTTP 413: too big", "", None),
    (Reply(401, None, f"bad token {TOKEN}"), Outcome.AUTH, "HTTP 401: bad token <redacted>",
     "put a valid token", None),
    (Reply(403), Outcome.AUTH, "HTTP 403", "put a valid token", None),
    (Reply(308, None, "", None, "https://x.org/w"), Outcome.FAILED,
     "HTTP 308 to https://x.org/w", "redirects writes, which are never followed", None),
    (Reply(404, None, "database not found"), Outcome.FAILED, "HTTP 404: database not found",
     "check uplink.url and the server", None),
    (Reply(None, Failure.TLS_VERIFY, "self-signed"), Outcome.FAILED,
     "TLS certificate verification failed: self-signed", "set uplink.ca_file", None),
    (Reply(None, Failure.INVALID, "no such file"), Outcome.FAILED,
     "invalid request: no such file", "check uplink.url, ca_file", None),
    (Reply(None, Failure.CONNECT_TIMEOUT, "cannot connect to x:443: timed out after 1 s"),
     Outcome.RETRY, "connect timeout: cannot connect to x:443: timed out after 1 s",
     "retries by itself", None),
    (Reply(None, Failure.STOPPED), Outcome.STOPPED, "stopped", "", None),
]


@pytest.mark.parametrize(("reply", "outcome", "detail", "hint", "retry_after"), HTTP_ANSWERS,
                         ids=[a[2] for a in HTTP_ANSWERS])
def test_the_http_transport_answers_in_the_workers_words(
        reply: Reply, outcome: Outcome, detail: str, hint: str,
        retry_after: float | None) -> None:
    answer = answer_of(reply, Secret(TOKEN), NOW)
    assert (answer.outcome, answer.detail, answer.retry_after, answer.accepted) == (
        outcome, detail, retry_after, None)
    assert hint in answer.hint and (answer.hint != "") == (hint != "")


@pytest.mark.parametrize(("value", "seconds"), [
    ("120", 120.0), (" 0 ", 0.0), ("Thu, 01 Jan 2026 00:01:00 GMT", 60.0),
    ("Wed, 31 Dec 2025 23:00:00 GMT", 0.0), ("soon", None), ("-5", None), (None, None),
    ("9" * 40, 1e9),
])
def test_retry_after_forms(value: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(value, T0 / 1e9) == seconds


def test_backoff_is_full_jitter_under_a_doubling_ceiling_and_the_cap() -> None:
    rng = random.Random(1)
    for failures in range(1, 200):
        ceiling = min(300.0, 1.0 * 2 ** min(failures - 1, 40))
        delays = [backoff_delay(failures, 1.0, 300.0, rng) for _ in range(50)]
        assert all(0 <= d <= ceiling for d in delays)
    assert max(backoff_delay(60, 1.0, 300.0, rng) for _ in range(500)) > 200  # spreads out


# --- [uplink] in the config --------------------------------------------------------------------

UNIT = '[unit]\nid = "u1"\nsite = "Roof"\n'
GOOD_URL = "https://influx.example.org:8086/api/v2/write?org=eco&bucket=field"


def uplink_config(body: str) -> UplinkConfig:
    config = parse_config(tomllib.loads(UNIT + "[uplink]\n" + body), source="e.toml", drivers={})
    (settings,) = config.uplinks
    return settings


def uplink_problems(body: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(tomllib.loads(UNIT + "[uplink]\n" + body), source="e.toml", drivers={})
    return caught.value.problems


def test_no_uplink_section_means_no_delivery() -> None:
    assert parse_config(tomllib.loads(UNIT), drivers={}).uplinks == ()


def test_a_minimal_uplink_takes_the_defaults() -> None:
    assert uplink_config(f'url = "{GOOD_URL}"') == UplinkConfig(url=GOOD_URL)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8186/telegraf", "http://127.3.2.1/write", "http://[::1]:8428/write",
    "http://localhost:8428/write", "http://LOCALHOST/write",
])
def test_plain_http_to_loopback_with_the_switch_is_allowed(url: str) -> None:
    assert uplink_config(f'url = "{url}"\nallow_insecure_http = true').url == url


CONFIG_ERRORS = [
    ('url = "http://127.0.0.1:8428/write"',
     'uplink.url = "http://127.0.0.1:8428/write": plain http sends readings and the token '
     "unencrypted; use https://, or for a collector on this machine set allow_insecure = "
     "true and a loopback host"),
    ('url = "http://10.0.0.5:8428/write"\nallow_insecure_http = true',  # the older name
     'uplink.url = "http://10.0.0.5:8428/write": allow_insecure allows plain http only to '
     "this machine (127.0.0.1, ::1 or localhost); use https:// for any other host"),
    ('url = "http://localhost.example.org/write"\nallow_insecure_http = true',
     "allows plain http only to this machine"),
    ('url = "ftp://x.org/write"', "uplink.url = \"ftp://x.org/write\": expected an https:// URL"),
    ('url = "https:///write"', "no host name"),
    ('url = "https://x.org:99999/write"', "the port is not a number from 1 to 65535"),
    ('url = "https://x.org/write?db=a b"', "contains a space"),
    ('url = "https://x.org/write#top"', "remove the #fragment"),
    ("url = 5", "uplink.url = 5: expected the full write URL"),
    ('url = "https://admin:hunter2@x.org/write"',
     'uplink.url = "https://***@x.org/write": has a user name or password in it'),
    ('url = "https://x.org/write?db=f&u=admin&p=hunter2"',
     'uplink.url = "https://x.org/write?db=f&u=***&p=***": carries credentials (p, u=)'),
    ('url = "https://x.org/write?precision=s"', "the agent sends nanosecond timestamps"),
    ('url = "https://x.org/api/v2/write?org=eco"', "InfluxDB 2 needs the bucket"),
    (f'url = "{GOOD_URL}"\ntoken = "hunter2"',
     "uplink.token: a secret never goes in the config file; put the token in a file"),
    (f'url = "{GOOD_URL}"\npassword = "hunter2"', "uplink.password: a secret never goes in"),
    (f'url = "{GOOD_URL}"\nformat = "xml"',
     'uplink.format = "xml": expected one of "influx", "json"'),
    (f'url = "{GOOD_URL}"\nauth = "digest"', 'expected one of "token", "bearer", "basic"'),
    (f'url = "{GOOD_URL}"\nallow_insecure_http = "yes"',
     'uplink.allow_insecure_http = "yes": expected true or false, without quotes'),
    (f'url = "{GOOD_URL}"\nbatch_size = 10',
     "uplink.batch_size = 10: expected a whole number from 1000 to 100000"),
    (f'url = "{GOOD_URL}"\nbatch_size = "5000"', "write 5000 without quotes"),
    (f'url = "{GOOD_URL}"\nflush_interval = "0s"', "expected a duration from 1s to 1h"),
    (f'url = "{GOOD_URL}"\ndeadline = "1x"', "uplink.deadline = \"1x\": unknown unit"),
    (f'url = "{GOOD_URL}"\nbackoff_min = "10m"\nbackoff_max = "1m"',
     'uplink.backoff_min = 10m: is longer than backoff_max (1m); make it shorter'),
    (f'url = "{GOOD_URL}"\nconnect_timeout = "30s"\ndeadline = "10s"',
     "uplink.deadline = 10s: is shorter than connect_timeout (30s); make it longer"),
    (f'url = "{GOOD_URL}"\nclient_key = "/etc/envagent/client.key"',
     "uplink.client_key: set client_cert too"),
    (f'url = "{GOOD_URL}"\ntoken_file = ""', "uplink.token_file = \"\": expected a file path"),
    (f'url = "{GOOD_URL}"\nmeasurement = "air quality"', "uplink.measurement = \"air quality\""),
    (f'url = "{GOOD_URL}"\ncolour = 1', "uplink.colour: unknown key; valid keys are url, format"),
    ("format = \"json\"", "uplink.url: missing; add it, such as url = \"https://"),
]


@pytest.mark.parametrize(("body", "expected"), CONFIG_ERRORS, ids=[c[0] for c in CONFIG_ERRORS])
def test_every_uplink_mistake_is_one_clear_line(body: str, expected: str) -> None:
    lines = uplink_problems(body)
    assert len(lines) == 1, lines
    assert lines[0].startswith("e.toml: ") and expected in lines[0], lines[0]
    assert "hunter2" not in lines[0]  # secrets are refused, never repeated


def test_uplink_must_be_a_table() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(tomllib.loads("uplink = 1\n" + UNIT), source="e.toml", drivers={})
    assert caught.value.problems == ["e.toml: uplink = 1: expected [[uplink]] tables, one per "
                                     "upstream (or a single table [uplink])"]


def test_the_examples_uplink_section_uncommented_is_valid_and_shows_the_defaults() -> None:
    text = (ROOT / "config" / "envagent.example.toml").read_text(encoding="utf-8")
    section = text.partition("# [uplink]\n")[2].partition("# ----")[0]
    assert section, "the example documents [uplink]"
    body = "\n".join(line[2:] for line in section.splitlines()
                     if line.startswith("# ") and " = " in line and not line.startswith("#  "))
    uplink = uplink_config(body)
    assert tomllib.loads(text).get("uplink") is None  # commented out: the example runs offline
    paths = {"token_file", "ca_file", "client_cert", "client_key"}
    defaults = UplinkConfig(url=uplink.url)
    for name in UplinkConfig.__dataclass_fields__:
        if name not in paths | {"url"}:
            assert getattr(uplink, name) == getattr(defaults, name), name


# --- the commands ------------------------------------------------------------------------------


def envagent(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ENVAGENT_TOKEN", "INFLUX_TOKEN")}
    return subprocess.run([sys.executable, "-m", "agent", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60, env={**env, "PYTHONPATH": str(ROOT)})


def simulated_station(tmp_path: Path, url: str) -> Path:
    token_file = tmp_path / "upload-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    config = tmp_path / "station.toml"
    config.write_text(
        f'[unit]\nid = "t-1"\nsite = "{SITE}"\n[storage]\ncommit_interval = "1s"\n'
        '[[sensor]]\nid = "air"\ndriver = "bme280"\naddress = 0x76\ninterval = "1s"\n'
        f'[uplink]\nurl = "{url}"\nallow_insecure_http = true\ntoken_file = "{token_file}"\n'
        'flush_interval = "1s"\n', encoding="utf-8")
    return config


def test_run_samples_and_delivers_then_sync_and_status_report(server: FaultServer,
                                                             tmp_path: Path) -> None:
    config, data = simulated_station(tmp_path, server.url()), tmp_path / "d"
    ran = envagent("run", "--simulate", "--deliver", "--config", str(config), "--data-dir",
                   str(data), "--duration", "4", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert "uplink: delivering to" in ran.stderr and TOKEN not in ran.stderr
    delivered_by_run = sum(len(keys_in(body)) for body in server.committed)
    assert delivered_by_run >= 3  # at least one sample went out while sampling went on
    assert all(r.headers["authorization"] == f"Token {TOKEN}" for r in server.requests)
    first = parse_line(server.committed[0].decode("utf-8").splitlines()[0])
    assert first[1] == {"driver": "bme280", "sensor": "air", "site": SITE, "unit": "t-1",
                        "simulated": "true"}  # a rehearsal's readings, marked

    synced = envagent("sync", "--simulate", "--deliver", "--config", str(config), "--data-dir",
                      str(data), "--json", cwd=tmp_path)
    assert synced.returncode == 0, synced.stderr
    report = json.loads(synced.stdout)
    assert (report["ok"], report["backlog"], report["error"]) == (True, 0, None)

    shown = envagent("status", "--config", str(config), "--data-dir", str(data), "--json",
                     cwd=tmp_path)
    status_report = json.loads(shown.stdout)
    assert status_report["backlog"] == 0 and status_report["quarantined"] == 0
    # a POST the run's stop cut short after the server kept it is sent again by sync: count once
    distinct = {key for body in server.committed for key in keys_in(body)}
    assert status_report["delivered"] == len(distinct) >= delivered_by_run
    assert status_report["uplink"]["state"] == "ok"
    assert status_report["uplink"]["last_success"] is not None
    text = envagent("status", "--config", str(config), "--data-dir", str(data), cwd=tmp_path)
    assert "uplink   ok since" in text.stdout and "quarantined 0" in text.stdout


def test_sync_reports_failure_with_exit_1_and_status_shows_the_error(tmp_path: Path) -> None:
    with FaultServer() as server:
        server.default = status(503, b"maintenance")
        config, data = simulated_station(tmp_path, server.url()), tmp_path / "d"
        ran = envagent("run", "--simulate", "--deliver", "--config", str(config), "--data-dir",
                       str(data), "--duration", "2", cwd=tmp_path)
        assert ran.returncode == 0, ran.stderr
        synced = envagent("sync", "--simulate", "--deliver", "--config", str(config),
                          "--data-dir", str(data), cwd=tmp_path)
    assert synced.returncode == 1
    assert "could not deliver: HTTP 503: maintenance" in synced.stderr
    assert "0 left" not in synced.stdout and not server.committed
    shown = envagent("status", "--config", str(config), "--data-dir", str(data), "--json",
                     cwd=tmp_path)
    uplink = json.loads(shown.stdout)["uplink"]
    assert (uplink["state"], uplink["last_error"]) == ("retrying", "HTTP 503: maintenance")


def test_sync_without_an_uplink_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "plain.toml"
    config.write_text('[unit]\nid = "t-1"\nsite = "roof"\n')
    result = envagent("sync", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2 and "add an [uplink] section" in result.stderr
